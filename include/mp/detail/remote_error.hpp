// remote_error: the exception a parent rebuilds from a failure reported by another process (a Pool worker), and
// the worker's stack sent with it. A standard exception type or one registered with mp::register_exception<E>()
// becomes mp::Remote<E>; any other type becomes mp::RemoteError. The registry maps the demangled type name (as
// type_name.hpp's describe_current_exception() spells it in the worker) to a factory; it lives in the parent only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>

#include <mp/detail/config.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

/// The error code of the exception being handled, as it crosses: a std::system_error's (ios_base::failure and
/// filesystem_error are ones) or a std::future_error's value and category name; category empty for any other.
struct remote_code {
  std::int32_t value = 0;
  std::string category;
};
/// Call inside a catch block.
MP_DECL remote_code current_exception_code();

/// The exception a remote failure stands for: Remote<E> for a standard or registered type, else RemoteError.
/// `code`: what current_exception_code() found in the other process.
MP_DECL std::exception_ptr make_remote_exception(const std::string& type, const std::string& message, int pid,
                                                 std::string traceback, const remote_code& code = {});

/// This thread's stack as text, one frame a line (innermost first, the first `skip` frames left out), symbolized
/// as far as backtrace_symbols(3) and the demangler can (functions of the executable need -rdynamic for names).
MP_DECL std::string current_traceback(std::size_t skip = 0);

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/remote_error.ipp>
#endif
