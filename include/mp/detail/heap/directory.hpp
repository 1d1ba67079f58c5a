// heap/directory: a SharedHeap's named objects — find_or_construct, find and destroy on Boost.Interprocess's index
// of names, under the heap's names_lock.
// Why an entry per name rather than Boost's own typed named objects: Boost's find<T> trusts T (a wrong T reads
// garbage, or trips an assertion); here the index only ever holds a named_entry — the object's type identity,
// size and offset — and the object is an ordinary block, so a find with the wrong type is an mp::Error naming it.
// Crash safety: each operation takes the names_lock; only the Boost call that writes the index runs inside
// names_lock::writing. A process killed while running T's constructor or destructor leaves at most an unreachable
// block; killed inside the writing span, it leaves names unusable with an error naming the object.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <mutex>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>

#include <boost/container/scoped_allocator.hpp>
#include <boost/interprocess/exceptions.hpp>
#include <boost/interprocess/offset_ptr.hpp>

#include <mp/detail/archive.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/heap/allocator.hpp>
#include <mp/detail/heap/names_lock.hpp>
#include <mp/detail/heap/segment.hpp>
#include <mp/detail/heap/storable.hpp>

namespace mp::detail::heap {

/// What Boost's index holds for a name: where the object is and what it is.
struct named_entry {
  named_entry(std::uint64_t type_id, std::uint64_t type_size, void* address) noexcept
      : type(type_id), size(type_size), object(address) {}
  std::uint64_t type;                             // type_id<T>() of the object's type
  std::uint64_t size;                             // sizeof(T)
  boost::interprocess::offset_ptr<void> object;  // the object's block
};

/// A 64-bit FNV-1a hash of the mangled name: the same for T in every process of a program (spawned children run
/// the same binary), different for different types but for a 2^-64 chance.
MP_DECL std::uint64_t type_id(const std::type_info& type) noexcept;

/// The name as a C string for Boost; mp::Error if it is empty or holds a NUL. `call` names the operation.
MP_DECL std::string checked_name(std::string_view name, const char* call);
/// Throws mp::Error: `name` holds an object of another type than `requested` (a demangled name).
[[noreturn]] MP_DECL void throw_wrong_type(const char* call, std::string_view name, const std::string& requested);

/// The scoped allocator a constructor of an allocator-aware T is given (shm::allocator<std::byte>).
using construction_allocator = boost::container::scoped_allocator_adaptor<allocator<std::byte>>;

/// True when args already carry a heap allocator (last, or after std::allocator_arg): T is then constructed from
/// args as they are, as Boost.Interprocess users write it.
template <class T, class... Args>
consteval bool brings_own_allocator() {
  if constexpr (sizeof...(Args) == 0) {
    return false;
  } else {
    using all = std::tuple<std::remove_cvref_t<Args>...>;
    return std::is_same_v<std::tuple_element_t<0, all>, std::allocator_arg_t> ||
           is_heap_allocator_v<std::tuple_element_t<sizeof...(Args) - 1, all>>;
  }
}

template <class T>
T* object_of(const named_entry& entry, const char* call, std::string_view name) {
  if (entry.type != type_id(typeid(T)) || entry.size != sizeof(T)) throw_wrong_type(call, name, type_name<T>());
  return static_cast<T*>(entry.object.get());
}

/// The object named `name`, or null; mp::Error if it has another type.
template <class T>
T* find(segment& heap, std::string_view name) {
  const std::string key = checked_name(name, "find");
  std::lock_guard guard(heap.control().names);
  const named_entry* entry = heap.manager().find<named_entry>(key.c_str()).first;
  return entry == nullptr ? nullptr : object_of<T>(*entry, "find", name);
}

/// The object named `name`, constructed from args (and the heap's allocator, when T takes one) if there is none.
template <class T, class... Args>
T& find_or_construct(segment& heap, std::string_view name, Args&&... args) {
  const std::string key = checked_name(name, "find_or_construct");
  segment_manager& manager = heap.manager();
  std::lock_guard guard(heap.control().names);
  if (const named_entry* entry = manager.find<named_entry>(key.c_str()).first) {
    return *object_of<T>(*entry, "find_or_construct", name);
  }
  void* memory = allocate_bytes(manager, sizeof(T), alignof(T));
  T* object = nullptr;
  try {
    if constexpr (brings_own_allocator<T, Args...>()) {
      object = ::new (memory) T(std::forward<Args>(args)...);
    } else {
      object = std::uninitialized_construct_using_allocator(static_cast<T*>(memory), construction_allocator(manager),
                                                            std::forward<Args>(args)...);
    }
  } catch (...) {
    manager.deallocate(memory);
    throw;
  }
  try {
    const names_lock::writing span(heap.control().names, name);
    manager.construct<named_entry>(key.c_str())(type_id(typeid(T)), sizeof(T), memory);
  } catch (const boost::interprocess::bad_alloc&) {
    std::destroy_at(object);
    manager.deallocate(memory);
    throw_out_of_memory(manager, sizeof(named_entry) + key.size());
  } catch (...) {
    std::destroy_at(object);
    manager.deallocate(memory);
    throw;
  }
  return *object;
}

/// Destroys and frees the object named `name`; false if there is none. mp::Error if it has another type.
template <class T>
bool destroy(segment& heap, std::string_view name) {
  const std::string key = checked_name(name, "destroy");
  segment_manager& manager = heap.manager();
  std::lock_guard guard(heap.control().names);
  const named_entry* entry = manager.find<named_entry>(key.c_str()).first;
  if (entry == nullptr) return false;
  T* object = object_of<T>(*entry, "destroy", name);
  {
    const names_lock::writing span(heap.control().names, name);
    manager.destroy<named_entry>(key.c_str());
  }
  // The name is gone first: a process killed from here on leaves an unreachable block, never a dangling name.
  std::destroy_at(object);
  manager.deallocate(object);
  return true;
}

}  // namespace mp::detail::heap

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/heap/directory.ipp>
#endif
