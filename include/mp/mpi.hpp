// mp::mpi: mp::Pool across the ranks of an MPI job (Open MPI, MPICH), for work that outgrows one machine. The
// counterpart of mpi4py.futures' MPIPoolExecutor, with mp::Pool's surface: apply/apply_async/submit, map/map_async,
// starmap/starmap_async, lazy imap/imap_unordered, close/terminate/join, AsyncResult.
// `mp::mpi::init(argc, argv)` comes first in main. Launched by `mpirun -n N prog`, rank 0 returns from it and runs
// main while ranks 1..N-1 serve as workers until rank 0 exits. Launched alone, a Pool starts its workers with
// MPI_Comm_spawn of the same program. Callables cross as under mp's spawn start method (every rank runs the same
// executable: a function's address relative to its module, plus the callable's serialized state); arguments and
// results through mp::serialize. Link the CMake target mp::mpi (it exists when CMake finds MPI). See docs/mpi.md.
// Process safety: one Pool at a time owns the worker ranks; a Pool and its results may be used from several threads
// of rank 0 (mp serializes its MPI calls; MPI is initialized with MPI_THREAD_SERIALIZED). Not in <mp/mp.hpp>.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <optional>
#include <ranges>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <mp/detail/clock.hpp>
#include <mp/detail/mpi/engine.hpp>
#include <mp/detail/mpi/jobs.hpp>
#include <mp/detail/mpi/runtime.hpp>
#include <mp/detail/pool/task.hpp>
#include <mp/detail/process_child.hpp>
#include <mp/detail/type_name.hpp>
#include <mp/errors.hpp>
#include <mp/serialize.hpp>

namespace mp::mpi {

/// First in main, after mp::init if the program uses mp's processes too. Under mpirun, ranks other than 0 serve as
/// workers inside this call and exit the program when rank 0 finalizes; rank 0 (or a program launched alone)
/// returns. MPI is initialized here unless the program did so already (then call finalize() before MPI_Finalize).
void init(int& argc, char**& argv);
/// Rank 0: tells every worker rank to exit and finalizes MPI. Runs at exit by itself; idempotent.
void finalize();
/// 0 in the main process; a worker's rank (under mpirun: its MPI_COMM_WORLD rank; spawned: 1 + its rank in the
/// spawned group).
int rank();
/// 1 + the number of worker ranks (launched alone: of the workers spawned so far).
int size();

/// A bound call that crosses to every worker rank: `mp::mpi::task(f, args...)` (f returns void). As initializer it
/// runs once on each worker rank before the pool's first task there; a plain function converts to a Task.
class Task {
 public:
  Task() = default;
  Task(void (*f)());  // NOLINT: implicit, as PoolOptions{.initializer = setup}
  explicit operator bool() const noexcept { return trampoline_ != nullptr; }

 private:
  template <class F, class... A>
  friend Task task(F f, A&&... args);
  friend class Pool;
  detail::pool::trampoline_fn trampoline_ = nullptr;
  std::vector<std::byte> payload_;
};

/// f(args...) as a Task; f as for Pool::apply, its arguments serialized now (from the caller's objects: no copy).
template <class F, class... A>
Task task(F f, A&&... args);

/// Pool settings, for designated initializers: `mp::mpi::Pool pool({.processes = 4, .task_timeout = 2s});`
struct PoolOptions {
  std::size_t processes = 0;  ///< 0: every worker rank (launched alone: cpu_count() spawned workers)
  Task initializer{};         ///< runs once on every worker rank the pool uses
  std::optional<std::chrono::milliseconds> task_timeout{};  ///< a task running longer fails with TimeoutError
};

/// The pending result of apply_async/submit/map_async/starmap_async. Copies share one result.
template <class R>
class [[nodiscard]] AsyncResult {
 public:
  /// Waits, then returns the value or throws the task's error (RemoteError, TimeoutError, WorkerLost, Error).
  R get();
  /// As get(), but TimeoutError if the result is not ready within timeout (the task keeps running).
  template <class Rep, class Period>
  R get(std::chrono::duration<Rep, Period> timeout);
  /// Waits until the result is ready.
  void wait() { (void)engine_->wait([&] { return ready(); }); }
  /// Waits at most timeout; true if the result is ready.
  template <class Rep, class Period>
  bool wait(std::chrono::duration<Rep, Period> timeout) {
    return engine_->wait([&] { return ready(); }, detail::deadline_after(timeout));
  }
  /// True once the task has finished (successfully or not) or was cancelled.
  bool ready() const { return job_->done(); }
  /// True if it finished without an error; Error if it is not ready yet.
  bool successful() const;
  /// concurrent.futures: done(), running(), cancel() (false once a rank has it), cancelled().
  bool done() const { return ready(); }
  bool running() const { return job_->phase.load(std::memory_order_acquire) == detail::mpi::running; }
  bool cancel();
  bool cancelled() const { return job_->phase.load(std::memory_order_acquire) == detail::mpi::cancelled; }
  /// The task's error (null if it succeeded), after waiting; exception(timeout) throws TimeoutError.
  std::exception_ptr exception() {
    wait();
    return job_->error;
  }
  template <class Rep, class Period>
  std::exception_ptr exception(std::chrono::duration<Rep, Period> timeout);
  /// Runs callback(*this) on rank 0 once the result is ready (at once if it is).
  void add_done_callback(std::function<void(AsyncResult&)> callback);

 private:
  friend class Pool;
  AsyncResult(std::shared_ptr<detail::mpi::engine> engine, std::shared_ptr<detail::mpi::result_job<R>> job)
      : engine_(std::move(engine)), job_(std::move(job)) {}
  R take();

  std::shared_ptr<detail::mpi::engine> engine_;
  std::shared_ptr<detail::mpi::result_job<R>> job_;
};

/// The lazy results of imap (Ordered) / imap_unordered: an input range for a range-for. Input is pulled as results
/// are consumed, with at most 4 * processes + 2 chunks in flight or waiting.
template <class F, class V, class E, bool Ordered>
class [[nodiscard]] IMapIterator {
  using state = detail::mpi::imap_state<F, V, E, Ordered>;

 public:
  class iterator {
   public:
    using value_type = E;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    /// The current item; throws that item's task error.
    const E& operator*() const { return s_->current(); }
    iterator& operator++() {
      s_->advance();
      return *this;
    }
    void operator++(int) { s_->advance(); }
    friend bool operator==(const iterator& it, std::default_sentinel_t) { return it.s_->at_end; }

   private:
    friend class IMapIterator;
    explicit iterator(state* s) : s_(s) {}
    state* s_ = nullptr;
  };
  /// Starts iterating (once: an input range).
  iterator begin();
  std::default_sentinel_t end() const noexcept { return {}; }

 private:
  friend class Pool;
  IMapIterator(std::shared_ptr<detail::mpi::engine> engine, F f, V&& input, std::size_t chunksize)
      : state_(std::make_unique<state>(std::move(engine), std::move(f), std::forward<V>(input), chunksize)) {
    state_->feed();
  }
  std::unique_ptr<state> state_;
};

/// A pool of worker ranks (mp::Pool's surface over MPI).
class Pool {
 public:
  /// `processes` worker ranks (0: all of them; launched alone: cpu_count() spawned workers).
  explicit Pool(std::size_t processes = 0) : Pool(PoolOptions{.processes = processes}) {}
  explicit Pool(PoolOptions options);
  /// close() then join(): every submitted task finishes first.
  ~Pool();
  Pool(Pool&&) noexcept = default;
  Pool& operator=(Pool&&) = delete;

  /// Runs f(args...) on a worker rank and returns its result (rethrows its exception).
  template <class F, class... Args>
  auto apply(F f, Args&&... args) {
    return apply_async(std::move(f), std::forward<Args>(args)...).take();
  }
  /// Starts f(args...) on a worker rank.
  template <class F, class... Args>
  auto apply_async(F f, Args&&... args)
      -> AsyncResult<detail::pool::apply_result_t<F, detail::pool::arg_t<Args>...>>;
  /// concurrent.futures' name for apply_async.
  template <class F, class... Args>
  auto submit(F f, Args&&... args) {
    return apply_async(std::move(f), std::forward<Args>(args)...);
  }
  /// [f(x) for x in range], in order; chunksize 0 chooses ceil(n / (4 * processes)).
  template <class F, std::ranges::input_range Range>
  auto map(F f, Range&& range, std::size_t chunksize = 0) {
    return map_async(std::move(f), std::forward<Range>(range), chunksize).take();
  }
  template <class F, std::ranges::input_range Range>
  auto map_async(F f, Range&& range, std::size_t chunksize = 0) {
    return submit_map<false>(std::move(f), std::forward<Range>(range), chunksize, "mp::mpi::Pool::map_async");
  }
  /// [f(a, b, ...) for (a, b, ...) in range].
  template <class F, std::ranges::input_range Range>
  auto starmap(F f, Range&& range, std::size_t chunksize = 0) {
    return starmap_async(std::move(f), std::forward<Range>(range), chunksize).take();
  }
  template <class F, std::ranges::input_range Range>
  auto starmap_async(F f, Range&& range, std::size_t chunksize = 0) {
    return submit_map<true>(std::move(f), std::forward<Range>(range), chunksize, "mp::mpi::Pool::starmap_async");
  }
  /// Lazy f(x) for x in range, in input order; the range may be endless.
  template <class F, std::ranges::input_range Range>
  auto imap(F f, Range&& range, std::size_t chunksize = 1) {
    return make_imap<true>(std::move(f), std::forward<Range>(range), chunksize);
  }
  /// As imap, in completion order.
  template <class F, std::ranges::input_range Range>
  auto imap_unordered(F f, Range&& range, std::size_t chunksize = 1) {
    return make_imap<false>(std::move(f), std::forward<Range>(range), chunksize);
  }
  template <class F, class T>
  auto map(F f, std::initializer_list<T> items, std::size_t chunksize = 0) {
    return map(std::move(f), std::vector<T>(items), chunksize);
  }

  /// No new work; what was submitted still runs.
  void close() { engine().close(); }
  /// Queued tasks fail at once (Error); tasks already on a rank finish there (a rank cannot be killed without
  /// aborting the job) but their results are dropped.
  void terminate() { engine().terminate(); }
  /// Waits until every submitted task is answered; call close() or terminate() first.
  void join() { engine().join(); }
  /// The number of worker ranks.
  std::size_t processes() const noexcept { return engine_ ? engine_->processes() : 0; }

 private:
  template <bool Star, class F, class Range>
  auto submit_map(F f, Range&& range, std::size_t chunksize, const char* caller);
  template <bool Ordered, class F, class Range>
  auto make_imap(F f, Range&& range, std::size_t chunksize);
  detail::mpi::engine& engine() const;

  std::shared_ptr<detail::mpi::engine> engine_;
};

}  // namespace mp::mpi

#include <mp/detail/mpi/pool.ipp>
