// wire: definitions (see wire.hpp).
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <iterator>

#include <mp/detail/wire.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

// Writing to a pipe whose reader is gone raises SIGPIPE, whose default action kills the process. Sockets avoid it
// per call (MSG_NOSIGNAL); pipes have no such flag, so SIGPIPE is blocked in this thread around the write and a
// SIGPIPE that the write itself raised is consumed before unblocking (one that was already pending is left alone).
// Its calls bypass the syscall seam: with valid arguments sigpending and pthread_sigmask cannot fail, and
// sigtimedwait's "failure" (EAGAIN: nothing pending) is an answer, not an error; none may be made to fail, or a
// SIGPIPE could be left pending and unblocked, which kills the process.
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
    retry_on_eintr([&] { return ::sigtimedwait(&pipe_only_, nullptr, &zero); });
  }
  ~sigpipe_guard() { ::pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr); }

 private:
  sigset_t pipe_only_;
  sigset_t old_mask_;
  bool was_pending_ = false;
};

MP_DECL std::string peer_closed_message(int fd) {
  return "write(fd " + std::to_string(fd) +
         "): Broken pipe: the receiving end of this connection is closed, so nothing more can be sent on it";
}

MP_DECL void write_all(int fd, fd_kind kind, std::span<iovec> iov) {
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
      n = sys_try("sendmsg", [&] { return ::sendmsg(fd, &msg, MSG_NOSIGNAL); });
    } else {
      n = sys_try("writev", [&] { return ::writev(fd, &iov[first], count); });
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

MP_DECL std::size_t read_full(int fd, void* data, std::size_t size) {
  auto* out = static_cast<char*>(data);
  std::size_t got = 0;
  while (got < size) {
    // A single read(2) is capped at 0x7ffff000 bytes by Linux; ask for at most 1 GiB at a time.
    const std::size_t want = std::min<std::size_t>(size - got, std::size_t{1} << 30);
    const ssize_t n = sys_try("read", [&] { return ::read(fd, out + got, want); });
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

MP_DECL void send_frame(int fd, fd_kind kind, std::initializer_list<std::span<const std::byte>> parts) {
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

MP_DECL void send_prefixed_frame(int fd, fd_kind kind, std::span<std::byte> buffer) {
  const frame_length length = buffer.size() - frame_header_size;
  std::memcpy(buffer.data(), &length, sizeof length);
  iovec iov{buffer.data(), buffer.size()};
  write_all(fd, kind, std::span<iovec>(&iov, 1));
}

MP_DECL void send_blob_frame(int socket, frame_length size, int descriptor) {
  frame_length word = size | blob_frame_flag;
  iovec part{&word, sizeof word};
  alignas(cmsghdr) std::byte control[CMSG_SPACE(sizeof(int))] = {};
  msghdr message{};
  message.msg_iov = &part;
  message.msg_iovlen = 1;
  message.msg_control = control;
  message.msg_controllen = sizeof control;
  cmsghdr* cmsg = CMSG_FIRSTHDR(&message);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(cmsg), &descriptor, sizeof descriptor);
  const ssize_t n = sys_try("sendmsg", [&] { return ::sendmsg(socket, &message, MSG_NOSIGNAL); });
  if (n == -1) {
    const int err = last_errno();
    if (err == EPIPE || err == ECONNRESET) throw Error(peer_closed_message(socket));
    throw_errno("sendmsg", "fd " + std::to_string(socket) + ", a blob frame", err);
  }
  // The descriptor went with the first byte; the rest of an 8-byte header (never split on a unix socket) follows.
  if (static_cast<std::size_t>(n) < sizeof word) {
    iovec rest{reinterpret_cast<std::byte*>(&word) + n, sizeof word - static_cast<std::size_t>(n)};
    write_all(socket, fd_kind::socket, std::span<iovec>(&rest, 1));
  }
}

// recvmsg for a socket's header bytes: keeps every descriptor that came (so none leaks), at most a few.
MP_DECL std::size_t recv_header_bytes(int socket, std::byte* data, std::size_t size, std::vector<unique_fd>& fds,
                                      bool& truncated) {
  constexpr std::size_t max_fds = 4;  // one is legitimate; room for a few more tells a hostile peer apart
  alignas(cmsghdr) std::byte control[CMSG_SPACE(sizeof(int) * max_fds)];
  iovec part{data, size};
  msghdr message{};
  message.msg_iov = &part;
  message.msg_iovlen = 1;
  message.msg_control = control;
  message.msg_controllen = sizeof control;
  const ssize_t n = sys_try("recvmsg", [&] { return ::recvmsg(socket, &message, MSG_CMSG_CLOEXEC); });
  if (n == -1) {
    const int err = last_errno();
    if (err == ECONNRESET) return 0;  // a socket peer that closed with data unread: the stream has ended
    throw_errno("recvmsg", "fd " + std::to_string(socket), err);
  }
  if (message.msg_controllen != 0) {
    for (cmsghdr* cmsg = CMSG_FIRSTHDR(&message); cmsg != nullptr; cmsg = CMSG_NXTHDR(&message, cmsg)) {
      if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
      const std::size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof fd);
        fds.emplace_back(fd);
      }
    }
  }
  if ((message.msg_flags & MSG_CTRUNC) != 0) truncated = true;
  return static_cast<std::size_t>(n);
}

MP_DECL std::optional<frame_header> recv_frame_header(int fd, fd_kind kind) {
  frame_header header;
  frame_length word = 0;
  std::size_t got = 0;
  std::vector<unique_fd> fds;
  bool truncated = false;
  if (kind == fd_kind::socket) {
    auto* bytes = reinterpret_cast<std::byte*>(&word);
    while (got < sizeof word) {
      const std::size_t n = recv_header_bytes(fd, bytes + got, sizeof word - got, fds, truncated);
      if (n == 0) break;
      got += n;
    }
  } else {
    got = read_full(fd, &word, sizeof word);
  }
  if (got == 0 && fds.empty()) return std::nullopt;
  if (got < sizeof word)
    throw EOFError("the connection ended inside a message header (" + std::to_string(got) + " of " +
                   std::to_string(sizeof word) + " bytes): the sender closed or died mid-send");
  header.blob = (word & blob_frame_flag) != 0;
  header.length = word & ~blob_frame_flag;
  if (header.blob && kind != fd_kind::socket) {
    header.malformed = "a blob frame on a pipe, which cannot carry descriptors";
  } else if (truncated || fds.size() > 1) {
    header.malformed = "more descriptors than a frame carries";
  } else if (header.blob && fds.empty()) {
    header.malformed = "a blob frame without its descriptor";
  } else if (!header.blob && !fds.empty()) {
    header.malformed = "a descriptor attached to a plain frame";
  } else if (header.blob) {
    header.descriptor = std::move(fds.front());
  }
  return header;
}

MP_DECL void recv_frame_payload(int fd, frame_length length, std::vector<std::byte>& out, frame_length max_size) {
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

MP_DECL bool wait_readable(int fd, const deadline& until) {
  pollfd p{fd, POLLIN, 0};
  // The time left is recomputed on every try, so a signal does not stretch the wait.
  const int n = sys_try("ppoll", [&] {
    timespec ts{};
    if (until) ts = time_left(*until);
    return ::ppoll(&p, 1, until ? &ts : nullptr, nullptr);
  });
  if (n == -1) throw_errno("ppoll", "fd " + std::to_string(fd));
  if (n == 0) return false;
  if (p.revents & POLLNVAL) throw Error("poll(fd " + std::to_string(fd) + "): the descriptor is not open");
  return true;
}

}  // namespace mp::detail
