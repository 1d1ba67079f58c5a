// large: definitions (see large.hpp).
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include <mp/detail/manager/large.hpp>
#include <mp/detail/manager/protocol.hpp>
#include <mp/detail/syscall.hpp>

namespace mp::detail::manager {

MP_DECL bool large_segment::write(std::string_view bytes) noexcept {
  if (!fd_) {
    fd_ = unique_fd(sys_try("memfd_create", [] {
      return ::memfd_create("mp-manager-value", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    }));
    size_ = 0;
    if (!fd_) return false;
  }
  if (size_ < bytes.size()) {
    if (sys_try("ftruncate", [&] { return ::ftruncate(fd_.get(), static_cast<off_t>(bytes.size())); }) != 0) {
      return false;
    }
    size_ = bytes.size();
  }
  for (std::size_t done = 0; done < bytes.size();) {
    auto wrote = sys_try("pwrite", [&] {
      return ::pwrite(fd_.get(), bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
    });
    if (wrote <= 0) return false;
    done += static_cast<std::size_t>(wrote);
  }
  return true;
}

MP_DECL void large_segment::trim() noexcept {
  if (size_ > protocol::kept_bytes) fd_.reset(), size_ = 0;
}

MP_DECL std::string_view large_buffer::read(int fd, std::size_t size) {
  struct stat st {};
  if (sys_try("fcntl", [&] { return ::fcntl(fd, F_GET_SEALS); }) < 0 ||  // only memfd (shmem) files have seals
      sys_try("fstat", [&] { return ::fstat(fd, &st); }) != 0 || !S_ISREG(st.st_mode) ||
      static_cast<std::size_t>(st.st_size) < size) {
    return {};
  }
  if (capacity_ < size) {
    data_.reset();  // the old buffer goes first: never both at once
    data_.reset(new char[size]);  // not zero-filled: pread writes every byte
    capacity_ = size;
  }
  for (std::size_t done = 0; done < size;) {
    auto got = sys_try("pread", [&] { return ::pread(fd, data_.get() + done, size - done, static_cast<off_t>(done)); });
    if (got <= 0) return {};  // shrunk meanwhile, or an error
    done += static_cast<std::size_t>(got);
  }
  return {data_.get(), size};
}

MP_DECL void large_buffer::trim() noexcept {
  if (capacity_ > protocol::kept_bytes) data_.reset(), capacity_ = 0;
}

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
