// blob: definitions (see blob.hpp).
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include <mp/detail/blob.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

namespace blob_seals {
inline constexpr int all = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL;
}

MP_DECL blob_writer::blob_writer(std::size_t size, const char* label) : size_(size) {
  if (size == 0) throw Error(std::string("blob(") + label + "): an empty item needs no segment");
  fd_.reset(sys("memfd_create", label, [&] { return ::memfd_create(label, MFD_CLOEXEC | MFD_ALLOW_SEALING); }));
  sys("ftruncate", label, [&] { return ::ftruncate(fd_.get(), static_cast<off_t>(size)); });
  // MAP_POPULATE: one call faults in every page (allocating and zeroing them) instead of one fault per page
  // during the copy, which measured ~2x slower for 16 MiB.
  void* data = nullptr;
  sys("mmap", label, [&] {
    data = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_.get(), 0);
    return data == MAP_FAILED ? -1 : 0;
  });
  data_ = static_cast<std::byte*>(data);
}

MP_DECL blob_writer::~blob_writer() {
  if (data_ != nullptr) ::munmap(data_, size_);  // cannot fail for our own mapping
}

MP_DECL unique_fd blob_writer::publish() {
  ::munmap(data_, size_);
  data_ = nullptr;
  // F_SEAL_WRITE needs no writable mapping left: the munmap above is ours, and the segment was never shared.
  sys("fcntl", "F_ADD_SEALS blob", [&] { return ::fcntl(fd_.get(), F_ADD_SEALS, blob_seals::all); });
  return std::move(fd_);
}

MP_DECL blob_reader::blob_reader(unique_fd fd, std::size_t size) : size_(size) {
  const int seals = sys_try("fcntl", [&] { return ::fcntl(fd.get(), F_GET_SEALS); });
  struct stat st {};
  const bool is_file = seals != -1 && sys_try("fstat", [&] { return ::fstat(fd.get(), &st); }) == 0;
  if (!is_file || (seals & blob_seals::all) != blob_seals::all || st.st_size < 0 ||
      static_cast<std::size_t>(st.st_size) != size || size == 0) {
    throw SerializationError("blob: the descriptor received for an item of " + std::to_string(size) +
                             " bytes is not a sealed segment of that size: the sender is not mp, or is hostile");
  }
  void* data = nullptr;
  sys("mmap", "blob", [&] {
    data = ::mmap(nullptr, size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd.get(), 0);
    return data == MAP_FAILED ? -1 : 0;
  });
  data_ = static_cast<const std::byte*>(data);
  // The mapping keeps the segment alive: the descriptor closes here.
}

MP_DECL blob_reader::~blob_reader() {
  if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
}

}  // namespace mp::detail
