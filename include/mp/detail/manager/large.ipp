// large: definitions (see large.hpp).
#pragma once

#include <sys/socket.h>

#include <cstring>

#include <mp/detail/manager/large.hpp>
#include <mp/detail/syscall.hpp>

namespace mp::detail::manager {

MP_DECL long send_some_with_fd(int socket, const void* bytes, std::size_t size, int fd, int flags) noexcept {
  iovec part{const_cast<void*>(bytes), size};
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
  return sys_try("sendmsg", [&] { return ::sendmsg(socket, &message, MSG_NOSIGNAL | flags); });
}

}  // namespace mp::detail::manager
