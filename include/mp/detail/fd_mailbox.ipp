// fd_mailbox: definitions (see fd_mailbox.hpp).
#pragma once

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include <mp/detail/fd_mailbox.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

MP_DECL unique_fd make_fd_mailbox() {
  unique_fd socket(sys("socket", "fd mailbox", [] { return ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0); }));
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  // An address length of just the family: the kernel picks a free abstract name (autobind).
  sys("bind", "fd mailbox", [&] {
    return ::bind(socket.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(sa_family_t));
  });
  socklen_t length = sizeof address;
  sys("getsockname", "fd mailbox",
      [&] { return ::getsockname(socket.get(), reinterpret_cast<sockaddr*>(&address), &length); });
  sys("connect", "fd mailbox",
      [&] { return ::connect(socket.get(), reinterpret_cast<const sockaddr*>(&address), length); });
  return socket;
}

MP_DECL bool fd_mailbox_post(int mailbox, std::uint64_t tag, int fd, const deadline& until) {
  iovec part{&tag, sizeof tag};
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr message{};
  message.msg_iov = &part;
  message.msg_iovlen = 1;
  message.msg_control = control;
  message.msg_controllen = sizeof control;
  cmsghdr* cmsg = CMSG_FIRSTHDR(&message);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(cmsg), &fd, sizeof fd);
  for (;;) {
    if (sys_try("sendmsg", [&] { return ::sendmsg(mailbox, &message, MSG_DONTWAIT | MSG_NOSIGNAL); }) >= 0)
      return true;
    if (errno == ETOOMANYREFS) {
      throw Error("Queue::put: too many descriptors in flight for this user (large items not yet taken count "
                  "against RLIMIT_NOFILE); take items sooner, lower QueueOptions::large_bytes_limit or raise "
                  "the limit");
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK) throw_errno("sendmsg", "fd mailbox");
    if (expired(until)) return false;
    pollfd waiter{mailbox, POLLOUT, 0};
    // Bounded sleeps: POLLOUT of a datagram socket is level-triggered on its send buffer; a missed edge costs 10 ms.
    int wait_ms = poll_timeout_ms(until);
    if (wait_ms < 0 || wait_ms > 10) wait_ms = 10;
    sys_try("poll", [&] { return ::poll(&waiter, 1, wait_ms); });
  }
}

MP_DECL std::optional<std::uint64_t> fd_mailbox_peek(int mailbox) {
  std::uint64_t tag = 0;
  iovec part{&tag, sizeof tag};
  msghdr message{};
  message.msg_iov = &part;
  message.msg_iovlen = 1;
  // No room for control data: a peek installs no descriptor (the kernel drops its peeked copy).
  const ssize_t n = sys_try("recvmsg", [&] { return ::recvmsg(mailbox, &message, MSG_PEEK | MSG_DONTWAIT); });
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return std::nullopt;
    throw_errno("recvmsg", "fd mailbox (peek)");
  }
  if (static_cast<std::size_t>(n) != sizeof tag) return 0;  // not one of ours: the lowest tag, dropped as stale
  return tag;
}

MP_DECL unique_fd fd_mailbox_take(int mailbox) {
  std::uint64_t tag = 0;
  iovec part{&tag, sizeof tag};
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int) * 4)] = {};
  msghdr message{};
  message.msg_iov = &part;
  message.msg_iovlen = 1;
  message.msg_control = control;
  message.msg_controllen = sizeof control;
  const ssize_t n =
      sys_try("recvmsg", [&] { return ::recvmsg(mailbox, &message, MSG_DONTWAIT | MSG_CMSG_CLOEXEC); });
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return {};
    throw_errno("recvmsg", "fd mailbox");
  }
  unique_fd result;
  for (cmsghdr* cmsg = CMSG_FIRSTHDR(&message); cmsg != nullptr; cmsg = CMSG_NXTHDR(&message, cmsg)) {
    if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof fd);
      if (!result)
        result.reset(fd);
      else
        ::close(fd);  // only ever one: close any other
    }
  }
  return result;
}

}  // namespace mp::detail
