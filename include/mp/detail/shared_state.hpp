// shared_state: the storage behind every copyable mp handle to shared state (Lock, Value, Array, Barrier, …).
//
// Where: small objects are carved from 64 KiB *chunks* (shared_arena), bigger ones get a block of their own. A chunk
// or block is an anonymous memfd mapping (detail/shm_segment.hpp):
//  - no /dev/shm name, so nothing can leak there, whatever kills whichever process when;
//  - lifetime is the kernel's: memory lives while any process maps it;
//  - one descriptor per chunk, not per object (a thousand Locks cost one fd), kept so that a handle can cross to a
//    process started by spawn or forkserver (the fd travels by SCM_RIGHTS, detail/handle_transfer.hpp).
// Why pieces are never reused: a piece freed in this process may still be in use in a child (fork copied the
// handle without telling anyone), so reusing it could make two unrelated objects share memory. Instead the arena
// keeps only a weak reference to the chunk it is filling: a chunk is unmapped (and its fd closed) once no handle in
// this process points into it, and fresh zeroed memory is taken for every object.
// Why a forked child never allocates from the chunk it inherited: the parent keeps filling it, and the two
// processes' bump pointers would hand out the same bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <type_traits>
#include <utility>

#include <mp/detail/archive.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/shm_segment.hpp>

namespace mp::detail {

/// A reference to a State inside a shared block; copies keep the block mapped in this process.
template <class State>
class shared_ref {
 public:
  shared_ref() noexcept = default;
  shared_ref(std::shared_ptr<shm_segment> block, State* state) noexcept : block_(std::move(block)), state_(state) {}

  State* operator->() const noexcept { return state_; }
  State& operator*() const noexcept { return *state_; }
  State* get() const noexcept { return state_; }
  explicit operator bool() const noexcept { return state_ != nullptr; }
  /// Bytes of the block from the state to the block's end.
  std::size_t available() const noexcept {
    return block_->size() - static_cast<std::size_t>(reinterpret_cast<const std::byte*>(state_) -
                                                      static_cast<const std::byte*>(block_->data()));
  }

  /// A reference to another part of the same block (a Value's lock).
  template <class Part>
  shared_ref<Part> part(Part* inside) const noexcept {
    return shared_ref<Part>(block_, inside);
  }

  /// For a spawned child: the block's descriptor (by index) and where in it the state is.
  void save(output_archive& ar, const char* what) const {
    if (!block_) export_fd(-1, what);  // throws: the handle is closed
    const std::uint32_t index = export_fd(ar, block_->fd(), what, block_->identity());
    const std::uint64_t offset =
        static_cast<std::uint64_t>(reinterpret_cast<const std::byte*>(state_) - static_cast<const std::byte*>(block_->data()));
    ar(index, offset);
  }
  /// In a spawned child: maps the block that arrived and points at the same state.
  void load(input_archive& ar, const char* what) {
    std::uint32_t index = 0;
    std::uint64_t offset = 0;
    ar(index, offset);
    // A Pool worker maps a block once, however many tasks carry handles into it.
    auto block = import_shared<shm_segment>(index, what, [what](unique_fd fd) {
      return std::make_shared<shm_segment>(shm_segment::from_fd(std::move(fd), what));
    });
    if (offset > block->size() || block->size() - offset < sizeof(State) || offset % alignof(State) != 0) {
      throw SerializationError(std::string("mp::deserialize: a ") + what + " at offset " + std::to_string(offset) +
                               " does not fit the " + std::to_string(block->size()) + "-byte block that arrived");
    }
    state_ = reinterpret_cast<State*>(static_cast<std::byte*>(block->data()) + offset);
    block_ = std::move(block);
  }

 private:
  template <class Other>
  friend class shared_ref;
  std::shared_ptr<shm_segment> block_;
  State* state_ = nullptr;
};

/// Hands out zeroed, cache-line-aligned pieces of shared memory (see the file comment). One per process.
class shared_arena {
 public:
  static constexpr std::size_t chunk_size = 64 * 1024;
  static constexpr std::size_t largest_piece = 16 * 1024;  // larger objects get a block of their own

  /// This process's arena (never destroyed: handles in static objects may outlive any destruction order).
  MP_DECL static shared_arena& instance();

  /// `size` zeroed bytes aligned to max(align, 64), and the block that holds them.
  MP_DECL std::pair<std::shared_ptr<shm_segment>, void*> allocate(std::size_t size, std::size_t align,
                                                                  const char* label);

 private:
  MP_DECL shared_arena();

  std::mutex mutex_;
  std::weak_ptr<shm_segment> chunk_;  // guarded by mutex_: the chunk being filled, alive while objects use it
  std::size_t used_ = 0;              // guarded by mutex_: bytes of chunk_ handed out
};

/// State constructed in place in fresh shared memory. State must be trivially destructible: it outlives any one
/// process's view of it, so nobody runs a destructor.
template <class State, class... Args>
shared_ref<State> make_shared_state(const char* label, Args&&... args) {
  static_assert(std::is_trivially_destructible_v<State>, "shared state is never destroyed: keep it trivial");
  auto [block, memory] = shared_arena::instance().allocate(sizeof(State), alignof(State), label);
  State* state = ::new (memory) State(std::forward<Args>(args)...);
  return shared_ref<State>(std::move(block), state);
}

/// `size` bytes of fresh shared memory for a variable-size object (an Array), aligned to `align`.
inline std::pair<std::shared_ptr<shm_segment>, void*> make_shared_bytes(std::size_t size, std::size_t align,
                                                                         const char* label) {
  return shared_arena::instance().allocate(size, align, label);
}

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/shared_state.ipp>
#endif
