// shm_segment: definitions (see shm_segment.hpp).
#pragma once

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mp/detail/shm_segment.hpp>
#include <mp/detail/syscall.hpp>

namespace mp::detail {

MP_DECL void* map_shared(int fd, std::size_t size, const std::string& label) {
  void* data = MAP_FAILED;
  // mmap answers MAP_FAILED rather than -1: the lambda translates, so mmap gets the seam's fault hook too.
  if (sys_try("mmap", [&] {
        data = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        return data == MAP_FAILED ? -1 : 0;
      }) != 0) {
    throw_errno("mmap", label);
  }
  return data;
}

MP_DECL shm_segment shm_segment::create(std::size_t size, const std::string& label) {
  unique_fd fd(sys("memfd_create", label, [&] { return ::memfd_create(label.c_str(), MFD_CLOEXEC); }));
  sys("ftruncate", label, [&] { return ::ftruncate(fd.get(), static_cast<off_t>(size)); });
  return shm_segment(std::move(fd), size, label);
}

MP_DECL shm_segment shm_segment::from_fd(unique_fd fd, const std::string& label) {
  struct stat st {};
  sys("fstat", label, [&] { return ::fstat(fd.get(), &st); });
  return shm_segment(std::move(fd), static_cast<std::size_t>(st.st_size), label);
}

MP_DECL shm_segment::shm_segment(unique_fd fd, std::size_t size, const std::string& label)
    : fd_(std::move(fd)), data_(map_shared(fd_.get(), size == 0 ? 1 : size, label)), size_(size) {}

}  // namespace mp::detail
