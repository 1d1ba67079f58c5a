// pool_core: the parent side of a Pool — worker slots, the queue of pending chunks, the supervisor thread.
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
// Start methods: under fork the factory is forked from this process; under spawn and forkserver it is a fresh
// copy of the program (started through mp::Process's spawned-child path by <mp/pool.hpp>) that receives the
// shared segment, the eventfd and its socket by SCM_RIGHTS and the settings as bytes (pool_factory_entry). Either
// way the workers are forks of the single-threaded factory. The factory is not always our child (under forkserver
// it is the server's): its death is seen as end of file on its socket, and it is reaped by whoever is its parent.
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <mp/detail/archive.hpp>
#include <mp/detail/code_address.hpp>
#include <mp/detail/futex.hpp>
#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/pool_channel.hpp>
#include <mp/detail/pool_factory.hpp>
#include <mp/detail/pool_task.hpp>
#include <mp/detail/registry.hpp>
#include <mp/detail/shm_segment.hpp>
#include <mp/detail/spawn.hpp>
#include <mp/detail/child_os.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/detail/type_name.hpp>
#include <mp/detail/unique_fd.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

/// A counter a thread can sleep on until it changes: notify() after every state change of a job.
struct pool_event {
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
class pool_job {
 public:
  virtual ~pool_job() = default;
  /// The worker-side entry point for this job's chunks.
  pool_trampoline trampoline = nullptr;
  /// 0: no timeout; else a chunk running longer is killed with its worker and fails with TimeoutError.
  std::uint64_t timeout_ns = 0;
  pool_event event;

  /// Bytes every chunk message starts with (the callable's state, an apply's arguments). Valid until the job ends.
  virtual std::span<const std::byte> prefix() = 0;
  /// The rest of chunk i's message; valid until chunk i is delivered or failed. Called under the core mutex.
  virtual std::span<const std::byte> body(std::size_t chunk) = 0;
  /// Chunk i's result body (see pool_task.hpp). Called under the core mutex; must not block.
  virtual void deliver(std::size_t chunk, input_archive& result) = 0;
  /// Chunk i failed without a result (worker lost, timeout, pool terminated). Called under the core mutex.
  virtual void fail(std::size_t chunk, std::exception_ptr error) = 0;
};

/// Reads the failure that ends a result body, if any: RemoteError(type, message).
inline std::exception_ptr pool_read_failure(input_archive& ar) {
  std::uint8_t failed = 0;
  ar.read_bytes(&failed, 1, "failure flag");
  if (failed == 0) return nullptr;
  std::string type;
  std::string message;
  ar(type, message);
  return std::make_exception_ptr(RemoteError(std::move(type), message));
}

struct pool_config {
  std::size_t processes = 1;
  std::function<void()> initializer;
  std::size_t maxtasksperchild = 0;
  std::uint64_t task_timeout_ns = 0;
  StartMethod start_method = StartMethod::fork;  // spawn/forkserver: the factory is a fresh program
  std::uint64_t initializer_address = 0;   // spawn/forkserver: the initializer's function (this process's address)
  std::string parent_name;                 // spawn/forkserver: current_process().name(), for the factory
};

/// What a fresh factory receives as bytes (the descriptors travel beside them: segment, eventfd, socket).
struct pool_factory_boot {
  std::uint64_t processes = 0;
  std::uint64_t maxtasksperchild = 0;
  std::uint64_t initializer = 0;       // the parent's address of a void() function; 0: none
  std::vector<loaded_module> modules;  // the parent's, to translate its code addresses

  template <class Archive>
  void serialize(Archive& ar) {
    ar(processes, maxtasksperchild, initializer, modules);
  }
};

/// The result body of a chunk that could not even start (its trampoline could not be found): no outputs, the error.
inline void pool_encode_chunk_failure(std::vector<std::byte>& out) {
  const std::uint64_t none = 0;
  out.insert(out.end(), reinterpret_cast<const std::byte*>(&none), reinterpret_cast<const std::byte*>(&none) + 8);
  pool_encode_current_exception(out);
}

/// The worker process: runs the initializer, then chunks until told to stop or its task budget is spent.
[[noreturn]] inline void pool_worker_main(const pool_link& link, std::size_t slot, const pool_config& config) {
  pool_slot_shared& mine = link.shared.slot(slot);
  std::vector<std::byte> out;
  if (config.initializer) {
    try {
      config.initializer();
    } catch (...) {
      // Tell the parent why (chunk id 0), so a pool whose initializer always fails reports it instead of looping.
      out.resize(sizeof(pool_result_header));
      pool_encode_chunk_failure(out);
      const pool_result_header header{out.size() - sizeof(std::uint64_t), 0};
      std::memcpy(out.data(), &header, sizeof header);
      pool_write_all(link, mine.outbox, out.data(), out.size());
      pool_flush_std_streams();
      ::_exit(1);
    }
  }
  std::vector<std::byte> task;
  for (std::size_t done = 0;;) {
    pool_task_header header{};
    pool_read_exact(link, mine.inbox, reinterpret_cast<std::byte*>(&header), sizeof header);
    task.resize(header.length - (sizeof header - sizeof header.length));
    pool_read_exact(link, mine.inbox, task.data(), task.size());
    if (header.trampoline == 0) {
      pool_flush_std_streams();
      ::_exit(0);
    }
    mine.started_ns.store(monotonic_ns());
    mine.current_chunk.store(header.chunk_id);
    if (header.timeout_ns != 0) link.wake_parent();  // the supervisor must arm this task's deadline
    out.resize(sizeof(pool_result_header));
    pool_trampoline run = nullptr;
    try {
      run = pool_trampoline_from(header.trampoline);  // translated under spawn/forkserver: may fail
    } catch (...) {
      pool_encode_chunk_failure(out);
    }
    if (run != nullptr) run(task, out);
    pool_flush_task_output();
    const pool_result_header result{out.size() - sizeof(std::uint64_t), header.chunk_id};
    std::memcpy(out.data(), &result, sizeof result);
    pool_write_all(link, mine.outbox, out.data(), out.size());
    mine.current_chunk.store(0);
    if (config.maxtasksperchild != 0 && ++done >= config.maxtasksperchild) ::_exit(0);
  }
}

/// The fresh program a Pool started by spawn or forkserver runs as its factory (called by mp::Process's
/// spawned-child path with the descriptors in current_fd_inbox()); never returns.
inline void pool_factory_entry(std::span<const std::byte> bytes) {
  // Parent death shows as end of file on the factory socket, as for a forked factory. The death signal the
  // spawned-child path armed would fire when the *thread* that created the Pool ends (PR_SET_PDEATHSIG follows
  // the creating thread), which may happen while the Pool lives on in another thread.
  ::prctl(PR_SET_PDEATHSIG, 0);
  fd_inbox* box = current_fd_inbox();
  if (box == nullptr || box->fds.size() != 3 || !box->fds[0] || !box->fds[1] || !box->fds[2])
    throw ProcessError("Pool worker factory: expected 3 descriptors from the Pool's process (segment, eventfd, socket)");
  pool_factory_boot boot;
  input_archive ar(bytes);
  ar(boot);
  unique_fd wake = std::move(box->fds[1]);
  unique_fd sock = std::move(box->fds[2]);
  const shm_segment segment = shm_segment::from_fd(std::move(box->fds[0]), "mp-pool");
  const std::size_t n = static_cast<std::size_t>(boot.processes);
  if (n == 0 || n > 4096 || segment.size() < pool_shared::bytes_for(n))
    throw ProcessError("Pool worker factory: a segment of " + std::to_string(segment.size()) + " bytes for " +
                       std::to_string(n) + " workers");
  const code_translator translator(boot.modules);
  pool_worker_code_map() = &translator;  // inherited by every worker forked below
  pool_config config;
  config.processes = n;
  config.maxtasksperchild = static_cast<std::size_t>(boot.maxtasksperchild);
  if (boot.initializer != 0) config.initializer = reinterpret_cast<void (*)()>(translator.translate(boot.initializer));
  const pool_link link{*static_cast<pool_shared*>(segment.data()), wake.get()};
  pool_factory_main(sock.get(), n, [&](std::size_t slot) {
    try {
      pool_worker_main(link, slot, config);
    } catch (...) {
      ::_exit(70);
    }
  });
}

class pool_core {
 public:
  explicit pool_core(pool_config config);
  ~pool_core();
  pool_core(const pool_core&) = delete;
  pool_core& operator=(const pool_core&) = delete;

  std::size_t processes() const noexcept { return config_.processes; }
  /// True when the workers are forks of a fresh program (spawn, forkserver): only what serializes reaches them.
  bool fresh() const noexcept { return config_.start_method != StartMethod::fork; }
  /// True in the process that created the pool; its copy in a forked child must not be used (no supervisor there,
  /// and a mutex copied while another thread held it).
  bool owned_here() const noexcept { return owner_ == ::getpid(); }
  /// Error unless owned_here().
  void require_owner(const char* caller) const {
    if (!owned_here())
      throw Error(std::string(caller) + ": this Pool belongs to process " + std::to_string(owner_) +
                  ", not to this process (" + std::to_string(::getpid()) +
                  "); a Pool works only in the process that created it: create one here");
  }

  /// Queues chunks [first, first + count) of job; Error if the pool no longer accepts work.
  void submit(std::shared_ptr<pool_job> job, std::size_t first, std::size_t count, const char* caller);
  /// Sleeps until done() holds or the deadline passes (false), collecting results meanwhile.
  template <class Done>
  bool wait(pool_event& event, Done&& done, const deadline& until = {});

  void close();
  void terminate();
  void join();
  /// Collects and dispatches whatever is ready; never blocks.
  void progress() {
    std::lock_guard lock(mutex_);
    progress_locked();
  }

 private:
  enum class state { running, closed, stopping, stopped, terminated };
  struct inflight {
    std::shared_ptr<pool_job> job;
    std::size_t chunk;
    std::uint64_t id;
  };
  struct pending {
    std::shared_ptr<pool_job> job;
    std::size_t next;
    std::size_t end;
  };
  struct slot_state {
    pid_t pid = 0;             // 0 until the factory reports it
    unique_fd pidfd;           // that exact process, to reap it if the factory dies and it is re-parented to us
    bool live = false;         // spawn requested and not yet reported dead
    bool stop_sent = false;
    std::size_t sent = 0;      // chunks dispatched to the current worker (maxtasksperchild)
    std::deque<inflight> chunks;
    // The message being written into the inbox: header, then prefix, then body.
    bool writing = false;
    pool_task_header header{};
    std::span<const std::byte> prefix, body;
    std::size_t written = 0;
    // The result being read from the outbox.
    std::vector<std::byte> rx;
    std::size_t rx_have = 0;
    std::size_t rx_need = 0;   // 0: reading the length
    std::uint64_t timed_out = 0;  // chunk id we killed the worker for
    bool kill_sent = false;
  };

  bool progress_locked();
  bool read_factory_locked();
  bool drain_locked(std::size_t s);
  void handle_result_locked(std::size_t s, std::span<const std::byte> message);
  void worker_exited_locked(std::size_t s, pid_t pid, int code);
  bool dispatch_locked();
  bool flush_locked(std::size_t s);
  void start_message_locked(std::size_t s, const pool_task_header& header, std::span<const std::byte> prefix,
                            std::span<const std::byte> body);
  std::optional<std::uint64_t> check_timeouts_locked();
  void spawn_locked(std::size_t s);
  void request_locked(const pool_factory_request& request);
  void fail_everything_locked(const std::function<std::exception_ptr()>& make_error);
  void break_pool_locked(const std::string& why);
  void supervise();
  void stop_supervisor_and_factory() noexcept;
  void reap_factory() noexcept;

  pool_config config_;
  pid_t owner_ = ::getpid();
  shm_segment segment_;
  pool_shared* shared_ = nullptr;
  unique_fd wake_fd_;
  unique_fd factory_;  // our end of the factory's socket
  pid_t factory_pid_ = 0;
  unique_fd factory_status_;  // forkserver: the server writes the factory's wait status here when it reaps it
  unique_fd factory_pidfd_;   // forkserver: to reap the factory if the server died and it was re-parented to us
  std::thread supervisor_;
  std::atomic<bool> stop_supervisor_{false};
  std::atomic<bool> factory_gone_{false};
  std::atomic<std::uint32_t> callers_spinning_{0};

  std::mutex teardown_mutex_;  // serializes stop_supervisor_and_factory()
  std::mutex mutex_;
  std::condition_variable changed_;   // outstanding_ or live workers changed
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
};

// ---------------------------------------------------------------------------------------------------------------

inline pool_core::pool_core(pool_config config) : config_(std::move(config)) {
  const std::size_t n = config_.processes;
  segment_ = shm_segment::create(pool_shared::bytes_for(n), "mp-pool-" + std::to_string(::getpid()));
  shared_ = new (segment_.data()) pool_shared;
  for (std::size_t s = 0; s < n; ++s) new (&shared_->slot(s)) pool_slot_shared;
  wake_fd_.reset(pool_make_eventfd());
  slots_.resize(n);
  dispatched_ns_.resize(n, 0);

  pool_flush_std_streams();
  registry& reg = the_registry();
  // Held from socketpair() until the factory's end is closed here: a fork in another thread (Process::start holds
  // it across fork()) would otherwise copy that end into its child, and neither side would see end of file when
  // the other dies. Under fork it is held across fork() like Process::start does, so the factory's copy of mp's
  // process registry is consistent.
  std::unique_lock reg_lock(reg.mutex);
  int pair[2];
  sys("socketpair", [&] { return ::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair); });
  unique_fd ours(pair[0]);
  unique_fd theirs(pair[1]);

  if (!fresh()) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      // The factory: forget the parent's children (not ours to join), close the parent's end, serve.
      reg.children.clear();
      reg_lock.release();
      reg.mutex.unlock();
      ours.reset();
      pool_worker_code_map() = nullptr;  // a Pool inside a spawn worker: these workers share our addresses
      pool_shared* shared = shared_;
      const int wake = wake_fd_.get();
      const pool_config& cfg = config_;
      pool_factory_main(theirs.get(), n, [shared, wake, &cfg](std::size_t slot) {
        try {
          pool_worker_main(pool_link{*shared, wake}, slot, cfg);
        } catch (...) {
          ::_exit(70);
        }
      });
    }
    const int err = last_errno();
    reg_lock.unlock();
    if (pid < 0) throw_errno("fork", "Pool worker factory", err);
    factory_pid_ = pid;
  } else {
    pool_factory_boot boot;
    boot.processes = n;
    boot.maxtasksperchild = config_.maxtasksperchild;
    boot.initializer = config_.initializer_address;
    boot.modules = loaded_modules();
    std::vector<std::byte> bytes;
    {
      output_archive ar(bytes);
      ar(boot);
    }
    spawn_request request;
    request.name = "PoolFactory";
    request.parent_name = config_.parent_name;  // not current_process(): the registry mutex is held
    request.parent_pid = ::getpid();
    request.start_method = start_method_setting();
    request.target = spawn_target{locate_code(reinterpret_cast<std::uintptr_t>(&pool_factory_entry)), std::move(bytes)};
    const int fds[] = {segment_.fd(), wake_fd_.get(), theirs.get()};
    fresh_child started = start_fresh_child(config_.start_method, request, fds);
    theirs.reset();
    reg_lock.unlock();
    factory_pid_ = started.pid;
    factory_status_ = std::move(started.status);
    if (factory_status_) factory_pidfd_.reset(pidfd_open(started.pid));
    // One byte once it runs (from mp::Process's spawned-child path); end of file if it died first.
    const bool got = wait_until_ready(started);
    if (!got) {
      ours.reset();
      reap_factory();
      throw ProcessError("Pool: the worker factory process (pid " + std::to_string(started.pid) +
                         ") ended while starting; its standard error says why");
    }
  }
  factory_ = std::move(ours);
  {
    std::lock_guard lock(mutex_);
    for (std::size_t s = 0; s < n; ++s) spawn_locked(s);
  }
  supervisor_ = std::thread([this] { supervise(); });
}

inline pool_core::~pool_core() {
  if (!owned_here()) return;  // a forked copy: the real pool lives on in its owner
  bool needs_terminate = false;
  {
    std::lock_guard lock(mutex_);
    needs_terminate = state_ != state::stopped && state_ != state::terminated;
  }
  if (needs_terminate) terminate();
  stop_supervisor_and_factory();
}

inline void pool_core::submit(std::shared_ptr<pool_job> job, std::size_t first, std::size_t count,
                              const char* caller) {
  require_owner(caller);
  std::lock_guard lock(mutex_);
  if (!broken_.empty()) throw Error(std::string(caller) + ": the pool is broken (" + broken_ + "); create a new Pool");
  if (state_ != state::running)
    throw Error(std::string(caller) + ": the pool is " + (state_ == state::terminated ? "terminated" : "closed") +
                " and accepts no new work; create a new Pool");
  if (count == 0) return;
  if (job->timeout_ns == 0) job->timeout_ns = config_.task_timeout_ns;
  pending_.push_back({std::move(job), first, first + count});
  outstanding_ += count;
  dispatch_locked();
}

template <class Done>
bool pool_core::wait(pool_event& event, Done&& done, const deadline& until) {
  if (done()) return true;
  require_owner("AsyncResult::wait");
  // Spin a little, collecting results ourselves: a sequential apply() round trip then needs no thread hop.
  callers_spinning_.fetch_add(1);
  shared_->collectors_awake.fetch_add(1);
  const auto budget = std::chrono::microseconds(50);
  const bool fast = spin_until(
      [&] {
        progress();
        return done() || (until && std::chrono::steady_clock::now() >= *until);
      },
      budget);
  shared_->collectors_awake.fetch_sub(1);
  callers_spinning_.fetch_sub(1);
  progress();  // results published while we counted as awake did not wake the supervisor
  (void)fast;
  for (;;) {
    const std::uint32_t seen = event.seq.load();
    if (done()) return true;
    if (!event.sleep(seen, until)) return done();
  }
}

inline void pool_core::close() {
  require_owner("Pool::close");
  std::lock_guard lock(mutex_);
  if (state_ == state::running) state_ = state::closed;
}

inline void pool_core::terminate() {
  require_owner("Pool::terminate");
  {
    std::lock_guard lock(mutex_);
    if (state_ == state::stopped || state_ == state::terminated) return;
    state_ = state::terminated;
    fail_everything_locked([] {
      return std::make_exception_ptr(
          Error("Pool::terminate() stopped the workers before this task finished; its result will never come"));
    });
    request_locked({pool_factory_request::shutdown, 0, 0});
  }
  stop_supervisor_and_factory();
}

inline void pool_core::join() {
  require_owner("Pool::join");
  std::unique_lock lock(mutex_);
  if (state_ == state::running)
    throw Error("Pool::join: the pool is still running; call close() or terminate() first");
  // terminate() from another thread ends every wait below.
  auto ended = [&] { return state_ == state::stopped || state_ == state::terminated || !broken_.empty(); };
  if (state_ == state::closed) {
    changed_.wait(lock, [&] { return outstanding_ == 0 || ended(); });
    if (state_ == state::closed) {
      state_ = state::stopping;
      dispatch_locked();  // sends every idle worker its stop message
    }
  }
  changed_.wait(lock, [&] { return live_ == 0 || ended(); });
  if (state_ == state::stopping || (state_ == state::closed && !broken_.empty())) {
    state_ = state::stopped;
    changed_.notify_all();  // another thread may be in join() too
    request_locked({pool_factory_request::shutdown, 0, 0});
  }
  lock.unlock();
  stop_supervisor_and_factory();
}

// Waits for the factory to end once its socket is closed. Under fork and spawn it is our child; under forkserver
// it is the server's, which reaps it and then writes its status to factory_status_ (end of file if the server
// died: then the factory was re-parented, to us if we are the nearest subreaper, and the pidfd reaps it — waitid
// fails at once with ECHILD if it is not ours).
inline void pool_core::reap_factory() noexcept {
  if (factory_pid_ == 0) return;
  if (factory_status_) {
    int status = 0;
    std::size_t got = 0;
    while (got < sizeof status) {
      const auto n = retry_on_eintr([&] { return ::read(factory_status_.get(), reinterpret_cast<char*>(&status) + got, sizeof status - got); });
      if (n <= 0) break;
      got += static_cast<std::size_t>(n);
    }
    if (got != sizeof status && factory_pidfd_) {
      siginfo_t info{};
      retry_on_eintr([&] { return ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(factory_pidfd_.get()), &info, WEXITED); });
    }
    factory_status_.reset();
    factory_pidfd_.reset();
  } else {
    retry_on_eintr([&] { return ::waitpid(factory_pid_, nullptr, 0); });
  }
  factory_pid_ = 0;
}

inline void pool_core::stop_supervisor_and_factory() noexcept {
  std::lock_guard teardown(teardown_mutex_);  // join() and terminate() may race here from two threads
  stop_supervisor_.store(true);
  pool_signal_eventfd(wake_fd_.get());
  if (supervisor_.joinable() && supervisor_.get_id() != std::this_thread::get_id()) supervisor_.join();
  factory_.reset();  // EOF: the factory kills whatever is left and exits
  reap_factory();
  // Workers of a factory killed from outside die by PR_SET_PDEATHSIG, re-parented to the nearest subreaper. If
  // that is this process, reap them here. The pidfd names that exact process (no pid-reuse race); waitid fails
  // with ECHILD at once when the worker is not our child.
  for (auto& slot : slots_) {
    if (!slot.pidfd) continue;
    siginfo_t info{};
    retry_on_eintr([&] { return ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(slot.pidfd.get()), &info, WEXITED); });
    slot.pidfd.reset();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The supervisor.

inline void pool_core::supervise() {
  bool awake = false;  // counted in collectors_awake: workers then skip the eventfd write
  std::uint64_t last_activity = monotonic_ns();
  const std::uint64_t spin_ns = 50'000;
  while (!stop_supervisor_.load()) {
    std::optional<std::uint64_t> next_deadline;
    bool did = false;
    bool busy = false;
    {
      std::lock_guard lock(mutex_);
      did = progress_locked();
      next_deadline = check_timeouts_locked();
      busy = outstanding_ != 0;
    }
    const std::uint64_t now = monotonic_ns();
    if (did) last_activity = now;
    // Spin while results flow and no waiting caller is collecting already; else sleep in poll().
    const bool spin = busy && callers_spinning_.load() == 0 && now - last_activity < spin_ns;
    if (spin != awake) {
      awake = spin;
      if (awake) {
        shared_->collectors_awake.fetch_add(1);
      } else {
        shared_->collectors_awake.fetch_sub(1);
        continue;  // one more progress(): results published while we counted as awake sent no wake-up
      }
    }
    int timeout_ms = -1;
    if (spin) {
      timeout_ms = 0;
    } else if (next_deadline) {
      timeout_ms = *next_deadline <= now ? 0 : static_cast<int>((*next_deadline - now + 999'999) / 1'000'000);
    }
    // Once the factory is gone its socket stays readable (EOF): stop watching it (poll ignores fd -1).
    pollfd fds[2] = {{wake_fd_.get(), POLLIN, 0}, {factory_gone_.load() ? -1 : factory_.get(), POLLIN, 0}};
    const int ready = retry_on_eintr([&] { return ::poll(fds, 2, timeout_ms); });
    if (ready > 0 && (fds[0].revents & POLLIN) != 0) {
      std::uint64_t count = 0;
      [[maybe_unused]] auto n = ::read(wake_fd_.get(), &count, sizeof count);
    }
    if (ready > 0 && fds[1].revents != 0) {
      std::lock_guard lock(mutex_);
      if (read_factory_locked()) last_activity = monotonic_ns();
    }
  }
  if (awake) shared_->collectors_awake.fetch_sub(1);
}

// ---------------------------------------------------------------------------------------------------------------
// Progress: everything below runs with mutex_ held and never blocks.

inline bool pool_core::progress_locked() {
  bool did = false;
  for (std::size_t s = 0; s < slots_.size(); ++s)
    if (slots_[s].live) did |= drain_locked(s);
  did |= dispatch_locked();
  return did;
}

inline bool pool_core::read_factory_locked() {
  bool did = false;
  for (;;) {
    pool_factory_event event;
    const auto got = retry_on_eintr([&] { return ::recv(factory_.get(), &event, sizeof event, MSG_DONTWAIT); });
    if (got < 0 && (last_errno() == EAGAIN || last_errno() == EWOULDBLOCK)) return did;
    if (got <= 0) {
      // The factory is gone (killed from outside): no worker can be replaced or even reaped any more.
      factory_gone_.store(true);
      if (state_ != state::stopped && state_ != state::terminated)
        break_pool_locked("its worker factory process died unexpectedly");
      for (auto& slot : slots_) slot.live = false;
      live_ = 0;
      changed_.notify_all();
      return true;
    }
    did = true;
    if (event.slot >= slots_.size()) continue;
    const std::size_t s = event.slot;
    if (event.kind == pool_factory_event::spawned) {
      slots_[s].pid = event.pid;
      slots_[s].pidfd.reset(pidfd_open(event.pid));  // -1 if already gone
    } else if (event.kind == pool_factory_event::exited) {
      worker_exited_locked(s, event.pid, event.code);
    } else if (event.kind == pool_factory_event::spawn_failed) {
      slots_[s].live = false;
      --live_;
      break_pool_locked("the worker factory could not fork a worker: " + std::string(std::strerror(event.code)));
    }
  }
}

inline bool pool_core::drain_locked(std::size_t s) {
  slot_state& slot = slots_[s];
  pool_ring& ring = shared_->slot(s).outbox;
  bool did = false;
  for (;;) {
    const std::size_t need = slot.rx_need == 0 ? sizeof(std::uint64_t) : slot.rx_need;
    if (slot.rx.size() < need) slot.rx.resize(need);
    const std::size_t got = ring.read_some(slot.rx.data() + slot.rx_have, need - slot.rx_have);
    if (got == 0) break;
    did = true;
    slot.rx_have += got;
    if (slot.rx_have < need) continue;
    if (slot.rx_need == 0) {
      std::uint64_t length = 0;
      std::memcpy(&length, slot.rx.data(), sizeof length);
      slot.rx_need = sizeof length + length;
      continue;
    }
    const std::size_t size = slot.rx_need;
    slot.rx_need = 0;
    slot.rx_have = 0;
    handle_result_locked(s, std::span<const std::byte>(slot.rx.data(), size));
    if (slot.rx.size() > (std::size_t{4} << 20)) std::vector<std::byte>().swap(slot.rx);  // do not hoard
  }
  if (did) pool_wake_producer(ring);
  return did;
}

inline void pool_core::handle_result_locked(std::size_t s, std::span<const std::byte> message) {
  slot_state& slot = slots_[s];
  pool_result_header header{};
  std::memcpy(&header, message.data(), sizeof header);
  input_archive ar(message.subspan(sizeof header));
  if (header.chunk_id == 0) {  // the initializer threw; the worker exits next
    std::uint64_t none = 0;
    ar.read_bytes(&none, sizeof none);
    try {
      std::rethrow_exception(pool_read_failure(ar));
    } catch (const std::exception& e) {
      initializer_error_ = e.what();
    } catch (...) {
    }
    return;
  }
  if (slot.chunks.empty() || slot.chunks.front().id != header.chunk_id) return;  // cannot happen: FIFO per worker
  inflight done = std::move(slot.chunks.front());
  slot.chunks.pop_front();
  barren_deaths_ = 0;
  const std::uint64_t now = monotonic_ns();
  if (dispatched_ns_[s] != 0) {
    const std::uint64_t took = now - dispatched_ns_[s];  // since it became the worker's first chunk
    ewma_chunk_ns_ = (ewma_chunk_ns_ * 7 + took) / 8;
  }
  dispatched_ns_[s] = slot.chunks.empty() ? 0 : now;
  try {
    done.job->deliver(done.chunk, ar);
  } catch (...) {
    done.job->fail(done.chunk, std::current_exception());
  }
  if (--outstanding_ == 0) changed_.notify_all();
}

inline void pool_core::worker_exited_locked(std::size_t s, pid_t pid, int code) {
  slot_state& slot = slots_[s];
  if (!slot.live || (slot.pid != 0 && slot.pid != pid)) return;
  drain_locked(s);  // results it finished before dying still count
  pool_slot_shared& shared = shared_->slot(s);
  const std::uint64_t running = shared.current_chunk.load();
  std::deque<inflight> chunks = std::move(slot.chunks);
  slot.chunks.clear();
  bool failed_one = false;
  // The unstarted ones go back to the front of the queue, in their order.
  for (auto it = chunks.rbegin(); it != chunks.rend(); ++it) {
    // A worker we killed for a timeout may have finished that chunk and started the next one just before the
    // signal landed: that next chunk is not at fault, so it is retried rather than failed.
    const bool at_fault = it->id == running && running != 0 && (!slot.kill_sent || slot.timed_out == running);
    if (at_fault) {
      std::exception_ptr error;
      if (slot.timed_out == running) {
        error = std::make_exception_ptr(
            TimeoutError("Pool: a task ran longer than its task_timeout of " +
                         std::to_string(it->job->timeout_ns / 1'000'000) + " ms; its worker (pid " +
                         std::to_string(pid) + ") was killed and replaced"));
      } else {
        error = std::make_exception_ptr(WorkerLost(
            code, "the worker process (pid " + std::to_string(pid) + ") running this task died with exit code " +
                      std::to_string(code) + (code < 0 ? " (killed by signal " + std::to_string(-code) + ")" : "") +
                      "; the pool replaced it and the other tasks go on"));
      }
      it->job->fail(it->chunk, error);
      failed_one = true;
      if (--outstanding_ == 0) changed_.notify_all();
    } else {
      pending_.push_front({it->job, it->chunk, it->chunk + 1});
    }
  }
  // Reset the slot for its successor: the dead worker can no longer touch the rings.
  shared.inbox.reset();
  shared.outbox.reset();
  shared.current_chunk.store(0);
  shared.started_ns.store(0);
  slot.writing = false;
  slot.written = 0;
  slot.rx_have = 0;
  slot.rx_need = 0;
  slot.timed_out = 0;
  slot.kill_sent = false;
  slot.sent = 0;
  slot.pid = 0;
  slot.pidfd.reset();
  slot.live = false;
  slot.stop_sent = false;
  dispatched_ns_[s] = 0;
  --live_;
  changed_.notify_all();
  if (!failed_one && code != 0) ++barren_deaths_;
  if (barren_deaths_ > 3 + 2 * slots_.size()) {
    break_pool_locked(initializer_error_.empty()
                          ? "its workers keep dying before finishing any task (last exit code " + std::to_string(code) + ")"
                          : "its initializer failed in every worker: " + initializer_error_);
    return;
  }
  if (state_ == state::running || state_ == state::closed) spawn_locked(s);
}

inline void pool_core::spawn_locked(std::size_t s) {
  slots_[s].live = true;
  ++live_;
  request_locked({pool_factory_request::spawn, static_cast<std::uint32_t>(s), 0});
}

inline void pool_core::request_locked(const pool_factory_request& request) {
  if (!factory_) return;
  retry_on_eintr([&] { return ::send(factory_.get(), &request, sizeof request, MSG_NOSIGNAL); });
}

inline std::optional<std::uint64_t> pool_core::check_timeouts_locked() {
  std::optional<std::uint64_t> earliest;
  const std::uint64_t now = monotonic_ns();
  for (std::size_t s = 0; s < slots_.size(); ++s) {
    slot_state& slot = slots_[s];
    if (!slot.live || slot.kill_sent || slot.chunks.empty() || slot.pid == 0) continue;
    pool_slot_shared& shared = shared_->slot(s);
    const std::uint64_t running = shared.current_chunk.load();
    if (running == 0) continue;
    const std::uint64_t started = shared.started_ns.load();
    for (const inflight& chunk : slot.chunks) {
      if (chunk.id != running) continue;
      if (chunk.job->timeout_ns == 0) break;
      const std::uint64_t due = started + chunk.job->timeout_ns;
      if (now >= due) {
        slot.timed_out = running;
        slot.kill_sent = true;
        request_locked({pool_factory_request::kill, static_cast<std::uint32_t>(s), slot.pid});
      } else if (!earliest || due < *earliest) {
        earliest = due;
      }
      break;
    }
  }
  return earliest;
}

inline void pool_core::start_message_locked(std::size_t s, const pool_task_header& header,
                                            std::span<const std::byte> prefix, std::span<const std::byte> body) {
  slot_state& slot = slots_[s];
  slot.header = header;
  slot.prefix = prefix;
  slot.body = body;
  slot.written = 0;
  slot.writing = true;
  flush_locked(s);
}

inline bool pool_core::flush_locked(std::size_t s) {
  slot_state& slot = slots_[s];
  if (!slot.writing) return false;
  pool_ring& ring = shared_->slot(s).inbox;
  const std::span<const std::byte> parts[3] = {
      {reinterpret_cast<const std::byte*>(&slot.header), sizeof slot.header}, slot.prefix, slot.body};
  bool did = false;
  std::size_t offset = slot.written;
  for (const auto& part : parts) {
    if (offset >= part.size()) {
      offset -= part.size();
      continue;
    }
    const std::size_t want = part.size() - offset;
    const std::size_t put = ring.write_some(part.data() + offset, want);
    slot.written += put;
    did |= put != 0;
    if (put < want) {
      // Full: the worker tells us (eventfd) when it has made room. Re-check after raising the flag.
      ring.producer_sleeping.store(1);
      if (did) pool_wake_consumer(ring);
      if (ring.writable() != 0) return flush_locked(s) || did;
      return did;
    }
    offset = 0;
  }
  slot.writing = false;
  pool_wake_consumer(ring);
  return did;
}

inline bool pool_core::dispatch_locked() {
  bool did = false;
  for (std::size_t s = 0; s < slots_.size(); ++s)
    if (slots_[s].live) did |= flush_locked(s);
  if (state_ == state::stopping) {
    for (std::size_t s = 0; s < slots_.size(); ++s) {
      slot_state& slot = slots_[s];
      if (!slot.live || slot.stop_sent || slot.writing || !slot.chunks.empty()) continue;
      slot.stop_sent = true;
      start_message_locked(s, pool_task_header{sizeof(pool_task_header) - sizeof(std::uint64_t), 0, 0, 0}, {}, {});
      did = true;
    }
    return did;
  }
  if (pending_.empty()) return did;
  // Prefetch: one chunk queued behind the running one hides the round trip; tiny chunks get a deeper queue.
  const std::size_t depth = ewma_chunk_ns_ < 200'000 ? 8 : 2;
  for (std::size_t level = 0; level < depth && !pending_.empty(); ++level) {
    for (std::size_t s = 0; s < slots_.size() && !pending_.empty(); ++s) {
      slot_state& slot = slots_[s];
      if (!slot.live || slot.writing || slot.chunks.size() != level) continue;
      if (config_.maxtasksperchild != 0 && slot.sent >= config_.maxtasksperchild) continue;
      pending& front = pending_.front();
      std::shared_ptr<pool_job> job = front.job;
      const std::size_t chunk = front.next++;
      if (front.next == front.end) pending_.pop_front();
      const std::uint64_t id = next_id_++;
      const auto prefix = job->prefix();
      const auto body = job->body(chunk);
      const pool_task_header header{sizeof(pool_task_header) - sizeof(std::uint64_t) + prefix.size() + body.size(),
                                    id, pool_trampoline_address(job->trampoline), job->timeout_ns};
      if (slot.chunks.empty()) dispatched_ns_[s] = monotonic_ns();
      slot.chunks.push_back({std::move(job), chunk, id});
      ++slot.sent;
      start_message_locked(s, header, prefix, body);
      did = true;
    }
  }
  return did;
}

inline void pool_core::fail_everything_locked(const std::function<std::exception_ptr()>& make_error) {
  for (auto& slot : slots_) {
    for (inflight& chunk : slot.chunks) chunk.job->fail(chunk.chunk, make_error());
    slot.chunks.clear();
    slot.writing = false;
  }
  for (pending& range : pending_)
    for (std::size_t c = range.next; c < range.end; ++c) range.job->fail(c, make_error());
  pending_.clear();
  outstanding_ = 0;
  changed_.notify_all();
}

inline void pool_core::break_pool_locked(const std::string& why) {
  if (broken_.empty()) broken_ = why;
  fail_everything_locked([&] { return std::make_exception_ptr(Error("Pool: " + why + "; this task cannot run")); });
}

}  // namespace mp::detail
