// Demangled C++ type names, for messages that name a type: "Process Process-1:\nstd::runtime_error: boom" and
// RemoteError::remote_type(). Uses the Itanium C++ ABI (g++ and clang on Linux).
#pragma once

#include <cxxabi.h>

#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <typeinfo>
#include <utility>

namespace mp::detail {

/// "St13runtime_error" -> "std::runtime_error"; the mangled name itself when it does not demangle.
inline std::string demangle(const char* mangled) {
  int status = 0;
  // __cxa_demangle mallocs its result; free it on every path.
  std::unique_ptr<char, void (*)(void*)> readable(abi::__cxa_demangle(mangled, nullptr, nullptr, &status), std::free);
  return status == 0 && readable ? std::string(readable.get()) : std::string(mangled);
}

/// The demangled name of a type_info: type_name(typeid(e)) is the dynamic type of e.
inline std::string type_name(const std::type_info& info) { return demangle(info.name()); }

// type_name<T>() itself lives in archive.hpp (one definition for the whole library: both headers are often
// included together).

/// What an exception is, as text that can cross a process boundary.
struct exception_description {
  std::string type;     // demangled type name of the thrown object, "std::runtime_error"
  std::string message;  // what() for a std::exception, empty otherwise
  /// "<type>: <message>", or "<type>" alone when there is no message (Python prints "ValueError" alike).
  std::string to_string() const { return message.empty() ? type : type + ": " + message; }
};

/// Describes the exception being handled; call it only inside a catch block. Names the type of any thrown
/// object (an int, a user struct), not only std::exception-derived ones.
inline exception_description describe_current_exception() {
  exception_description description;
  // The thrown object's static type as the runtime recorded it, which is also its dynamic type.
  if (const std::type_info* thrown = abi::__cxa_current_exception_type()) {
    description.type = type_name(*thrown);
  } else {
    description.type = "unknown exception";
  }
  try {
    throw;
  } catch (const std::exception& e) {
    description.type = type_name(typeid(e));
    description.message = e.what();
  } catch (...) {
  }
  return description;
}

/// Describes a stored exception (std::current_exception(), a promise's error, ...).
inline exception_description describe_exception(const std::exception_ptr& error) {
  if (!error) return {"no exception", {}};
  try {
    std::rethrow_exception(error);
  } catch (...) {
    return describe_current_exception();
  }
}

}  // namespace mp::detail
