// heap/segment: the memory of one SharedHeap — an anonymous memfd (detail/shm_segment.hpp: no name in /dev/shm, and
// the kernel frees it once no process maps it or holds its descriptor) laid out as a control block, then a
// Boost.Interprocess managed buffer: the segment manager (memory_algorithm first, then Boost's index of names),
// then the blocks.
// Addresses: inside the buffer everything is an offset_ptr or an offset from the segment manager, so each process
// may map the heap anywhere — children started by spawn or forkserver do; forked children inherit the address.
// The control block starts with a stamp of this build's layout: a descriptor that is not a heap, or a heap made
// by a build with another Boost, is refused with an error instead of being misread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include <boost/interprocess/indexes/iset_index.hpp>
#include <boost/interprocess/managed_external_buffer.hpp>

#include <mp/detail/config.hpp>
#include <mp/detail/heap/memory_algorithm.hpp>
#include <mp/detail/heap/names_lock.hpp>
#include <mp/detail/shm_segment.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail::heap {

using managed_buffer =
    boost::interprocess::basic_managed_external_buffer<char, memory_algorithm, boost::interprocess::iset_index>;
using segment_manager = managed_buffer::segment_manager;

/// The first bytes of a heap's memory.
struct control_block {
  std::array<char, 8> magic;  // "mp-heap"
  std::uint64_t layout;       // layout_stamp() of the build that made it
  std::uint64_t buffer_size;  // bytes of the managed buffer, which starts at segment::buffer_offset
  names_lock names;           // guards the named objects (heap/directory.hpp)
};

class segment {
 public:
  /// Where the managed buffer starts: after the control block, on a cache line of its own.
  static constexpr std::size_t buffer_offset = (sizeof(control_block) + 63) / 64 * 64;

  /// A new heap whose managed buffer has `bytes` bytes; mp::Error if that is too small to manage or too large.
  MP_DECL static segment create(std::size_t bytes);
  /// The heap behind a descriptor received from another process (a spawned child's argument). `what` names the
  /// handle for errors: SerializationError if the descriptor is not a heap made by this build.
  MP_DECL static segment open(unique_fd fd, const char* what);

  segment_manager& manager() const noexcept { return *buffer_.get_segment_manager(); }
  control_block& control() const noexcept { return *static_cast<control_block*>(memory_.data()); }
  /// The memfd: what crosses to a spawned child (detail/handle_transfer.hpp).
  int fd() const noexcept { return memory_.fd(); }
  /// The open file behind fd() (shm_segment::identity).
  fd_identity identity() const noexcept { return memory_.identity(); }

 private:
  segment(shm_segment memory, managed_buffer buffer) noexcept
      : memory_(std::move(memory)), buffer_(std::move(buffer)) {}
  MP_DECL static std::uint64_t layout_stamp() noexcept;
  static constexpr std::array<char, 8> magic{'m', 'p', '-', 'h', 'e', 'a', 'p', '\0'};
  static constexpr std::size_t largest = std::size_t{1} << 46;  // 64 TiB: far beyond RAM, well inside off_t

  shm_segment memory_;     // the mapping, unmapped (and the descriptor closed) with this object
  managed_buffer buffer_;  // process-local: where the segment manager is in this process's mapping
};

}  // namespace mp::detail::heap

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/heap/segment.ipp>
#endif
