// mp::ThreadPool: Pool's interface on threads of this process (Python's multiprocessing.pool.ThreadPool), for
// I/O-bound work. Nothing crosses a process boundary, so nothing is serialized: any callable (lambdas capturing
// anything, by reference too), any argument and result type; a task's exception reaches the caller as the object
// it threw. Results are mp::AsyncResult, with the same futures surface (callbacks, cancel, as_completed, wait) and
// MapOptions progress bars as a Pool's.
// Process safety: use a ThreadPool from any thread of the process that created it. Unlike a Pool it cannot kill a
// running task: terminate() drops the queued ones and waits for the running ones; there is no task timeout.
#pragma once

#include <cstddef>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <optional>
#include <ranges>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <mp/detail/config.hpp>
#include <mp/detail/pool/thread_core.hpp>
#include <mp/errors.hpp>
#include <mp/pool.hpp>

namespace mp {

/// The lazy result sequence of ThreadPool::imap / imap_unordered: an input range, as Pool's IMapIterator.
template <class F, class V, class E, bool Ordered>
class [[nodiscard]] ThreadIMapIterator {
  using state = detail::pool::thread_imap_state<F, V, E, Ordered>;

 public:
  class iterator {
   public:
    using value_type = E;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    /// The current item; rethrows that item's exception.
    const E& operator*() const { return s_->current(); }
    iterator& operator++() { s_->advance(); return *this; }
    void operator++(int) { s_->advance(); }
    friend bool operator==(const iterator& it, std::default_sentinel_t) { return it.s_->at_end; }

   private:
    friend class ThreadIMapIterator;
    explicit iterator(state* s) : s_(s) {}
    state* s_ = nullptr;
  };

  iterator begin() {
    if (!state_->started) {
      state_->started = true;
      state_->advance();
    }
    return iterator(state_.get());
  }
  std::default_sentinel_t end() const noexcept { return {}; }

 private:
  friend class ThreadPool;
  ThreadIMapIterator(std::unique_ptr<state> s) : state_(std::move(s)) { state_->feed(); }
  std::unique_ptr<state> state_;
};

/// A pool of threads with Pool's interface (Python's multiprocessing.pool.ThreadPool).
class ThreadPool : public detail::pool::map_family<ThreadPool> {
 public:
  /// `threads` threads (0: cpu_count()).
  explicit ThreadPool(std::size_t threads = 0) : ThreadPool(PoolOptions{.processes = threads}) {}
  /// processes = the number of threads; initializer runs once in each. task_timeout is refused (a thread cannot be
  /// killed); start_method and maxtasksperchild do not apply to threads.
  MP_DECL explicit ThreadPool(PoolOptions options);
  /// close() then join(), as ~Pool.
  MP_DECL ~ThreadPool();
  ThreadPool(ThreadPool&&) noexcept = default;
  ThreadPool& operator=(ThreadPool&&) = delete;

  template <class F, class... Args>
  auto apply(F f, Args&&... args) {
    return apply_async(std::move(f), std::forward<Args>(args)...).take();
  }
  /// Starts f(args...) on a thread; arguments are decay-copied or moved in, and passed on as rvalues (std::ref for
  /// a reference, as std::thread): move-only arguments (a std::unique_ptr) and callables work, as in Pool.
  template <class F, class... Args>
  auto apply_async(F f, Args&&... args) -> AsyncResult<std::invoke_result_t<F&, std::decay_t<Args>&&...>>;
  template <class F, class... Args>
  auto submit(F f, Args&&... args) {
    return apply_async(std::move(f), std::forward<Args>(args)...);
  }

  // map, map_async, starmap, starmap_async, imap, imap_unordered, as Pool's: detail::pool::map_family.

  /// No new work; what was submitted still runs.
  void close() { core().close(); }
  /// Drops the queued tasks (their results fail with mp::Error); running ones finish.
  void terminate() { core().terminate(); }
  /// Waits for the submitted work, the threads' exit and the done callbacks; call close() or terminate() first.
  void join() {
    core().join();
    runner_->drain();
  }
  /// The number of threads.
  std::size_t processes() const noexcept { return core_ ? core_->threads() : 0; }

 private:
  friend class detail::pool::map_family<ThreadPool>;
  static constexpr const char* map_async_caller = "ThreadPool::map_async";
  static constexpr const char* starmap_async_caller = "ThreadPool::starmap_async";
  template <bool Star, class F, class Range>
  auto wait_map(F f, Range&& range, MapOptions options) {
    return submit_map<Star>(std::move(f), std::forward<Range>(range), std::move(options),
                            Star ? "ThreadPool::starmap" : "ThreadPool::map")
        .take();
  }
  template <bool Star, class F, class Range>
  auto submit_map(F f, Range&& range, MapOptions options, const char* caller);
  template <bool Ordered, class F, class Range>
  auto make_imap(F f, Range&& range, MapOptions options);
  detail::pool::thread_core& core() const {
    if (!core_) throw Error("ThreadPool: this ThreadPool was moved from; use the ThreadPool it was moved to");
    return *core_;
  }

  std::unique_ptr<detail::pool::thread_core> core_;
  std::shared_ptr<detail::pool::callback_runner> runner_ = std::make_shared<detail::pool::callback_runner>();
};

// ---- definitions ----------------------------------------------------------------------------------------------

template <class F, class... Args>
auto ThreadPool::apply_async(F f, Args&&... args) -> AsyncResult<std::invoke_result_t<F&, std::decay_t<Args>&&...>> {
  using R = std::invoke_result_t<F&, std::decay_t<Args>&&...>;
  auto job = std::make_shared<detail::pool::thread_job<R>>();
  job->runner = runner_;
  // Runs once: the arguments are moved into the call. Held by a shared_ptr, so that the task (a std::function)
  // stays copyable whatever F and the arguments are.
  auto call = std::make_shared<std::tuple<F, std::tuple<std::decay_t<Args>...>>>(
      std::move(f), std::tuple<std::decay_t<Args>...>(std::forward<Args>(args)...));
  core().post({[job, call]() {
                 auto run = [&call]() -> R { return std::apply(std::get<0>(*call), std::move(std::get<1>(*call))); };
                 detail::pool::run_apply<R>(*job, run);
               },
               [job](std::exception_ptr e) { job->fail_with(std::move(e)); }},
              "ThreadPool::apply_async");
  return AsyncResult<R>(nullptr, std::move(job));
}

template <bool Star, class F, class Range>
auto ThreadPool::submit_map(F f, Range&& range, MapOptions options, const char* caller) {
  namespace pool = detail::pool;
  using T = std::remove_cvref_t<std::ranges::range_value_t<Range>>;
  using E = typename pool::item_result<F, T, Star>::type;
  using R = pool::map_result_t<E>;
  pool::check_callable_with_items<E>();
  auto items = std::make_shared<std::vector<T>>();
  for (auto&& item : range) items->push_back(static_cast<T>(item));
  const std::size_t n = items->size();
  std::size_t chunksize = options.chunksize;
  if (chunksize == 0) chunksize = pool::auto_chunksize(n, core().threads());
  const std::size_t chunks = n / chunksize + (n % chunksize != 0 ? 1 : 0);
  auto job = std::make_shared<pool::thread_job<R>>();
  job->runner = runner_;
  if constexpr (!std::is_void_v<E>) job->value.resize(n);
  job->remaining = chunks;
  if (options.progress != Progress::off)
    job->progress = pool::progress_bar::start(options.progress == Progress::always, n, std::move(options.desc));
  if (chunks == 0) {
    job->finish();
    return AsyncResult<R>(nullptr, std::move(job));
  }
  auto fn = std::make_shared<F>(std::move(f));
  std::size_t posted = 0;
  try {
    for (std::size_t c = 0; c < chunks; ++c, ++posted) {
      const std::size_t first = c * chunksize;
      const std::size_t last = std::min(n, first + chunksize);
      core().post({[job, fn, items, first, last] {
                     pool::run_map_chunk<F, T, E, Star>(*job, *fn, *items, first, last);
                   },
                   [job](std::exception_ptr e) { job->fail_with(std::move(e)); }},
                  caller);
    }
  } catch (...) {
    if (posted == 0) throw;
    // Closed between two chunks: the ones not posted fail.
    for (std::size_t c = posted; c < chunks; ++c) job->fail_with(std::current_exception());
  }
  return AsyncResult<R>(nullptr, std::move(job));
}

template <bool Ordered, class F, class Range>
auto ThreadPool::make_imap(F f, Range&& range, MapOptions options) {
  namespace pool = detail::pool;
  using V = std::conditional_t<std::is_lvalue_reference_v<Range>, Range, std::remove_cvref_t<Range>>;
  using T = std::remove_cvref_t<std::ranges::range_value_t<std::remove_reference_t<V>&>>;
  using E = typename pool::item_result<F, T, false>::type;
  pool::check_callable_with_items<E>();
  static_assert(!std::is_void_v<E>, "mp::ThreadPool::imap: the function returns void, so there is nothing to "
                                    "iterate; use map or map_async instead");
  std::shared_ptr<pool::progress_bar> progress;
  if (options.progress != Progress::off) {
    std::optional<std::size_t> total;
    if constexpr (std::ranges::sized_range<Range>) total = static_cast<std::size_t>(std::ranges::size(range));
    progress = pool::progress_bar::start(options.progress == Progress::always, total, std::move(options.desc));
  }
  auto s = std::make_unique<pool::thread_imap_state<F, V, E, Ordered>>(&core(), std::move(f),
                                                                       std::forward<Range>(range), options.chunksize);
  s->progress = std::move(progress);
  return ThreadIMapIterator<F, V, E, Ordered>(std::move(s));
}

}  // namespace mp

#if MP_INCLUDE_DEFINITIONS
#include <mp/impl/thread_pool.ipp>
#endif
