// large: how a big manager request or reply crosses a Unix socket — as a memfd segment whose descriptor rides
// beside a small frame (SCM_RIGHTS), instead of streaming through the socket buffer in pieces.
//
// Why: a value of megabytes streamed through a Unix socket costs a wake-up of the peer per socket buffer's worth
// (~200 KiB) plus two kernel copies, and it is bound by the frame's 1 MiB channel slot anyway. A segment is written
// once by the sender and read once by the receiver, whatever its size, with one hand-off.
// Why pwrite/pread rather than mapping: the peer holds a descriptor of the same file. A reader that mapped it would
// take SIGBUS if the (untrusted) writer shrank it; a writer that mapped it would if the reader did. The file
// calls never fault, and copy at memory speed into and out of the page cache — so the segment need not be sealed,
// and a connection can keep one segment for all its large frames: its pages stay allocated (warm) between values.
// On this project's VM a fresh page costs ~12.5 us to fault in (330 MB/s), against ~15 GB/s for a warm copy.
// Why one segment per connection and direction: a connection carries one call at a time, so a request segment is
// free again once its reply arrived, and a reply segment once the next request arrives.
// Memory bounds: a kept segment or buffer is at most protocol::kept_bytes; a larger value gets its own, let go
// after use. A received descriptor is checked (a memfd holding at least the announced bytes) before it is read.
// TCP connections carry no descriptors: big values stream through the socket there.
#pragma once

#include <cstddef>
#include <memory>
#include <string_view>

#include <mp/detail/config.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail::manager {

/// The memfd one side of a connection writes its large frames into, kept between them.
class large_segment {
 public:
  /// Writes `bytes` from offset 0 (a new file, or a grown one, if needed); false (errno set) if that fails.
  MP_DECL bool write(std::string_view bytes) noexcept;
  int fd() const noexcept { return fd_.get(); }
  /// After the descriptor is sent: lets a file larger than protocol::kept_bytes go (the peer's copy of the
  /// descriptor keeps it alive until it has read it).
  MP_DECL void trim() noexcept;

 private:
  unique_fd fd_;
  std::size_t size_ = 0;
};

/// Where a received large frame is read to, kept between frames (up to protocol::kept_bytes).
class large_buffer {
 public:
  /// Reads the first `size` bytes of the received descriptor `fd`; an empty view if `fd` is not a memfd holding
  /// that many bytes (a hostile or confused peer) or reading fails. Valid until the next read or trim.
  MP_DECL std::string_view read(int fd, std::size_t size);
  /// Lets a buffer larger than protocol::kept_bytes go.
  MP_DECL void trim() noexcept;

 private:
  std::unique_ptr<char[]> data_;
  std::size_t capacity_ = 0;
};

/// One sendmsg(2) of `bytes` with `fd` attached (SCM_RIGHTS); what sendmsg returned (-1 with errno set).
/// `flags`: MSG_DONTWAIT on the server's non-blocking sockets.
MP_DECL long send_some_with_fd(int socket, const void* bytes, std::size_t size, int fd, int flags) noexcept;

}  // namespace mp::detail::manager

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/manager/large.ipp>
#endif
