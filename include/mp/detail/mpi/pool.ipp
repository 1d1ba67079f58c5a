// mp::mpi's public definitions (see mpi.hpp). Inline in both of mp's compile modes: mp::mp_compiled does not link
// MPI, so mp::mpi stays header-only.
#pragma once

#include <mp/mpi.hpp>

namespace mp::mpi {

inline void init(int& argc, char**& argv) { detail::mpi::initialize(argc, argv); }

inline void finalize() { detail::mpi::finalize(); }

inline int rank() {
  const detail::mpi::runtime& rt = detail::mpi::state();
  return rt.mode == detail::mpi::launch::spawned_worker ? rt.world_rank + 1 : rt.world_rank;
}

inline int size() {
  const detail::mpi::runtime& rt = detail::mpi::state();
  switch (rt.mode) {
    case detail::mpi::launch::spawned_worker:
      return rt.world_size + 1;
    case detail::mpi::launch::alone: {
      std::lock_guard lock(detail::mpi::mpi_mutex());
      return 1 + (rt.spawned ? static_cast<int>(rt.spawned->workers.size()) : 0);
    }
    default:
      return rt.world_size;
  }
}

inline Task::Task(void (*f)()) {
  if (f != nullptr) *this = task(f);
}

template <class F, class... A>
Task task(F f, A&&... args) {
  namespace pool = detail::pool;
  detail::mpi::check_callable<F>();
  (pool::check_value<pool::arg_t<A>>(), ...);
  using R = pool::apply_result_t<F, pool::arg_t<A>...>;
  static_assert(std::is_void_v<R>, "mp::mpi::task: an initializer's function must return void");
  Task t;
  t.trampoline_ = &pool::apply_trampoline<F, void, pool::arg_t<A>...>;
  pool::encode_callable(t.payload_, f);
  if constexpr (sizeof...(A) > 0) {
    detail::output_archive ar(t.payload_);
    (detail::mpi::save_argument<pool::arg_t<A>>(ar, args), ...);
  }
  return t;
}

// ---- AsyncResult ----

template <class R>
R AsyncResult<R>::get() {
  wait();
  if (job_->error) std::rethrow_exception(job_->error);
  if constexpr (!std::is_void_v<R>) return job_->value;
}

template <class R>
template <class Rep, class Period>
R AsyncResult<R>::get(std::chrono::duration<Rep, Period> timeout) {
  if (!wait(timeout))
    throw TimeoutError("mp::mpi::AsyncResult::get timed out after " + detail::describe_timeout(timeout) +
                       "; the task is still running: call get() again to keep waiting");
  return get();
}

template <class R>
R AsyncResult<R>::take() {
  wait();
  if (job_->error) std::rethrow_exception(job_->error);
  if constexpr (!std::is_void_v<R>) return std::move(job_->value);
}

template <class R>
bool AsyncResult<R>::successful() const {
  if (!ready()) throw Error("mp::mpi::AsyncResult::successful: the result is not ready yet; call wait() first");
  return !job_->error;
}

template <class R>
bool AsyncResult<R>::cancel() {
  if (cancelled()) return true;
  if (!engine_->withdraw(job_.get(), 0)) return false;
  {
    std::lock_guard lock(detail::mpi::mpi_mutex());
    job_->error = std::make_exception_ptr(Error("mp::mpi::AsyncResult: the task was cancelled"));
    job_->finish(detail::mpi::cancelled);
  }
  detail::mpi::engine::run_callbacks();
  return true;
}

template <class R>
template <class Rep, class Period>
std::exception_ptr AsyncResult<R>::exception(std::chrono::duration<Rep, Period> timeout) {
  if (!wait(timeout))
    throw TimeoutError("mp::mpi::AsyncResult::exception timed out after " + detail::describe_timeout(timeout));
  return job_->error;
}

template <class R>
void AsyncResult<R>::add_done_callback(std::function<void(AsyncResult&)> callback) {
  {
    std::lock_guard lock(detail::mpi::mpi_mutex());
    if (!job_->done()) {
      job_->callbacks.push_back([self = *this, callback = std::move(callback)]() mutable { callback(self); });
      return;
    }
  }
  callback(*this);
}

// ---- IMapIterator ----

template <class F, class V, class E, bool Ordered>
auto IMapIterator<F, V, E, Ordered>::begin() -> iterator {
  if (!state_->started) {
    state_->started = true;
    state_->advance();
  }
  return iterator(state_.get());
}

// ---- Pool ----

inline Pool::Pool(PoolOptions options) {
  detail::mpi::engine_config config;
  config.processes = options.processes;
  if (options.task_timeout) {
    if (options.task_timeout->count() <= 0)
      throw Error("mp::mpi::Pool: task_timeout must be positive, got " + detail::describe_timeout(*options.task_timeout));
    config.task_timeout_ns = static_cast<std::uint64_t>(std::chrono::nanoseconds(*options.task_timeout).count());
  }
  config.initializer = options.initializer.trampoline_;
  config.initializer_payload = std::move(options.initializer.payload_);
  engine_ = std::make_shared<detail::mpi::engine>(std::move(config));
}

inline Pool::~Pool() {
  if (!engine_) return;
  try {
    engine_->close();
    engine_->join();
  } catch (...) {
  }
}

inline detail::mpi::engine& Pool::engine() const {
  if (!engine_) throw Error("mp::mpi::Pool: this pool was moved from");
  return *engine_;
}

template <class F, class... Args>
auto Pool::apply_async(F f, Args&&... args)
    -> AsyncResult<detail::pool::apply_result_t<F, detail::pool::arg_t<Args>...>> {
  namespace pool = detail::pool;
  using R = pool::apply_result_t<F, pool::arg_t<Args>...>;
  detail::mpi::check_callable<F>();
  (pool::check_value<pool::arg_t<Args>>(), ...);
  pool::check_value<R>();
  auto job = std::make_shared<detail::mpi::apply_job<R>>();
  job->trampoline = &pool::apply_trampoline<F, R, pool::arg_t<Args>...>;
  if constexpr (sizeof...(Args) > 0) {
    // A big message gets its room at once, on huge pages where the system has them: it is fresh memory.
    detail::output_archive measure(detail::output_archive::measure_tag{});
    (detail::mpi::save_argument<pool::arg_t<Args>>(measure, args), ...);
    if (measure.measured() >= detail::mpi::block_limit) {
      job->message.reserve(measure.measured() + sizeof(F) + 64);
      detail::mpi::advise_huge(job->message.data(), job->message.capacity());
    }
  }
  pool::encode_callable(job->message, f);
  if constexpr (sizeof...(Args) > 0) {
    detail::output_archive ar(job->message);
    (detail::mpi::save_argument<pool::arg_t<Args>>(ar, args), ...);
  }
  engine().submit(job, 0, 1, "mp::mpi::Pool::apply_async");
  return AsyncResult<R>(engine_, std::move(job));
}

template <bool Star, class F, class Range>
auto Pool::submit_map(F f, Range&& range, std::size_t chunksize, const char* caller) {
  namespace pool = detail::pool;
  using T = std::remove_cvref_t<std::ranges::range_value_t<Range>>;
  using E = typename pool::item_result<F, T, Star>::type;
  using R = detail::mpi::map_result_t<E>;
  pool::check_callable_with_items<E>();
  detail::mpi::check_callable<F>();
  pool::check_value<T>();
  pool::check_value<E>();
  if constexpr (!std::ranges::forward_range<Range> || !std::ranges::sized_range<Range>) {
    std::vector<T> items;
    for (auto&& item : range) items.push_back(static_cast<T>(item));
    return submit_map<Star>(std::move(f), items, chunksize, caller);
  } else {
    auto job = std::make_shared<detail::mpi::map_job<E>>();
    job->trampoline = &pool::map_trampoline<F, T, E, Star>;
    pool::encode_callable(job->callable, f);
    const std::size_t n = static_cast<std::size_t>(std::ranges::size(range));
    if (chunksize == 0) chunksize = detail::mpi::auto_chunksize(n, engine().processes());
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
      position += pool::append_items<T>(job->items, it, end, chunksize);
    }
    job->offsets.push_back(job->items.size());
    job->starts.push_back(position);
    job->remaining = chunks;
    if (chunks == 0) {
      job->finish();
    } else {
      engine().submit(job, 0, chunks, caller);
    }
    return AsyncResult<R>(engine_, std::move(job));
  }
}

template <bool Ordered, class F, class Range>
auto Pool::make_imap(F f, Range&& range, std::size_t chunksize) {
  namespace pool = detail::pool;
  using V = std::conditional_t<std::is_lvalue_reference_v<Range>, Range, std::remove_cvref_t<Range>>;
  using T = std::remove_cvref_t<std::ranges::range_value_t<std::remove_reference_t<V>&>>;
  using E = typename pool::item_result<F, T, false>::type;
  pool::check_callable_with_items<E>();
  static_assert(!std::is_void_v<E>, "mp::mpi::Pool::imap: the function returns void, so there is nothing to "
                                    "iterate; use map or map_async instead");
  detail::mpi::check_callable<F>();
  pool::check_value<T>();
  pool::check_value<E>();
  return IMapIterator<F, V, E, Ordered>(engine_, std::move(f), std::forward<Range>(range), chunksize);
}

}  // namespace mp::mpi
