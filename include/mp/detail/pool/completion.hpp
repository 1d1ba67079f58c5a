// completion: what happens when a pool result finishes — the futures side of AsyncResult (concurrent.futures).
// A result's done callbacks run on the pool's callback thread (callback_runner), never under the core's mutex (a
// callback may submit more work); a callback added once the result is done runs at once in the caller's thread.
// A callback that throws is reported on stderr and the next one runs. as_completed and wait(ReturnWhen) register a
// watcher with every result: a finishing result appends its index to the watcher's queue in completion order and
// notifies the watcher's event, so waiting on many results costs one sleep, not one per result.
// Shared by Pool (results finished by the core's supervisor or a waiting thread) and ThreadPool (by its threads).
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <iterator>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <mp/detail/clock.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/pool/core.hpp>
#include <mp/detail/pool/progress.hpp>
#include <mp/errors.hpp>

namespace mp::detail::pool {

/// The thread that runs a pool's done callbacks, started at the first one. Callbacks run one at a time, in the
/// order their results finished.
class callback_runner {
 public:
  callback_runner() = default;
  callback_runner(const callback_runner&) = delete;
  callback_runner& operator=(const callback_runner&) = delete;
  /// Stops the thread once the queue is empty.
  MP_DECL ~callback_runner();

  /// Queues fn for the callback thread (starting it if needed). Never blocks on a callback.
  MP_DECL void post(std::function<void()> fn);
  /// Waits until every queued callback ran; at once when called from a callback.
  MP_DECL void drain();
  /// Runs fn; an exception it throws is reported on stderr ("mp: a done callback threw ...") and swallowed.
  MP_DECL static void run_reporting(const std::function<void()>& fn) noexcept;

 private:
  MP_DECL void loop();

  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::function<void()>> queue_;  // guarded by mutex_
  bool busy_ = false;                        // a callback is running; guarded by mutex_
  bool stopping_ = false;                    // guarded by mutex_
  std::thread thread_;
};

/// Collects the indices of watched results as they finish (as_completed, wait).
struct watcher {
  pool::event event;
  std::mutex mutex;
  std::deque<std::size_t> finished;  // guarded by mutex, in completion order
  std::size_t failed = 0;            // finished with an error; guarded by mutex
};

/// The completion state of one result: done flag, order, callbacks, watchers.
class completion {
 public:
  enum phase_type : int { queued = 0, running = 1, cancelled = 2 };
  std::atomic<bool> done{false};
  std::atomic<bool> was_cancelled{false};
  std::atomic<int> phase{queued};  // ThreadPool: whether a chunk started (a Pool asks its core instead)
  std::uint64_t sequence = 0;      // completion order among all results; written before done
  std::shared_ptr<callback_runner> runner;  // the pool's; set at submission

  /// Marks the result done (value or error stored before), wakes its waiters and watchers, posts its callbacks.
  MP_DECL void complete(pool::event& event, bool failed);
  /// Runs fn on the callback thread once done, or now if done already.
  MP_DECL void add_callback(std::function<void()> fn);
  /// Appends index to w's queue when done (now if done already).
  MP_DECL void watch(const std::shared_ptr<watcher>& w, std::size_t index);

 private:
  std::mutex mutex_;  // guards the two vectors, failed_ and the transition to done
  bool failed_ = false;  // finished with an error (cancelled results do not count)
  std::vector<std::function<void()>> callbacks_;
  std::vector<std::pair<std::shared_ptr<watcher>, std::size_t>> watchers_;
};

/// Sleeps until done() or the deadline (false), collecting a Pool's results meanwhile when core is not null.
template <class Done>
bool wait_on(pool::core* core, pool::event& event, Done&& done, const deadline& until) {
  if (core != nullptr) return core->wait(event, std::forward<Done>(done), until);
  for (;;) {
    const std::uint32_t seen = event.seq.load();
    if (done()) return true;
    if (!event.sleep(seen, until)) return done();
  }
}

/// What the code below may read of an AsyncResult (its friend).
struct result_access {
  template <class A>
  static auto& job(A& result) { return *result.job_; }
  template <class A>
  static pool::core* core(A& result) { return result.core_.get(); }
};

/// The results of a range, as pointers, each watched by one watcher.
template <class A>
struct watched_results {
  std::vector<A*> results;
  std::shared_ptr<watcher> w = std::make_shared<watcher>();
  pool::core* core = nullptr;  // the first result's pool, whose results a waiting thread collects

  template <class Results>
  explicit watched_results(Results& range) {
    for (auto& result : range) results.push_back(&result);
    for (std::size_t i = 0; i < results.size(); ++i) {
      auto& job = result_access::job(*results[i]);
      if (core == nullptr) core = result_access::core(*results[i]);
      job.watch(w, i);
    }
    // Results done before we looked were appended in range order: put them in completion order.
    std::lock_guard lock(w->mutex);
    std::sort(w->finished.begin(), w->finished.end(),
              [&](std::size_t a, std::size_t b) {
                return result_access::job(*results[a]).sequence < result_access::job(*results[b]).sequence;
              });
  }
  /// Sleeps until ready() (called under the watcher's mutex) or the deadline; false on timeout.
  template <class Ready>
  bool wait_until(Ready&& ready, const deadline& until) {
    return wait_on(core, w->event, [&] {
      std::lock_guard lock(w->mutex);
      return ready();
    }, until);
  }
};

/// as_completed's range: an input range of A& in completion order.
template <class A>
class completion_order {
 public:
  template <class Results>
  completion_order(Results& results, deadline until, std::shared_ptr<progress_bar> progress = nullptr)
      : watched_(results), until_(until), progress_(std::move(progress)) {}

  class iterator {
   public:
    using value_type = A;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    A& operator*() const { return *order_->current_; }
    iterator& operator++() {
      order_->next();
      return *this;
    }
    void operator++(int) { order_->next(); }
    friend bool operator==(const iterator& it, std::default_sentinel_t) { return it.at_end(); }

   private:
    friend class completion_order;
    explicit iterator(completion_order* order) : order_(order) {}
    bool at_end() const { return order_->current_ == nullptr; }
    completion_order* order_ = nullptr;
  };

  /// The first result to complete (waiting for it); once.
  iterator begin() {
    next();
    return iterator(this);
  }
  std::default_sentinel_t end() const noexcept { return {}; }

 private:
  void next() {
    current_ = nullptr;
    const std::size_t n = watched_.results.size();
    if (yielded_ == n) {
      if (progress_) progress_->finish_and_wait();
      return;
    }
    auto& w = *watched_.w;
    if (!watched_.wait_until([&] { return !w.finished.empty(); }, until_))
      throw TimeoutError("as_completed: " + std::to_string(n - yielded_) + " of " + std::to_string(n) +
                         " results were not done before the timeout");
    std::size_t index = 0;
    {
      std::lock_guard lock(w.mutex);
      index = w.finished.front();
      w.finished.pop_front();
    }
    ++yielded_;
    if (progress_) progress_->advance(1);
    current_ = watched_.results[index];
  }

  watched_results<A> watched_;
  deadline until_;
  std::shared_ptr<progress_bar> progress_;  // counts the results yielded; null: none
  std::size_t yielded_ = 0;
  A* current_ = nullptr;
};

/// wait(results, when, timeout)'s body: `when` is 0 first_completed, 1 first_exception, 2 all_completed.
template <class A, class Results>
std::pair<std::vector<std::size_t>, std::vector<std::size_t>> wait_results(Results& range, int when,
                                                                           const deadline& until) {
  watched_results<A> watched(range);
  const std::size_t n = watched.results.size();
  auto& w = *watched.w;
  (void)watched.wait_until([&] {
    if (w.finished.size() == n) return true;
    if (when == 0) return !w.finished.empty();
    if (when == 1) return w.failed != 0;
    return false;
  }, until);
  std::pair<std::vector<std::size_t>, std::vector<std::size_t>> split;
  for (std::size_t i = 0; i < n; ++i) (watched.results[i]->ready() ? split.first : split.second).push_back(i);
  return split;
}

}  // namespace mp::detail::pool

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/pool/completion.ipp>
#endif
