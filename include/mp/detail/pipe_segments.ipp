// pipe_segments: definitions (see pipe_segments.hpp).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cstring>
#include <new>

#include <mp/detail/clock.hpp>
#include <mp/detail/futex.hpp>
#include <mp/detail/pipe_segments.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

namespace pipe_segment_detail {

inline constexpr const char* label = "mp-pipe-message";
/// How long a sender waits for a segment a receiver took (and is copying out of), before it drops it (a receiver
/// killed mid-copy never marks it done).
inline constexpr std::chrono::milliseconds busy_wait{200};

// A new segment of header + `capacity` bytes, sealed against shrinking, mapped writable (pages faulted in at once:
// one call instead of a fault per page).
inline void create(unique_fd& fd, std::byte*& data, std::size_t capacity) {
  fd.reset(sys("memfd_create", label, [] { return ::memfd_create(label, MFD_CLOEXEC | MFD_ALLOW_SEALING); }));
  const std::size_t total = pipe_segment_header + capacity;
  sys("ftruncate", label, [&] { return ::ftruncate(fd.get(), static_cast<off_t>(total)); });
  // Nobody may shrink it: the mapping below could fault (SIGBUS) on a page cut off by a hostile receiver.
  sys("fcntl", "F_ADD_SEALS pipe segment", [&] { return ::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK); });
  void* mapped = nullptr;
  sys("mmap", label, [&] {
    mapped = ::mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd.get(), 0);
    return mapped == MAP_FAILED ? -1 : 0;
  });
  data = static_cast<std::byte*>(mapped);
}

// Kept capacities are whole MiB, so that messages of nearby sizes share segments.
inline std::size_t rounded(std::size_t size) {
  constexpr std::size_t unit = std::size_t{1} << 20;
  return (size + unit - 1) / unit * unit;
}

// True if waiting for a receiver to free a segment cannot end: every copy of the receiving end is closed
// (POLLHUP on the socket) or the direction is broken.
inline bool cannot_end(int socket, const std::atomic<std::uint32_t>& broken) {
  if (broken.load(std::memory_order_relaxed) != 0) return true;
  pollfd p{socket, POLLOUT, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR | POLLNVAL)) != 0;
}

}  // namespace pipe_segment_detail

MP_DECL pipe_segment_lease::~pipe_segment_lease() {
  if (kept_ != nullptr && !sent_) {
    // Written but not sent (a fill or the send threw): free again at once.
    std::lock_guard lock(cache_->mutex_);
    kept_->word().store(~kept_->token, std::memory_order_release);
    kept_->sent = false;
  }
  if (own_data_ != nullptr) ::munmap(own_data_, own_mapped_);  // a one-shot segment lives on in the socket
}

MP_DECL void pipe_segment_lease::sent(std::uint32_t sequence) noexcept {
  sent_ = true;
  if (kept_ == nullptr) return;
  std::lock_guard lock(cache_->mutex_);
  kept_->sequence = sequence;
  kept_->sent = true;
}

MP_DECL pipe_segment_cache::~pipe_segment_cache() { drop_all(); }

MP_DECL void pipe_segment_cache::drop_all() noexcept {
  for (pipe_segment* s : segments_) {
    // After fork these are the parent's: the child's copies of its mappings and descriptors go, nothing else.
    ::munmap(s->data, pipe_segment_header + s->capacity);
    delete s;
  }
  segments_.clear();
}

MP_DECL void pipe_segment_cache::acquire(pipe_segment_lease& lease, std::size_t size, pipe_segment_signals& signals,
                                         const std::atomic<std::uint32_t>& taken,
                                         const std::atomic<std::uint32_t>& broken, int socket) {
  namespace d = pipe_segment_detail;
  lease.cache_ = this;
  auto lend = [&](pipe_segment* s) {
    s->token = next_token_++;
    s->sent = false;
    s->word().store(s->token, std::memory_order_relaxed);
    lease.kept_ = s;
    lease.fd_ = s->fd.get();
    lease.bytes_ = {s->data + pipe_segment_header, size};
  };
  auto one_shot = [&] {
    std::size_t capacity = size;
    d::create(lease.own_fd_, lease.own_data_, capacity);
    lease.own_mapped_ = pipe_segment_header + capacity;
    lease.fd_ = lease.own_fd_.get();
    lease.bytes_ = {lease.own_data_ + pipe_segment_header, size};
  };
  std::unique_lock lock(mutex_);
  if (pid_ != ::getpid()) {
    drop_all();
    pid_ = ::getpid();
  }
  if (size > pipe_segment_budget) {
    lock.unlock();
    one_shot();
    return;
  }
  pipe_segment* watched = nullptr;  // the oldest segment, once a receiver took it: dropped if not done by `until`
  deadline until;
  for (;;) {
    // The smallest free segment that fits.
    pipe_segment* best = nullptr;
    std::size_t kept_bytes = 0;
    for (pipe_segment* s : segments_) {
      kept_bytes += s->capacity;
      if (s->capacity >= size && s->free() && (best == nullptr || s->capacity < best->capacity)) best = s;
    }
    if (best != nullptr) return lend(best);
    // Room for a new one, after dropping free segments too small for this message if need be.
    const std::size_t capacity = d::rounded(size);
    for (std::size_t i = 0; i < segments_.size();) {
      const bool room = segments_.size() < pipe_segments_kept && kept_bytes + capacity <= pipe_segment_budget;
      if (room) break;
      pipe_segment* s = segments_[i];
      if (s->free()) {
        kept_bytes -= s->capacity;
        ::munmap(s->data, pipe_segment_header + s->capacity);
        delete s;
        segments_.erase(segments_.begin() + static_cast<std::ptrdiff_t>(i));
      } else {
        ++i;
      }
    }
    if (segments_.size() < pipe_segments_kept && kept_bytes + capacity <= pipe_segment_budget) {
      auto fresh = std::make_unique<pipe_segment>();
      d::create(fresh->fd, fresh->data, capacity);
      fresh->capacity = capacity;
      segments_.push_back(fresh.get());
      return lend(fresh.release());
    }
    // Every kept segment is busy: wait for the oldest that fits, as a stream sender waits for room in the socket
    // buffer (a receiver that lags throttles its sender; a one-shot segment instead would be fresh memory, ~50x
    // slower to write here). Unless the wait cannot end: the receiving end is closed everywhere or the direction
    // broken (then the send throws), or a receiver took that segment and is gone for busy_wait without marking it
    // done (killed while copying): then it is dropped.
    pipe_segment* oldest = nullptr;
    for (pipe_segment* s : segments_)
      if (s->capacity >= size && s->sent && (oldest == nullptr ||
                                             static_cast<std::int32_t>(s->sequence - oldest->sequence) < 0))
        oldest = s;
    if (oldest == nullptr || d::cannot_end(socket, broken)) {
      lock.unlock();
      one_shot();
      return;
    }
    const bool taken_by_receiver =
        static_cast<std::int32_t>(taken.load(std::memory_order_acquire) - (oldest->sequence + 1)) >= 0;
    if (taken_by_receiver && watched != oldest) {
      watched = oldest;
      until = deadline_after(d::busy_wait);
    }
    if (taken_by_receiver && expired(until)) {
      ::munmap(oldest->data, pipe_segment_header + oldest->capacity);
      std::erase(segments_, oldest);
      delete oldest;
      watched = nullptr;
      continue;
    }
    const std::uint32_t seen = signals.done.load();
    signals.waiting.store(1);
    if (oldest->free()) continue;
    lock.unlock();
    futex_wait_bounded(signals.done, seen, taken_by_receiver ? until : deadline_after(lost_wake_period));
    lock.lock();
    if (pid_ != ::getpid()) return lock.unlock(), one_shot();
  }
}

MP_DECL segment_mappings::~segment_mappings() { drop_all(); }

MP_DECL void segment_mappings::drop_all() noexcept {
  for (const mapping& m : mappings_) ::munmap(const_cast<std::byte*>(m.data), m.length);
  mappings_.clear();
}

MP_DECL const std::byte* segment_mappings::find_or_map(int fd, std::uint64_t device, std::uint64_t inode,
                                                       std::size_t file_size, std::size_t length) noexcept {
  if (file_size > pipe_segment_header + pipe_segment_budget) return nullptr;
  std::lock_guard lock(mutex_);
  if (pid_ != ::getpid()) {
    drop_all();  // the parent's, in a forked child: fine to keep, but never counted here
    pid_ = ::getpid();
  }
  for (mapping& m : mappings_) {
    if (m.device == device && m.inode == inode && m.length >= length) {
      m.used = ++clock_;
      return m.data;
    }
  }
  // A file mapped before but shorter then (its sender grew it? mp's never do): mapped again, the old one dropped.
  std::erase_if(mappings_, [&](const mapping& m) {
    if (m.device != device || m.inode != inode) return false;
    ::munmap(const_cast<std::byte*>(m.data), m.length);
    return true;
  });
  void* data = ::mmap(nullptr, file_size, PROT_READ, MAP_SHARED, fd, 0);
  if (data == MAP_FAILED) return nullptr;
  // Room: at most pipe_segments_kept + 1 mappings and the budget (plus headers), the least recently used out first.
  auto mapped_bytes = [&] {
    std::size_t total = 0;
    for (const mapping& m : mappings_) total += m.length;
    return total;
  };
  while (!mappings_.empty() && (mappings_.size() > pipe_segments_kept ||
                                mapped_bytes() + file_size > pipe_segment_budget + 4 * pipe_segment_header)) {
    auto oldest = mappings_.begin();
    for (auto it = mappings_.begin(); it != mappings_.end(); ++it)
      if (it->used < oldest->used) oldest = it;
    ::munmap(const_cast<std::byte*>(oldest->data), oldest->length);
    mappings_.erase(oldest);
  }
  mappings_.push_back({device, inode, static_cast<const std::byte*>(data), file_size, ++clock_});
  return static_cast<const std::byte*>(data);
}

MP_DECL received_segment::received_segment(unique_fd fd, std::size_t size, pipe_segment_signals* signals,
                                           segment_mappings* mappings)
    : fd_(std::move(fd)), size_(size), signals_(signals) {
  // A memfd (F_GET_SEALS works on nothing else: never a socket, pipe or device whose read could block), holding
  // the header and the announced payload.
  struct stat st {};
  const int seals = fd_ ? sys_try("fcntl", [&] { return ::fcntl(fd_.get(), F_GET_SEALS); }) : -1;
  valid_ = seals != -1 && sys_try("fstat", [&] { return ::fstat(fd_.get(), &st); }) == 0 && st.st_size >= 0 &&
           size <= static_cast<std::size_t>(st.st_size) &&
           static_cast<std::size_t>(st.st_size) - size >= pipe_segment_header;
  // Mapped only if it cannot shrink (sealed) and is shmem (blksize a page: not hugetlbfs).
  if (valid_ && mappings != nullptr && (seals & F_SEAL_SHRINK) != 0 && st.st_blksize == 4096) {
    mapped_ = mappings->find_or_map(fd_.get(), static_cast<std::uint64_t>(st.st_dev),
                                    static_cast<std::uint64_t>(st.st_ino), static_cast<std::size_t>(st.st_size),
                                    pipe_segment_header + size);
  }
}

MP_DECL received_segment::~received_segment() {
  if (valid_ && !done_) {
    // Consumed unread (BufferTooShort): its token, then done.
    if (sys_try("pread", [&] { return ::pread(fd_.get(), &token_, sizeof token_, 0); }) ==
        static_cast<ssize_t>(sizeof token_))
      have_token_ = true;
    mark_done();
  }
}

MP_DECL bool received_segment::read_into(std::byte* out) noexcept {
  if (!valid_) return false;
  if (mapped_ != nullptr) {
    // Sealed against shrinking: every page is there. A hostile sender may change the bytes meanwhile: they are
    // copied out before anything decodes them.
    std::memcpy(&token_, mapped_, sizeof token_);
    std::memcpy(out, mapped_ + pipe_segment_header, size_);
    have_token_ = true;
    mark_done();
    return true;
  }
  // One preadv: the token, the header's rest (discarded), the payload.
  std::byte rest[pipe_segment_header - sizeof token_];
  iovec parts[3] = {{&token_, sizeof token_}, {rest, sizeof rest}, {out, size_}};
  const ssize_t n = sys_try("preadv", [&] { return ::preadv(fd_.get(), parts, 3, 0); });
  if (n < static_cast<ssize_t>(sizeof token_)) {
    done_ = true;  // not even a token: nothing to mark
    return false;
  }
  have_token_ = true;
  std::size_t got = static_cast<std::size_t>(n);
  while (got < pipe_segment_header + size_) {  // a short read: go on, until the end or the file ends
    const std::size_t at = got < pipe_segment_header ? pipe_segment_header : got;
    const std::size_t payload_at = at - pipe_segment_header;
    const ssize_t more = sys_try("pread", [&] {
      return ::pread(fd_.get(), out + payload_at, size_ - payload_at, static_cast<off_t>(at));
    });
    if (more <= 0) break;  // shrunk under us (0) or an error: not the announced bytes
    got = at + static_cast<std::size_t>(more);
  }
  mark_done();
  return got == pipe_segment_header + size_;
}

MP_DECL void received_segment::mark_done() noexcept {
  done_ = true;
  if (!have_token_) return;
  const std::uint64_t done = ~token_;
  // Fails harmlessly on a segment its (hostile) sender sealed against writing.
  (void)sys_try("pwrite", [&] { return ::pwrite(fd_.get(), &done, sizeof done, 0); });
  if (signals_ != nullptr) {
    signals_->done.fetch_add(1);
    if (signals_->waiting.exchange(0) != 0) futex_wake(signals_->done);
  }
}

}  // namespace mp::detail
