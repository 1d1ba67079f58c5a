// handle_transfer: how a handle to a shared object (a pipe end, a memfd segment, a socket) crosses to a process
// that does not share this one's memory (start methods spawn and forkserver): as bytes plus a list of descriptors.
//
// A handle type opts in with a save/load pair (mp::serialize's convention) that calls export_fd() in save() and
// import_fd() in load(); the bytes hold only the descriptor's index in the list. The list travels beside the bytes
// with SCM_RIGHTS (send_frame / receive_frame), so the child gets its own descriptors for the same open files —
// never a name to guess. Outside a transfer (a Queue item, a plain mp::serialize), export_fd throws: a handle
// cannot be turned into bytes that mean nothing.
#pragma once

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include <mp/detail/syscall.hpp>
#include <mp/detail/unique_fd.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

/// The descriptors a transfer sends (parent side). Borrowed: the handles being serialized own them.
struct fd_outbox {
  std::vector<int> fds;
};

/// The descriptors a transfer received (child side); owned until the handles have dup'ed theirs.
struct fd_inbox {
  std::vector<unique_fd> fds;
};

// thread_local: two threads may start spawned children at once, each serializing its own arguments.
inline fd_outbox*& current_fd_outbox() noexcept {
  thread_local fd_outbox* box = nullptr;
  return box;
}
inline fd_inbox*& current_fd_inbox() noexcept {
  thread_local fd_inbox* box = nullptr;
  return box;
}

/// Makes `box` the target of export_fd() for the lifetime of the scope.
class fd_outbox_scope {
 public:
  explicit fd_outbox_scope(fd_outbox& box) noexcept : previous_(current_fd_outbox()) { current_fd_outbox() = &box; }
  ~fd_outbox_scope() { current_fd_outbox() = previous_; }
  fd_outbox_scope(const fd_outbox_scope&) = delete;
  fd_outbox_scope& operator=(const fd_outbox_scope&) = delete;

 private:
  fd_outbox* previous_;
};

/// Makes `box` the source of import_fd() for the lifetime of the scope.
class fd_inbox_scope {
 public:
  explicit fd_inbox_scope(fd_inbox& box) noexcept : previous_(current_fd_inbox()) { current_fd_inbox() = &box; }
  ~fd_inbox_scope() { current_fd_inbox() = previous_; }
  fd_inbox_scope(const fd_inbox_scope&) = delete;
  fd_inbox_scope& operator=(const fd_inbox_scope&) = delete;

 private:
  fd_inbox* previous_;
};

/// In a handle's save(): the index under which `fd` travels. mp::serialize calls save() twice (a measuring pass,
/// then the writing one), so the same fd gets the same index. `what` names the handle type for the error.
inline std::uint32_t export_fd(int fd, const char* what) {
  fd_outbox* box = current_fd_outbox();
  if (box == nullptr) {
    throw SerializationError(std::string("mp::serialize: a ") + what +
                             " is a handle to a shared object and crosses only as an argument of a Process started "
                             "by spawn or forkserver (its descriptor travels beside the bytes); pass it as a "
                             "Process argument, or send the values it holds instead");
  }
  if (fd < 0) {
    throw SerializationError(std::string("mp::serialize: this ") + what +
                             " is closed (it has no descriptor), so it cannot be passed to another process");
  }
  auto found = std::find(box->fds.begin(), box->fds.end(), fd);
  if (found != box->fds.end()) return static_cast<std::uint32_t>(found - box->fds.begin());
  box->fds.push_back(fd);
  return static_cast<std::uint32_t>(box->fds.size() - 1);
}

/// In a handle's load(): the child's own descriptor (close-on-exec) for the fd sent under `index`.
inline unique_fd import_fd(std::uint32_t index, const char* what) {
  fd_inbox* box = current_fd_inbox();
  if (box == nullptr) {
    throw SerializationError(std::string("mp::deserialize: a ") + what +
                             " can be decoded only in a process started by spawn or forkserver, from its arguments");
  }
  if (index >= box->fds.size() || !box->fds[index]) {
    throw SerializationError(std::string("mp::deserialize: a ") + what + " refers to descriptor #" +
                             std::to_string(index) + " but only " + std::to_string(box->fds.size()) +
                             " arrived with it");
  }
  // A dup, not the original: several handles in the arguments may share one descriptor.
  return unique_fd(sys("fcntl(F_DUPFD_CLOEXEC)", what, [&] { return ::fcntl(box->fds[index].get(), F_DUPFD_CLOEXEC, 0); }));
}

// ---------------------------------------------------------------------------------------------------------------
// Frames over a unix stream socket: a header that carries the descriptors, then the bytes.

/// The kernel's SCM_MAX_FD: the most descriptors one sendmsg carries.
inline constexpr std::size_t max_fds_per_frame = 253;

struct frame_header {
  std::uint32_t magic = 0x6d706672;  // "mpfr": a stray writer is caught, not decoded
  std::uint32_t fd_count = 0;
  std::uint64_t size = 0;
};

/// Writes all of `bytes` (MSG_NOSIGNAL: a peer that died is an error, not SIGPIPE).
inline void send_all(int socket, std::span<const std::byte> bytes, const char* what) {
  while (!bytes.empty()) {
    ssize_t n = sys("send", what, [&] { return ::send(socket, bytes.data(), bytes.size(), MSG_NOSIGNAL); });
    bytes = bytes.subspan(static_cast<std::size_t>(n));
  }
}

/// Reads exactly bytes.size() bytes; false on end of file before the first byte, ProcessError on a short read.
inline bool receive_all(int socket, std::span<std::byte> bytes, const char* what) {
  std::size_t got = 0;
  while (got < bytes.size()) {
    ssize_t n = sys("recv", what, [&] { return ::recv(socket, bytes.data() + got, bytes.size() - got, 0); });
    if (n == 0) {
      if (got == 0) return false;
      throw ProcessError(std::string(what) + ": the peer closed the connection in the middle of a message");
    }
    got += static_cast<std::size_t>(n);
  }
  return true;
}

/// Sends bytes + descriptors as one frame.
inline void send_frame(int socket, std::span<const std::byte> bytes, std::span<const int> fds, const char* what) {
  if (fds.size() > max_fds_per_frame) {
    throw ProcessError(std::string(what) + ": " + std::to_string(fds.size()) +
                       " shared objects' descriptors to pass, more than the " + std::to_string(max_fds_per_frame) +
                       " one message can carry; pass fewer handles (group them in one Queue or Manager)");
  }
  frame_header header;
  header.fd_count = static_cast<std::uint32_t>(fds.size());
  header.size = bytes.size();
  iovec part{&header, sizeof header};
  msghdr message{};
  message.msg_iov = &part;
  message.msg_iovlen = 1;
  std::vector<std::byte> control;
  if (!fds.empty()) {
    control.resize(CMSG_SPACE(sizeof(int) * fds.size()));
    message.msg_control = control.data();
    message.msg_controllen = control.size();
    cmsghdr* cmsg = CMSG_FIRSTHDR(&message);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t n = sys("sendmsg", what, [&] { return ::sendmsg(socket, &message, MSG_NOSIGNAL); });
  // The descriptors went with the first byte; a partial header write (never seen on a unix socket) finishes plainly.
  if (static_cast<std::size_t>(n) < sizeof header) {
    send_all(socket, std::as_bytes(std::span(&header, 1)).subspan(static_cast<std::size_t>(n)), what);
  }
  send_all(socket, bytes, what);
}

struct frame {
  std::vector<std::byte> bytes;
  fd_inbox fds;
};

/// Receives one frame; ProcessError on end of file or a malformed header. `max_size` bounds the allocation.
inline frame receive_frame(int socket, const char* what, std::uint64_t max_size = std::uint64_t{1} << 36) {
  frame result;
  frame_header header;
  std::vector<std::byte> control(CMSG_SPACE(sizeof(int) * max_fds_per_frame));
  iovec part{&header, sizeof header};
  msghdr message{};
  message.msg_iov = &part;
  message.msg_iovlen = 1;
  message.msg_control = control.data();
  message.msg_controllen = control.size();
  ssize_t n = sys("recvmsg", what, [&] { return ::recvmsg(socket, &message, MSG_CMSG_CLOEXEC); });
  // Take ownership of whatever arrived before checking anything else, so that nothing leaks on an error.
  for (cmsghdr* cmsg = CMSG_FIRSTHDR(&message); cmsg != nullptr; cmsg = CMSG_NXTHDR(&message, cmsg)) {
    if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof fd);
      result.fds.fds.emplace_back(fd);
    }
  }
  if (n == 0) throw ProcessError(std::string(what) + ": the peer closed the connection before sending");
  if (static_cast<std::size_t>(n) < sizeof header) {
    auto rest = std::as_writable_bytes(std::span(&header, 1)).subspan(static_cast<std::size_t>(n));
    if (!receive_all(socket, rest, what)) throw ProcessError(std::string(what) + ": truncated message header");
  }
  if ((message.msg_flags & MSG_CTRUNC) != 0) throw ProcessError(std::string(what) + ": descriptors were truncated");
  if (header.magic != frame_header{}.magic || header.fd_count != result.fds.fds.size() || header.size > max_size) {
    throw ProcessError(std::string(what) + ": malformed message header (" + std::to_string(header.fd_count) +
                       " descriptors announced, " + std::to_string(result.fds.fds.size()) + " received, " +
                       std::to_string(header.size) + " bytes)");
  }
  result.bytes.resize(header.size);
  if (header.size != 0 && !receive_all(socket, result.bytes, what)) {
    throw ProcessError(std::string(what) + ": the peer closed the connection before the message body");
  }
  return result;
}

}  // namespace mp::detail
