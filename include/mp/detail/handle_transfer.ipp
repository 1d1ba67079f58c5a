// handle_transfer: definitions (see handle_transfer.hpp).
#pragma once

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>

#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

MP_DECL fd_identity identity_of(int fd) noexcept {
  struct stat st {};
  if (sys_try("fstat", [&] { return ::fstat(fd, &st); }) != 0) return {};
  return {static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino)};
}

MP_DECL std::uint32_t export_fd(int fd, const char* what, fd_identity id) {
  fd_outbox* box = current_fd_outbox();
  if (box == nullptr) {
    throw SerializationError(std::string("mp::serialize: a ") + what +
                             " is a handle to a shared object and crosses only as an argument of a Process or a "
                             "Pool task (its descriptor travels beside the bytes), not inside a Queue item or a "
                             "message; pass it as a Process or task argument, or send the values it holds instead");
  }
  if (fd < 0) {
    throw SerializationError(std::string("mp::serialize: this ") + what +
                             " is closed (it has no descriptor), so it cannot be passed to another process");
  }
  auto found = std::find(box->fds.begin(), box->fds.end(), fd);
  if (found != box->fds.end()) return static_cast<std::uint32_t>(found - box->fds.begin());
  box->ids.resize(box->fds.size());  // a box filled by hand has no ids
  box->fds.push_back(fd);
  box->ids.push_back(id);
  return static_cast<std::uint32_t>(box->fds.size() - 1);
}

MP_DECL unique_fd import_fd(std::uint32_t index, const char* what) {
  fd_inbox* box = current_fd_inbox();
  if (box == nullptr) {
    throw SerializationError(std::string("mp::deserialize: a ") + what +
                             " can be decoded only from the arguments of a Process or a Pool task");
  }
  if (box->cache != nullptr) {
    const int fd = box->cache->fd(index);
    if (fd < 0)
      throw SerializationError(std::string("mp::deserialize: a ") + what + " refers to descriptor #" +
                               std::to_string(index) + ", which did not arrive with the task");
    return unique_fd(sys("fcntl(F_DUPFD_CLOEXEC)", what, [&] { return ::fcntl(fd, F_DUPFD_CLOEXEC, 0); }));
  }
  if (index >= box->fds.size() || !box->fds[index]) {
    throw SerializationError(std::string("mp::deserialize: a ") + what + " refers to descriptor #" +
                             std::to_string(index) + " but only " + std::to_string(box->fds.size()) +
                             " arrived with it");
  }
  // A dup, not the original: several handles in the arguments may share one descriptor.
  return unique_fd(
      sys("fcntl(F_DUPFD_CLOEXEC)", what, [&] { return ::fcntl(box->fds[index].get(), F_DUPFD_CLOEXEC, 0); }));
}

// The header of an fd frame; the descriptors ride on the sendmsg that carries it.
struct fd_frame_header {
  std::uint32_t magic = 0x6d706672;  // "mpfr": a stray writer is caught, not decoded
  std::uint32_t fd_count = 0;
  std::uint64_t size = 0;
};

// Writes all of `bytes` (MSG_NOSIGNAL: a peer that died is an error, not SIGPIPE).
MP_DECL void send_fd_frame_bytes(int socket, std::span<const std::byte> bytes, const char* what) {
  while (!bytes.empty()) {
    ssize_t n = sys("send", what, [&] { return ::send(socket, bytes.data(), bytes.size(), MSG_NOSIGNAL); });
    bytes = bytes.subspan(static_cast<std::size_t>(n));
  }
}

// Reads exactly bytes.size() bytes; false on end of file before the first byte, ProcessError on a short read.
MP_DECL bool receive_fd_frame_bytes(int socket, std::span<std::byte> bytes, const char* what) {
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

MP_DECL void send_fd_frame(int socket, std::span<const std::byte> bytes, std::span<const int> fds, const char* what) {
  if (fds.size() > max_fds_per_frame) {
    throw ProcessError(std::string(what) + ": " + std::to_string(fds.size()) +
                       " shared objects' descriptors to pass, more than the " + std::to_string(max_fds_per_frame) +
                       " one message can carry; pass fewer handles (group them in one Queue or Manager)");
  }
  fd_frame_header header;
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
    send_fd_frame_bytes(socket, std::as_bytes(std::span(&header, 1)).subspan(static_cast<std::size_t>(n)), what);
  }
  send_fd_frame_bytes(socket, bytes, what);
}

MP_DECL fd_frame receive_fd_frame(int socket, const char* what, std::uint64_t max_size) {
  fd_frame result;
  fd_frame_header header;
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
    if (!receive_fd_frame_bytes(socket, rest, what))
      throw ProcessError(std::string(what) + ": truncated message header");
  }
  if ((message.msg_flags & MSG_CTRUNC) != 0) throw ProcessError(std::string(what) + ": descriptors were truncated");
  if (header.magic != fd_frame_header{}.magic || header.fd_count != result.fds.fds.size() || header.size > max_size) {
    throw ProcessError(std::string(what) + ": malformed message header (" + std::to_string(header.fd_count) +
                       " descriptors announced, " + std::to_string(result.fds.fds.size()) + " received, " +
                       std::to_string(header.size) + " bytes)");
  }
  result.bytes.resize(header.size);
  if (header.size != 0 && !receive_fd_frame_bytes(socket, result.bytes, what)) {
    throw ProcessError(std::string(what) + ": the peer closed the connection before the message body");
  }
  return result;
}

}  // namespace mp::detail
