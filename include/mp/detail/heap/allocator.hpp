// heap/allocator: the allocator of every container in a SharedHeap (mp::shm::allocator wraps it in a scoped
// adaptor, so nested containers get it too). Its pointers are offset_pointers (heap/offset_pointer.hpp: offsets
// from where each pointer is stored) and it refers to the heap by an offset_ptr to the segment manager: a container
// in the heap works at whatever address each process maps the heap.
// Running out of space is an mp::Error that says how much was asked and how much is free, never a crash; a heap
// whose allocator a dead process left half-updated throws its own mp::Error (heap/memory_algorithm.hpp).
#pragma once

#include <cstddef>
#include <limits>

#include <boost/interprocess/offset_ptr.hpp>

#include <mp/detail/config.hpp>
#include <mp/detail/heap/memory_algorithm.hpp>
#include <mp/detail/heap/offset_pointer.hpp>
#include <mp/detail/heap/segment.hpp>

namespace mp::detail::heap {

/// Throws mp::Error: the heap has no free block of `bytes` bytes.
[[noreturn]] MP_DECL void throw_out_of_memory(const segment_manager& manager, std::size_t bytes);
/// Throws mp::Error: n objects of `size` bytes exceed what any heap can hold.
[[noreturn]] MP_DECL void throw_too_many(std::size_t n, std::size_t size);

/// `bytes` bytes aligned to `alignment`; mp::Error when the heap has no room.
inline void* allocate_bytes(segment_manager& manager, std::size_t bytes, std::size_t alignment) {
  void* memory = alignment <= memory_algorithm::Alignment ? manager.allocate(bytes, std::nothrow)
                                                          : manager.allocate_aligned(bytes, alignment, std::nothrow);
  if (memory == nullptr) throw_out_of_memory(manager, bytes);
  return memory;
}

template <class T>
class allocator {
 public:
  using value_type = T;
  using pointer = offset_pointer<T>;
  using const_pointer = offset_pointer<const T>;
  using void_pointer = offset_pointer<void>;
  using const_void_pointer = offset_pointer<const void>;
  using size_type = std::size_t;
  using difference_type = std::ptrdiff_t;
  // Copies, moves and swaps of containers keep each container's own allocator (the std defaults): a container
  // assigned from one in another heap copies the elements into its own heap.

  explicit allocator(segment_manager& manager) noexcept : manager_(&manager) {}
  template <class U>
  allocator(const allocator<U>& other) noexcept : manager_(other.manager_) {}

  pointer allocate(size_type n) {
    if (n > max_size()) throw_too_many(n, sizeof(T));
    return pointer(static_cast<T*>(allocate_bytes(*manager_, n * sizeof(T), alignof(T))));
  }
  void deallocate(pointer p, size_type) noexcept { manager_->deallocate(p.get()); }
  size_type max_size() const noexcept { return std::numeric_limits<size_type>::max() / sizeof(T); }

  template <class U>
  bool operator==(const allocator<U>& other) const noexcept {
    return manager_ == other.manager_;
  }

 private:
  template <class U>
  friend class allocator;
  boost::interprocess::offset_ptr<segment_manager> manager_;
};

}  // namespace mp::detail::heap

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/heap/allocator.ipp>
#endif
