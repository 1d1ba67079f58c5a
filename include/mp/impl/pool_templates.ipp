// pool: the template definitions of <mp/pool.hpp> (included at its end; kept apart so that the public header reads
// as a synopsis).
#pragma once

#include <mp/pool.hpp>

namespace mp {

template <class F>
  requires(std::is_invocable_v<F&> && !std::is_same_v<std::remove_cvref_t<F>, Task>)
Task::Task(F f) {
  if constexpr (std::is_same_v<F, std::function<void()>>) {
    // A std::function's state is opaque: only a plain function pointer inside it can be named in a fresh process.
    if (!f) return;
    if (auto* function = f.template target<void (*)()>(); function != nullptr && *function != nullptr) {
      *this = Task(*function);
      return;
    }
    type_ = detail::type_name(f.target_type());
    run_ = std::move(f);
  } else {
    if constexpr (std::is_pointer_v<F>)
      if (f == nullptr) return;
    *this = task(std::move(f));
  }
}

template <class F, class... A>
Task task(F f, A... args) {
  namespace pool = detail::pool;
  static_assert(std::is_invocable_v<F&, A&...>,
                "mp::task(f, args...): f cannot be called with these arguments (they are passed as lvalues)");
  (pool::check_value<pool::arg_t<A>>(), ...);
  Task t;
  t.type_ = detail::type_name<F>();
  t.run_ = [f, args...]() mutable { std::invoke(f, args...); };
  if constexpr (pool::callable_crosses<F> && detail::target_crosses<F>()) {
    t.trampoline_ = &pool::initializer_trampoline<F, pool::arg_t<A>...>;
    t.encode_ = [f, args...](std::vector<std::byte>& out) {
      pool::encode_callable(out, f);
      if constexpr (sizeof...(A) > 0) {
        detail::output_archive ar(out);
        ar(std::tuple<pool::arg_t<A>...>(args...));
      }
    };
  }
  return t;
}

template <class R>
R AsyncResult<R>::get() {
  wait();
  return value();
}

template <class R>
template <class Rep, class Period>
R AsyncResult<R>::get(std::chrono::duration<Rep, Period> timeout) {
  if (!wait(timeout))
    throw TimeoutError("AsyncResult::get timed out after " + detail::describe_timeout(timeout) +
                       "; the task is still running: call get() again to keep waiting");
  return value();
}

template <class R>
bool AsyncResult<R>::successful() const {
  if (!ready()) throw Error("AsyncResult::successful: the result is not ready yet; call wait() first");
  return !job_->error;
}

template <class R>
bool AsyncResult<R>::running() const {
  if (ready()) return false;
  if (core_) return core_->running(*job_);
  return job_->phase.load() == detail::pool::completion::running;
}

template <class R>
bool AsyncResult<R>::cancel() {
  if (ready()) return false;
  if (core_) {
    if (!core_->cancel(*job_)) return false;
  } else {
    int expected = detail::pool::completion::queued;
    if (!job_->phase.compare_exchange_strong(expected, detail::pool::completion::cancelled)) return false;
  }
  job_->finish_cancelled();
  return true;
}

template <class R>
std::exception_ptr AsyncResult<R>::exception() {
  wait();
  if (cancelled()) std::rethrow_exception(job_->error);
  return job_->error;
}

template <class R>
template <class Rep, class Period>
std::exception_ptr AsyncResult<R>::exception(std::chrono::duration<Rep, Period> timeout) {
  if (!wait(timeout))
    throw TimeoutError("AsyncResult::exception timed out after " + detail::describe_timeout(timeout) +
                       "; the task is still running");
  return exception();
}

template <class R>
void AsyncResult<R>::add_done_callback(std::function<void(AsyncResult&)> fn) {
  if (!fn) throw Error("AsyncResult::add_done_callback: the callback is empty");
  job_->add_callback([self = *this, fn = std::move(fn)]() mutable { fn(self); });
}

template <class R>
R AsyncResult<R>::value() const {
  if (job_->error) std::rethrow_exception(job_->error);
  if constexpr (!std::is_void_v<R>) return job_->value;
}

template <class R>
R AsyncResult<R>::take() {
  wait();
  if (job_->error) std::rethrow_exception(job_->error);
  if constexpr (!std::is_void_v<R>) return std::move(job_->value);
}

namespace detail::pool {
/// The AsyncResult type a range of results holds.
template <class Results>
using result_of_range = std::remove_cvref_t<std::ranges::range_reference_t<Results&>>;
}  // namespace detail::pool

template <std::ranges::range Results>
auto as_completed(Results& results) {
  return detail::pool::completion_order<detail::pool::result_of_range<Results>>(results, {});
}
template <std::ranges::range Results, class Rep, class Period>
auto as_completed(Results& results, std::chrono::duration<Rep, Period> timeout) {
  return detail::pool::completion_order<detail::pool::result_of_range<Results>>(results,
                                                                                detail::deadline_or_forever(timeout));
}
template <std::ranges::range Results>
auto as_completed(Results& results, std::optional<std::chrono::milliseconds> timeout) {
  return detail::pool::completion_order<detail::pool::result_of_range<Results>>(
      results, timeout ? detail::deadline_or_forever(*timeout) : detail::deadline{});
}

template <std::ranges::range Results>
auto as_completed(Results& results, AsCompletedOptions options) {
  std::shared_ptr<detail::pool::progress_bar> progress;
  if (options.progress != Progress::off)
    progress = detail::pool::progress_bar::start(options.progress == Progress::always,
                                                 static_cast<std::size_t>(std::ranges::distance(results)),
                                                 std::move(options.desc));
  return detail::pool::completion_order<detail::pool::result_of_range<Results>>(
      results, options.timeout ? detail::deadline_or_forever(*options.timeout) : detail::deadline{},
      std::move(progress));
}

template <std::ranges::range Results>
std::pair<std::vector<std::size_t>, std::vector<std::size_t>> wait(Results& results, ReturnWhen when) {
  return detail::pool::wait_results<detail::pool::result_of_range<Results>>(results, static_cast<int>(when), {});
}
template <std::ranges::range Results, class Rep, class Period>
std::pair<std::vector<std::size_t>, std::vector<std::size_t>> wait(Results& results, ReturnWhen when,
                                                                   std::chrono::duration<Rep, Period> timeout) {
  return detail::pool::wait_results<detail::pool::result_of_range<Results>>(results, static_cast<int>(when),
                                                                            detail::deadline_or_forever(timeout));
}
template <std::ranges::range Results>
std::pair<std::vector<std::size_t>, std::vector<std::size_t>> wait(Results& results, ReturnWhen when,
                                                                   std::optional<std::chrono::milliseconds> timeout) {
  return detail::pool::wait_results<detail::pool::result_of_range<Results>>(
      results, static_cast<int>(when), timeout ? detail::deadline_or_forever(*timeout) : detail::deadline{});
}

template <class F, class V, class E, bool Ordered>
IMapIterator<F, V, E, Ordered>::IMapIterator(std::shared_ptr<detail::pool::core> core, F f, V&& input,
                                             std::size_t chunksize,
                                             std::shared_ptr<detail::pool::progress_bar> progress)
    : state_(std::make_unique<state>(std::move(core), std::move(f), std::forward<V>(input), chunksize)) {
  state_->progress = std::move(progress);
  state_->feed();  // work starts now, not at the first ++
}

template <class F, class V, class E, bool Ordered>
auto IMapIterator<F, V, E, Ordered>::begin() -> iterator {
  if (!state_->started) {
    state_->started = true;
    state_->advance();
  }
  return iterator(state_.get());
}

template <class F, class... Args>
auto Pool::apply_async(TaskOptions options, F f, Args&&... args)
    -> AsyncResult<detail::pool::apply_result_t<F, detail::pool::arg_t<Args>...>> {
  namespace pool = detail::pool;
  using R = pool::apply_result_t<F, pool::arg_t<Args>...>;
  pool::check_callable<F>();
  (pool::check_value<pool::arg_t<Args>>(), ...);
  pool::check_value<R>();
  check_fresh_callable<F>("Pool::apply_async");
  auto job = std::make_shared<pool::apply_job<R>>();
  job->runner = runner_;
  job->trampoline = &pool::apply_trampoline<F, R, pool::arg_t<Args>...>;
  if (options.timeout) {
    if (options.timeout->count() <= 0)
      throw Error("Pool::apply_async: TaskOptions::timeout must be positive, got " +
                  detail::describe_timeout(*options.timeout));
    job->timeout_ns = static_cast<std::uint64_t>(std::chrono::nanoseconds(*options.timeout).count());
  }
  // Handles among the arguments (a Queue, a Lock, ...) put their descriptors in `box`; the arguments, alive until
  // this call returns, keep them open until the core holds its own.
  std::tuple<pool::held_arg_t<Args>...> values(std::forward<Args>(args)...);
  detail::fd_outbox box;
  {
    detail::fd_outbox_scope scope(box);
    pool::encode_callable(job->message, f);
    // Big arguments (blob_threshold and up) are written once, into a segment whose descriptor travels instead.
    if constexpr (sizeof...(Args) > 0) job->big = pool::encode_payload(job->message, values, job->big_size, core().payload_segments(),
                                                                  core().payload_segments_kept());
  }
  core().submit(job, 0, 1, "Pool::apply_async", pool::handles_of(box, "Pool::apply_async"));
  return AsyncResult<R>(core_, std::move(job));
}

template <bool Star, class F, class Range>
auto Pool::submit_map(F f, Range&& range, MapOptions options, const char* caller,
                      std::shared_ptr<detail::pool::lazy_chunks>* lazy) {
  namespace pool = detail::pool;
  using T = std::remove_cvref_t<std::ranges::range_value_t<Range>>;
  using E = typename pool::item_result<F, T, Star>::type;
  using R = pool::map_result_t<E>;
  pool::check_callable_with_items<E>();
  pool::check_callable<F>();
  pool::check_value<T>();
  pool::check_value<E>();
  check_fresh_callable<F>(caller);
  if constexpr (!std::ranges::forward_range<Range> || !std::ranges::sized_range<Range> ||
                (!std::is_lvalue_reference_v<std::ranges::range_reference_t<Range>> && !detail::is_bitwise_v<T>)) {
    // A single-pass or unsized input: read it once to count it, as Python turns it into a list. Also an input
    // that makes its items on the fly: handles among them must stay open until the pool holds their descriptors.
    std::vector<T> items;
    for (auto&& item : range) items.push_back(static_cast<T>(item));
    return submit_map<Star>(std::move(f), items, std::move(options), caller);
  } else {
    auto job = std::make_shared<pool::map_job<E>>();
    job->runner = runner_;
    job->trampoline = &pool::map_trampoline<F, T, E, Star>;
    detail::fd_outbox callable_box;  // handles in the callable's state: every chunk carries them
    {
      detail::fd_outbox_scope scope(callable_box);
      pool::encode_callable(job->callable, f);
    }
    auto handles = std::make_shared<pool::submission_handles>(0);
    const std::size_t n = static_cast<std::size_t>(std::ranges::size(range));
    std::size_t chunksize = options.chunksize;
    if (chunksize == 0) chunksize = pool::auto_chunksize(n, core().processes());
    if constexpr (!std::is_void_v<E>) job->value.resize(n);
    const std::size_t chunks = n / chunksize + (n % chunksize != 0 ? 1 : 0);
    // Room for every chunk at once: growing by doubling would copy the bytes again and touch fresh pages each time.
    if constexpr (detail::is_bitwise_v<T>) job->items.reserve(n * sizeof(T) + chunks * sizeof(std::uint64_t));
    else {
      detail::fd_outbox measuring;  // handles among the items are only measured here; each chunk exports its own
      detail::fd_outbox_scope scope(measuring);
      job->items.reserve(pool::measure_items<T>(std::ranges::begin(range), n) + chunks * sizeof(std::uint64_t));
    }
    detail::advise_huge_pages(job->items.data(), job->items.capacity());  // fresh: in 2 MiB pages (fresh_pages.hpp)
    job->offsets.reserve(chunks + 1);
    job->starts.reserve(chunks + 1);
    auto it = std::ranges::begin(range);
    struct lazy_item_list {  // where each lazily serialized chunk starts in `range`, and its item count
      std::vector<decltype(it)> from;
      std::vector<std::uint64_t> count;
    };
    std::shared_ptr<lazy_item_list> lazy_items;
    const auto end = std::ranges::end(range);
    std::size_t position = 0;
    for (std::size_t c = 0; c < chunks; ++c) {
      job->offsets.push_back(job->items.size());
      job->starts.push_back(position);
      detail::fd_outbox box = callable_box;
      {
        detail::fd_outbox_scope scope(box);
        if constexpr (!detail::is_bitwise_v<T>) {
          // A chunk of big items (blob_threshold and up) is written once, into a segment of its own.
          const std::uint64_t count = std::min<std::uint64_t>(chunksize, n - position);
          const std::size_t size = job->callable.size() + sizeof count + pool::measure_items<T>(it, count);
          if (size >= detail::blob_threshold) {
            if (job->bigs.empty()) {
              job->bigs.resize(chunks);
              job->big_sizes.resize(chunks, 0);
            }
            job->big_sizes[c] = size;
            if (lazy != nullptr && box.fds.size() == callable_box.fds.size()) {
              // No handles among them: serialized when dispatched, into a recycled segment.
              if (!job->lazy) {
                job->lazy = std::make_shared<pool::lazy_chunks>();
                *lazy = job->lazy;
                lazy_items = std::make_shared<lazy_item_list>();
                lazy_items->from.resize(chunks);
                lazy_items->count.resize(chunks);
                job->lazy->encode = [items = lazy_items, raw = job.get(), segments = &core().payload_segments(),
                                     most = core().payload_segments_kept()](std::size_t chunk) {
                  auto from = items->from[chunk];
                  return pool::blob_chunk<T>(raw->callable, from, items->count[chunk], raw->big_sizes[chunk],
                                             *segments, most);
                };
              }
              lazy_items->from[c] = it;
              lazy_items->count[c] = count;
              std::ranges::advance(it, static_cast<std::ranges::range_difference_t<Range>>(count));
              position += count;
            } else if (box.fds.size() == callable_box.fds.size()) {
              // map_async, no handles among them: serialized now into `items` (the input may be gone when the
              // chunk is sent), copied into a recycled segment when dispatched; fresh segments for every chunk
              // would cost a page fault per 4 KiB, where `items` is one buffer in huge pages.
              if (!job->lazy) {
                job->lazy = std::make_shared<pool::lazy_chunks>();
                job->lazy->encode = [raw = job.get(), segments = &core().payload_segments(),
                                     most = core().payload_segments_kept()](std::size_t chunk) {
                  const auto body = raw->body(chunk);
                  return segments->write(raw->callable.size() + body.size(), pool::pool_segment_budget, most,
                                         "mp-pool-task", [&](std::span<std::byte> bytes) {
                                           std::memcpy(bytes.data(), raw->callable.data(), raw->callable.size());
                                           std::memcpy(bytes.data() + raw->callable.size(), body.data(),
                                                       body.size());
                                         });
                };
              }
              position += pool::append_items<T>(job->items, it, end, chunksize);
              job->big_sizes[c] = job->callable.size() + (job->items.size() - job->offsets[c]);
            } else {
              job->bigs[c] = pool::blob_chunk<T>(job->callable, it, count, size, core().payload_segments(),
                                                 core().payload_segments_kept());
              position += count;
            }
          } else {
            position += pool::append_items<T>(job->items, it, end, chunksize);
          }
        } else {
          position += pool::append_items<T>(job->items, it, end, chunksize);
        }
      }
      handles->add_chunk(box, caller);
    }
    job->offsets.push_back(job->items.size());
    job->starts.push_back(position);
    job->remaining = chunks;
    if (options.progress != Progress::off)
      job->progress = pool::progress_bar::start(options.progress == Progress::always, n, std::move(options.desc));
    if (chunks == 0) {
      job->finish();
    } else {
      core().submit(job, 0, chunks, caller, std::move(handles));
    }
    return AsyncResult<R>(core_, std::move(job));
  }
}

template <bool Ordered, class F, class Range>
auto Pool::make_imap(F f, Range&& range, MapOptions options) {
  namespace pool = detail::pool;
  // Not std::views::all: clang 14 cannot compile libstdc++ 12's views. An lvalue range is referenced, an rvalue
  // one moved in.
  using V = std::conditional_t<std::is_lvalue_reference_v<Range>, Range, std::remove_cvref_t<Range>>;
  using T = std::remove_cvref_t<std::ranges::range_value_t<std::remove_reference_t<V>&>>;
  using E = typename pool::item_result<F, T, false>::type;
  pool::check_callable_with_items<E>();
  static_assert(!std::is_void_v<E>, "mp::Pool::imap: the function returns void, so there is nothing to iterate; use "
                                    "map or map_async instead");
  pool::check_callable<F>();
  pool::check_value<T>();
  pool::check_value<E>();
  check_fresh_callable<F>(Ordered ? "Pool::imap" : "Pool::imap_unordered");
  std::shared_ptr<pool::progress_bar> progress;
  if (options.progress != Progress::off) {
    std::optional<std::size_t> total;
    if constexpr (std::ranges::sized_range<Range>) total = static_cast<std::size_t>(std::ranges::size(range));
    progress = pool::progress_bar::start(options.progress == Progress::always, total, std::move(options.desc));
  }
  return IMapIterator<F, V, E, Ordered>(core_, std::move(f), std::forward<Range>(range),
                                        std::max<std::size_t>(1, options.chunksize), std::move(progress));
}

template <class F>
void Pool::check_fresh_callable(const char* caller) const {
  // Under fork everything pool::check_callable accepts crosses.
  if constexpr (!detail::target_crosses<F>()) {
    if (core().fresh())
      throw ProcessError(std::string(caller) + ": the function, of type " + detail::type_name<F>() + ", cannot cross "
                         "to the workers of a Pool started by spawn or forkserver: only a function, a lambda without "
                         "captures, or a function object with a serialize member can (a capture may be a reference, "
                         "meaningless in a fresh process); pass captured values as arguments, or use "
                         "StartMethod::fork");
  } else {
    (void)caller;
  }
}

}  // namespace mp
