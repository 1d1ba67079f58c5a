// thread_core: the engine of mp::ThreadPool — threads of this process taking work items from one queue
// (multiprocessing.pool.ThreadPool). Nothing is serialized: callables, arguments and results are moved between
// threads, and a task's exception reaches the caller as the very exception object it threw. Results are the same
// result_job objects a process Pool fills (jobs.hpp), so AsyncResult, callbacks, cancel, as_completed and wait
// behave alike; a job's phase (completion.hpp) tells queued from started, which is what cancel() needs.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <mp/detail/config.hpp>
#include <mp/detail/pool/completion.hpp>
#include <mp/detail/pool/imap_cursor.hpp>
#include <mp/detail/pool/jobs.hpp>
#include <mp/detail/pool/progress.hpp>
#include <mp/errors.hpp>

namespace mp::detail::pool {

class thread_core {
 public:
  /// One queued piece of work: run() on a pool thread, or fail(error) if the pool is terminated first.
  struct work_item {
    std::function<void()> run;
    std::function<void(std::exception_ptr)> fail;
  };

  MP_DECL thread_core(std::size_t threads, std::function<void()> initializer);
  /// terminate() if still running, then joins the threads.
  MP_DECL ~thread_core();
  thread_core(const thread_core&) = delete;
  thread_core& operator=(const thread_core&) = delete;

  std::size_t threads() const noexcept { return threads_.size(); }
  /// Queues work; Error if the pool is closed or terminated.
  MP_DECL void post(work_item work, const char* caller);
  MP_DECL void close();
  /// Fails every queued item (running ones finish: threads cannot be killed).
  MP_DECL void terminate();
  MP_DECL void join();

 private:
  enum class state { running, closed, terminated };
  MP_DECL void loop(const std::function<void()>& initializer);

  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<work_item> queue_;   // guarded by mutex_
  state state_ = state::running;  // guarded by mutex_
  std::vector<std::thread> threads_;
};

/// Claims a job for a thread: false if it was cancelled while queued.
inline bool claim(completion& job) {
  int expected = completion::queued;
  if (job.phase.compare_exchange_strong(expected, completion::running)) return true;
  return expected == completion::running;
}

/// A job done on threads: the byte-level hooks of `job` are never called.
template <class R>
class thread_job : public result_job<R> {
 public:
  std::span<const std::byte> prefix() override { return {}; }
  std::span<const std::byte> body(std::size_t) override { return {}; }
  void deliver(std::size_t, input_archive&) override {}
  void fail(std::size_t, std::exception_ptr e) override { fail_with(std::move(e)); }
  /// A chunk that will not run (the pool was terminated): counts as answered, with that error.
  void fail_with(std::exception_ptr e) {
    std::lock_guard lock(mutex);
    if (!this->error) this->error = std::move(e);
    if (--remaining == 0) this->finish();
  }
  std::mutex mutex;  // map: guards error_at / error / remaining
  std::size_t remaining = 1;
  std::size_t error_at = SIZE_MAX;
};

/// apply on a thread: the call's value or exception, as it is.
template <class R, class Call>
void run_apply(thread_job<R>& job, Call& call) {
  if (!claim(job)) return;  // cancelled: cancel() finished the job
  std::exception_ptr error;
  try {
    if constexpr (std::is_void_v<R>) call();
    else job.value = call();
  } catch (...) {
    error = std::current_exception();
  }
  std::lock_guard lock(job.mutex);
  job.error = std::move(error);
  if (--job.remaining == 0) job.finish();
}

/// A chunk of map items on a thread: results land in place; the earliest failure wins.
template <class F, class T, class E, bool Star>
void run_map_chunk(thread_job<map_result_t<E>>& job, F& f, std::vector<T>& items, std::size_t first,
                   std::size_t last) {
  std::size_t i = first;
  std::exception_ptr error;
  if (claim(job)) {
    try {
      for (; i < last; ++i) {
        auto call = [&]() -> decltype(auto) {
          if constexpr (Star) return std::apply(f, std::move(items[i]));
          else return std::invoke(f, std::move(items[i]));
        };
        if constexpr (std::is_void_v<E>) call();
        else job.value[i] = call();
      }
    } catch (...) {
      error = std::current_exception();
    }
    if (job.progress) job.progress->advance(i - first + (error ? 1 : 0));
  } else {
    return;  // cancelled: cancel() finished the job
  }
  std::lock_guard lock(job.mutex);
  if (error && i < job.error_at) {
    job.error_at = i;
    job.error = error;
  }
  if (--job.remaining == 0) job.finish();
}

/// ThreadPool::imap's state: chunks fed as the consumer pulls (at most 4 * threads + 2 in flight or waiting);
/// imap_cursor consumes them.
template <class F, class V, class E, bool Ordered>
struct thread_imap_state : imap_cursor<thread_imap_state<F, V, E, Ordered>, E, Ordered> {
  using input_type = std::remove_reference_t<V>&;
  using T = std::remove_cvref_t<std::ranges::range_value_t<input_type>>;
  struct shared {  // outlives the state while tasks still hold it
    pool::event event;
    chunk_arrivals<E> arrivals;
  };
  thread_core* core;
  std::shared_ptr<shared> box = std::make_shared<shared>();
  std::shared_ptr<F> f;
  V input;
  std::ranges::iterator_t<input_type> it;
  std::size_t chunksize, window;

  thread_imap_state(thread_core* c, F fn, V&& in, std::size_t size)
      : core(c), f(std::make_shared<F>(std::move(fn))), input(std::forward<V>(in)), it(std::ranges::begin(input)),
        chunksize(std::max<std::size_t>(1, size)), window(4 * c->threads() + 2) {}

  void feed() {
    const auto end = std::ranges::end(input);
    while (!this->input_done && this->submitted - this->consumed < window) {
      auto items = std::make_shared<std::vector<T>>();
      for (; items->size() < chunksize && it != end; ++it) items->push_back(static_cast<T>(*it));
      if (it == end) this->input_done = true;
      if (items->empty()) break;
      auto store = [box = box, c = this->submitted](chunk_result<E> result) {
        box->arrivals.store(c, std::move(result));
        box->event.notify();
      };
      core->post({[f = f, items, store] {
                    chunk_result<E> result;
                    try {
                      for (auto& item : *items) result.values.push_back(std::invoke(*f, std::move(item)));
                    } catch (...) {
                      result.error = std::current_exception();
                    }
                    store(std::move(result));
                  },
                  [store](std::exception_ptr e) { store(chunk_result<E>{{}, std::move(e)}); }},
                 Ordered ? "ThreadPool::imap" : "ThreadPool::imap_unordered");
      ++this->submitted;
    }
  }
  chunk_arrivals<E>& arrivals() { return box->arrivals; }
  void wait_for_chunk() {
    (void)wait_on(nullptr, box->event, [&] { return box->arrivals.ready(this->consumed, Ordered); }, {});
  }
};

}  // namespace mp::detail::pool

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/pool/thread_core.ipp>
#endif
