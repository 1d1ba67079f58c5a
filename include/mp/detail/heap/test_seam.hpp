// heap/test_seam: where a test may stop a process inside a SharedHeap's bookkeeping, so that a SIGKILL lands at a
// known instant instead of a lucky one: holding the allocator's lock before Boost writes, inside the span where
// Boost may write the allocator's tree, halfway through the journaled writes that take a small block from a slab
// (heap/small_blocks.hpp), or inside the span where it writes the index of names.
// Process-local (a child installs its own hook); null, the default, costs one relaxed load per allocation.
#pragma once

#include <atomic>

namespace mp::detail::heap {

enum class seam_point { allocator_locked, allocator_writing, small_blocks_writing, names_writing };
using seam_hook = void (*)(seam_point);

inline std::atomic<seam_hook>& the_seam_hook() noexcept {
  static std::atomic<seam_hook> hook{nullptr};
  return hook;
}

}  // namespace mp::detail::heap
