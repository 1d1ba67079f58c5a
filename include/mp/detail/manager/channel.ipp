// channel: definitions (see channel.hpp).
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mp/detail/manager/channel.hpp>
#include <mp/detail/syscall.hpp>

namespace mp::detail::manager {

MP_DECL std::pair<channel, unique_fd> channel::create() noexcept {
  constexpr int seals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
  unique_fd fd(
      sys_try("memfd_create", [] { return ::memfd_create("mp-manager-channel", MFD_CLOEXEC | MFD_ALLOW_SEALING); }));
  if (!fd ||
      sys_try("ftruncate", [&] { return ::ftruncate(fd.get(), static_cast<off_t>(sizeof(channel_shared))); }) != 0 ||
      sys_try("fcntl", [&] { return ::fcntl(fd.get(), F_ADD_SEALS, seals); }) != 0) {
    return {};
  }
  channel made;
  if (!made.map(fd.get())) return {};
  return {std::move(made), std::move(fd)};
}

MP_DECL channel channel::open(int fd) noexcept {
  struct stat st {};
  const int seals = sys_try("fcntl", [&] { return ::fcntl(fd, F_GET_SEALS); });
  if (seals < 0 || (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW)) return {};
  if (sys_try("fstat", [&] { return ::fstat(fd, &st); }) != 0 ||
      static_cast<std::size_t>(st.st_size) != sizeof(channel_shared)) {
    return {};
  }
  channel opened;
  opened.map(fd);
  return opened;
}

MP_DECL bool channel::map(int fd) noexcept {
  void* p = MAP_FAILED;
  // Through the seam for its fault hook (mmap reports failure as MAP_FAILED, not -1).
  if (sys_try("mmap", [&] {
        p = ::mmap(nullptr, sizeof(channel_shared), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        return p == MAP_FAILED ? -1 : 0;
      }) != 0) {
    return false;
  }
  shared_ = static_cast<channel_shared*>(p);  // a zero-filled memfd: every atomic starts at 0
  return true;
}

MP_DECL void channel::unmap() noexcept {
  if (shared_ != nullptr) ::munmap(shared_, sizeof(channel_shared));  // fails only for a bad range: ours is not
  shared_ = nullptr;
}

}  // namespace mp::detail::manager
