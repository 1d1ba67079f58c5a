// heap/allocator: definitions (see allocator.hpp).
#pragma once

#include <string>

#include <mp/detail/heap/allocator.hpp>
#include <mp/errors.hpp>

namespace mp::detail::heap {

MP_DECL void throw_out_of_memory(const segment_manager& manager, std::size_t bytes) {
  throw Error("SharedHeap: out of memory: no free block of " + std::to_string(bytes) + " bytes (" +
              std::to_string(manager.get_free_memory()) + " of the heap's " + std::to_string(manager.get_size()) +
              " bytes are free, in smaller pieces or not at all); create the SharedHeap larger, or free objects");
}

MP_DECL void throw_too_many(std::size_t n, std::size_t size) {
  throw Error("SharedHeap: cannot allocate " + std::to_string(n) + " objects of " + std::to_string(size) +
              " bytes: the size overflows");
}

}  // namespace mp::detail::heap
