// heap/segment: definitions (see segment.hpp).
#pragma once

#include <algorithm>
#include <new>
#include <string>
#include <utility>

#include <boost/version.hpp>

#include <mp/detail/heap/segment.hpp>
#include <mp/errors.hpp>

namespace mp::detail::heap {

MP_DECL std::uint64_t segment::layout_stamp() noexcept {
  // What a heap's bytes mean to this build: the Boost version, the sizes of the structures at fixed places, and
  // mp's own layout version (2: slabs; 3: containers hold heap::offset_pointer, not offset_ptr).
  return (std::uint64_t{BOOST_VERSION} << 40) ^ (std::uint64_t{sizeof(segment_manager)} << 20) ^
         (std::uint64_t{sizeof(control_block)} << 4) ^ std::uint64_t{3};
}

MP_DECL segment segment::create(std::size_t bytes) {
  const std::size_t smallest = segment_manager::get_min_size();
  if (bytes < smallest) {
    throw Error("SharedHeap: " + std::to_string(bytes) + " bytes is too small for a heap; give at least " +
                std::to_string(smallest) + " bytes (the heap's own bookkeeping), plus what you will store");
  }
  if (bytes > largest) {
    throw Error("SharedHeap: " + std::to_string(bytes) + " bytes is more than the " +
                std::to_string(largest) + " a heap may have");
  }
  // The memfd's pages are allocated when first touched: a large heap costs only what is used.
  shm_segment memory = shm_segment::create(buffer_offset + bytes, "mp-shared-heap");
  ::new (memory.data()) control_block{magic, layout_stamp(), bytes, {}};
  managed_buffer buffer(boost::interprocess::create_only, static_cast<char*>(memory.data()) + buffer_offset, bytes);
  return segment(std::move(memory), std::move(buffer));
}

MP_DECL segment segment::open(unique_fd fd, const char* what) {
  shm_segment memory = shm_segment::from_fd(std::move(fd), what);
  const auto refuse = [&](const std::string& why) {
    throw SerializationError(std::string("mp::deserialize: the ") + what + " that arrived " + why);
  };
  if (memory.size() < buffer_offset) refuse("is too small to be a heap (" + std::to_string(memory.size()) + " bytes)");
  const control_block& control = *static_cast<const control_block*>(memory.data());
  if (control.magic != magic) refuse("is not a SharedHeap");
  if (control.layout != layout_stamp()) {
    refuse("was made by a build of mp with another layout (another Boost version?); both processes must run the "
           "same program");
  }
  if (control.buffer_size != memory.size() - buffer_offset) {
    refuse("claims " + std::to_string(control.buffer_size) + " bytes but maps " +
           std::to_string(memory.size() - buffer_offset));
  }
  managed_buffer buffer(boost::interprocess::open_only, static_cast<char*>(memory.data()) + buffer_offset,
                        control.buffer_size);
  return segment(std::move(memory), std::move(buffer));
}

}  // namespace mp::detail::heap
