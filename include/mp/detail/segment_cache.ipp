// segment_cache: definitions (see segment_cache.hpp).
#pragma once

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <utility>

#include <mp/detail/segment_cache.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

MP_DECL segment_cache::~segment_cache() { clear(); }

MP_DECL void segment_cache::drop(std::size_t index) noexcept {
  ::munmap(entries_[index].data, entries_[index].mapped);
  entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(index));
}

MP_DECL void segment_cache::clear() noexcept {
  if (pid_ != static_cast<int>(::getpid())) {
    entries_.clear();  // a forked child's copy: the parent's mappings are the child's too, but not its to count
    return;
  }
  while (!entries_.empty()) drop(entries_.size() - 1);
}

MP_DECL segment_lease segment_cache::open(unique_fd fd, std::size_t size, const char* what) {
  const int pid = static_cast<int>(::getpid());
  if (pid != pid_) {
    entries_.clear();  // forked: the mappings were copied with us, and stay until this process ends or execs
    pid_ = pid;
  }
  struct stat st {};
  if (sys_try("fstat", [&] { return ::fstat(fd.get(), &st); }) != 0 || !S_ISREG(st.st_mode) || st.st_size < 0 ||
      static_cast<std::size_t>(st.st_size) < segment_header_bytes ||
      static_cast<std::size_t>(st.st_size) - segment_header_bytes < size) {
    throw SerializationError(std::string(what) + ": the descriptor received for an item of " + std::to_string(size) +
                             " bytes is not a segment that holds it: the sender's memory is corrupt");
  }
  const auto dev = static_cast<std::uint64_t>(st.st_dev), ino = static_cast<std::uint64_t>(st.st_ino);
  const std::size_t length = static_cast<std::size_t>(st.st_size);
  for (std::size_t i = 0; i < entries_.size(); ++i) {
    if (entries_[i].dev != dev || entries_[i].ino != ino) continue;
    if (entries_[i].mapped == length) {
      entry found = entries_[i];  // most recently used last
      entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(i));
      entries_.push_back(found);
      return {reinterpret_cast<segment_header*>(found.data), {found.data + segment_header_bytes, size}};
    }
    drop(i);  // resized since: map it again
    break;
  }
  void* data = nullptr;
  sys("mmap", what, [&] {
    data = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd.get(), 0);
    return data == MAP_FAILED ? -1 : 0;
  });
  // Room first: the least recently used go (the new one stays even if it alone exceeds the budget).
  auto bytes = [&] {
    std::size_t total = 0;
    for (auto& e : entries_) total += e.mapped;
    return total;
  };
  while (!entries_.empty() && (entries_.size() + 1 > most_ || bytes() + length > budget_)) drop(0);
  entries_.push_back({dev, ino, static_cast<std::byte*>(data), length});
  return {static_cast<segment_header*>(data), {static_cast<std::byte*>(data) + segment_header_bytes, size}};
}

}  // namespace mp::detail
