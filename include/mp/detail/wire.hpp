// wire: length-prefixed frames over a stream file descriptor (a socketpair end or a pipe).
// A frame is an 8-byte native-endian length followed by that many payload bytes. Both ends are the same binary on
// the same host (see docs/pipes-and-queues.md), so no byte-order conversion is done.
// These functions do whole-frame I/O on one descriptor and nothing else: they are not atomic with respect to other
// writers or readers of the same descriptor (a frame larger than PIPE_BUF is written by several syscalls), so
// callers that share a descriptor between processes serialize whole frames with a lock (connection.hpp does).
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <mp/detail/futex.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

/// The length word in front of every frame.
using frame_length = std::uint64_t;
inline constexpr std::size_t frame_header_size = sizeof(frame_length);

/// What kind of descriptor a frame goes through: sockets take MSG_NOSIGNAL, pipes need SIGPIPE held off by hand.
enum class fd_kind { socket, pipe };

/// Thrown (as mp::Error) by write_all when the reading end is gone; callers catch nothing, the message says it.
inline std::string peer_closed_message(int fd) {
  return "write(fd " + std::to_string(fd) +
         "): Broken pipe: the receiving end of this connection is closed, so nothing more can be sent on it";
}

// Writing to a pipe whose reader is gone raises SIGPIPE, whose default action kills the process. Sockets avoid it
// per call (MSG_NOSIGNAL); pipes have no such flag, so SIGPIPE is blocked in this thread around the write and a
// SIGPIPE that the write itself raised is consumed before unblocking (one that was already pending is left alone).
class sigpipe_guard {
 public:
  sigpipe_guard() noexcept {
    sigemptyset(&pipe_only_);
    sigaddset(&pipe_only_, SIGPIPE);
    sigset_t pending;
    sigemptyset(&pending);
    ::sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    ::pthread_sigmask(SIG_BLOCK, &pipe_only_, &old_mask_);
  }
  sigpipe_guard(const sigpipe_guard&) = delete;
  sigpipe_guard& operator=(const sigpipe_guard&) = delete;
  /// Call after a write failed with EPIPE: swallows the SIGPIPE it raised.
  void consume() noexcept {
    if (was_pending_) return;
    timespec zero{0, 0};
    while (::sigtimedwait(&pipe_only_, nullptr, &zero) == -1 && last_errno() == EINTR) {
    }
  }
  ~sigpipe_guard() { ::pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr); }

 private:
  sigset_t pipe_only_;
  sigset_t old_mask_;
  bool was_pending_ = false;
};

/// Writes every byte described by `iov` (modified in place), across partial writes and EINTR.
/// Throws mp::Error with peer_closed_message() on EPIPE, "writev(fd N): strerror" on other failures.
inline void write_all(int fd, fd_kind kind, std::span<iovec> iov) {
  std::size_t first = 0;
  auto advance = [&](std::size_t written) {
    while (first < iov.size() && written >= iov[first].iov_len) {
      written -= iov[first].iov_len;
      ++first;
    }
    if (first < iov.size()) {
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + written;
      iov[first].iov_len -= written;
    }
  };
  advance(0);  // skips empty leading parts
  std::optional<sigpipe_guard> guard;
  if (kind == fd_kind::pipe) guard.emplace();
  while (first < iov.size()) {
    const int count = static_cast<int>(std::min<std::size_t>(iov.size() - first, IOV_MAX));
    ssize_t n;
    if (kind == fd_kind::socket) {
      msghdr msg{};
      msg.msg_iov = &iov[first];
      msg.msg_iovlen = static_cast<std::size_t>(count);
      n = retry_on_eintr([&] { return ::sendmsg(fd, &msg, MSG_NOSIGNAL); });
    } else {
      n = retry_on_eintr([&] { return ::writev(fd, &iov[first], count); });
    }
    if (n == -1) {
      const int err = last_errno();
      if (err == EPIPE || err == ECONNRESET) {
        if (guard) guard->consume();
        throw Error(peer_closed_message(fd));
      }
      throw_errno(kind == fd_kind::socket ? "sendmsg" : "writev", "fd " + std::to_string(fd), err);
    }
    advance(static_cast<std::size_t>(n));
  }
}

/// Reads until `size` bytes arrived or the writer closed; returns how many arrived (< size only at end of stream).
inline std::size_t read_full(int fd, void* data, std::size_t size) {
  auto* out = static_cast<char*>(data);
  std::size_t got = 0;
  while (got < size) {
    // A single read(2) is capped at 0x7ffff000 bytes by Linux; ask for at most 1 GiB at a time.
    const std::size_t want = std::min<std::size_t>(size - got, std::size_t{1} << 30);
    const ssize_t n = retry_on_eintr([&] { return ::read(fd, out + got, want); });
    if (n == 0) break;
    if (n == -1) {
      const int err = last_errno();
      if (err == ECONNRESET) break;  // a socket peer that closed with data unread: the stream has ended
      throw_errno("read", "fd " + std::to_string(fd), err);
    }
    got += static_cast<std::size_t>(n);
  }
  return got;
}

/// Sends one frame whose payload is the concatenation of `parts` (one writev: the header travels with the data).
inline void send_frame(int fd, fd_kind kind, std::initializer_list<std::span<const std::byte>> parts) {
  frame_length length = 0;
  for (auto part : parts) length += part.size();
  iovec iov[4];
  std::size_t n = 0;
  iov[n++] = iovec{&length, sizeof length};
  for (auto part : parts) {
    if (n == std::size(iov)) throw Error("send_frame: at most 3 payload parts");
    iov[n++] = iovec{const_cast<std::byte*>(part.data()), part.size()};
  }
  write_all(fd, kind, std::span<iovec>(iov, n));
}

/// Sends `buffer` as one frame; its first frame_header_size bytes are reserved for the length and are filled here
/// (so serialize_into can append after a placeholder and the frame leaves in a single write).
inline void send_prefixed_frame(int fd, fd_kind kind, std::span<std::byte> buffer) {
  const frame_length length = buffer.size() - frame_header_size;
  std::memcpy(buffer.data(), &length, sizeof length);
  iovec iov{buffer.data(), buffer.size()};
  write_all(fd, kind, std::span<iovec>(&iov, 1));
}

/// Reads the next frame's length: nullopt at a clean end of stream (the writer closed between frames); throws
/// mp::EOFError if the stream ends inside the length word.
inline std::optional<frame_length> recv_frame_header(int fd) {
  frame_length length = 0;
  const std::size_t got = read_full(fd, &length, sizeof length);
  if (got == 0) return std::nullopt;
  if (got < sizeof length)
    throw EOFError("the connection ended inside a message header (" + std::to_string(got) + " of " +
                   std::to_string(sizeof length) + " bytes): the sender closed or died mid-send");
  return length;
}

/// Reads a frame payload of `length` bytes into `out` (resized to it). The buffer grows as bytes arrive rather
/// than all at once, so a bogus length on a corrupt stream ends in EOFError, not in a giant allocation.
/// Throws mp::Error if length > max_size, mp::EOFError if the stream ends before the payload is complete.
inline void recv_frame_payload(int fd, frame_length length, std::vector<std::byte>& out,
                               frame_length max_size = std::numeric_limits<frame_length>::max()) {
  if (length > max_size || length > static_cast<frame_length>(std::numeric_limits<std::ptrdiff_t>::max()))
    throw Error("received a message of " + std::to_string(length) + " bytes, over the limit of " +
                std::to_string(max_size) + " bytes: the stream is corrupt or the peer misbehaves");
  const auto total = static_cast<std::size_t>(length);
  constexpr std::size_t first_step = std::size_t{64} << 20;  // 64 MiB up front; doubling beyond
  std::size_t got = 0;
  out.clear();
  while (got < total) {
    const std::size_t step = std::min(total - got, std::max(first_step, got));
    out.resize(got + step);
    const std::size_t n = read_full(fd, out.data() + got, step);
    got += n;
    if (n < step) {
      out.resize(got);
      throw EOFError("the connection ended inside a message (" + std::to_string(got) + " of " +
                     std::to_string(total) + " bytes received): the sender closed or died mid-send");
    }
  }
}

/// Waits until `fd` is readable or at end of stream (or has an error), or the deadline passes; false on timeout.
inline bool wait_readable(int fd, const deadline& until) {
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    timespec ts{};
    timespec* tsp = nullptr;
    if (until) {
      ts = time_left(*until);
      tsp = &ts;
    }
    const int n = ::ppoll(&p, 1, tsp, nullptr);
    if (n > 0) {
      if (p.revents & POLLNVAL) throw Error("poll(fd " + std::to_string(fd) + "): the descriptor is not open");
      return true;
    }
    if (n == 0) return false;
    if (last_errno() != EINTR) throw_errno("ppoll", "fd " + std::to_string(fd));
  }
}

}  // namespace mp::detail
