// remote: how an exception thrown by a custom type's method in the manager server reaches the caller (the reply's
// error kind `remote` carries the exception's demangled type name and its what()). Typed as a Pool task's are
// (detail/remote_error.hpp): a standard or registered type arrives as mp::Remote<E>, any other as RemoteError.
// (No .ipp: one throw.)
#pragma once

#include <exception>
#include <string>

#include <mp/detail/remote_error.hpp>

namespace mp::detail::manager {

/// Throws the exception a method raised in the server (no pid, no stack: the server sends neither).
[[noreturn]] inline void throw_remote(const std::string& type, const std::string& message) {
  std::rethrow_exception(make_remote_exception(type, message, 0, {}));
}

}  // namespace mp::detail::manager
