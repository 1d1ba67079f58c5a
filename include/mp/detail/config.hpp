// config: how mp is compiled. Header-only by default; Asio's separate-compilation pattern as an option.
//
// Header-only (the default): every header includes the definitions it needs (`*.ipp` files), and non-template
// functions are `inline`. Nothing to link but mp::mp.
// Separately compiled: define MP_SEPARATE_COMPILATION for every translation unit (CMake: link mp::mp_compiled,
// which does it) and compile <mp/impl/src.hpp> in exactly one of them (mp::mp_compiled does that too). Headers then
// declare the non-template machinery and stop there, so a program that includes <mp/mp.hpp> parses and optimizes
// only its own uses of mp's templates. See docs/design.md ("Compile cost").
//
// Every header with non-template definitions keeps them in an .ipp file beside it and ends with
//   #if MP_INCLUDE_DEFINITIONS
//   #include <mp/detail/x.ipp>
//   #endif
#pragma once

/// 1 where a header must bring its .ipp definitions: header-only builds, and the one source of mp::mp_compiled
/// (<mp/impl/src.hpp> defines MP_COMPILING_LIBRARY).
#if !defined(MP_SEPARATE_COMPILATION) || defined(MP_COMPILING_LIBRARY)
#define MP_INCLUDE_DEFINITIONS 1
#else
#define MP_INCLUDE_DEFINITIONS 0
#endif

/// Declares (and, in an .ipp file, defines) a non-template function: `inline` when header-only, a plain external
/// function when MP_SEPARATE_COMPILATION compiles it once in mp::mp_compiled.
#if defined(MP_SEPARATE_COMPILATION)
#define MP_DECL
#else
#define MP_DECL inline
#endif
