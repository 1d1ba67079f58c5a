// engine: rank 0's side of an mp::mpi::Pool — the queue of chunks waiting for a worker rank, the chunks each rank
// holds, and progress(): receive what the ranks answered, hand out what waits. There is no thread of its own:
// whoever waits for a result (or submits work) drives progress, polling with a backoff (protocol.hpp) under the
// process's MPI lock (runtime.hpp), and sleeping on its doorbell (doorbell.hpp) when the ranks share its host. So work queued behind busy ranks is handed out while rank 0 waits for
// something, as Python's Pool does in its result handler thread, but without a thread hop on the fast path.
//
// Each rank holds at most `depth` chunks (2: the next one is already there when it finishes one), and runs them in
// order; its answers name the chunk. Sends are non-blocking (MPI_Isend): a large payload waits in MPI's rendezvous
// until the rank takes it, straight from the job's buffers (small messages are packed into one buffer first). The
// receiver moves it (Open MPI's single copy, CMA, on one host; RDMA or the network's own engine across hosts), so
// rank 0 need not poll hot while its sends are pending: the CPU goes to the ranks copying. A send to another host
// (TCP) moves as the sender polls, so then rank 0 polls at least every 20 us.
// A dead rank on rank 0's host is noticed through its pidfd (every 100 ms while waiting): its chunks fail with
// WorkerLost and the pool goes on with the others (this needs mpirun --enable-recovery; by default mpirun aborts
// the whole job within about two seconds of a rank's death). Ranks on other hosts are not watched.
#pragma once

#include <mpi.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <mp/detail/archive.hpp>
#include <mp/detail/clock.hpp>
#include <mp/detail/mpi/doorbell.hpp>
#include <mp/detail/mpi/protocol.hpp>
#include <mp/detail/mpi/runtime.hpp>
#include <mp/detail/pool/task.hpp>

namespace mp::detail::mpi {

/// Work submitted to the engine: chunks encoded on demand and answered one result body each.
class job {
 public:
  virtual ~job() = default;
  /// Rank 0's address of the worker-side entry of this job's chunks.
  pool::trampoline_fn trampoline = nullptr;
  /// 0: none; else a chunk running longer is killed on its rank and fails with TimeoutError.
  std::uint64_t timeout_ns = 0;

  /// Bytes every chunk message starts with (the callable's state; an apply's arguments).
  virtual std::span<const std::byte> prefix() = 0;
  /// The rest of chunk i's message; valid until chunk i is answered.
  virtual std::span<const std::byte> body(std::size_t chunk) = 0;
  /// Chunk i's result body (pool::read_results). Under the MPI lock; must not block.
  virtual void deliver(std::size_t chunk, input_archive& result) = 0;
  /// Chunk i failed without a result (timeout, lost rank, terminate, cancel). Under the MPI lock.
  virtual void fail(std::size_t chunk, std::exception_ptr error) = 0;
  /// Chunk i was handed to a rank.
  virtual void started(std::size_t) {}
  /// Nonzero: a chunk's result may come as a block received in place (protocol.hpp), of elements of this size.
  std::uint64_t result_block = 0;
  /// Chunk i's result is one block of `length` elements: where to receive it (empty: cannot). Under the MPI lock.
  virtual std::span<std::byte> block(std::size_t, std::uint64_t) { return {}; }
  /// The block of chunk i has been received where block() said: the chunk succeeded. Under the MPI lock.
  virtual void deliver_block(std::size_t) {}
};

/// The Pool's settings as the engine uses them.
struct engine_config {
  std::size_t processes = 0;
  std::uint64_t task_timeout_ns = 0;
  pool::trampoline_fn initializer = nullptr;  // apply_trampoline of the initializer's call; null: none
  std::vector<std::byte> initializer_payload;
};

class engine {
 public:
  /// Takes a worker group (runtime.hpp) and starts the workers: module table, initializer. Error if the
  /// initializer fails on a rank (with that rank's error).
  inline explicit engine(engine_config config);
  inline ~engine();
  engine(const engine&) = delete;
  engine& operator=(const engine&) = delete;

  std::size_t processes() const noexcept { return slots_.size(); }
  std::uint64_t task_timeout_ns() const noexcept { return config_.task_timeout_ns; }

  /// Queues chunks [first, first + count) of job; Error once the pool is closed.
  inline void submit(std::shared_ptr<job> job, std::size_t first, std::size_t count, const char* caller);
  /// Removes chunk `chunk` of job from the queue if no rank has it yet; true if it was removed.
  inline bool withdraw(const job* job, std::size_t chunk);
  /// Drives progress until done() or the deadline (false). Callbacks of finished results run here, unlocked.
  template <class Done>
  bool wait(Done&& done, const deadline& until = {});
  /// One round of progress without waiting.
  inline void poll();
  /// Queues `callback` to run once the MPI lock is released (done callbacks call back into the pool).
  static inline void defer(std::function<void()> callback);
  /// Runs the deferred callbacks; call without the MPI lock.
  static inline void run_callbacks();

  inline void close();
  inline void terminate();
  inline void join();

 private:
  enum class state { running, closed, terminated, joined };
  struct inflight {
    std::shared_ptr<mpi::job> job;
    std::size_t chunk;
    std::uint64_t id;
    task_header header;              // the message starts here (stable: deque elements do not move)
    std::vector<std::byte> packed;   // small messages: header, prefix and body in one buffer
    MPI_Request requests[3] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL, MPI_REQUEST_NULL};  // header, prefix, body
    bool dropped = false;            // failed already (terminate): its answer is ignored
  };
  struct pending {
    std::shared_ptr<mpi::job> job;
    std::size_t next;
    std::size_t end;
  };
  struct slot {
    worker_slot* worker;
    std::deque<inflight> chunks;
    std::uint64_t last_answer = 0;  // when it last answered: the most recent is the hottest
  };

  /// A slot's rank as mp::mpi::rank() numbers it on that worker (spawned groups count from 1).
  inline int shown_rank(const slot& s) const noexcept;
  inline bool progress_locked();
  inline bool receive_locked();
  inline void receive_block_locked(slot& s, inflight& chunk, bool wanted);
  inline bool dispatch_locked();
  inline void test_sends_locked();
  inline void send_locked(slot& s, std::shared_ptr<mpi::job> job, std::size_t chunk);
  inline void check_ranks_locked();
  inline void rank_lost_locked(slot& s);
  inline void start_workers();

  engine_config config_;
  worker_group* group_ = nullptr;
  std::vector<slot> slots_;
  std::deque<pending> pending_;
  std::atomic<std::size_t> outstanding_{0};  // chunks submitted and not yet answered or failed (read unlocked)
  std::uint64_t next_id_ = 1;
  std::uint64_t last_check_ = 0;
  bool sending_ = false;         // some send has not completed
  bool sending_remote_ = false;  // ... to a rank on another host: its data moves only as rank 0 polls
  state state_ = state::running;
  std::vector<std::byte> rx_;
  std::vector<inflight> graveyard_;  // chunks of dead ranks: MPI may still read their messages
  doorbells bells_;                  // rank 0's (index 0) and the worker ranks' (1 + rank) on this host
};

template <class Done>
bool engine::wait(Done&& done, const deadline& until) {
  bell* const own = bells_.at(0);
  // With a bell: a lone task's answer is awaited asleep at once (a spin would only take the CPU its rank needs);
  // while several chunks are out (a map), answers come back to back, and a short spin catches them.
  backoff pause(own != nullptr ? bell_spin_ns : 200'000);
  for (;;) {
    bool moved = false;
    bool pushing = false;
    // Past the spin, the bell is armed before this poll: an answer rung after it wakes the sleep below at once.
    std::optional<bell_sleep> armed;
    if (own != nullptr && (!pause.spinning() || outstanding_.load(std::memory_order_relaxed) < 2)) armed.emplace(own);
    {
      std::lock_guard lock(mpi_mutex());
      moved = progress_locked();
      // Open MPI's probe sees a message that came since the previous poll only on the next one: before sleeping
      // on the bell, look twice.
      if (!moved && armed) moved = progress_locked();
      pushing = sending_remote_;
    }
    run_callbacks();
    if (done()) return true;
    if (expired(until)) return false;
    if (moved) {
      pause.reset();
      continue;
    }
    if (armed) {
      pause.pause(*armed, pushing ? 20'000 : 1'000'000);
    } else {
      pause.pause(pushing ? 20'000 : 1'000'000);
    }
  }
}

}  // namespace mp::detail::mpi

#include <mp/detail/mpi/engine.ipp>
