// mp::Pool and mp::AsyncResult: a pool of worker processes running function calls (Python's multiprocessing.Pool).
// apply/apply_async, map/map_async, starmap/starmap_async, lazy imap/imap_unordered, close/terminate/join;
// per-task timeouts, initializer, maxtasksperchild. Callables cross to the workers as code address + state, so
// lambdas work (under fork: captures trivially copyable or serializable; under spawn and forkserver: functions,
// lambdas without captures, function objects with a serialize member); see docs/pool.md.
// Process safety: a Pool and its AsyncResults may be used from several threads of the process that created the
// Pool. A worker that dies fails only the task it was running (WorkerLost) and is replaced; ~Pool() = close() +
// join() (all submitted work finishes), unlike Python's `with`, which terminates.
#pragma once

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <mp/context.hpp>
#include <mp/detail/code_address.hpp>
#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/pool_core.hpp>
#include <mp/detail/pool_task.hpp>
#include <mp/detail/spawn.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/detail/type_name.hpp>
#include <mp/detail/unique_fd.hpp>
#include <mp/errors.hpp>
#include <mp/process.hpp>
#include <mp/serialize.hpp>

namespace mp {

/// Pool settings, for designated initializers: `mp::Pool pool({.processes = 4, .maxtasksperchild = 100});`
struct PoolOptions {
  std::size_t processes = 0;                 ///< 0: cpu_count()
  std::function<void()> initializer{};       ///< runs once in every worker, replacements included
  std::size_t maxtasksperchild = 0;          ///< 0: unlimited; else a worker is replaced after that many tasks (chunks)
  std::optional<StartMethod> start_method{}; ///< default get_start_method(); spawn/forkserver: fresh workers
  std::optional<std::chrono::milliseconds> task_timeout{};  ///< a task running longer is killed with its worker
};

/// Per-call settings: `pool.apply_async(mp::TaskOptions{.timeout = 100ms}, f, args...)`.
struct TaskOptions {
  std::optional<std::chrono::milliseconds> timeout{};  ///< overrides PoolOptions::task_timeout for this task
};

namespace detail {

template <class R>
using pool_stored_t = std::conditional_t<std::is_void_v<R>, std::monostate, R>;

/// A job whose outcome an AsyncResult<R> reads once done is set.
template <class R>
class pool_result_job : public pool_job {
 public:
  std::atomic<bool> done{false};
  pool_stored_t<R> value{};     // written before done (release), read after (acquire)
  std::exception_ptr error;

  void finish() {
    done.store(true, std::memory_order_release);
    event.notify();
  }
};

/// apply_async: one chunk whose message is the callable's state and the arguments.
template <class R>
class pool_apply_job final : public pool_result_job<R> {
 public:
  std::vector<std::byte> message;
  std::span<const std::byte> prefix() override { return message; }
  std::span<const std::byte> body(std::size_t) override { return {}; }
  void deliver(std::size_t, input_archive& ar) override {
    std::uint64_t ok = 0;
    ar.read_bytes(&ok, sizeof ok, "result count");
    if constexpr (!std::is_void_v<R>) {
      if (ok == 1) this->value = pool_load<R>(ar);
    }
    this->error = pool_read_failure(ar);
    this->finish();
  }
  void fail(std::size_t, std::exception_ptr e) override {
    this->error = std::move(e);
    this->finish();
  }
};

template <class E>
using pool_map_result_t = std::conditional_t<std::is_void_v<E>, void, std::vector<E>>;

/// map/starmap: every chunk's items serialized at submission; results land in place.
template <class E>
class pool_map_job final : public pool_result_job<pool_map_result_t<E>> {
 public:
  std::vector<std::byte> callable;
  std::vector<std::byte> items;        // chunk bodies back to back
  std::vector<std::size_t> offsets;    // chunk c's body: items[offsets[c], offsets[c + 1])
  std::vector<std::size_t> starts;     // chunk c's first item index
  std::size_t remaining = 0;           // chunks not yet answered
  std::size_t error_at = SIZE_MAX;     // item index of the earliest failure so far
  std::exception_ptr first_error;

  std::span<const std::byte> prefix() override { return callable; }
  std::span<const std::byte> body(std::size_t c) override {
    return std::span<const std::byte>(items).subspan(offsets[c], offsets[c + 1] - offsets[c]);
  }
  void deliver(std::size_t c, input_archive& ar) override {
    std::uint64_t ok = 0;
    ar.read_bytes(&ok, sizeof ok, "result count");
    const std::size_t start = starts[c];
    if (ok > starts[c + 1] - start) ar.fail("map results", "more results than items in the chunk");
    if constexpr (!std::is_void_v<E>) {
      if constexpr (is_bitwise_v<E>) {
        const auto bytes = ar.take(ok * sizeof(E), "map results");
        if (ok != 0) std::memcpy(this->value.data() + start, bytes.data(), bytes.size());
      } else {
        for (std::size_t i = 0; i < ok; ++i) this->value[start + i] = pool_load<E>(ar);
      }
    }
    if (auto e = pool_read_failure(ar)) note_failure(start + ok, std::move(e));
    chunk_done();
  }
  void fail(std::size_t c, std::exception_ptr e) override {
    note_failure(starts[c], std::move(e));
    chunk_done();
  }

 private:
  void note_failure(std::size_t at, std::exception_ptr e) {
    if (at < error_at) {
      error_at = at;
      first_error = std::move(e);
    }
  }
  void chunk_done() {
    if (--remaining != 0) return;
    this->error = first_error;
    std::vector<std::byte>().swap(items);
    this->finish();
  }
};

/// imap/imap_unordered: chunks are added as the consumer pulls; answers wait in `arrived` until consumed.
template <class E>
class pool_imap_job final : public pool_job {
 public:
  struct chunk_result {
    std::vector<E> values;
    std::exception_ptr error;  // after values: the item at position values.size() failed
  };
  std::vector<std::byte> callable;
  std::mutex mutex;  // guards the maps below; taken under the core mutex, never the other way round
  std::map<std::size_t, std::vector<std::byte>> bodies;
  std::map<std::size_t, chunk_result> arrived;
  std::deque<std::size_t> arrival_order;

  std::span<const std::byte> prefix() override { return callable; }
  std::span<const std::byte> body(std::size_t c) override {
    std::lock_guard lock(mutex);
    return bodies.at(c);  // the vector's buffer does not move when other entries come and go
  }
  void deliver(std::size_t c, input_archive& ar) override {
    chunk_result result;
    std::uint64_t ok = 0;
    ar.read_bytes(&ok, sizeof ok, "result count");
    if (ok > ar.remaining()) ar.fail("imap results", "more results than bytes");
    result.values.reserve(ok);
    for (std::uint64_t i = 0; i < ok; ++i) result.values.push_back(pool_load<E>(ar));
    result.error = pool_read_failure(ar);
    store(c, std::move(result));
  }
  void fail(std::size_t c, std::exception_ptr e) override { store(c, chunk_result{{}, std::move(e)}); }

 private:
  void store(std::size_t c, chunk_result result) {
    {
      std::lock_guard lock(mutex);
      bodies.erase(c);
      arrived.emplace(c, std::move(result));
      arrival_order.push_back(c);
    }
    event.notify();
  }
};

/// Arguments as they travel: string literals and char pointers become std::string.
template <class A>
using pool_arg_t = std::conditional_t<std::is_same_v<std::decay_t<A>, const char*> || std::is_same_v<std::decay_t<A>, char*>,
                                      std::string, std::decay_t<A>>;

template <class F, class... Args>
using pool_apply_result_t = std::remove_cvref_t<std::invoke_result_t<F&, Args&&...>>;

/// Stands for the result of a call that does not compile, so the static_assert below names the problem.
struct pool_not_callable {};

template <class F, class T, bool Star>
struct pool_item_result {
  using type = pool_not_callable;
};
template <class F, class T>
  requires std::is_invocable_v<F&, T&&>
struct pool_item_result<F, T, false> {
  using type = std::remove_cvref_t<std::invoke_result_t<F&, T&&>>;
};
template <class F, class T>
  requires requires { std::apply(std::declval<F&>(), std::declval<T&&>()); }
struct pool_item_result<F, T, true> {
  using type = std::remove_cvref_t<decltype(std::apply(std::declval<F&>(), std::declval<T&&>()))>;
};
template <class E>
constexpr void pool_check_callable_with_items() {
  static_assert(!std::is_same_v<E, pool_not_callable>,
                "mp::Pool::map/imap/starmap: the function cannot be called with the range's items (for starmap: with "
                "the elements of each tuple); check the parameter types against the range's value type");
}

/// Under spawn and forkserver, refuses a callable whose state may hold addresses (a lambda with captures): the
/// same rule as Process::start. Under fork everything pool_check_callable accepts crosses.
template <class F>
void pool_check_fresh_callable(const pool_core& core, const char* caller) {
  if constexpr (!target_crosses<F>()) {
    if (core.fresh())
      throw ProcessError(std::string(caller) + ": the function, of type " + type_name<F>() + ", cannot cross to "
                         "the workers of a Pool started by spawn or forkserver: only a function, a lambda without "
                         "captures, or a function object with a serialize member can (a capture may be a reference, "
                         "meaningless in a fresh process); pass captured values as arguments, or use "
                         "StartMethod::fork");
  } else {
    (void)core;
    (void)caller;
  }
}

/// Python's automatic chunksize: ceil(n / (4 * processes)).
inline std::size_t pool_auto_chunksize(std::size_t n, std::size_t processes) {
  const std::size_t per = 4 * processes;
  return std::max<std::size_t>(1, n / per + (n % per != 0 ? 1 : 0));
}

template <class Duration>
std::string pool_ms_text(Duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + " ms";
}

}  // namespace detail

/// The pending result of apply_async/map_async/starmap_async (Python's AsyncResult). Copies share one result.
template <class R>
class [[nodiscard]] AsyncResult {
 public:
  /// Waits, then returns the value or throws the task's error (RemoteError, WorkerLost, TimeoutError, ...).
  R get() {
    wait();
    return value();
  }
  /// As get(), but throws TimeoutError if the result is not ready within timeout (the task keeps running).
  template <class Rep, class Period>
  R get(std::chrono::duration<Rep, Period> timeout) {
    if (!wait(timeout))
      throw TimeoutError("AsyncResult::get timed out after " + detail::pool_ms_text(timeout) +
                         "; the task is still running: call get() again to keep waiting");
    return value();
  }
  /// Waits until the result is ready.
  void wait() { (void)core_->wait(job_->event, [&] { return ready(); }); }
  /// Waits at most timeout; true if the result is ready.
  template <class Rep, class Period>
  bool wait(std::chrono::duration<Rep, Period> timeout) {
    return core_->wait(job_->event, [&] { return ready(); }, detail::deadline_after(timeout));
  }
  /// True once the task has finished (successfully or not).
  bool ready() const { return job_->done.load(std::memory_order_acquire); }
  /// True if it finished without an error; Error if it is not ready yet (as Python's ValueError).
  bool successful() const {
    if (!ready()) throw Error("AsyncResult::successful: the result is not ready yet; call wait() first");
    return !job_->error;
  }

 private:
  friend class Pool;
  AsyncResult(std::shared_ptr<detail::pool_core> core, std::shared_ptr<detail::pool_result_job<R>> job)
      : core_(std::move(core)), job_(std::move(job)) {}
  R value() const {
    if (job_->error) std::rethrow_exception(job_->error);
    if constexpr (!std::is_void_v<R>) return job_->value;
  }
  /// Moves the value out (the blocking map()/apply() own their result alone).
  R take() {
    wait();
    if (job_->error) std::rethrow_exception(job_->error);
    if constexpr (!std::is_void_v<R>) return std::move(job_->value);
  }

  std::shared_ptr<detail::pool_core> core_;
  std::shared_ptr<detail::pool_result_job<R>> job_;
};

/// The lazy result sequence of imap (Ordered) / imap_unordered: an input range; use it in a range-for.
/// Input is pulled as results are consumed, with at most 4 * processes + 2 chunks in flight or waiting.
template <class F, class V, class E, bool Ordered>
class [[nodiscard]] IMapIterator {
  struct state;

 public:
  class iterator {
   public:
    using value_type = E;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    /// The current item; throws RemoteError (or WorkerLost, TimeoutError) if that item's task failed.
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
  iterator begin() {
    if (!state_->started) {
      state_->started = true;
      state_->advance();
    }
    return iterator(state_.get());
  }
  std::default_sentinel_t end() const noexcept { return {}; }

 private:
  friend class Pool;
  IMapIterator(std::shared_ptr<detail::pool_core> core, F f, V&& input, std::size_t chunksize)
      : state_(std::make_unique<state>(std::move(core), std::move(f), std::forward<V>(input), chunksize)) {
    state_->feed();  // work starts now, not at the first ++
  }

  struct state {
    using input_type = std::remove_reference_t<V>&;  // iterated as an lvalue, owned or referenced
    using T = std::remove_cvref_t<std::ranges::range_value_t<input_type>>;
    std::shared_ptr<detail::pool_core> core;
    std::shared_ptr<detail::pool_imap_job<E>> job = std::make_shared<detail::pool_imap_job<E>>();
    V input;  // a reference to an lvalue range (which must outlive the iteration), or the moved-in rvalue range
    std::ranges::iterator_t<input_type> it;
    std::size_t chunksize;
    std::size_t window;
    bool input_done = false;
    bool started = false;
    bool at_end = false;
    std::size_t submitted = 0;  // chunks handed to the pool
    std::size_t consumed = 0;   // chunks taken out of job->arrived
    typename detail::pool_imap_job<E>::chunk_result chunk;
    std::size_t position = 0;   // next index into chunk.values
    bool on_error = false;

    state(std::shared_ptr<detail::pool_core> c, F f, V&& in, std::size_t size)
        : core(std::move(c)), input(std::forward<V>(in)), it(std::ranges::begin(input)), chunksize(std::max<std::size_t>(1, size)),
          window(4 * core->processes() + 2) {
      job->trampoline = &detail::pool_map_trampoline<F, T, E, false>;
      detail::pool_encode_callable(job->callable, f);
    }

    void feed() {
      while (!input_done && submitted - consumed < window) {
        std::vector<std::byte> body;
        const auto end = std::ranges::end(input);
        const std::uint64_t n = detail::pool_append_items<T>(body, it, end, chunksize);
        if (it == end) input_done = true;
        if (n == 0) break;
        {
          std::lock_guard lock(job->mutex);
          job->bodies.emplace(submitted, std::move(body));
        }
        core->submit(job, submitted, 1, Ordered ? "Pool::imap" : "Pool::imap_unordered");
        ++submitted;
      }
    }

    const E& current() const {
      if (at_end) throw Error("IMapIterator: dereferenced past the end");
      if (on_error) std::rethrow_exception(chunk.error);
      return chunk.values[position - 1];
    }

    // Moves to the next item (or error position, or the end).
    void advance() {
      if (on_error) {  // the failed item is behind us: the rest of that chunk never ran
        on_error = false;
        chunk.error = nullptr;
      }
      for (;;) {
        if (position < chunk.values.size()) {
          ++position;
          return;
        }
        if (chunk.error) {
          on_error = true;
          return;
        }
        feed();
        if (input_done && consumed == submitted) {
          at_end = true;
          return;
        }
        auto has_next = [&] {
          std::lock_guard lock(job->mutex);
          return Ordered ? job->arrived.count(consumed) != 0 : !job->arrival_order.empty();
        };
        core->wait(job->event, has_next);
        {
          std::lock_guard lock(job->mutex);
          std::size_t key = consumed;
          if constexpr (!Ordered) {
            key = job->arrival_order.front();
            job->arrival_order.pop_front();
          } else {
            std::erase(job->arrival_order, key);
          }
          auto node = job->arrived.extract(key);
          chunk = std::move(node.mapped());
        }
        ++consumed;
        position = 0;
        feed();
      }
    }
  };

  std::unique_ptr<state> state_;
};

/// A pool of worker processes (Python's multiprocessing.Pool).
class Pool {
 public:
  /// `processes` workers (0: cpu_count()).
  explicit Pool(std::size_t processes = 0) : Pool(PoolOptions{.processes = processes}) {}
  explicit Pool(PoolOptions options);
  /// close() then join(): every submitted task finishes first (Python's `with` would terminate instead).
  ~Pool();
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
      -> AsyncResult<detail::pool_apply_result_t<F, detail::pool_arg_t<Args>...>>;

  /// [f(x) for x in range], in order; chunksize 0 chooses ceil(n / (4 * processes)). Throws the first failed item's error.
  template <class F, std::ranges::input_range Range>
  auto map(F f, Range&& range, std::size_t chunksize = 0) {
    return map_async(std::move(f), std::forward<Range>(range), chunksize).take();
  }
  /// As map, without waiting. The input is read (and serialized) before it returns.
  template <class F, std::ranges::input_range Range>
  auto map_async(F f, Range&& range, std::size_t chunksize = 0) {
    return submit_map<false>(std::move(f), std::forward<Range>(range), chunksize, "Pool::map_async");
  }
  /// [f(a, b, ...) for (a, b, ...) in range]: items are tuples (or pairs, arrays) unpacked into the call.
  template <class F, std::ranges::input_range Range>
  auto starmap(F f, Range&& range, std::size_t chunksize = 0) {
    return starmap_async(std::move(f), std::forward<Range>(range), chunksize).take();
  }
  /// As starmap, without waiting.
  template <class F, std::ranges::input_range Range>
  auto starmap_async(F f, Range&& range, std::size_t chunksize = 0) {
    return submit_map<true>(std::move(f), std::forward<Range>(range), chunksize, "Pool::starmap_async");
  }
  /// Lazy f(x) for x in range, in input order; the range may be endless (input is pulled as results are consumed).
  template <class F, std::ranges::input_range Range>
  auto imap(F f, Range&& range, std::size_t chunksize = 1) {
    return make_imap<true>(std::move(f), std::forward<Range>(range), chunksize);
  }
  /// As imap, in completion order.
  template <class F, std::ranges::input_range Range>
  auto imap_unordered(F f, Range&& range, std::size_t chunksize = 1) {
    return make_imap<false>(std::move(f), std::forward<Range>(range), chunksize);
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

  /// No new work; what was submitted still runs.
  void close();
  /// Kills the workers now; pending results fail with mp::Error instead of hanging.
  void terminate();
  /// Waits for submitted work and the workers' exit; call close() or terminate() first (as Python).
  void join();
  /// The number of worker processes.
  std::size_t processes() const noexcept { return core_ ? core_->processes() : 0; }

 private:
  template <bool Star, class F, class Range>
  auto submit_map(F f, Range&& range, std::size_t chunksize, const char* caller);
  template <bool Ordered, class F, class Range>
  auto make_imap(F f, Range&& range, std::size_t chunksize);

  detail::pool_core& core() const;  // Error after a move

  std::shared_ptr<detail::pool_core> core_;
};

// ---------------------------------------------------------------------------------------------------------------

inline Pool::Pool(PoolOptions options) {
  const StartMethod method = options.start_method.value_or(get_start_method());
  detail::pool_config config;
  config.start_method = method;
  if (method != StartMethod::fork) {
    detail::require_init(method, "Pool");
    config.parent_name = current_process().name();
    if (options.initializer) {
      // A std::function's state is opaque: only a plain function pointer inside it can be named in a fresh process.
      auto* function = options.initializer.target<void (*)()>();
      if (function == nullptr || *function == nullptr)
        throw ProcessError("Pool: under start method " + std::string(to_string(method)) + " the initializer must be "
                           "a plain function, but the std::function holds a " +
                           detail::type_name(options.initializer.target_type()) + ", which cannot cross to a fresh "
                           "process; pass a function (`.initializer = init`), a lambda without captures converted "
                           "with + (`.initializer = +[] { ... }`), or use StartMethod::fork");
      config.initializer_address = reinterpret_cast<std::uintptr_t>(*function);
      (void)detail::locate_code(config.initializer_address);  // ProcessError now if it is not code in a module
    }
  }
  config.processes = options.processes != 0 ? options.processes : std::max<std::size_t>(1, cpu_count());
  if (config.processes > 4096)
    throw Error("Pool: processes = " + std::to_string(config.processes) + " is not a sensible number of workers; use "
                "at most a few per CPU (cpu_count() = " + std::to_string(cpu_count()) + ")");
  config.initializer = std::move(options.initializer);
  config.maxtasksperchild = options.maxtasksperchild;
  if (options.task_timeout) {
    if (options.task_timeout->count() <= 0)
      throw Error("Pool: task_timeout must be positive, got " + detail::pool_ms_text(*options.task_timeout) +
                  "; leave it unset for no timeout");
    config.task_timeout_ns = static_cast<std::uint64_t>(std::chrono::nanoseconds(*options.task_timeout).count());
  }
  core_ = std::make_shared<detail::pool_core>(std::move(config));
}

inline Pool::~Pool() {
  if (!core_ || !core_->owned_here()) return;  // moved from, or a copy inherited by a forked child
  try {
    core_->close();
    core_->join();
  } catch (...) {
  }
}

inline detail::pool_core& Pool::core() const {
  if (!core_) throw Error("Pool: this Pool was moved from; use the Pool it was moved to");
  return *core_;
}
inline void Pool::close() { core().close(); }
inline void Pool::terminate() { core().terminate(); }
inline void Pool::join() { core().join(); }

template <class F, class... Args>
auto Pool::apply_async(TaskOptions options, F f, Args&&... args)
    -> AsyncResult<detail::pool_apply_result_t<F, detail::pool_arg_t<Args>...>> {
  using R = detail::pool_apply_result_t<F, detail::pool_arg_t<Args>...>;
  detail::pool_check_callable<F>();
  (detail::pool_check_value<detail::pool_arg_t<Args>>(), ...);
  detail::pool_check_value<R>();
  detail::pool_check_fresh_callable<F>(core(), "Pool::apply_async");
  auto job = std::make_shared<detail::pool_apply_job<R>>();
  job->trampoline = &detail::pool_apply_trampoline<F, R, detail::pool_arg_t<Args>...>;
  if (options.timeout) {
    if (options.timeout->count() <= 0)
      throw Error("Pool::apply_async: TaskOptions::timeout must be positive, got " +
                  detail::pool_ms_text(*options.timeout));
    job->timeout_ns = static_cast<std::uint64_t>(std::chrono::nanoseconds(*options.timeout).count());
  }
  detail::pool_encode_callable(job->message, f);
  if constexpr (sizeof...(Args) > 0) {
    detail::output_archive ar(job->message);
    ar(std::tuple<detail::pool_arg_t<Args>...>(std::forward<Args>(args)...));
  }
  core().submit(job, 0, 1, "Pool::apply_async");
  return AsyncResult<R>(core_, std::move(job));
}

template <bool Star, class F, class Range>
auto Pool::submit_map(F f, Range&& range, std::size_t chunksize, const char* caller) {
  using T = std::remove_cvref_t<std::ranges::range_value_t<Range>>;
  using E = typename detail::pool_item_result<F, T, Star>::type;
  using R = detail::pool_map_result_t<E>;
  detail::pool_check_callable_with_items<E>();
  detail::pool_check_callable<F>();
  detail::pool_check_value<T>();
  detail::pool_check_value<E>();
  detail::pool_check_fresh_callable<F>(core(), caller);
  if constexpr (!std::ranges::forward_range<Range> || !std::ranges::sized_range<Range>) {
    // A single-pass or unsized input: read it once to count it, as Python turns it into a list.
    std::vector<T> items;
    for (auto&& item : range) items.push_back(static_cast<T>(item));
    return submit_map<Star>(std::move(f), items, chunksize, caller);
  } else {
    auto job = std::make_shared<detail::pool_map_job<E>>();
    job->trampoline = &detail::pool_map_trampoline<F, T, E, Star>;
    detail::pool_encode_callable(job->callable, f);
    const std::size_t n = static_cast<std::size_t>(std::ranges::size(range));
    if (chunksize == 0) chunksize = detail::pool_auto_chunksize(n, core().processes());
    if constexpr (!std::is_void_v<E>) job->value.resize(n);
    const std::size_t chunks = n / chunksize + (n % chunksize != 0 ? 1 : 0);
    if constexpr (detail::is_bitwise_v<T>) job->items.reserve(n * sizeof(T) + chunks * sizeof(std::uint64_t));
    job->offsets.reserve(chunks + 1);
    job->starts.reserve(chunks + 1);
    auto it = std::ranges::begin(range);
    const auto end = std::ranges::end(range);
    std::size_t position = 0;
    for (std::size_t c = 0; c < chunks; ++c) {
      job->offsets.push_back(job->items.size());
      job->starts.push_back(position);
      position += detail::pool_append_items<T>(job->items, it, end, chunksize);
    }
    job->offsets.push_back(job->items.size());
    job->starts.push_back(position);
    job->remaining = chunks;
    if (chunks == 0) {
      job->finish();
    } else {
      core().submit(job, 0, chunks, caller);
    }
    return AsyncResult<R>(core_, std::move(job));
  }
}

template <bool Ordered, class F, class Range>
auto Pool::make_imap(F f, Range&& range, std::size_t chunksize) {
  // Not std::views::all: clang 14 cannot compile libstdc++ 12's views. An lvalue range is referenced, an rvalue
  // one moved in.
  using V = std::conditional_t<std::is_lvalue_reference_v<Range>, Range, std::remove_cvref_t<Range>>;
  using T = std::remove_cvref_t<std::ranges::range_value_t<std::remove_reference_t<V>&>>;
  using E = typename detail::pool_item_result<F, T, false>::type;
  detail::pool_check_callable_with_items<E>();
  static_assert(!std::is_void_v<E>, "mp::Pool::imap: the function returns void, so there is nothing to iterate; use "
                                    "map or map_async instead");
  detail::pool_check_callable<F>();
  detail::pool_check_value<T>();
  detail::pool_check_value<E>();
  detail::pool_check_fresh_callable<F>(core(), Ordered ? "Pool::imap" : "Pool::imap_unordered");
  return IMapIterator<F, V, E, Ordered>(core_, std::move(f), std::forward<Range>(range), chunksize);
}

}  // namespace mp
