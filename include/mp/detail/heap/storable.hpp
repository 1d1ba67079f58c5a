// heap/storable: which types can live in a SharedHeap, checked at compile time with a message that names the fix.
// Why a check: a heap is mapped at another address in each process started by spawn or forkserver, and its bytes
// are all another process sees of an object. A type that holds an address of this process (a raw pointer, a
// vtable pointer, a function pointer) or owns memory outside the heap (std::string, std::vector, any container
// whose allocator is not the heap's, a smart pointer) means nothing — or worse, something else — over there.
// What the type alone reveals is checked, recursively through pair, tuple, array, optional and variant. A user
// struct with a std::string member cannot be seen (C++ has no reflection): docs/shared-memory.md states the rule.
#pragma once

#include <array>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <boost/container/scoped_allocator_fwd.hpp>

#include <mp/detail/archive.hpp>

namespace mp::detail::heap {

template <class T>
class allocator;

/// The allocators a heap container may use: the heap's own, bare or in the scoped adaptor that hands it down to
/// nested containers (what mp::shm::allocator is).
template <class A>
inline constexpr bool is_heap_allocator_v = false;
template <class T>
inline constexpr bool is_heap_allocator_v<allocator<T>> = true;
template <class T>
inline constexpr bool is_heap_allocator_v<boost::container::scoped_allocator_adaptor<allocator<T>>> = true;

/// Why a type cannot live in a heap (none: it can).
enum class unstorable {
  none,
  reference,
  pointer,
  function_pointer,
  polymorphic,
  std_string,
  std_vector,
  other_container,
  smart_pointer,
  std_function,
};

template <class T>
consteval unstorable problem_of();

template <class... Ts>
consteval unstorable first_problem() {
  unstorable found = unstorable::none;
  ((found = found != unstorable::none ? found : problem_of<Ts>()), ...);
  return found;
}

template <class Tuple, std::size_t... I>
consteval unstorable tuple_problem(std::index_sequence<I...>) {
  return first_problem<std::tuple_element_t<I, Tuple>...>();
}

template <class... Ts>
consteval unstorable variant_problem(std::type_identity<std::variant<Ts...>>) {
  return first_problem<Ts...>();
}

template <class T>
consteval unstorable problem_of() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_reference_v<T>) return unstorable::reference;
  else if constexpr (std::is_pointer_v<U> && std::is_function_v<std::remove_pointer_t<U>>)
    return unstorable::function_pointer;
  else if constexpr (std::is_pointer_v<U>) return unstorable::pointer;
  else if constexpr (std::is_member_function_pointer_v<U>) return unstorable::function_pointer;
  else if constexpr (std::is_polymorphic_v<U>) return unstorable::polymorphic;
  else if constexpr (is_specialization_v<U, std::unique_ptr> || is_specialization_v<U, std::shared_ptr> ||
                     is_specialization_v<U, std::weak_ptr>)
    return unstorable::smart_pointer;
  else if constexpr (is_specialization_v<U, std::function>) return unstorable::std_function;
  else if constexpr (requires { typename U::allocator_type; }) {
    if constexpr (is_heap_allocator_v<typename U::allocator_type>) return unstorable::none;
    else if constexpr (is_specialization_v<U, std::basic_string>) return unstorable::std_string;
    else if constexpr (is_specialization_v<U, std::vector>) return unstorable::std_vector;
    else return unstorable::other_container;
  } else if constexpr (is_specialization_v<U, std::pair> || is_specialization_v<U, std::tuple>)
    return tuple_problem<U>(std::make_index_sequence<std::tuple_size_v<U>>{});
  else if constexpr (is_std_array_v<U>) return problem_of<typename U::value_type>();
  else if constexpr (std::is_array_v<U>) return problem_of<std::remove_all_extents_t<U>>();
  else if constexpr (is_specialization_v<U, std::optional>) return problem_of<typename U::value_type>();
  else if constexpr (is_specialization_v<U, std::variant>) return variant_problem(std::type_identity<U>{});
  else return unstorable::none;
}

/// True when T can live in a SharedHeap, as far as its type shows.
template <class T>
concept storable = problem_of<T>() == unstorable::none;

/// T, after a compile-time check that it can live in a SharedHeap; the failing assertion names the fix.
template <class T>
struct checked {
  static constexpr unstorable problem = problem_of<T>();
  static_assert(problem != unstorable::reference, "mp::shm: a reference cannot be stored in a SharedHeap; store the value");
  static_assert(problem != unstorable::pointer,
                "mp::shm: a raw pointer cannot live in a SharedHeap: the heap is mapped at another address in each "
                "process, so the address means nothing there. Store the value, an index, or a "
                "boost::interprocess::offset_ptr<T> to an object in the same heap");
  static_assert(problem != unstorable::function_pointer,
                "mp::shm: a function pointer cannot live in a SharedHeap: code addresses differ between processes "
                "started by spawn or forkserver. Store an enum or an index into a table of functions");
  static_assert(problem != unstorable::polymorphic,
                "mp::shm: a class with virtual functions cannot live in a SharedHeap: its vtable pointer is an address "
                "of this process. Store a plain struct (and, for variants, a std::variant of plain structs)");
  static_assert(problem != unstorable::std_string,
                "mp::shm: std::string keeps its characters in this process's private memory, which other processes "
                "cannot see. Use mp::shm::string (its allocator is heap.allocator<char>())");
  static_assert(problem != unstorable::std_vector,
                "mp::shm: std::vector keeps its elements in this process's private memory, which other processes "
                "cannot see. Use mp::shm::vector<T> (its allocator is heap.allocator<T>())");
  static_assert(problem != unstorable::other_container,
                "mp::shm: this container allocates from this process's private memory, which other processes "
                "cannot see. Use the mp::shm container (shm::string, vector, map, unordered_map, set, deque), whose "
                "allocator is the heap's");
  static_assert(problem != unstorable::smart_pointer,
                "mp::shm: std::unique_ptr/shared_ptr/weak_ptr point into this process's private memory. Store the "
                "object itself in the heap (find_or_construct) and its name or a value instead");
  static_assert(problem != unstorable::std_function,
                "mp::shm: std::function holds code and data addresses of this process. Store an enum or an index "
                "into a table of functions");
  using type = T;
};

template <class T>
using checked_t = typename checked<T>::type;

}  // namespace mp::detail::heap
