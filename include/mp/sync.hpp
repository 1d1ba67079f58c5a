// Lock, RLock, Semaphore, BoundedSemaphore, Condition, Event, Barrier between processes (Python's
// multiprocessing.Lock, RLock, Semaphore, BoundedSemaphore, Condition, Event, Barrier).
// Each object is a handle to state in shared memory: copies, including the ones a child process receives as
// arguments, are the same lock/semaphore/…; Lock, RLock and Condition work with std::lock_guard / unique_lock /
// scoped_lock. Locks are robust: if a holder dies (SIGKILL included) the next acquirer gets the lock and
// owner_died() tells it; no waiter of any primitive is wedged by a dead peer. Waiting spins ~3 µs, then sleeps on a
// futex (idle waiters use no CPU). The state and its algorithms: detail/sync_state.hpp. See docs/synchronization.md.
// Process safety: every member may be called from any thread of any process holding a handle.
#pragma once

#include <chrono>
#include <climits>
#include <cstdint>
#include <functional>
#include <optional>
#include <utility>

#include <mp/detail/archive.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/shared_state.hpp>
#include <mp/detail/sync_state.hpp>
#include <mp/errors.hpp>

namespace mp {

namespace detail {
template <class Lock>
class block_lock;  // detail/shared_blocks.hpp: the RLock inside a Value's or Array's block
}  // namespace detail

/// A non-recursive lock shared between processes (multiprocessing.Lock). Copies share the lock.
class Lock : private detail::basic_lock<false> {
 public:
  /// A new, unlocked lock.
  Lock() = default;
  /// mp's decoders only: an empty handle that load() fills in (no lock of its own; see detail::for_load_t).
  explicit Lock(detail::for_load_t tag) noexcept : basic_lock(tag) {}

  /// acquire() blocks until acquired: mp::Error if this thread already holds it (a Lock is not re-entrant: use an
  /// RLock). acquire(timeout) waits at most `timeout`; false if it ran out.
  using basic_lock::acquire;
  /// Acquires only if free right now (Python's acquire(False)).
  using basic_lock::try_acquire;
  /// Releases; mp::Error if this thread does not hold it.
  using basic_lock::release;

  /// std Lockable / TimedLockable spellings, for std::lock_guard, std::unique_lock and std::scoped_lock.
  using basic_lock::lock;
  using basic_lock::try_lock;
  using basic_lock::try_lock_for;
  using basic_lock::try_lock_until;
  using basic_lock::unlock;

  /// True while some thread of some process holds it (a snapshot).
  using basic_lock::locked;
  /// For the holder: the previous holder died holding this lock, so the data it guards may be half-updated.
  /// True from that acquisition until release().
  using basic_lock::owner_died;

  /// How a Lock crosses to a Process started by spawn or forkserver (its memory's descriptor travels along).
  using basic_lock::save;
  using basic_lock::load;

 private:
  friend class Condition;
};

/// A re-entrant lock shared between processes (multiprocessing.RLock): its owner may acquire it again and must
/// release it as many times; release by any other thread throws mp::Error.
class RLock : private detail::basic_lock<true> {
 public:
  /// A new, unlocked lock.
  RLock() = default;
  /// mp's decoders only: an empty handle that load() fills in.
  explicit RLock(detail::for_load_t tag) noexcept : basic_lock(tag) {}

  /// acquire() blocks until acquired (at once if this thread holds it already: one more level). acquire(timeout)
  /// waits at most `timeout`; false if it ran out.
  using basic_lock::acquire;
  /// Acquires only if free right now or already held by this thread.
  using basic_lock::try_acquire;
  /// Drops one level; the last one releases. mp::Error if this thread does not hold it.
  using basic_lock::release;

  /// std Lockable / TimedLockable spellings.
  using basic_lock::lock;
  using basic_lock::try_lock;
  using basic_lock::try_lock_for;
  using basic_lock::try_lock_until;
  using basic_lock::unlock;

  /// True while some thread of some process holds it (a snapshot).
  using basic_lock::locked;
  /// True if the calling thread holds it.
  using basic_lock::is_owned;
  /// For the holder: the previous holder died holding this lock (true until the last release()).
  using basic_lock::owner_died;

  /// How an RLock crosses to a Process started by spawn or forkserver.
  using basic_lock::save;
  using basic_lock::load;

 private:
  template <class Lock>
  friend class detail::block_lock;
  friend class Condition;
  explicit RLock(detail::shared_ref<detail::lock_state> state) noexcept : basic_lock(std::move(state)) {}
};

/// A counter shared between processes (multiprocessing.Semaphore): acquire() takes one, blocking at 0.
class Semaphore {
 public:
  /// mp::Error if value < 0.
  explicit Semaphore(int value = 1) : Semaphore(value, 0, "Semaphore") {}
  Semaphore(const Semaphore&) = default;
  Semaphore& operator=(const Semaphore&) = default;
  /// mp's decoders only: an empty handle that load() fills in.
  explicit Semaphore(detail::for_load_t) noexcept {}

  /// Blocks until the value is positive, then decrements it.
  void acquire() { detail::semaphore_acquire(*state_, {}); }
  /// Waits at most `timeout`; false if it ran out.
  template <class Rep, class Period>
  bool acquire(std::chrono::duration<Rep, Period> timeout);
  /// Decrements only if positive right now.
  bool try_acquire() { return detail::semaphore_try_take(*state_); }
  /// Increments, waking one waiter. (BoundedSemaphore: mp::Error above the initial value.)
  void release() { detail::semaphore_release(*state_); }

  /// std Lockable spellings (a Semaphore(1) as a lock without owner).
  void lock() { acquire(); }
  void unlock() { release(); }
  bool try_lock() { return try_acquire(); }

  /// The current value (a snapshot).
  int get_value() const noexcept { return static_cast<int>(state_->value.load()); }

  /// How a Semaphore crosses to a Process started by spawn or forkserver.
  void save(detail::output_archive& ar) const { state_.save(ar, "Semaphore"); }
  void load(detail::input_archive& ar) { state_.load(ar, "Semaphore"); }

 protected:
  MP_DECL Semaphore(int value, int bound, const char* kind);

 private:
  detail::shared_ref<detail::semaphore_state> state_;
};

/// A Semaphore whose release() throws mp::Error rather than raise the value above its initial value
/// (multiprocessing.BoundedSemaphore; Python raises ValueError).
class BoundedSemaphore : public Semaphore {
 public:
  /// mp::Error if value < 1.
  explicit BoundedSemaphore(int value = 1) : Semaphore(value, checked_bound(value), "BoundedSemaphore") {}
  /// mp's decoders only: an empty handle that load() fills in.
  explicit BoundedSemaphore(detail::for_load_t tag) noexcept : Semaphore(tag) {}

 private:
  MP_DECL static int checked_bound(int value);
};

/// A condition variable shared between processes (multiprocessing.Condition), bound to a Lock or RLock.
class Condition {
 public:
  /// With a new RLock, as Python.
  Condition() : Condition(RLock()) {}
  /// Bound to `lock` (copies of it share it).
  explicit Condition(Lock lock) : Condition(std::move(lock.state_), false) {}
  /// mp's decoders only: an empty handle that load() fills in.
  explicit Condition(detail::for_load_t) noexcept : recursive_(false) {}
  explicit Condition(RLock lock) : Condition(std::move(lock.state_), true) {}
  Condition(const Condition&) = default;
  Condition& operator=(const Condition&) = default;

  /// The underlying lock's acquire/release, and the std Lockable spellings.
  void acquire() { detail::lock_acquire(*lock_, recursive_, {}); }
  template <class Rep, class Period>
  bool acquire(std::chrono::duration<Rep, Period> timeout);
  bool try_acquire() { return detail::lock_try_acquire(*lock_, recursive_); }
  void release() { detail::lock_release(*lock_, recursive_); }
  void lock() { acquire(); }
  void unlock() { release(); }
  bool try_lock() { return try_acquire(); }

  /// Releases the lock (every level of an RLock), sleeps until notified, reacquires. Lock must be held.
  void wait() { detail::condition_wait(*state_, *lock_, recursive_, {}); }
  /// As wait(), for at most `timeout`; false if it ran out (the lock is reacquired either way).
  template <class Rep, class Period>
  bool wait(std::chrono::duration<Rep, Period> timeout);
  /// Waits until pred() is true (checked first, then after each wake-up); returns pred().
  template <class Pred>
  bool wait_for(Pred pred);
  /// As wait_for(pred), giving up after `timeout`; returns the last pred().
  template <class Pred, class Rep, class Period>
  bool wait_for(Pred pred, std::chrono::duration<Rep, Period> timeout);
  /// Wakes up to n of the processes waiting now. Lock must be held.
  void notify(int n = 1) { detail::condition_notify(*state_, *lock_, n, "notify"); }
  /// Wakes every process waiting now. Lock must be held.
  void notify_all() { detail::condition_notify(*state_, *lock_, INT_MAX, "notify_all"); }

  /// For the holder: the lock's previous holder died holding it (see Lock::owner_died()).
  bool owner_died() const noexcept { return detail::lock_owner_died(*lock_); }

  /// How a Condition (and its lock) crosses to a Process started by spawn or forkserver.
  MP_DECL void save(detail::output_archive& ar) const;
  MP_DECL void load(detail::input_archive& ar);

 private:
  MP_DECL Condition(detail::shared_ref<detail::lock_state> lock, bool recursive);
  detail::shared_ref<detail::lock_state> lock_;
  bool recursive_;
  detail::shared_ref<detail::condition_state> state_;
};

/// A flag shared between processes (multiprocessing.Event): wait() blocks until set().
class Event {
 public:
  /// A new, clear event.
  Event() : state_(detail::make_shared_state<detail::event_state>("Event")) {}
  Event(const Event&) = default;
  Event& operator=(const Event&) = default;
  /// mp's decoders only: an empty handle that load() fills in.
  explicit Event(detail::for_load_t) noexcept {}

  /// Sets the flag and wakes every waiter.
  void set() { detail::event_set(*state_); }
  /// Clears the flag.
  void clear() noexcept { state_->flag.store(0); }
  /// The flag (a snapshot).
  bool is_set() const noexcept { return state_->flag.load() != 0; }
  /// Blocks until the flag is set.
  void wait() { detail::event_wait(*state_, {}); }
  /// Waits at most `timeout`; returns the flag (false: it ran out).
  template <class Rep, class Period>
  bool wait(std::chrono::duration<Rep, Period> timeout);

  /// How an Event crosses to a Process started by spawn or forkserver.
  void save(detail::output_archive& ar) const { state_.save(ar, "Event"); }
  void load(detail::input_archive& ar) { state_.load(ar, "Event"); }

 private:
  detail::shared_ref<detail::event_state> state_;
};

/// A barrier for `parties` processes (multiprocessing.Barrier): wait() returns once all have called it.
class Barrier {
 public:
  /// `action` runs in the last arriving process before the others are released; `timeout` is the default for
  /// wait(). mp::Error if parties < 1.
  MP_DECL explicit Barrier(int parties, std::function<void()> action = {},
                           std::optional<std::chrono::milliseconds> timeout = std::nullopt);
  /// A Barrier(1): only as the value a spawned child decodes its argument into.
  Barrier() : Barrier(1) {}
  /// mp's decoders only: an empty handle that load() fills in.
  explicit Barrier(detail::for_load_t) noexcept {}
  Barrier(const Barrier&) = default;
  Barrier& operator=(const Barrier&) = default;

  /// Waits for all parties; returns this arrival's index, 0 … parties-1 (parties-1: the last one, which ran the
  /// action). BrokenBarrierError if the barrier is or becomes broken, is reset, or the default timeout runs out.
  MP_DECL int wait();
  /// As wait(), for at most `timeout`; running out breaks the barrier (BrokenBarrierError here and for all).
  template <class Rep, class Period>
  int wait(std::chrono::duration<Rep, Period> timeout);
  /// Back to the empty, unbroken state; processes waiting now get BrokenBarrierError.
  void reset() { detail::barrier_reset(*state_); }
  /// Breaks the barrier: current and future wait() calls throw BrokenBarrierError until reset().
  void abort() { detail::barrier_abort(*state_); }
  /// The number of processes required.
  int parties() const noexcept { return state_->parties; }
  /// The number of processes waiting now (a snapshot).
  int n_waiting() const { return detail::barrier_n_waiting(*state_); }
  /// True if broken (aborted, timed out, an action threw, or a process died inside it) until reset().
  bool broken() const { return detail::barrier_broken(*state_); }

  /// How a Barrier crosses to a Process started by spawn or forkserver; one with an action cannot (the action is
  /// code of this process: SerializationError).
  MP_DECL void save(detail::output_archive& ar) const;
  MP_DECL void load(detail::input_archive& ar);

 private:
  detail::shared_ref<detail::barrier_state> state_;
  std::function<void()> action_;
  std::optional<std::chrono::milliseconds> timeout_;
};

// ---- definitions ----------------------------------------------------------------------------------------------

template <class Rep, class Period>
bool Semaphore::acquire(std::chrono::duration<Rep, Period> timeout) {
  return detail::semaphore_acquire(*state_, detail::deadline_after(timeout));
}

template <class Rep, class Period>
bool Condition::acquire(std::chrono::duration<Rep, Period> timeout) {
  return detail::lock_acquire(*lock_, recursive_, detail::deadline_after(timeout));
}

template <class Rep, class Period>
bool Condition::wait(std::chrono::duration<Rep, Period> timeout) {
  return detail::condition_wait(*state_, *lock_, recursive_, detail::deadline_after(timeout));
}

template <class Pred>
bool Condition::wait_for(Pred pred) {
  while (!pred()) wait();
  return true;
}

template <class Pred, class Rep, class Period>
bool Condition::wait_for(Pred pred, std::chrono::duration<Rep, Period> timeout) {
  const detail::deadline until = detail::deadline_after(timeout);
  bool result = pred();
  while (!result) {
    if (detail::expired(until)) break;
    detail::condition_wait(*state_, *lock_, recursive_, until);
    result = pred();
  }
  return result;
}

template <class Rep, class Period>
bool Event::wait(std::chrono::duration<Rep, Period> timeout) {
  return detail::event_wait(*state_, detail::deadline_after(timeout));
}

template <class Rep, class Period>
int Barrier::wait(std::chrono::duration<Rep, Period> timeout) {
  return detail::barrier_wait(*state_, action_, detail::deadline_after(timeout));
}

}  // namespace mp

#if MP_INCLUDE_DEFINITIONS
#include <mp/impl/sync.ipp>
#endif
