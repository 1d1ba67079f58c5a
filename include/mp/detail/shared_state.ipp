// shared_state: definitions (see shared_state.hpp) — the arena.
#pragma once

#include <pthread.h>

#include <mutex>

#include <mp/detail/shared_state.hpp>

namespace mp::detail {

MP_DECL shared_arena& shared_arena::instance() {
  static shared_arena* arena = new shared_arena();
  return *arena;
}

MP_DECL std::pair<std::shared_ptr<shm_segment>, void*> shared_arena::allocate(std::size_t size, std::size_t align,
                                                                               const char* label) {
  if (align < 64) align = 64;  // a cache line per object: no false sharing between unrelated locks
  if (size > largest_piece || align > largest_piece) {
    auto block = std::make_shared<shm_segment>(shm_segment::create(size, std::string("mp-") + label));
    return {block, block->data()};
  }
  std::lock_guard guard(mutex_);
  std::shared_ptr<shm_segment> chunk = chunk_.lock();
  std::size_t offset = (used_ + align - 1) / align * align;
  if (!chunk || offset + size > chunk_size) {
    chunk = std::make_shared<shm_segment>(shm_segment::create(chunk_size, "mp-shared-objects"));
    chunk_ = chunk;
    offset = 0;
  }
  used_ = offset + size;
  return {chunk, static_cast<std::byte*>(chunk->data()) + offset};
}

MP_DECL shared_arena::shared_arena() {
  // fork(): hold the mutex across it (no other thread can be inside allocate), and make the child start chunks
  // of its own. posix_spawn (spawn, forkserver) execs at once and needs nothing.
  ::pthread_atfork([] { instance().mutex_.lock(); }, [] { instance().mutex_.unlock(); },
                   [] {
                     shared_arena& self = instance();
                     self.chunk_.reset();
                     self.used_ = 0;
                     self.mutex_.unlock();
                   });
}

}  // namespace mp::detail
