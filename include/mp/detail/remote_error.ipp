// remote_error: definitions (see remote_error.hpp).
#pragma once

#include <cxxabi.h>
#include <execinfo.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <ios>
#include <memory>
#include <mutex>
#include <new>
#include <system_error>
#include <stdexcept>
#include <string>
#include <typeinfo>
#include <unordered_map>
#include <utility>

#include <mp/detail/type_name.hpp>

#include <mp/detail/remote_error.hpp>

namespace mp::detail {


/// The category a remote error code names: the standard ones by name, any other as mp's own (a category object
/// cannot cross; its name shows in the message).
inline const std::error_category& remote_category(const std::string& name) {
  if (name == std::generic_category().name()) return std::generic_category();
  if (name == std::system_category().name()) return std::system_category();
  if (name == std::iostream_category().name()) return std::iostream_category();
  if (name == std::future_category().name()) return std::future_category();
  static const struct other_category final : std::error_category {
    const char* name() const noexcept override { return "mp.remote"; }
    std::string message(int value) const override {
      return "error " + std::to_string(value) + " of a category known only in the process that raised it";
    }
  } other;
  return other;
}

/// The registry of remote exception types: demangled name -> factory. Guarded by its mutex.
struct remote_type_registry {
  std::mutex mutex;
  std::unordered_map<std::string, remote_factory> factories;
  std::unordered_map<std::string, remote_code_factory> code_factories;  // standard types with an error code

  template <class E>
  void add() {
    // Thrown and caught rather than make_exception_ptr: the Remote<E> is built once, in the exception object,
    // instead of built, moved there and destroyed (half the code, in every program that reads pool results).
    factories[type_name(typeid(E))] = [](const std::string& message, RemoteInfo info) {
      try {
        throw Remote<E>(message, std::move(info));
      } catch (...) {
        return std::current_exception();
      }
    };
  }
  template <class E, class Make>
  void add_with_code(Make) {
    code_factories[type_name(typeid(E))] = [](const std::string& message, RemoteInfo info, std::error_code code) {
      try {
        throw Remote<E>(Make{}(message, code), message, std::move(info));
      } catch (...) {
        return std::current_exception();
      }
    };
  }
  remote_type_registry() {
    add<std::logic_error>();
    add<std::invalid_argument>();
    add<std::domain_error>();
    add<std::length_error>();
    add<std::out_of_range>();
    add<std::runtime_error>();
    add<std::range_error>();
    add<std::overflow_error>();
    add<std::underflow_error>();
    add<std::bad_alloc>();
    add<std::bad_array_new_length>();
    add_with_code<std::system_error>(
        [](const std::string& message, std::error_code code) { return std::system_error(code, message); });
    add_with_code<std::ios_base::failure>(
        [](const std::string& message, std::error_code code) { return std::ios_base::failure(message, code); });
    add_with_code<std::filesystem::filesystem_error>([](const std::string& message, std::error_code code) {
      return std::filesystem::filesystem_error(message, code);
    });
    // Its error_code constructor is not public: the future_errc (the only codes a future_error has).
    add_with_code<std::future_error>(
        [](const std::string&, std::error_code code) { return std::future_error(static_cast<std::future_errc>(code.value())); });
  }
};

inline remote_type_registry& remote_types() {
  static remote_type_registry registry;
  return registry;
}

MP_DECL void register_remote_type(const std::type_info& type, remote_factory factory) {
  remote_type_registry& registry = remote_types();
  std::lock_guard lock(registry.mutex);
  registry.factories[type_name(type)] = factory;
}

MP_DECL void register_remote_code_type(const std::type_info& type, remote_code_factory factory) {
  remote_type_registry& registry = remote_types();
  std::lock_guard lock(registry.mutex);
  registry.code_factories[type_name(type)] = factory;
}

/// The code of a std::regex_error, read without <regex> (one of the heaviest standard headers; every program
/// built with mp would compile it). Matched by the thrown type's mangled name (libstdc++'s and libc++'s), then
/// read where both libraries keep it: the one member after the std::runtime_error base (an ABI neither changes).
inline bool regex_error_code(const std::runtime_error& e, std::int32_t& code) {
  const std::type_info* thrown = abi::__cxa_current_exception_type();
  if (thrown == nullptr) return false;
  const char* name = thrown->name();
  if (std::strcmp(name, "St11regex_error") != 0 && std::strcmp(name, "NSt3__111regex_errorE") != 0) return false;
  int value = 0;
  std::memcpy(&value, reinterpret_cast<const char*>(&e) + sizeof(std::runtime_error), sizeof value);
  code = value;
  return true;
}

MP_DECL remote_code current_exception_code() {
  try {
    throw;
  } catch (const std::system_error& e) {
    return {e.code().value(), e.code().category().name()};
  } catch (const std::future_error& e) {
    return {e.code().value(), e.code().category().name()};
  } catch (const std::runtime_error& e) {
    remote_code code;
    if (regex_error_code(e, code.value)) code.category = "std.regex";  // rebuilt by register_exception<regex_error>
    return code;
  } catch (...) {
    return {};
  }
}

MP_DECL std::exception_ptr make_remote_exception(const std::string& type, const std::string& message, int pid,
                                                 std::string traceback, const remote_code& code) {
  remote_factory factory = nullptr;
  remote_code_factory code_factory = nullptr;
  {
    remote_type_registry& registry = remote_types();
    std::lock_guard lock(registry.mutex);
    if (auto it = registry.factories.find(type); it != registry.factories.end()) factory = it->second;
    if (auto it = registry.code_factories.find(type); it != registry.code_factories.end()) code_factory = it->second;
  }
  if (factory != nullptr) return factory(message, RemoteInfo(type, pid, std::move(traceback)));
  if (code_factory != nullptr)
    return code_factory(message, RemoteInfo(type, pid, std::move(traceback)),
                        std::error_code(code.value, remote_category(code.category)));
  return std::make_exception_ptr(RemoteError(type, message, pid, std::move(traceback)));
}

MP_DECL std::string current_traceback(std::size_t skip) {
  void* frames[64];
  const int n = ::backtrace(frames, 64);
  if (n <= 0) return {};
  std::unique_ptr<char*, void (*)(void*)> symbols(::backtrace_symbols(frames, n), std::free);
  std::string text;
  for (int i = static_cast<int>(skip) + 1; i < n; ++i) {  // frame 0 is this function
    std::string line = symbols ? std::string(symbols.get()[i]) : std::string("?");
    // "module(mangled+0x1f) [0x...]": demangle the name between '(' and '+'.
    const auto open = line.find('(');
    const auto plus = line.find('+', open == std::string::npos ? 0 : open);
    if (open != std::string::npos && plus != std::string::npos && plus > open + 1) {
      const std::string mangled = line.substr(open + 1, plus - open - 1);
      line.replace(open + 1, plus - open - 1, demangle(mangled.c_str()));
    }
    text += "  #" + std::to_string(i - static_cast<int>(skip) - 1) + " " + line + "\n";
  }
  return text;
}

}  // namespace mp::detail
