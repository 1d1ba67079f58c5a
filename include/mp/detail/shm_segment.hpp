// shm_segment: a block of memory shared between processes, backed by an anonymous memfd.
// Why memfd rather than shm_open: it has no name in /dev/shm, so a process killed at any instant leaks nothing;
// it survives fork (the mapping is inherited) and crosses exec as a file descriptor (inheritance or SCM_RIGHTS).
// Named blocks that unrelated processes attach to by name live in mp::SharedMemory instead.
#pragma once

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <string>
#include <utility>

#include <mp/detail/syscall.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail {

class shm_segment {
 public:
  shm_segment() noexcept = default;

  /// A new zero-filled segment of `size` bytes; `label` names it in /proc/<pid>/fd and in error messages.
  static shm_segment create(std::size_t size, const std::string& label) {
    unique_fd fd(sys("memfd_create", label, [&] { return ::memfd_create(label.c_str(), MFD_CLOEXEC); }));
    sys("ftruncate", label, [&] { return ::ftruncate(fd.get(), static_cast<off_t>(size)); });
    return shm_segment(std::move(fd), size, label);
  }

  /// Maps a segment received as a descriptor (spawned children, SCM_RIGHTS).
  static shm_segment from_fd(unique_fd fd, const std::string& label) {
    struct stat st {};
    sys("fstat", label, [&] { return ::fstat(fd.get(), &st); });
    return shm_segment(std::move(fd), static_cast<std::size_t>(st.st_size), label);
  }

  shm_segment(shm_segment&& other) noexcept
      : fd_(std::move(other.fd_)), data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  shm_segment& operator=(shm_segment&& other) noexcept {
    if (this != &other) {
      unmap();
      fd_ = std::move(other.fd_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  ~shm_segment() { unmap(); }

  void* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  int fd() const noexcept { return fd_.get(); }

 private:
  shm_segment(unique_fd fd, std::size_t size, const std::string& label) : fd_(std::move(fd)), size_(size) {
    void* p = ::mmap(nullptr, size == 0 ? 1 : size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0);
    if (p == MAP_FAILED) throw_errno("mmap", label);
    data_ = p;
  }
  void unmap() noexcept {
    if (data_ != nullptr) ::munmap(data_, size_ == 0 ? 1 : size_);
    data_ = nullptr;
  }

  unique_fd fd_;
  void* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace mp::detail
