// The one translation unit of a separately compiled mp (MP_SEPARATE_COMPILATION, Asio's pattern): every
// non-template definition, compiled once. CMake's mp::mp_compiled compiles it; without CMake, include this header
// in exactly one .cpp file of the program, and define MP_SEPARATE_COMPILATION for all of them.
#pragma once

#if !defined(MP_SEPARATE_COMPILATION)
#error "<mp/impl/src.hpp> is for separately compiled builds: define MP_SEPARATE_COMPILATION for every source file"
#endif

#define MP_COMPILING_LIBRARY 1
#include <mp/mp.hpp>
