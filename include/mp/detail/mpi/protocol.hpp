// protocol: the messages rank 0 and its worker ranks exchange over MPI, and the polling both sides wait with.
// Every message is MPI_BYTE on one communicator (MPI_COMM_WORLD when launched by mpirun, the intercommunicator to
// the spawned group otherwise); its tag says what it is. MPI keeps messages of one sender in order, and a worker
// receives with MPI_ANY_TAG, so control and task messages reach it in the order rank 0 sent them.
//
//   tag_start  rank 0 -> worker  loaded_modules() of rank 0, then the initializer as a task (trampoline 0: none)
//   tag_hello  worker -> rank 0  i32 pid, host name, then a result body (the initializer's outcome, task.hpp)
//   tag_task   rank 0 -> worker  task_header (chunk id, trampoline, timeout, sizes), then the payload (task.hpp);
//                                 a large payload (split) follows instead as one or two tag_part messages, prefix
//                                 then body, each received in place: contiguous buffers on both sides let Open MPI
//                                 move them with one copy (CMA) without the sender's help
//   tag_result worker -> rank 0  u64 chunk id, u8 outcome, i32 code, then the result body; when the task asked for
//                                 it (result_block != 0) and an apply's result is one big block (a std::vector of
//                                 bitwise values, a std::string: is_single_block_v), the block leaves the message
//                                 (outcome block_follows) and follows as one tag_part message, which rank 0
//                                 receives straight into the result's own storage
//   tag_exit   rank 0 -> worker  no payload: finalize MPI and exit
//
// Why polling with a backoff rather than blocking receives: Open MPI's blocking receive spins on its progress
// engine, so idle workers would take the CPU from busy ones (a round trip measured ~32 us with spinning idle
// workers on 2 cores, 4.5 us with workers that sleep between polls). A waiter polls for a short while after the
// last message (the next task of a sequence arrives within microseconds), then sleeps between polls for a fraction
// of the time it has waited, up to 1 ms. On rank 0's host the sleep is on a futex bell that the sender rings after
// each message (doorbell.hpp), so it ends when the message comes rather than when a timer fires.
#pragma once

#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include <mp/detail/clock.hpp>
#include <mp/detail/mpi/doorbell.hpp>

namespace mp::detail::mpi {

inline constexpr int tag_start = 7101;
inline constexpr int tag_hello = 7102;
inline constexpr int tag_task = 7103;
inline constexpr int tag_result = 7104;
inline constexpr int tag_exit = 7105;
inline constexpr int tag_part = 7106;

/// Payloads up to this size travel inside the tag_task message (one copy into it beats a second message).
inline constexpr std::size_t packed_limit = 65536;

/// Header of a tag_task message.
struct task_header {
  std::uint64_t chunk_id;
  std::uint64_t trampoline;  // rank 0's address of the trampoline
  std::uint64_t timeout_ns;  // 0: none
  std::uint64_t prefix_bytes;
  std::uint64_t body_bytes;
  std::uint64_t split;       // 1: prefix and body follow as tag_part messages (each sent only if not empty)
  std::uint64_t result_block;  // 0, or the element size of an apply's single-block result: it may come apart
};

/// Results and payloads from this size up travel as a block of their own (result_block).
inline constexpr std::size_t block_limit = packed_limit;

/// Asks for huge pages behind [data, data + bytes) before it is first touched: fresh memory costs ~12.5 us per
/// 4 KiB page to fault in on a small VM (16 MiB: 50 ms), huge pages ~11 GB/s. Only the 2 MiB-aligned interior of a
/// buffer of 4 MiB or more; a no-op where transparent huge pages are off.
inline void advise_huge(void* data, std::size_t bytes) noexcept {
  constexpr std::uintptr_t huge = 2u << 20;
  if (bytes < 2 * huge) return;
  const auto begin = (reinterpret_cast<std::uintptr_t>(data) + huge - 1) & ~(huge - 1);
  const auto end = (reinterpret_cast<std::uintptr_t>(data) + bytes) & ~(huge - 1);
  if (end > begin) (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

/// Waiting for a message: spin for `spin_ns` after the last one, then sleep a fraction of the time waited so far
/// (1/8: the wake-up comes at most ~12% late), from 2 us up to 1 ms per poll (reached after ~8 ms idle). While it
/// sleeps, the thread's timer slack is 1 ns (restored by the destructor): the default 50 us slack would make every
/// short sleep a 50 us one, and round trips of a few microseconds ones of a hundred.
class backoff {
 public:
  explicit backoff(std::uint64_t spin_ns = 300'000) : spin_ns_(spin_ns), since_(monotonic_ns()) {}
  ~backoff() {
    if (saved_slack_ >= 0) (void)::prctl(PR_SET_TIMERSLACK, static_cast<unsigned long>(saved_slack_), 0, 0, 0);
  }
  backoff(const backoff&) = delete;
  backoff& operator=(const backoff&) = delete;
  /// Something happened: poll hot again.
  void reset() noexcept { since_ = monotonic_ns(); }
  /// Spin this long after the last message from now on (a waiter that has a bell spins less).
  void spin_for(std::uint64_t ns) noexcept { spin_ns_ = ns; }
  /// True while the next pause spins: a waiter with a bell arms it (bell_sleep) only once this is false.
  bool spinning() const noexcept { return monotonic_ns() - since_ < spin_ns_; }
  /// One pause between two polls, sleeping at most `longest_ns`.
  void pause(std::uint64_t longest_ns = 1'000'000) noexcept {
    const std::uint64_t waited = monotonic_ns() - since_;
    if (waited < spin_ns_) {
      for (int i = 0; i < 16; ++i) cpu_relax();
      return;
    }
    slack_1ns();
    const std::uint64_t ns = std::clamp<std::uint64_t>(waited / 8, 2'000, std::max<std::uint64_t>(longest_ns, 2'000));
    const timespec ts{0, static_cast<long>(ns)};
    ::nanosleep(&ts, nullptr);
  }
  /// The pause of a waiter whose bell was armed before its last poll: sleeps on the bell until it rings, at most
  /// as long as pause() would (but at least 100 us, since the ring, not the timer, is what wakes it as a rule).
  void pause(bell_sleep& armed, std::uint64_t longest_ns = 1'000'000) {
    slack_1ns();
    const std::uint64_t waited = monotonic_ns() - since_;
    const std::uint64_t longest = std::max<std::uint64_t>(longest_ns, 2'000);
    armed.sleep(std::clamp<std::uint64_t>(waited / 8, std::min<std::uint64_t>(100'000, longest), longest));
  }

 private:
  void slack_1ns() noexcept {
    if (saved_slack_ < 0) {
      saved_slack_ = ::prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
      if (saved_slack_ >= 0) (void)::prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    }
  }

  std::uint64_t spin_ns_;
  std::uint64_t since_;
  long saved_slack_ = -1;  // the thread's timer slack before the first sleep; -1: not changed
};

}  // namespace mp::detail::mpi
