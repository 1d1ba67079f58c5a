// mp::Pool and mp::AsyncResult: a pool of worker processes running function calls (Python's multiprocessing.Pool).
// apply/apply_async, map/map_async, starmap/starmap_async, lazy imap/imap_unordered, close/terminate/join;
// per-task timeouts, initializer, maxtasksperchild. Callables cross to the workers as code address + state, so
// lambdas work (under fork: captures trivially copyable or serializable; under spawn and forkserver: functions,
// lambdas without captures, function objects with a serialize member); see docs/pool.md.
// Process safety: a Pool and its AsyncResults may be used from several threads of the process that created the
// Pool. A worker that dies fails only the task it was running (WorkerLost) and is replaced; ~Pool() = close() +
// join() (all submitted work finishes), unlike Python's `with`, which terminates.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
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

#include <mp/context.hpp>
#include <mp/detail/archive.hpp>
#include <mp/detail/clock.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/fresh_pages.hpp>
#include <mp/detail/pool/completion.hpp>
#include <mp/detail/pool/core.hpp>
#include <mp/detail/pool/jobs.hpp>
#include <mp/detail/pool/progress.hpp>
#include <mp/detail/pool/task.hpp>
#include <mp/detail/type_name.hpp>
#include <mp/errors.hpp>
#include <mp/process.hpp>
#include <mp/serialize.hpp>

namespace mp {

/// A call bound to its arguments that can cross to pool workers: the initializer with Python's initargs,
/// `PoolOptions{.initializer = mp::task(init, queue, lock)}`. Arguments cross as task arguments do, handles
/// included. A plain function (or any void() callable: fork only if it has state) converts to a Task.
class Task {
 public:
  Task() = default;
  template <class F>
    requires(std::is_invocable_v<F&> && !std::is_same_v<std::remove_cvref_t<F>, Task>)
  Task(F f);  // NOLINT(google-explicit-constructor): `.initializer = init` as before
  /// True unless empty.
  explicit operator bool() const noexcept { return static_cast<bool>(run_); }
  /// Runs the call here.
  void operator()() const { run_(); }

 private:
  template <class F, class... A>
  friend Task task(F f, A... args);
  friend class Pool;

  std::function<void()> run_;                               // the call (a forked worker runs this copy)
  std::function<void(std::vector<std::byte>&)> encode_;     // a fresh worker's copy: F's state and the arguments
  detail::pool::trampoline_fn trampoline_ = nullptr;        // ... decoded and run by this; null: cannot cross
  std::string type_;                                         // F, for the error when it cannot cross
};

/// Binds f to args for a pool worker (Python's initializer + initargs): `mp::task(init, queue, lock)`.
template <class F, class... A>
Task task(F f, A... args);

/// Pool settings, for designated initializers: `mp::Pool pool({.processes = 4, .maxtasksperchild = 100});`
struct PoolOptions {
  std::size_t processes = 0;                 ///< 0: cpu_count()
  Task initializer{};                        ///< runs once in every worker, replacements included: a function, or
                                             ///< mp::task(f, args...) with arguments (handles too)
  std::size_t maxtasksperchild = 0;          ///< 0: unlimited; else a worker is replaced after that many tasks (chunks)
  std::optional<StartMethod> start_method{}; ///< default get_start_method(); spawn/forkserver: fresh workers
  std::optional<std::chrono::milliseconds> task_timeout{};  ///< a task running longer is killed with its worker
};

/// Per-call settings: `pool.apply_async(mp::TaskOptions{.timeout = 100ms}, f, args...)`.
struct TaskOptions {
  std::optional<std::chrono::milliseconds> timeout{};  ///< overrides PoolOptions::task_timeout for this task
};

/// Whether map/imap/starmap draw a progress bar on stderr (done/total, rate, ETA, desc), as mpire's.
enum class Progress {
  off,     ///< nothing is written
  on_tty,  ///< a bar redrawn in place, only when stderr is a terminal
  always,  ///< also into a file or pipe (a log): a line at most once a second, and the final one
};

/// Per-call settings of map, map_async, imap, imap_unordered, starmap, starmap_async:
/// `pool.map(f, xs, {.progress = mp::Progress::on_tty, .desc = "squares"})`.
struct MapOptions {
  std::size_t chunksize = 0;           ///< 0: map's automatic chunksize; 1 for imap
  Progress progress = Progress::off;   ///< map: items as results arrive; imap: items as you consume them
  std::string desc{};                  ///< the bar's label
};

/// How mp::wait(results, ReturnWhen) decides it is done (concurrent.futures.wait's return_when).
enum class ReturnWhen { first_completed, first_exception, all_completed };

class ThreadPool;
namespace detail::pool {
template <class Derived>
class map_family;
}  // namespace detail::pool

/// The pending result of apply_async/submit/map_async/starmap_async: Python's AsyncResult and a
/// concurrent.futures.Future in one. Copies share one result.
template <class R>
class [[nodiscard]] AsyncResult {
 public:
  /// Waits, then returns the value or throws the task's error (Remote<E>, RemoteError, WorkerLost, TimeoutError,
  /// CancelledError, ...).
  R get();
  /// As get(), but throws TimeoutError if the result is not ready within timeout (the task keeps running).
  template <class Rep, class Period>
  R get(std::chrono::duration<Rep, Period> timeout);
  /// Waits until the result is ready.
  void wait() {
    (void)detail::pool::wait_on(core_.get(), job_->event, [&] { return ready(); }, {});
    if (job_->progress) job_->progress->finish_and_wait();  // the bar's last state is on the screen
  }
  /// Waits at most timeout; true if the result is ready.
  template <class Rep, class Period>
  bool wait(std::chrono::duration<Rep, Period> timeout) {
    if (!detail::pool::wait_on(core_.get(), job_->event, [&] { return ready(); }, detail::deadline_after(timeout)))
      return false;
    if (job_->progress) job_->progress->finish_and_wait();
    return true;
  }
  /// True once the task has finished (successfully or not) or was cancelled.
  bool ready() const { return job_->done.load(std::memory_order_acquire); }
  /// True if it finished without an error; Error if it is not ready yet (as Python's ValueError).
  bool successful() const;

  // ---- concurrent.futures.Future ----
  /// Same as ready().
  bool done() const { return ready(); }
  /// True while a worker runs the task (for map_async: one of its chunks).
  bool running() const;
  /// Cancels the task if it is still queued (no worker has it yet): then true, and it never runs. False once
  /// started or done.
  bool cancel();
  /// True if cancel() succeeded; get() then throws CancelledError.
  bool cancelled() const { return job_->was_cancelled.load(); }
  /// Waits, then returns the task's exception (null if it succeeded); throws CancelledError if it was cancelled.
  std::exception_ptr exception();
  /// As exception(), but throws TimeoutError if not done within timeout.
  template <class Rep, class Period>
  std::exception_ptr exception(std::chrono::duration<Rep, Period> timeout);
  /// Calls fn(*this) once the result is done — Python's callback= and error_callback= (check successful()):
  /// in this process, on the pool's callback thread, or at once in this thread if already done. An exception fn
  /// throws is reported on stderr and does not reach the pool. Pool::join() waits for the callbacks.
  void add_done_callback(std::function<void(AsyncResult&)> fn);

 private:
  friend class Pool;
  friend class ThreadPool;
  friend struct detail::pool::result_access;
  template <class>
  friend class detail::pool::map_family;
  AsyncResult(std::shared_ptr<detail::pool::core> core, std::shared_ptr<detail::pool::result_job<R>> job)
      : core_(std::move(core)), job_(std::move(job)) {}
  R value() const;
  /// Moves the value out (the blocking map()/apply() own their result alone).
  R take();

  std::shared_ptr<detail::pool::core> core_;  // null for a ThreadPool's result
  std::shared_ptr<detail::pool::result_job<R>> job_;
};

/// Yields each result of `results` (a range of AsyncResult) as an AsyncResult& as it completes, earliest first
/// (concurrent.futures.as_completed). The iteration throws TimeoutError if `timeout` (counted from this call)
/// passes before all are done.
template <std::ranges::range Results>
auto as_completed(Results& results);
template <std::ranges::range Results, class Rep, class Period>
auto as_completed(Results& results, std::chrono::duration<Rep, Period> timeout);
template <std::ranges::range Results>
auto as_completed(Results& results, std::optional<std::chrono::milliseconds> timeout);
/// Settings of as_completed: `mp::as_completed(results, {.progress = mp::Progress::on_tty, .desc = "jobs"})`.
struct AsCompletedOptions {
  std::optional<std::chrono::milliseconds> timeout{};  ///< counted from the call; none: wait as long as it takes
  Progress progress = Progress::off;                    ///< a bar counting the results as they are yielded
  std::string desc{};                                   ///< the bar's label
};
template <std::ranges::range Results>
auto as_completed(Results& results, AsCompletedOptions options);

/// Waits until `when` holds for `results` (a range of AsyncResult) or the timeout passes; returns the indices of
/// the results done and not done then, each in range order (concurrent.futures.wait).
template <std::ranges::range Results>
std::pair<std::vector<std::size_t>, std::vector<std::size_t>> wait(Results& results, ReturnWhen when);
template <std::ranges::range Results, class Rep, class Period>
std::pair<std::vector<std::size_t>, std::vector<std::size_t>> wait(Results& results, ReturnWhen when,
                                                                   std::chrono::duration<Rep, Period> timeout);
template <std::ranges::range Results>
std::pair<std::vector<std::size_t>, std::vector<std::size_t>> wait(Results& results, ReturnWhen when,
                                                                   std::optional<std::chrono::milliseconds> timeout);

/// The lazy result sequence of imap (Ordered) / imap_unordered: an input range; use it in a range-for.
/// Input is pulled as results are consumed, with at most 4 * processes + 2 chunks in flight or waiting.
template <class F, class V, class E, bool Ordered>
class [[nodiscard]] IMapIterator {
  using state = detail::pool::imap_state<F, V, E, Ordered>;

 public:
  class iterator {
   public:
    using value_type = E;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    /// The current item; throws RemoteError (or WorkerLost, TimeoutError) if that item's task failed.
    const E& operator*() const { return s_->current(); }
    /// Moves to the next item, waiting for its chunk's result.
    iterator& operator++() { s_->advance(); return *this; }
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
  IMapIterator(std::shared_ptr<detail::pool::core> core, F f, V&& input, std::size_t chunksize,
               std::shared_ptr<detail::pool::progress_bar> progress);

  std::unique_ptr<state> state_;
};

namespace detail::pool {
/// The map family of Pool and ThreadPool, written once: each call with a chunksize or with MapOptions, and braced
/// lists as Python's literal lists. Derived provides submit_map<Star>(f, range, MapOptions, caller) (the _async
/// calls), wait_map<Star>(f, range, MapOptions) (map and starmap, which wait) and make_imap<Ordered>(f, range,
/// MapOptions), and names itself in errors through map_async_caller/starmap_async_caller.
template <class Derived>
class map_family {
 public:
  /// [f(x) for x in range], in order; chunksize 0 chooses ceil(n / (4 * processes)). Throws the first failed item's error.
  template <class F, std::ranges::input_range Range>
  auto map(F f, Range&& range, std::size_t chunksize = 0) {
    return map(std::move(f), std::forward<Range>(range), MapOptions{.chunksize = chunksize});
  }
  /// As map, with a progress bar and other per-call options.
  template <class F, std::ranges::input_range Range>
  auto map(F f, Range&& range, MapOptions options) {
    return self().template wait_map<false>(std::move(f), std::forward<Range>(range), std::move(options));
  }
  /// As map, without waiting. The input is read (and serialized) before it returns.
  template <class F, std::ranges::input_range Range>
  auto map_async(F f, Range&& range, std::size_t chunksize = 0) {
    return map_async(std::move(f), std::forward<Range>(range), MapOptions{.chunksize = chunksize});
  }
  template <class F, std::ranges::input_range Range>
  auto map_async(F f, Range&& range, MapOptions options) {
    return self().template submit_map<false>(std::move(f), std::forward<Range>(range), std::move(options),
                                             Derived::map_async_caller);
  }
  /// [f(a, b, ...) for (a, b, ...) in range]: items are tuples (or pairs, arrays) unpacked into the call.
  template <class F, std::ranges::input_range Range>
  auto starmap(F f, Range&& range, std::size_t chunksize = 0) {
    return starmap(std::move(f), std::forward<Range>(range), MapOptions{.chunksize = chunksize});
  }
  template <class F, std::ranges::input_range Range>
  auto starmap(F f, Range&& range, MapOptions options) {
    return self().template wait_map<true>(std::move(f), std::forward<Range>(range), std::move(options));
  }
  /// As starmap, without waiting.
  template <class F, std::ranges::input_range Range>
  auto starmap_async(F f, Range&& range, std::size_t chunksize = 0) {
    return starmap_async(std::move(f), std::forward<Range>(range), MapOptions{.chunksize = chunksize});
  }
  template <class F, std::ranges::input_range Range>
  auto starmap_async(F f, Range&& range, MapOptions options) {
    return self().template submit_map<true>(std::move(f), std::forward<Range>(range), std::move(options),
                                            Derived::starmap_async_caller);
  }
  /// Lazy f(x) for x in range, in input order; the range may be endless (input is pulled as results are consumed).
  template <class F, std::ranges::input_range Range>
  auto imap(F f, Range&& range, std::size_t chunksize = 1) {
    return imap(std::move(f), std::forward<Range>(range), MapOptions{.chunksize = chunksize});
  }
  /// As imap; a progress bar counts the items as you consume them.
  template <class F, std::ranges::input_range Range>
  auto imap(F f, Range&& range, MapOptions options) {
    return self().template make_imap<true>(std::move(f), std::forward<Range>(range), std::move(options));
  }
  /// As imap, in completion order.
  template <class F, std::ranges::input_range Range>
  auto imap_unordered(F f, Range&& range, std::size_t chunksize = 1) {
    return imap_unordered(std::move(f), std::forward<Range>(range), MapOptions{.chunksize = chunksize});
  }
  template <class F, std::ranges::input_range Range>
  auto imap_unordered(F f, Range&& range, MapOptions options) {
    return self().template make_imap<false>(std::move(f), std::forward<Range>(range), std::move(options));
  }

  /// Braced lists, as Python's literal lists: `pool.map(f, {1, 2, 3})` (copied, so imap over one is safe).
  template <class F, class T>
  auto map(F f, std::initializer_list<T> items, std::size_t chunksize = 0) {
    return map(std::move(f), std::vector<T>(items), chunksize);
  }
  template <class F, class T>
  auto map_async(F f, std::initializer_list<T> items, std::size_t chunksize = 0) {
    return map_async(std::move(f), std::vector<T>(items), chunksize);
  }
  template <class F, class T>
  auto imap(F f, std::initializer_list<T> items, std::size_t chunksize = 1) {
    return imap(std::move(f), std::vector<T>(items), chunksize);
  }
  template <class F, class T>
  auto imap_unordered(F f, std::initializer_list<T> items, std::size_t chunksize = 1) {
    return imap_unordered(std::move(f), std::vector<T>(items), chunksize);
  }

 private:
  Derived& self() { return static_cast<Derived&>(*this); }
};
}  // namespace detail::pool

/// A pool of worker processes (Python's multiprocessing.Pool).
class Pool : public detail::pool::map_family<Pool> {
 public:
  /// `processes` workers (0: cpu_count()).
  explicit Pool(std::size_t processes = 0) : Pool(PoolOptions{.processes = processes}) {}
  MP_DECL explicit Pool(PoolOptions options);
  /// close() then join(): every submitted task finishes first (Python's `with` would terminate instead).
  MP_DECL ~Pool();
  Pool(Pool&&) noexcept = default;
  Pool& operator=(Pool&&) = delete;

  /// Runs f(args...) in a worker and returns its result (rethrows its exception as RemoteError).
  template <class F, class... Args>
  auto apply(F f, Args&&... args) {
    return apply_async(std::move(f), std::forward<Args>(args)...).take();
  }
  /// Starts f(args...) in a worker.
  template <class F, class... Args>
    requires(!std::is_same_v<std::decay_t<F>, TaskOptions>)
  auto apply_async(F f, Args&&... args) {
    return apply_async(TaskOptions{}, std::move(f), std::forward<Args>(args)...);
  }
  /// Starts f(args...) with per-task options (a timeout over the pool's task_timeout).
  template <class F, class... Args>
  auto apply_async(TaskOptions options, F f, Args&&... args)
      -> AsyncResult<detail::pool::apply_result_t<F, detail::pool::arg_t<Args>...>>;

  /// concurrent.futures' name for apply_async: `auto future = pool.submit(f, args...);`.
  template <class F, class... Args>
  auto submit(F f, Args&&... args) {
    return apply_async(std::move(f), std::forward<Args>(args)...);
  }

  // map, map_async, starmap, starmap_async, imap, imap_unordered: detail::pool::map_family above.

  /// No new work; what was submitted still runs.
  void close() { core().close(); }
  /// Kills the workers now; pending results fail with mp::Error instead of hanging.
  void terminate() { core().terminate(); }
  /// Waits for submitted work, the workers' exit and the done callbacks; call close() or terminate() first.
  void join() {
    core().join();
    runner_->drain();
  }
  /// The number of worker processes.
  std::size_t processes() const noexcept { return core_ ? core_->processes() : 0; }

 private:
  friend class detail::pool::map_family<Pool>;
  static constexpr const char* map_async_caller = "Pool::map_async";
  static constexpr const char* starmap_async_caller = "Pool::starmap_async";
  /// map, starmap: the caller waits while `range` lives, so big chunks may be serialized when dispatched
  /// (detail/pool/jobs.hpp, lazy_chunks).
  template <bool Star, class F, class Range>
  auto wait_map(F f, Range&& range, MapOptions options) {
    std::shared_ptr<detail::pool::lazy_chunks> lazy;
    auto result = submit_map<Star>(std::move(f), std::forward<Range>(range), std::move(options),
                                   Star ? "Pool::starmap" : "Pool::map", &lazy);
    const detail::pool::lazy_closer closer{lazy};
    return result.take();
  }
  /// `lazy` (wait_map): big chunks may be serialized when dispatched; *lazy is set if some are.
  template <bool Star, class F, class Range>
  auto submit_map(F f, Range&& range, MapOptions options, const char* caller,
                  std::shared_ptr<detail::pool::lazy_chunks>* lazy = nullptr);
  template <bool Ordered, class F, class Range>
  auto make_imap(F f, Range&& range, MapOptions options);
  /// Under spawn and forkserver, ProcessError for a callable whose state may hold addresses (as Process::start).
  template <class F>
  void check_fresh_callable(const char* caller) const;

  /// The core; Error after a move.
  detail::pool::core& core() const { return core_ ? *core_ : moved_from(); }
  [[noreturn]] MP_DECL static detail::pool::core& moved_from();

  std::shared_ptr<detail::pool::core> core_;
  std::shared_ptr<detail::pool::callback_runner> runner_ = std::make_shared<detail::pool::callback_runner>();
};

}  // namespace mp

#include <mp/impl/pool_templates.ipp>

#if MP_INCLUDE_DEFINITIONS
#include <mp/impl/pool.ipp>
#endif
