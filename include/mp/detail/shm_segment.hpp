// shm_segment: a block of memory shared between processes, backed by an anonymous memfd.
// Why memfd rather than shm_open: it has no name in /dev/shm, so a process killed at any instant leaks nothing;
// it survives fork (the mapping is inherited) and crosses exec as a file descriptor (inheritance or SCM_RIGHTS).
// Named blocks that unrelated processes attach to by name live in mp::SharedMemory instead (which maps them with
// map_shared() too).
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <string>
#include <utility>

#include <mp/detail/config.hpp>
#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail {

/// mmap(2) of the first `size` bytes of `fd`, shared and read-write, through the syscall seam (the test fault hook
/// sees it as "mmap"); throws mp::Error "mmap(label): strerror" on failure.
MP_DECL void* map_shared(int fd, std::size_t size, const std::string& label);

class shm_segment {
 public:
  shm_segment() noexcept = default;

  /// A new zero-filled segment of `size` bytes; `label` names it in /proc/<pid>/fd and in error messages.
  MP_DECL static shm_segment create(std::size_t size, const std::string& label);
  /// Maps a segment received as a descriptor (spawned children, SCM_RIGHTS).
  MP_DECL static shm_segment from_fd(unique_fd fd, const std::string& label);

  shm_segment(shm_segment&& other) noexcept
      : fd_(std::move(other.fd_)),
        data_(std::exchange(other.data_, nullptr)),
        size_(std::exchange(other.size_, 0)),
        identity_(other.identity_) {
    other.identity_.reset();
  }
  shm_segment& operator=(shm_segment&& other) noexcept {
    if (this != &other) {
      unmap();
      fd_ = std::move(other.fd_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
      identity_ = other.identity_;
      other.identity_.reset();
    }
    return *this;
  }
  ~shm_segment() { unmap(); }

  void* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  int fd() const noexcept { return fd_.get(); }
  /// The open file behind fd() (one fstat at the first call): what export_fd is told, so that a handle in this
  /// segment sent with every Pool task costs the pool no fstat per task.
  fd_identity identity() const noexcept { return identity_.get(fd_.get()); }

 private:
  MP_DECL shm_segment(unique_fd fd, std::size_t size, const std::string& label);
  // munmap of our own mapping cannot fail (and a destructor could not report it): not through the seam.
  void unmap() noexcept {
    if (data_ != nullptr) ::munmap(data_, size_ == 0 ? 1 : size_);
    data_ = nullptr;
  }

  unique_fd fd_;
  void* data_ = nullptr;
  std::size_t size_ = 0;
  identity_cache identity_;
};

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/shm_segment.ipp>
#endif
