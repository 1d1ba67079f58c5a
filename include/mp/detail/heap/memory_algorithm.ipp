// heap/memory_algorithm: definitions (see memory_algorithm.hpp).
#pragma once

#include <string>

#include <mp/detail/heap/memory_algorithm.hpp>
#include <mp/errors.hpp>

namespace mp::detail::heap {

// The base places its first block sizeof(base) + extra_hdr_bytes after its start: our members take the first
// sizeof(memory_algorithm) - sizeof(base) of those bytes, the segment manager's own header the rest.
MP_DECL memory_algorithm::memory_algorithm(size_type size, size_type extra_hdr_bytes)
    : base(size, extra_hdr_bytes + (sizeof(memory_algorithm) - sizeof(base))) {}

MP_DECL memory_algorithm::size_type memory_algorithm::get_min_size(size_type extra_hdr_bytes) {
  return base::get_min_size(extra_hdr_bytes + (sizeof(memory_algorithm) - sizeof(base)));
}

MP_DECL void memory_algorithm::settle_dead_holder() noexcept {
  if (writing_ == op::read) return;  // it died before Boost wrote anything, or after it finished: nothing is torn
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
