// type_name: readable C++ type names for messages. type_name<T>() spells a static type as its user wrote it
// ("std::vector<int>", not "std::vector<int, std::allocator<int> >"); type_name(typeid(x)) and
// describe_current_exception() name a dynamic type ("Process Process-1:\nstd::runtime_error: boom",
// RemoteError::remote_type()). Demangling uses the Itanium C++ ABI (g++ and clang on Linux).
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <deque>
#include <list>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

// std::filesystem::path is only compared with, never used here or in archive.hpp outside templates that a program
// instantiates once it holds a path (so has included <filesystem> itself). libstdc++ declares the class in
// <bits/fs_fwd.h>: 1 MB of parsing in a program that already has <string>, against 17 MB for <filesystem>.
#if __has_include(<bits/fs_fwd.h>)
#include <bits/fs_fwd.h>
#else
#include <filesystem>
#endif

#include <mp/detail/config.hpp>

namespace mp::detail {

/// "St13runtime_error" -> "std::runtime_error"; the mangled name itself when it does not demangle.
MP_DECL std::string demangle(const char* mangled);

/// The demangled name of a type_info: type_name(typeid(e)) is the dynamic type of e.
inline std::string type_name(const std::type_info& info) { return demangle(info.name()); }

/// type_name(info) with every std::string spelled "std::string" (in a user template's arguments, say): the
/// fallback of type_name<T>() for types it has no spelling of its own for.
MP_DECL std::string readable_type_name(const std::type_info& info);

/// T's name as written in code, for messages and the Manager's type checks: the std templates mp serializes
/// without their defaulted arguments, anything else demangled.
template <class T>
std::string type_name();

/// What an exception is, as text that can cross a process boundary.
struct exception_description {
  std::string type;     // demangled type name of the thrown object, "std::runtime_error"
  std::string message;  // what() for a std::exception, empty otherwise
  /// "<type>: <message>", or "<type>" alone when there is no message (Python prints "ValueError" alike).
  std::string to_string() const { return message.empty() ? type : type + ": " + message; }
};

/// Describes the exception being handled; call it only inside a catch block. Names the type of any thrown
/// object (an int, a user struct), not only std::exception-derived ones.
MP_DECL exception_description describe_current_exception();

// ---- definitions ----

/// Whether T is Template<Args...> (type parameters only: not std::array, see is_std_array_v).
template <class T, template <class...> class Template>
inline constexpr bool is_specialization_v = false;
template <template <class...> class Template, class... Args>
inline constexpr bool is_specialization_v<Template<Args...>, Template> = true;

template <class T> inline constexpr bool is_std_array_v = false;
template <class T, std::size_t N> inline constexpr bool is_std_array_v<std::array<T, N>> = true;

template <class... Ts>
std::string type_name_list() {
  std::string names;
  ((names += (names.empty() ? "" : ", ") + type_name<Ts>()), ...);
  return names;
}

template <class T>
std::string type_name() {
  using U = std::remove_cv_t<T>;
  std::string prefix = std::is_const_v<T> ? "const " : "";
  if constexpr (std::is_same_v<U, std::string>) return prefix + "std::string";
  else if constexpr (std::is_same_v<U, std::byte>) return prefix + "std::byte";
  else if constexpr (std::is_same_v<U, std::filesystem::path>) return prefix + "std::filesystem::path";
  else if constexpr (std::is_same_v<U, std::monostate>) return prefix + "std::monostate";
  else if constexpr (is_std_array_v<U>)
    return prefix + "std::array<" + type_name<typename U::value_type>() + ", " + std::to_string(std::tuple_size_v<U>) + ">";
  else if constexpr (std::is_bounded_array_v<U>)
    return prefix + type_name<std::remove_extent_t<U>>() + "[" + std::to_string(std::extent_v<U>) + "]";
  else if constexpr (is_specialization_v<U, std::chrono::duration>)
    return prefix + "std::chrono::duration<" + type_name<typename U::rep>() + ", std::ratio<" +
           std::to_string(U::period::num) + ", " + std::to_string(U::period::den) + ">>";
#define MP_DETAIL_NAME_OF(template_name, spelled, ...)                              \
  else if constexpr (is_specialization_v<U, template_name>) return prefix + spelled "<" + \
      [&]<template <class...> class Template, class... Ts>(std::type_identity<Template<Ts...>>) { \
        return type_name_list<__VA_ARGS__>();                                                    \
      }(std::type_identity<U>{}) + ">";
  MP_DETAIL_NAME_OF(std::vector, "std::vector", typename U::value_type)
  MP_DETAIL_NAME_OF(std::deque, "std::deque", typename U::value_type)
  MP_DETAIL_NAME_OF(std::list, "std::list", typename U::value_type)
  MP_DETAIL_NAME_OF(std::set, "std::set", typename U::key_type)
  MP_DETAIL_NAME_OF(std::multiset, "std::multiset", typename U::key_type)
  MP_DETAIL_NAME_OF(std::unordered_set, "std::unordered_set", typename U::key_type)
  MP_DETAIL_NAME_OF(std::unordered_multiset, "std::unordered_multiset", typename U::key_type)
  MP_DETAIL_NAME_OF(std::map, "std::map", typename U::key_type, typename U::mapped_type)
  MP_DETAIL_NAME_OF(std::multimap, "std::multimap", typename U::key_type, typename U::mapped_type)
  MP_DETAIL_NAME_OF(std::unordered_map, "std::unordered_map", typename U::key_type, typename U::mapped_type)
  MP_DETAIL_NAME_OF(std::unordered_multimap, "std::unordered_multimap", typename U::key_type, typename U::mapped_type)
  MP_DETAIL_NAME_OF(std::basic_string, "std::basic_string", typename U::value_type)
  MP_DETAIL_NAME_OF(std::pair, "std::pair", typename U::first_type, typename U::second_type)
  MP_DETAIL_NAME_OF(std::tuple, "std::tuple", Ts...)
  MP_DETAIL_NAME_OF(std::optional, "std::optional", typename U::value_type)
  MP_DETAIL_NAME_OF(std::variant, "std::variant", Ts...)
#undef MP_DETAIL_NAME_OF
  else return prefix + readable_type_name(typeid(U));
}

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/type_name.ipp>
#endif
