// shared_state: the storage behind every copyable mp handle to shared state (Lock, Value, Array, Barrier, …).
// Why one anonymous mapping per object, with its fd closed at once:
//  - memfd: no /dev/shm name, so nothing can leak there, whatever kills whichever process when;
//  - lifetime is the kernel's: the memory lives while any process maps it, so a parent dropping its handle while a
//    child still uses the object can never make the slot alias a newer object (the hazard of a process-local
//    free list in an arena);
//  - fd cost 0: objects reach children by fork (the mapping is inherited), so the descriptor is not needed.
// A handle is a std::shared_ptr whose control block (process-local) owns the mapping; copies in one process share
// it, and aliasing shared_ptrs point at parts of one block (a Value's lock and its value).
#pragma once

#include <cstddef>
#include <memory>
#include <new>
#include <string>
#include <type_traits>
#include <utility>

#include <mp/detail/shm_segment.hpp>

namespace mp::detail {

/// A fresh zero-filled shared block of `size` bytes (at least one page is mapped), owned by a shared_ptr.
inline std::shared_ptr<shm_segment> make_shared_block(std::size_t size, const char* label) {
  auto segment = std::make_shared<shm_segment>(shm_segment::create(size, std::string("mp-") + label));
  segment->close_fd();
  return segment;
}

/// State constructed in place in a fresh shared block; the pointer keeps the block mapped in this process.
/// State must be trivially destructible: it outlives any one process's view of it, so nobody runs a destructor.
template <class State, class... Args>
std::shared_ptr<State> make_shared_state(const char* label, Args&&... args) {
  static_assert(std::is_trivially_destructible_v<State>, "shared state is never destroyed: keep it trivial");
  auto block = make_shared_block(sizeof(State), label);
  State* state = ::new (block->data()) State(std::forward<Args>(args)...);
  return std::shared_ptr<State>(std::move(block), state);
}

}  // namespace mp::detail
