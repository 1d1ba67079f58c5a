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
//   tag_result worker -> rank 0  u64 chunk id, then the result body
//   tag_exit   rank 0 -> worker  no payload: finalize MPI and exit
//
// Why polling with a backoff rather than blocking receives: Open MPI's blocking receive spins on its progress
// engine, so idle workers would take the CPU from busy ones (a round trip measured ~32 us with spinning idle
// workers on 2 cores, 4.5 us with workers that sleep between polls). A waiter polls for a short while after the
// last message (the next task of a sequence arrives within microseconds), then sleeps between polls, up to 1 ms.
#pragma once

#include <sys/prctl.h>
#include <time.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include <mp/detail/clock.hpp>

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
};

/// Waiting for a message: spin for `spin_ns` after the last one, then sleep 2 us, 4 us, ... up to 1 ms per poll.
class backoff {
 public:
  explicit backoff(std::uint64_t spin_ns = 100'000) : spin_ns_(spin_ns), since_(monotonic_ns()) {}
  /// Something happened: poll hot again.
  void reset() noexcept {
    since_ = monotonic_ns();
    sleep_ns_ = 0;
  }
  /// One pause between two polls.
  void pause() noexcept {
    if (sleep_ns_ == 0) {
      if (monotonic_ns() - since_ < spin_ns_) {
        for (int i = 0; i < 16; ++i) cpu_relax();
        return;
      }
      sleep_ns_ = 2'000;
    }
    const timespec ts{0, static_cast<long>(sleep_ns_)};
    ::nanosleep(&ts, nullptr);
    sleep_ns_ = std::min<std::uint64_t>(sleep_ns_ * 2, 1'000'000);
  }
  /// Short sleeps as asked: the default 50 us timer slack would make a 2 us sleep a 52 us one.
  static void tighten_timer_slack() noexcept { (void)::prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); }

 private:
  std::uint64_t spin_ns_;
  std::uint64_t since_;
  std::uint64_t sleep_ns_ = 0;
};

}  // namespace mp::detail::mpi
