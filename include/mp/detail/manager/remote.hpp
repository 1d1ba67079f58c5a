// remote: how an exception thrown by a custom type's method in the manager server reaches the caller (the reply's
// error kind `remote` carries the exception's demangled type name and its what()).
// (No .ipp: one throw.)
#pragma once

#include <string>
#include <utility>

#include <mp/errors.hpp>

namespace mp::detail::manager {

/// Throws the exception a method raised in the server: RemoteError naming its type (what() is "type: message").
[[noreturn]] inline void throw_remote(std::string type, std::string message) {
  throw RemoteError(std::move(type), message);
}

}  // namespace mp::detail::manager
