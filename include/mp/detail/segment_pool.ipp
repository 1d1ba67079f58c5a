// segment_pool: definitions (see segment_pool.hpp).
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include <mp/detail/clock.hpp>
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

MP_DECL pooled_segment make_segment(std::size_t size, const char* label, bool sealed) {
  const std::size_t capacity = (size + 4095) & ~std::size_t{4095};
  pooled_segment s;
  s.fd.reset(sys("memfd_create", label,
                 [&] { return ::memfd_create(label, MFD_CLOEXEC | (sealed ? MFD_ALLOW_SEALING : 0u)); }));
  sys("ftruncate", label,
      [&] { return ::ftruncate(s.fd.get(), static_cast<off_t>(segment_header_bytes + capacity)); });
  // Nobody may shrink it: a mapping of it (ours, or a receiver's) could fault (SIGBUS) on a page cut off. (Nor grow
  // it, nor seal it further: F_SEAL_FUTURE_WRITE added by a peer would make our next write fail.)
  if (sealed) {
    sys("fcntl", "F_ADD_SEALS segment",
        [&] { return ::fcntl(s.fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL); });
  }
  void* data = nullptr;
  sys("mmap", label, [&] {
    data = ::mmap(nullptr, segment_header_bytes + capacity, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                  s.fd.get(), 0);
    return data == MAP_FAILED ? -1 : 0;
  });
  s.data = static_cast<std::byte*>(data);
  s.capacity = capacity;
  return s;
}

MP_DECL void unmap_segment(pooled_segment& segment) noexcept {
  if (segment.data != nullptr) ::munmap(segment.data, segment_header_bytes + segment.capacity);
  segment.data = nullptr;
  segment.fd.reset();
}

MP_DECL pooled_segment& segment_pool::acquire(std::size_t size, std::size_t budget, const char* label, bool wait,
                                               std::size_t most, std::uint64_t wait_ns, bool sealed) {
  const int pid = static_cast<int>(::getpid());
  if (pid != pid_) {
    // Forked from the thread that filled the cache: those segments are the parent's to reuse, not ours.
    clear();
    pid_ = pid;
    reused_ns_ = 0;
  }
  // A consumed segment that fits without wasting more than half of it; the oldest first.
  auto fits = [size](const pooled_segment& s) { return s.capacity >= size && s.capacity / 2 <= size; };
  auto reusable = [&]() -> pooled_segment* {
    for (std::size_t i = 0; i < segments_.size(); ++i) {
      auto& s = segments_[i];
      if (fits(s) && s.header().consumed.load(std::memory_order_acquire) == 1) {
        s.header().consumed.store(0, std::memory_order_relaxed);
        pooled_segment moved = std::move(s);
        segments_.erase(segments_.begin() + static_cast<std::ptrdiff_t>(i));
        segments_.push_back(std::move(moved));
        reused_ns_ = monotonic_ns();
        return &segments_.back();
      }
    }
    return nullptr;
  };
  if (auto* s = reusable()) return *s;
  // Fitting segments all still being read: a consumer is at work on them. Waiting for one keeps producer and
  // consumer in step on warm pages, instead of running ahead on fresh ones (see acquire's comment for how long).
  // Also with one fitting, if a new segment would not fit beside the busy ones (an item over half the budget, as a
  // Pipe's 100 MiB messages in 128 MiB): else it would push that one out, and every item would get fresh pages.
  std::size_t fitting = 0, busy = 0, busy_bytes = 0;
  for (auto& s : segments_) {
    fitting += fits(s) ? 1 : 0;
    if (s.header().consumed.load(std::memory_order_relaxed) != 1) {
      ++busy;
      busy_bytes += s.capacity;
    }
  }
  const bool crowds_out = busy >= most || busy_bytes + size > budget;
  if (wait && (fitting >= 2 || (fitting == 1 && crowds_out))) {
    std::uint64_t now = monotonic_ns();
    const bool in_step = now - reused_ns_ < 1'000'000'000;
    const std::uint64_t until =
        now + std::max<std::uint64_t>(wait_ns, 2'000'000 + (in_step ? 4 * static_cast<std::uint64_t>(size) : 0));
    const std::uint64_t spin_until = now + 50'000;  // the consumer may be about to finish: look for 50 us first
    for (;;) {
      now = monotonic_ns();
      if (now >= until) break;
      if (now < spin_until) {
        ::sched_yield();
      } else {
        // Sleep on the oldest fitting one (items are taken in order): its consumer wakes us (mark_consumed).
        segment_header* oldest = nullptr;
        for (auto& s : segments_)
          if (fits(s)) {
            oldest = &s.header();
            break;
          }
        std::uint32_t busy = 0;
        if (oldest->consumed.compare_exchange_strong(busy, 2, std::memory_order_acq_rel) || busy == 2) {
          // Bounded: a consumer killed before marking it leaves it busy for good.
          futex_wait(oldest->consumed, 2,
                     std::chrono::steady_clock::now() + std::chrono::nanoseconds(std::min<std::uint64_t>(
                                                           until - now, 10'000'000)));
        }
      }
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
      if (segments_[i].header().consumed.load(std::memory_order_acquire) == 1) {
        victim = i;
        break;
      }
    drop(victim);
  }
  segments_.push_back(make_segment(size, label, sealed || sealed_));
  return segments_.back();
}

MP_DECL unique_fd shared_segment_pool::duplicate(int fd, const char* label) {
  return unique_fd(sys("fcntl", label, [&] { return ::fcntl(fd, F_DUPFD_CLOEXEC, 0); }));
}

MP_DECL void segment_view_cache::drop(std::size_t index) noexcept {
  ::munmap(views_[index].data, views_[index].bytes);
  views_.erase(views_.begin() + static_cast<std::ptrdiff_t>(index));
}

MP_DECL void segment_view_cache::clear_unlocked() noexcept {
  for (std::size_t i = views_.size(); i-- > 0;)
    if (views_[i].users == 0) drop(i);
}

MP_DECL void segment_view_cache::clear() noexcept {
  std::lock_guard lock(mutex_);
  clear_unlocked();
}

MP_DECL std::byte* segment_view_cache::acquire(int fd, std::uint64_t dev, std::uint64_t ino, std::size_t file_bytes,
                                               const char* what) {
  std::lock_guard lock(mutex_);
  const int pid = static_cast<int>(::getpid());
  if (pid != pid_) {
    // Forked: the parent's mappings came along (MAP_SHARED), but their segments are the parent's business.
    clear_unlocked();
    for (auto& v : views_) v.users = 0;  // in use by the parent's readers, which this process does not run
    pid_ = pid;
  }
  if (file_bytes > largest_view_) return nullptr;
  for (std::size_t i = 0; i < views_.size(); ++i) {
    if (views_[i].dev == dev && views_[i].ino == ino && views_[i].bytes == file_bytes) {
      view v = views_[i];
      ++v.users;
      views_.erase(views_.begin() + static_cast<std::ptrdiff_t>(i));
      views_.push_back(v);  // most recently used last
      return v.data;
    }
  }
  // Room: drop the least recently used mappings not in use (a stale one of the same inode goes the same way).
  auto kept_bytes = [&] {
    std::size_t total = 0;
    for (auto& v : views_) total += v.bytes;
    return total;
  };
  for (std::size_t i = 0; i < views_.size() && (views_.size() >= most_views_ || kept_bytes() + file_bytes > budget_);) {
    if (views_[i].users == 0)
      drop(i);
    else
      ++i;
  }
  if (views_.size() >= most_views_ || kept_bytes() + file_bytes > budget_) return nullptr;  // all in use
  void* data = nullptr;
  sys("mmap", what, [&] {
    data = ::mmap(nullptr, file_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    return data == MAP_FAILED ? -1 : 0;
  });
  views_.push_back(view{static_cast<std::byte*>(data), file_bytes, dev, ino, 1});
  return views_.back().data;
}

MP_DECL void segment_view_cache::release(const std::byte* data) noexcept {
  std::lock_guard lock(mutex_);
  for (auto& v : views_)
    if (v.data == data && v.users > 0) {
      --v.users;
      return;
    }
}

MP_DECL segment_reader::segment_reader(unique_fd fd, std::size_t size, const char* what, segment_view_cache* keep,
                                       segment_trust trust)
    : size_(size) {
  struct stat st {};
  const int seals =
      trust == segment_trust::trusted ? 0 : sys_try("fcntl", [&] { return ::fcntl(fd.get(), F_GET_SEALS); });
  if (seals == -1 || sys_try("fstat", [&] { return ::fstat(fd.get(), &st); }) != 0 || !S_ISREG(st.st_mode) ||
      st.st_size < 0 || static_cast<std::size_t>(st.st_size) < segment_header_bytes ||
      (trust == segment_trust::sealed_required && (seals & F_SEAL_SHRINK) == 0) ||
      static_cast<std::size_t>(st.st_size) - segment_header_bytes < size) {
    throw SerializationError(std::string(what) + ": the descriptor received for an item of " + std::to_string(size) +
                             " bytes is not a segment that holds it: the sender's memory is corrupt");
  }
  const bool map_if_sealed = trust == segment_trust::map_if_sealed;
  if (map_if_sealed && ((seals & F_SEAL_SHRINK) == 0 || st.st_blksize != 4096 || keep == nullptr)) {
    unmapped_ = std::move(fd);  // read by preadv: nothing here faults if its sender shrinks it
    return;
  }
  if (keep != nullptr) {
    try {
      data_ = keep->acquire(fd.get(), static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino),
                            static_cast<std::size_t>(st.st_size), what);
    } catch (...) {
      if (!map_if_sealed) throw;
      // Not mappable writable (sealed against writing: not an mp segment): read by preadv.
    }
    if (data_ != nullptr) {
      cache_ = keep;  // mapped_ stays 0: a kept mapping
      return;
    }
    if (map_if_sealed) {
      unmapped_ = std::move(fd);  // too large to keep: one preadv costs less than mapping it for one read
      return;
    }
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

MP_DECL bool segment_reader::copy_to(std::byte* out) noexcept {
  if (data_ != nullptr) {
    // A hostile sender may change the bytes meanwhile: they are copied out before anything decodes them.
    std::memcpy(out, data_ + segment_header_bytes, size_);
    reset();
    return true;
  }
  // One preadv: the header (discarded), the item; then on, if short, until the end or the file ends.
  std::byte header[segment_header_bytes];
  iovec parts[2] = {{header, sizeof header}, {out, size_}};
  const ssize_t n = sys_try("preadv", [&] { return ::preadv(unmapped_.get(), parts, 2, 0); });
  std::size_t got = n > 0 ? static_cast<std::size_t>(n) : 0;
  while (n > 0 && got < segment_header_bytes + size_) {
    const std::size_t at = std::max(got, segment_header_bytes);
    const ssize_t more = sys_try("pread", [&] {
      return ::pread(unmapped_.get(), out + (at - segment_header_bytes), segment_header_bytes + size_ - at,
                     static_cast<off_t>(at));
    });
    if (more <= 0) break;  // shrunk under us (0) or an error: not the announced bytes
    got = at + static_cast<std::size_t>(more);
  }
  reset();
  return got == segment_header_bytes + size_;
}

MP_DECL void segment_reader::reset() noexcept {
  if (unmapped_) {
    // Marked consumed by a write to the file (no futex wake: its producer's wait looks again within 10 ms). Fails
    // harmlessly on a segment sealed against writing (then not an mp one).
    const std::uint32_t consumed = 1;
    (void)sys_try("pwrite", [&] { return ::pwrite(unmapped_.get(), &consumed, sizeof consumed, 0); });
    unmapped_.reset();
  }
  if (data_ == nullptr) return;
  mark_consumed(*reinterpret_cast<segment_header*>(data_));
  if (mapped_ == 0)
    cache_->release(data_);
  else
    ::munmap(data_, mapped_);
  data_ = nullptr;
}

}  // namespace mp::detail
