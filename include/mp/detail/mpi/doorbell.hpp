// doorbell: how a waiting rank on rank 0's host sleeps until a message comes, instead of polling MPI on a timer.
// Open MPI's shared-memory transport has nothing to block on: a receive either spins on its progress engine or the
// waiter polls and sleeps (protocol.hpp's backoff). On a loaded 2-CPU VM both lose: a spinning rank uses up its
// share and is descheduled for milliseconds (a round trip's 99th percentile measured 14-32 ms), and a timer
// wake-up takes 100 us and more. A futex wake-up is direct: ~20 us between the two CPUs here, whatever the load.
// So rank 0 creates one memfd page of bells (one cache line each: rank 0's, then one per worker rank of the
// group's communicator) and names it in tag_start; a worker on the same host maps it through /proc/<pid>/fd/<n>.
// After every message it sends to a rank on its host, the sender rings that rank's bell: the sequence number goes
// up, and a futex wake follows if the rank sleeps on it. A waiter past its short spin announces itself (sleepers),
// reads the sequence number, polls MPI once more, and only then sleeps on the number with a bounded timeout: a
// message sent after the poll changes the number first, so the sleep returns at once (no lost wake-up), and a
// message nobody rang for (another host, a rank without the page, the finalize handshake) is still seen when the
// timeout (the backoff's sleep, at most 1 ms) ends. Nothing crosses through the page but these wake-ups.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <new>
#include <string>
#include <utility>

#include <mp/detail/clock.hpp>
#include <mp/detail/futex.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail::mpi {

/// One rank's bell.
struct alignas(64) bell {
  std::atomic<std::uint32_t> sequence{0};  // goes up once per message sent to this rank
  std::atomic<std::uint32_t> sleepers{0};  // threads of this rank asleep (or about to sleep) on `sequence`
};

/// How long a waiter that has a bell polls hot after the last message before it sleeps on the bell: long enough
/// to catch a map's next chunk or answer (they come back to back), much shorter than the 200-300 us spins without
/// a bell, which on a loaded machine used up the spinner's CPU share and got it descheduled for milliseconds.
inline constexpr std::uint64_t bell_spin_ns = 100'000;

/// Rings: the message to this bell's rank has been handed to MPI.
inline void ring(bell& b) noexcept {
  b.sequence.fetch_add(1, std::memory_order_seq_cst);
  if (b.sleepers.load(std::memory_order_seq_cst) != 0) futex_wake(b.sequence);
}

/// The bells of a worker group: rank 0's at index 0, worker rank r's (its rank in the group's communicator) at
/// r + 1. Empty (no page) when it cannot be had: waiters then poll as before.
class doorbells {
 public:
  doorbells() = default;
  ~doorbells() { unmap(); }
  doorbells(doorbells&& other) noexcept { *this = std::move(other); }
  doorbells& operator=(doorbells&& other) noexcept {
    if (this != &other) {
      unmap();
      fd_ = std::move(other.fd_);
      bells_ = other.bells_;
      count_ = other.count_;
      other.bells_ = nullptr;
      other.count_ = 0;
    }
    return *this;
  }

  /// Rank 0: a fresh page of `count` bells (empty if the system refuses).
  static doorbells create(std::size_t count) noexcept {
    doorbells d;
    unique_fd fd(::memfd_create("mp-mpi-doorbells", MFD_CLOEXEC));
    if (!fd || ::ftruncate(fd.get(), static_cast<off_t>(bytes(count))) != 0) return d;
    if (!d.map(fd.get(), count)) return d;
    for (std::size_t i = 0; i < count; ++i) new (&d.bells_[i]) bell{};
    d.fd_ = std::move(fd);
    return d;
  }
  /// A worker on rank 0's host: rank 0's page, through its descriptor `fd` in process `pid` (empty on failure).
  static doorbells attach(int pid, int fd, std::size_t count) noexcept {
    doorbells d;
    if (pid <= 0 || fd < 0 || count == 0) return d;
    const std::string path = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd);
    unique_fd opened(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (!opened) return d;
    struct stat st {};
    if (::fstat(opened.get(), &st) != 0 || static_cast<std::size_t>(st.st_size) < bytes(count)) return d;
    (void)d.map(opened.get(), count);
    return d;
  }

  explicit operator bool() const noexcept { return bells_ != nullptr; }
  /// Rank 0's descriptor of the page (-1: none), named in tag_start.
  int fd() const noexcept { return fd_ ? fd_.get() : -1; }
  std::size_t count() const noexcept { return count_; }
  /// Bell i, or null if there is none.
  bell* at(std::size_t i) const noexcept { return i < count_ ? &bells_[i] : nullptr; }

 private:
  static std::size_t bytes(std::size_t count) noexcept {
    const std::size_t page = 4096;
    return (count * sizeof(bell) + page - 1) / page * page;
  }
  bool map(int fd, std::size_t count) noexcept {
    void* p = ::mmap(nullptr, bytes(count), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return false;
    bells_ = static_cast<bell*>(p);
    count_ = count;
    return true;
  }
  void unmap() noexcept {
    if (bells_ != nullptr) (void)::munmap(bells_, bytes(count_));
    bells_ = nullptr;
    count_ = 0;
  }

  unique_fd fd_;
  bell* bells_ = nullptr;
  std::size_t count_ = 0;
};

/// A waiter's turn at sleeping on its bell: arm() before its last poll, then sleep() if that poll found nothing.
class bell_sleep {
 public:
  explicit bell_sleep(bell* b) noexcept : bell_(b) {
    if (bell_ != nullptr) {
      bell_->sleepers.fetch_add(1, std::memory_order_seq_cst);
      seen_ = bell_->sequence.load(std::memory_order_seq_cst);
    }
  }
  ~bell_sleep() {
    if (bell_ != nullptr) bell_->sleepers.fetch_sub(1, std::memory_order_seq_cst);
  }
  bell_sleep(const bell_sleep&) = delete;
  bell_sleep& operator=(const bell_sleep&) = delete;
  /// Sleeps until the bell rings (or rang since arming) or `ns` pass.
  void sleep(std::uint64_t ns) {
    if (bell_ == nullptr) return;
    (void)futex_wait(bell_->sequence, seen_, deadline_after(std::chrono::nanoseconds(ns)));
  }

 private:
  bell* bell_;
  std::uint32_t seen_ = 0;
};

}  // namespace mp::detail::mpi
