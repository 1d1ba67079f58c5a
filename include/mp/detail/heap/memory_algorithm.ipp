// heap/memory_algorithm: definitions (see memory_algorithm.hpp).
#pragma once

#include <string>

#include <mp/detail/heap/memory_algorithm.hpp>
#include <mp/errors.hpp>

namespace mp::detail::heap {

// The base places its first block sizeof(base) + extra_hdr_bytes after its start: our members take the first
// sizeof(memory_algorithm) - sizeof(base) of those bytes, the segment manager's own header the rest.
MP_DECL memory_algorithm::memory_algorithm(size_type size, size_type extra_hdr_bytes)
    : base(size, extra_hdr_bytes + (sizeof(memory_algorithm) - sizeof(base))) {
  if (size < small_blocks::smallest_heap) return;  // too small for slabs to pay: every block from the base
  void* const bitmap = base::allocate(small_blocks::bitmap_bytes(this, size));
  if (bitmap != nullptr) small_.init(bitmap, this, size);
}

MP_DECL memory_algorithm::size_type memory_algorithm::get_min_size(size_type extra_hdr_bytes) {
  return base::get_min_size(extra_hdr_bytes + (sizeof(memory_algorithm) - sizeof(base)));
}

MP_DECL bool memory_algorithm::release_spares() noexcept {
  end_writing();
  bool released = false;
  while (void* const spare = small_.take_spare()) {
    small_.journal().commit();
    begin_writing(op::free);
    base::deallocate(spare);
    end_writing();
    released = true;
  }
  begin_writing(op::allocate);
  return released;
}

MP_DECL void* memory_algorithm::refill(size_type nbytes) noexcept {
  begin_writing(op::allocate);
  size_type free_before = base::get_free_memory();
  void* memory = base::allocate_aligned(small_blocks::slab_usable, small_blocks::slab_bytes);
  if (memory == nullptr && release_spares()) {
    free_before = base::get_free_memory();
    memory = base::allocate_aligned(small_blocks::slab_usable, small_blocks::slab_bytes);
  }
  end_writing();
  if (memory != nullptr) {
    // A death from here to take_from_new's first journaled write leaks the new slab (4 KiB), nothing more.
    const size_type cost = free_before - base::get_free_memory();
    if (void* const block = small_.take_from_new(memory, nbytes, cost)) return block;
    begin_writing(op::free);
    base::deallocate(memory);
    end_writing();
  }
  begin_writing(op::allocate);
  void* const block = base::allocate(nbytes);
  end_writing();
  return block;
}

MP_DECL void memory_algorithm::settle_dead_holder() noexcept {
  if (writing_ == op::read) {
    // It died outside the base's calls: before writing, after finishing, or halfway through a slab's journaled
    // writes, which are undone here (the block it was taking or freeing stays as it was before).
    if (small_.journal().pending()) small_.journal().undo();
    return;
  }
  broken_op_ = writing_;
  broken_by_ = holder_;
  broken_.store(1, std::memory_order_release);
}

MP_DECL void memory_algorithm::throw_broken() const {
  throw Error("SharedHeap: a process was killed inside the heap's allocator (thread " + std::to_string(broken_by_) +
              ", while " + (broken_op_ == op::free ? "freeing" : "allocating") +
              " memory), which may have left the allocator's free-block tree half-updated; this heap can no longer "
              "allocate or free. The objects already in it keep their contents: copy what you need into a new "
              "SharedHeap");
}

}  // namespace mp::detail::heap
