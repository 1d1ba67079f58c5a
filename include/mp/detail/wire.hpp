// wire: the Connection's frames — length-prefixed messages over a stream descriptor (a socketpair end or a pipe).
// A frame is an 8-byte native-endian length followed by that many payload bytes. On a socket, a frame may instead
// be a *blob frame*: the length word alone with blob_frame_flag set, carrying (SCM_RIGHTS, on the same sendmsg) the
// descriptor of a memfd segment that holds the payload (detail/segment_pool.hpp). A unix stream socket never merges a
// segment that carries descriptors with its neighbours in one read, and an 8-byte sendmsg is one segment, so the
// header and its descriptor arrive together or not at all. Both ends are the same binary on
// the same host (see docs/pipes-and-queues.md), so no byte-order conversion is done. (Not to be confused with the
// frames of detail/handle_transfer.hpp, send_fd_frame/receive_fd_frame: a unix socket only, a 16-byte header and
// any number of descriptors, used to start fresh children.)
// These functions do whole-frame I/O on one descriptor and nothing else: they are not atomic with respect to other
// writers or readers of the same descriptor (a frame larger than PIPE_BUF is written by several syscalls), so
// callers that share a descriptor between processes serialize whole frames with a lock (connection.hpp does).
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <mp/detail/clock.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail {

/// The length word in front of every frame.
using frame_length = std::uint64_t;
inline constexpr std::size_t frame_header_size = sizeof(frame_length);

/// Set in a length word: the payload is in the memfd segment whose descriptor rides on the header (sockets only).
/// A stream frame never has it (recv_frame_payload refuses lengths above PTRDIFF_MAX).
inline constexpr frame_length blob_frame_flag = frame_length{1} << 63;

/// What kind of descriptor a frame goes through: sockets take MSG_NOSIGNAL, pipes need SIGPIPE held off by hand.
enum class fd_kind { socket, pipe };

/// The message of the mp::Error write_all throws when the reading end is gone.
MP_DECL std::string peer_closed_message(int fd);

/// Writes every byte described by `iov` (modified in place), across partial writes and EINTR.
/// Throws mp::Error with peer_closed_message() on EPIPE, "writev(fd N): strerror" on other failures.
MP_DECL void write_all(int fd, fd_kind kind, std::span<iovec> iov);

/// Reads until `size` bytes arrived or the writer closed; returns how many arrived (< size only at end of stream).
MP_DECL std::size_t read_full(int fd, void* data, std::size_t size);

/// Sends one frame whose payload is the concatenation of `parts` (one writev: the header travels with the data).
MP_DECL void send_frame(int fd, fd_kind kind, std::initializer_list<std::span<const std::byte>> parts);

/// Sends `buffer` as one frame; its first frame_header_size bytes are reserved for the length and are filled here
/// (so serialize_into can append after a placeholder and the frame leaves in a single write).
MP_DECL void send_prefixed_frame(int fd, fd_kind kind, std::span<std::byte> buffer);

/// Sends a blob frame: `size` (the payload's length, below blob_frame_flag) with `descriptor` attached.
/// Throws mp::Error with peer_closed_message() on EPIPE.
MP_DECL void send_blob_frame(int socket, frame_length size, int descriptor);

/// A frame header as received: the payload's length, and for a blob frame the descriptor that came with it.
struct frame_header {
  frame_length length = 0;  // without blob_frame_flag
  bool blob = false;
  unique_fd descriptor;       // a blob frame's memfd (owned); empty for a stream frame
  const char* malformed = nullptr;  // set if the descriptors that came do not match the header (all closed)
};

/// Reads the next frame's header: nullopt at a clean end of stream (the writer closed between frames); throws
/// mp::EOFError if the stream ends inside the length word. On a socket it reads with recvmsg, so that a blob
/// frame's descriptor is received (close-on-exec), never dropped; a header whose descriptors do not match its flag
/// comes back with `malformed` set (the caller decides: the peer is hostile or the stream out of step).
MP_DECL std::optional<frame_header> recv_frame_header(int fd, fd_kind kind);

/// Reads a frame payload of `length` bytes into `out` (resized to it). The buffer grows as bytes arrive rather
/// than all at once, so a bogus length on a corrupt stream ends in EOFError, not in a giant allocation.
/// Throws mp::Error if length > max_size, mp::EOFError if the stream ends before the payload is complete.
MP_DECL void recv_frame_payload(int fd, frame_length length, std::vector<std::byte>& out,
                                frame_length max_size = std::numeric_limits<frame_length>::max());

/// Waits until `fd` is readable or at end of stream (or has an error), or the deadline passes; false on timeout.
MP_DECL bool wait_readable(int fd, const deadline& until);

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/wire.ipp>
#endif
