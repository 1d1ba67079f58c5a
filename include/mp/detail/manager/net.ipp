// net: definitions (see net.hpp).
#pragma once

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include <cstring>
#include <utility>

#include <mp/detail/manager/net.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/errors.hpp>

namespace mp::detail::manager {

MP_DECL sockaddr_un unix_address(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(address.sun_path)) {
    throw Error("manager Unix socket path '" + path + "' must be 1 to " + std::to_string(sizeof(address.sun_path) - 1) +
                " bytes long: choose a shorter path");
  }
  std::memcpy(address.sun_path, path.data(), path.size());
  return address;
}

MP_DECL unique_fd with_tcp_address(const endpoint& where, const char* what,
                                   const std::function<bool(int socket, const sockaddr* address, socklen_t length)>& use) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (where.host.empty() ? AI_PASSIVE : 0);
  addrinfo* found = nullptr;
  auto service = std::to_string(where.port);
  // getaddrinfo reports its own error codes (gai_strerror), not errno: it cannot go through the seam.
  if (int rc = ::getaddrinfo(where.host.empty() ? nullptr : where.host.c_str(), service.c_str(), &hints, &found)) {
    throw Error(std::string(what) + "(" + where.to_string() + "): cannot resolve the host: " + ::gai_strerror(rc));
  }
  int err = 0;
  unique_fd result;
  for (auto* a = found; a && !result; a = a->ai_next) {
    unique_fd fd(
        sys_try("socket", [&] { return ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol); }));
    if (!fd) {
      err = last_errno();
      continue;
    }
    if (use(fd.get(), a->ai_addr, a->ai_addrlen)) {
      result = std::move(fd);
    } else {
      err = last_errno();
    }
  }
  ::freeaddrinfo(found);
  if (!result) throw_errno(what, where.to_string(), err);
  return result;
}

MP_DECL void set_nodelay(int fd) noexcept {
  int one = 1;
  (void)sys_try("setsockopt", [&] { return ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); });
}

MP_DECL unique_fd listen_on(endpoint& where, bool other_users) {
  unique_fd fd;
  if (where.tcp) {
    fd = with_tcp_address(where, "bind", [](int s, const sockaddr* a, socklen_t n) {
      int one = 1;
      (void)sys_try("setsockopt", [&] { return ::setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one); });
      return sys_try("bind", [&] { return ::bind(s, a, n); }) == 0;
    });
    sockaddr_storage bound{};
    socklen_t length = sizeof bound;
    sys("getsockname", where.to_string(),
        [&] { return ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &length); });
    where.port = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                                   : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  } else {
    auto address = unix_address(where.path);
    fd = unique_fd(sys("socket", where.path, [] { return ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0); }));
    // Linux creates the socket file with the socket inode's mode masked by the umask: 0600 here makes it 0600 at
    // once (a chmod after bind would leave a window in which another user could connect).
    if (!other_users) sys("fchmod", where.path, [&] { return ::fchmod(fd.get(), 0600); });
    sys("bind", where.path, [&] { return ::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address); });
  }
  sys("listen", where.to_string(), [&] { return ::listen(fd.get(), SOMAXCONN); });
  return fd;
}

MP_DECL bool send_with_fd(int socket, const std::byte* bytes, std::size_t size, int fd) noexcept {
  iovec part{const_cast<std::byte*>(bytes), size};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
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
  auto sent = sys_try("sendmsg", [&] { return ::sendmsg(socket, &message, MSG_NOSIGNAL); });
  if (sent < 0) return false;
  // The descriptor went with the first byte; the rest (never seen on a Unix socket) goes plainly.
  for (auto done = static_cast<std::size_t>(sent); done < size;) {
    auto more = sys_try("send", [&] { return ::send(socket, bytes + done, size - done, MSG_NOSIGNAL); });
    if (more < 0) return false;
    done += static_cast<std::size_t>(more);
  }
  return true;
}

MP_DECL ssize_t receive_with_fds(int socket, char* data, std::size_t size, std::vector<unique_fd>& fds) {
  iovec part{data, size};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_received_fds)];
  msghdr message{};
  message.msg_iov = &part;
  message.msg_iovlen = 1;
  message.msg_control = control;
  message.msg_controllen = sizeof control;
  auto got = sys_try("recvmsg", [&] { return ::recvmsg(socket, &message, MSG_CMSG_CLOEXEC); });
  if (got < 0 || message.msg_controllen == 0) return got;
  for (cmsghdr* cmsg = CMSG_FIRSTHDR(&message); cmsg; cmsg = CMSG_NXTHDR(&message, cmsg)) {
    if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t n = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < n; ++i) {
      int fd = -1;
      std::memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof fd);
      unique_fd owned(fd);
      if (fds.size() < max_received_fds) fds.push_back(std::move(owned));  // else: closed
    }
  }
  return got;
}

}  // namespace mp::detail::manager
