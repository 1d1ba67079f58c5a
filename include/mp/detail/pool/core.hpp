// core: the parent side of a Pool — worker slots, the queue of pending chunks, the supervisor thread.
// One mutex guards everything; no code under it ever blocks (writes into a full inbox stop and resume when the
// worker makes room), so the supervisor, a thread waiting in AsyncResult::get() and a thread submitting work can
// all drive progress() without deadlock. Whoever waits for a result spins a little collecting results itself (the
// fast path of a sequential apply: no thread hop), then sleeps; the supervisor collects for sleepers, watches the
// factory's socket for worker exits and enforces task timeouts, sleeping in poll() when there is nothing to do.
//
// Attribution: each slot keeps the chunks sent to it in order (inflight). A worker runs them in that order and
// writes which one it is running into its shared slot (current_chunk). When it dies, results it finished are
// drained first; the chunk it was running fails (WorkerLost, or TimeoutError if we killed it for running late);
// chunks it had not started go back to the front of the queue for another worker. Nothing else is touched.
//
// The core drives jobs through the abstract `job` below; the concrete ones (apply, map, imap) are in jobs.hpp.
// The worker processes and the factory that forks them are in factory.hpp.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
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
#include <thread>
#include <vector>

#include <mp/detail/archive.hpp>
#include <mp/detail/clock.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/futex.hpp>
#include <mp/detail/pool/channel.hpp>
#include <mp/detail/pool/factory.hpp>
#include <mp/detail/pool/handles.hpp>
#include <mp/detail/pool/task.hpp>
#include <mp/detail/segment_pool.hpp>
#include <mp/detail/shm_segment.hpp>
#include <mp/detail/start_method.hpp>
#include <mp/detail/unique_fd.hpp>
#include <mp/errors.hpp>

namespace mp::detail::pool {

/// A counter a thread can sleep on until it changes: notify() after every state change of a job.
struct event {
  std::atomic<std::uint32_t> seq{0};
  std::atomic<std::uint32_t> sleepers{0};

  void notify() noexcept {
    seq.fetch_add(1);
    if (sleepers.load() != 0) futex_wake(seq);
  }
  /// Sleeps until notify() after `seen` was read, or the deadline; false on timeout.
  bool sleep(std::uint32_t seen, const deadline& until) {
    sleepers.fetch_add(1);
    bool woke = true;
    if (seq.load() == seen) woke = futex_wait(seq, seen, until);
    sleepers.fetch_sub(1);
    return woke;
  }
};

/// Work submitted to the pool: a sequence of chunks, each encoded on demand and answered by one result.
class job {
 public:
  virtual ~job() = default;
  /// The worker-side entry point for this job's chunks.
  trampoline_fn trampoline = nullptr;
  /// 0: no timeout; else a chunk running longer is killed with its worker and fails with TimeoutError.
  std::uint64_t timeout_ns = 0;
  pool::event event;
  /// Set once a chunk was sent to a worker (then the job can no longer be cancelled); guarded by the core mutex.
  bool dispatched = false;

  /// Bytes every chunk message starts with (the callable's state, an apply's arguments). Valid until the job ends.
  virtual std::span<const std::byte> prefix() = 0;
  /// The rest of chunk i's message; valid until chunk i is delivered or failed. Called under the core mutex.
  virtual std::span<const std::byte> body(std::size_t chunk) = 0;
  /// Chunk i's whole payload (prefix and body) when it travels as a segment (segment_pool.hpp): its descriptor, with
  /// its size in `size`; -1 when it goes through the ring. Called under the core mutex.
  virtual int blob(std::size_t chunk, std::size_t& size) {
    (void)chunk;
    size = 0;
    return -1;
  }
  /// Chunk i's result body (read with read_results, task.hpp). Called under the core mutex; must not block.
  virtual void deliver(std::size_t chunk, input_archive& result) = 0;
  /// Chunk i failed without a result (worker lost, timeout, pool terminated). Called under the core mutex.
  virtual void fail(std::size_t chunk, std::exception_ptr error) = 0;
};

/// The Pool's settings as the core uses them.
struct config {
  std::size_t processes = 1;
  std::function<void()> initializer;
  std::size_t maxtasksperchild = 0;
  std::uint64_t task_timeout_ns = 0;
  StartMethod start_method = StartMethod::fork;  // spawn/forkserver: the factory is a fresh program
  std::uint64_t initializer_address = 0;   // spawn/forkserver: the initializer's trampoline (this process's address)
  std::vector<std::byte> initializer_state;  // spawn/forkserver: its callable and arguments
  std::vector<int> initializer_fds;        // spawn/forkserver: their handles' descriptors (borrowed)
  std::string parent_name;                 // current_process().name(), as the workers' parent_process()
};

class core {
 public:
  /// Recycled segments for big task payloads (task.hpp's encode_payload and blob_chunk): they live with the pool.
  shared_segment_pool& payload_segments() noexcept { return payload_segments_; }
  /// How many of them to keep: two chunks may be in flight per worker (the prefetch), one more being written.
  std::size_t payload_segments_kept() const noexcept { return 2 * config_.processes + 2; }
  /// Starts the factory (factory.hpp) and through it the workers, then the supervisor thread.
  MP_DECL explicit core(config settings);
  MP_DECL ~core();
  core(const core&) = delete;
  core& operator=(const core&) = delete;

  std::size_t processes() const noexcept { return config_.processes; }
  /// True when the workers are forks of a fresh program (spawn, forkserver): only what serializes reaches them.
  bool fresh() const noexcept { return config_.start_method != StartMethod::fork; }
  /// True in the process that created the pool; its copy in a forked child must not be used (no supervisor there,
  /// and a mutex copied while another thread held it).
  bool owned_here() const noexcept { return owner_ == ::getpid(); }
  /// Error unless owned_here().
  void require_owner(const char* caller) const {
    if (!owned_here()) throw_not_owner(caller);
  }

  /// Queues chunks [first, first + count) of job; Error if the pool no longer accepts work. `handles`: the
  /// descriptors the chunks carry (null: none), still alive in the caller during the call.
  MP_DECL void submit(std::shared_ptr<job> job, std::size_t first, std::size_t count, const char* caller,
                      std::shared_ptr<submission_handles> handles = nullptr);
  /// Sleeps until done() holds or the deadline passes (false), collecting results meanwhile.
  template <class Done>
  bool wait(pool::event& event, Done&& done, const deadline& until = {});

  /// Takes the job's chunks out of the queue if none was sent to a worker yet; true if it did (AsyncResult::cancel).
  MP_DECL bool cancel(const job& job);
  /// True while a worker runs one of the job's chunks (AsyncResult::running).
  MP_DECL bool running(const job& job);

  MP_DECL void close();
  MP_DECL void terminate();
  MP_DECL void join();
  /// Collects and dispatches whatever is ready; never blocks.
  void progress() {
    std::lock_guard lock(mutex_);
    progress_locked();
  }

 private:
  enum class state { running, closed, stopping, stopped, terminated };
  struct inflight {
    std::shared_ptr<pool::job> job;
    std::size_t chunk;
    std::uint64_t id;
    std::shared_ptr<submission_handles> handles;
  };
  struct pending {
    std::shared_ptr<pool::job> job;
    std::size_t next;
    std::size_t end;
    std::shared_ptr<submission_handles> handles;
  };
  struct slot_state {
    pid_t pid = 0;             // 0 until the factory reports it
    unique_fd pidfd;           // that exact process, to reap it if the factory dies and it is re-parented to us
    bool live = false;         // spawn requested and not yet reported dead
    bool stop_sent = false;
    std::size_t sent = 0;      // chunks dispatched to the current worker (maxtasksperchild)
    std::deque<inflight> chunks;
    unique_fd socket;          // our end of the worker's socket: descriptors of handles (handles.hpp)
    worker_view handles;       // the shared objects the worker keeps
    // The message being written into the inbox: header, then handle section, then prefix, then body.
    bool writing = false;
    bool wake_due = false;     // dispatch_locked wrote to it and wakes it once done
    task_header header{};
    handle_section section;
    std::span<const std::byte> prefix, body;
    std::size_t written = 0;
    // The result being read from the outbox.
    std::vector<std::byte> rx;
    std::size_t rx_have = 0;
    std::size_t rx_need = 0;   // 0: reading the length
    // The worker's recycled result segments (its thread_segment_pool: 4, half the budget), mapped once each.
    std::unique_ptr<segment_view_cache> big_results =
        std::make_unique<segment_view_cache>(4, pool_segment_budget / 2, pool_segment_budget / 2);
    std::uint64_t timed_out = 0;  // chunk id we killed the worker for
    bool kill_sent = false;
  };

  [[noreturn]] MP_DECL void throw_not_owner(const char* caller) const;
  MP_DECL bool progress_locked();
  MP_DECL bool read_factory_locked();
  MP_DECL bool drain_locked(std::size_t s);
  MP_DECL void handle_result_locked(std::size_t s, std::span<const std::byte> message);
  MP_DECL void worker_exited_locked(std::size_t s, pid_t pid, int code);
  MP_DECL bool dispatch_locked();
  MP_DECL bool flush_locked(std::size_t s, bool wake = true);
  MP_DECL void start_message_locked(std::size_t s, const task_header& header, std::span<const std::byte> prefix,
                                    std::span<const std::byte> body, bool wake = true);
  MP_DECL void reset_handles_locked(std::size_t s) noexcept;
  MP_DECL std::optional<std::uint64_t> check_timeouts_locked();
  MP_DECL void spawn_locked(std::size_t s);
  MP_DECL void request_locked(const factory_request& request, int fd = -1);
  MP_DECL void fail_everything_locked(const std::function<std::exception_ptr()>& make_error);
  MP_DECL void break_pool_locked(const std::string& why);
  MP_DECL void supervise();
  MP_DECL void stop_supervisor_and_factory() noexcept;
  MP_DECL void reap_factory() noexcept;

  config config_;
  pid_t owner_ = ::getpid();
  shm_segment segment_;
  shared_region* shared_ = nullptr;
  unique_fd wake_fd_;
  unique_fd factory_;  // our end of the factory's socket
  pid_t factory_pid_ = 0;
  unique_fd factory_status_;  // forkserver: the server writes the factory's wait status here when it reaps it
  unique_fd factory_pidfd_;   // forkserver: to reap the factory if the server died and it was re-parented to us
  std::thread supervisor_;
  std::atomic<bool> stop_supervisor_{false};
  std::atomic<bool> factory_gone_{false};
  std::atomic<std::uint32_t> callers_spinning_{0};
  bool crowded_ = false;  // more workers than CPUs: a parent thread spinning for results takes a worker's CPU

  shared_segment_pool payload_segments_;
  std::mutex teardown_mutex_;  // serializes stop_supervisor_and_factory()
  std::mutex mutex_;
  std::condition_variable changed_;   // outstanding_ or live workers changed
  handle_table handles_;              // guarded by mutex_; declared before what refers to it (slots_, pending_)
  state state_ = state::running;      // guarded by mutex_
  std::string broken_;                // guarded by mutex_; why the pool cannot run tasks any more
  std::vector<slot_state> slots_;     // guarded by mutex_
  std::deque<pending> pending_;       // guarded by mutex_
  std::size_t outstanding_ = 0;       // chunks submitted and not yet answered; guarded by mutex_
  std::size_t live_ = 0;              // workers not yet reported dead; guarded by mutex_
  std::uint64_t next_id_ = 1;         // guarded by mutex_
  std::size_t barren_deaths_ = 0;     // workers in a row that died without finishing a chunk; guarded by mutex_
  std::string initializer_error_;     // guarded by mutex_
  std::uint64_t ewma_chunk_ns_ = 1'000'000;  // typical chunk run time, for the prefetch depth; guarded by mutex_
  std::vector<std::uint64_t> dispatched_ns_;  // per slot: when its front chunk was sent; guarded by mutex_
  std::vector<std::size_t> dispatched_to_;   // dispatch_locked's slots to wake (kept: no allocation); mutex_
  bool supervisor_resting_ = false;  // crowded, nothing outstanding: it sleeps without looking; guarded by mutex_
};

template <class Done>
bool core::wait(pool::event& event, Done&& done, const deadline& until) {
  if (done()) return true;
  require_owner("AsyncResult::wait");
  // Spin a little, collecting results ourselves: a sequential apply() round trip then needs no thread hop. Not in
  // a crowded pool (more workers than CPUs): there the spin would take the CPU of a worker we wait for.
  if (crowded_) {
    progress();  // (spin_until would still go 64 rounds)
  } else {
    callers_spinning_.fetch_add(1);
    shared_->collectors_awake.fetch_add(1);
    spin_until(
        [&] {
          progress();
          return done() || (until && std::chrono::steady_clock::now() >= *until);
        },
        std::chrono::microseconds(50));
    shared_->collectors_awake.fetch_sub(1);
    callers_spinning_.fetch_sub(1);
    progress();  // results published while we counted as awake did not wake the supervisor
  }
  for (;;) {
    const std::uint32_t seen = event.seq.load();
    if (done()) return true;
    if (!event.sleep(seen, until)) return done();
  }
}

}  // namespace mp::detail::pool

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/pool/core.ipp>
#endif
