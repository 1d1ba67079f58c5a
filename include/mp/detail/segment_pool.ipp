// segment_pool: definitions (see segment_pool.hpp).
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <utility>

#include <mp/detail/clock.hpp>
#include <mp/detail/futex.hpp>
#include <mp/detail/segment_pool.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

MP_DECL segment_pool::~segment_pool() { clear(); }

MP_DECL void segment_pool::drop(std::size_t index) noexcept {
  auto& s = segments_[index];
  if (s.data != nullptr) ::munmap(s.data, segment_header_bytes + s.capacity);
  segments_.erase(segments_.begin() + static_cast<std::ptrdiff_t>(index));
}

MP_DECL void segment_pool::clear() noexcept {
  while (!segments_.empty()) drop(segments_.size() - 1);
}

MP_DECL void mark_consumed(segment_header& header) noexcept {
  header.consumed.store(1, std::memory_order_release);
  futex_wake(header.consumed);
}

MP_DECL pooled_segment& segment_pool::acquire(std::size_t size, std::size_t budget, const char* label, bool wait,
                                               std::size_t most, std::uint64_t wait_ns) {
  const int pid = static_cast<int>(::getpid());
  if (pid != pid_) {
    // Forked from the thread that filled the cache: those segments are the parent's to reuse, not ours.
    clear();
    pid_ = pid;
  }
  // A consumed segment that fits without wasting more than half of it; the oldest first.
  auto reusable = [&]() -> pooled_segment* {
    for (std::size_t i = 0; i < segments_.size(); ++i) {
      auto& s = segments_[i];
      if (s.capacity >= size && s.capacity / 2 <= size &&
          s.header().consumed.load(std::memory_order_acquire) != 0) {
        s.header().consumed.store(0, std::memory_order_relaxed);
        pooled_segment moved = std::move(s);
        segments_.erase(segments_.begin() + static_cast<std::ptrdiff_t>(i));
        segments_.push_back(std::move(moved));
        return &segments_.back();
      }
    }
    return nullptr;
  };
  if (auto* s = reusable()) return *s;
  // A full cache of fitting segments still being read: a consumer is at work on them. Waiting for one (up to
  // wait_ns) keeps producer and consumer in step on warm pages, instead of running ahead on fresh ones. Asleep on
  // the oldest one's word (the consumer's mark_consumed wakes us), not spinning: on a busy machine the consumer
  // needs the CPU a spinning producer would take.
  std::size_t fitting = 0;
  segment_header* oldest = nullptr;
  for (auto& s : segments_) {
    if (s.capacity < size || s.capacity / 2 > size) continue;
    ++fitting;
    if (oldest == nullptr) oldest = &s.header();
  }
  if (wait && fitting >= 2 && oldest != nullptr) {
    const deadline until = std::chrono::steady_clock::now() + std::chrono::nanoseconds(wait_ns);
    while (std::chrono::steady_clock::now() < *until) {
      (void)futex_wait(oldest->consumed, 0, until);
      if (auto* s = reusable()) return *s;
    }
  }
  // Room for a new one: drop consumed segments first, then the oldest busy ones (their consumers died or are slow).
  const std::size_t capacity = (size + 4095) & ~std::size_t{4095};
  auto bytes = [&] {
    std::size_t total = 0;
    for (auto& s : segments_) total += s.capacity;
    return total;
  };
  while (!segments_.empty() && (segments_.size() >= most || bytes() + capacity > budget)) {
    std::size_t victim = 0;
    for (std::size_t i = 0; i < segments_.size(); ++i)
      if (segments_[i].header().consumed.load(std::memory_order_acquire) != 0) {
        victim = i;
        break;
      }
    drop(victim);
  }
  pooled_segment s;
  s.fd.reset(sys("memfd_create", label, [&] { return ::memfd_create(label, MFD_CLOEXEC); }));
  sys("ftruncate", label,
      [&] { return ::ftruncate(s.fd.get(), static_cast<off_t>(segment_header_bytes + capacity)); });
  void* data = nullptr;
  sys("mmap", label, [&] {
    data = ::mmap(nullptr, segment_header_bytes + capacity, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                  s.fd.get(), 0);
    return data == MAP_FAILED ? -1 : 0;
  });
  s.data = static_cast<std::byte*>(data);
  s.capacity = capacity;
  segments_.push_back(std::move(s));
  return segments_.back();
}

MP_DECL unique_fd shared_segment_pool::duplicate(int fd, const char* label) {
  return unique_fd(sys("fcntl", label, [&] { return ::fcntl(fd, F_DUPFD_CLOEXEC, 0); }));
}

MP_DECL segment_reader::segment_reader(unique_fd fd, std::size_t size, const char* what) : size_(size) {
  struct stat st {};
  if (sys_try("fstat", [&] { return ::fstat(fd.get(), &st); }) != 0 || !S_ISREG(st.st_mode) || st.st_size < 0 ||
      static_cast<std::size_t>(st.st_size) < segment_header_bytes ||
      static_cast<std::size_t>(st.st_size) - segment_header_bytes < size) {
    throw SerializationError(std::string(what) + ": the descriptor received for an item of " + std::to_string(size) +
                             " bytes is not a segment that holds it: the sender's memory is corrupt");
  }
  mapped_ = segment_header_bytes + size;
  void* data = nullptr;
  sys("mmap", what, [&] {
    data = ::mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd.get(), 0);
    return data == MAP_FAILED ? -1 : 0;
  });
  data_ = static_cast<std::byte*>(data);
  // The mapping keeps the segment alive: the descriptor closes here.
}

MP_DECL segment_reader::~segment_reader() {
  if (data_ == nullptr) return;
  mark_consumed(*reinterpret_cast<segment_header*>(data_));
  ::munmap(data_, mapped_);
}

}  // namespace mp::detail
