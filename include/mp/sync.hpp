// Lock, RLock, Semaphore, BoundedSemaphore, Condition, Event, Barrier between processes (Python's
// multiprocessing.Lock, RLock, Semaphore, BoundedSemaphore, Condition, Event, Barrier).
// Each object is a handle to state in shared memory: copies, including the ones a child process receives as
// arguments, are the same lock/semaphore/…; Lock, RLock and Condition work with std::lock_guard / unique_lock /
// scoped_lock. Locks are robust: if a holder dies (SIGKILL included) the next acquirer gets the lock and
// owner_died() tells it; no waiter of any primitive is wedged by a dead peer. Waiting spins ~3 µs, then sleeps on a
// futex (idle waiters use no CPU). See docs/synchronization.md.
// Process safety: every member may be called from any thread of any process holding a handle.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include <mp/detail/archive.hpp>
#include <mp/detail/futex.hpp>
#include <mp/detail/robust_mutex.hpp>
#include <mp/detail/shared_state.hpp>
#include <mp/errors.hpp>

namespace mp {

namespace detail {

// ---- Lock and RLock ---------------------------------------------------------------------------------------

struct lock_state {
  robust_mutex mutex;
  std::uint32_t depth = 0;  // guarded by mutex: RLock recursion depth (unused by a Lock)
};

// Lock and RLock differ only in `recursive`; Condition drives either through the same three functions.
// `depth` is maintained for an RLock only: a Lock's path is exactly the robust mutex's.
inline bool lock_acquire(lock_state& lock, bool recursive, const deadline& until) {
  if (!recursive) return lock.mutex.try_lock_until(until);
  if (lock.mutex.held_by_this_thread()) {
    ++lock.depth;
    return true;
  }
  if (!lock.mutex.try_lock_until(until)) return false;
  lock.depth = 1;  // after a dead owner too: its depth died with it
  return true;
}

inline bool lock_try_acquire(lock_state& lock, bool recursive) {
  if (!recursive) return lock.mutex.try_lock();
  if (lock.mutex.held_by_this_thread()) {
    ++lock.depth;
    return true;
  }
  if (!lock.mutex.try_lock()) return false;
  lock.depth = 1;
  return true;
}

[[noreturn]] inline void throw_not_owner(bool recursive) {
  throw Error(std::string(recursive ? "RLock" : "Lock") +
              "::release: this thread does not hold the lock (release it in the thread that acquired it; a lock "
              "with a known owner is what lets mp recover it when that owner dies)");
}

inline void lock_release(lock_state& lock, bool recursive) {
  if (!recursive) {
    if (!lock.mutex.try_unlock()) throw_not_owner(false);
    return;
  }
  if (!lock.mutex.held_by_this_thread()) throw_not_owner(true);
  if (--lock.depth > 0) return;
  lock.mutex.unlock();
}

// ---- Semaphore --------------------------------------------------------------------------------------------

struct semaphore_state {
  explicit semaphore_state(std::uint32_t initial, std::uint32_t bound) : value(initial), max(bound) {}
  std::atomic<std::uint32_t> value;        // futex word: the count
  std::atomic<std::uint32_t> sleepers{0};  // waiters in (or about to enter) futex_wait; a dead one only costs a wake
  const std::uint32_t max;                 // BoundedSemaphore's bound; 0 for an unbounded Semaphore
};

inline bool semaphore_try_take(semaphore_state& s) noexcept {
  std::uint32_t value = s.value.load(std::memory_order_relaxed);
  while (value > 0) {
    if (s.value.compare_exchange_weak(value, value - 1, std::memory_order_acquire, std::memory_order_relaxed)) {
      return true;
    }
  }
  return false;
}

inline bool semaphore_acquire(semaphore_state& s, const deadline& until) {
  if (spin_until([&] { return s.value.load(std::memory_order_relaxed) > 0 && semaphore_try_take(s); }, short_spin)) return true;
  // Dekker with release(): we publish "sleeping" then look at the value; release() publishes the value then looks
  // at sleepers (both seq_cst), so at least one of us sees the other and no wake-up is lost.
  s.sleepers.fetch_add(1);
  bool taken = false;
  for (;;) {
    if (semaphore_try_take(s)) {
      taken = true;
      break;
    }
    if (!futex_wait_bounded(s.value, 0, until)) {
      taken = semaphore_try_take(s);
      break;
    }
  }
  s.sleepers.fetch_sub(1);
  return taken;
}

inline void semaphore_release(semaphore_state& s) {
  if (s.max == 0) {
    s.value.fetch_add(1);
  } else {
    std::uint32_t value = s.value.load();
    do {
      if (value >= s.max) {
        throw Error("BoundedSemaphore::release: released too many times (the value is already at its bound " +
                    std::to_string(s.max) + "); release only what you acquired");
      }
    } while (!s.value.compare_exchange_weak(value, value + 1));
  }
  if (s.sleepers.load() > 0) futex_wake(s.value, 1);
}

// ---- Condition --------------------------------------------------------------------------------------------

// Notifications are anonymous tokens. `counts` packs, in one word so that it is never half-updated even if a
// process dies mid-call: low 32 bits = sleepers not yet notified, high 32 bits = tokens not yet taken.
// Invariant: sleepers + tokens = waiters inside wait() (dead ones included). notify(n) turns up to n sleepers
// into tokens and bumps `seq`; a waiter takes a token only if seq moved since it registered, so a notification
// never wakes a waiter that started waiting after it. A timed-out waiter settles under the lock: it removes a
// sleeper if any is left, else a token must be left for it (it was notified after all).
struct condition_state {
  std::atomic<std::uint32_t> seq{0};     // futex word: bumped by every notify that issued tokens
  std::atomic<std::uint64_t> counts{0};  // sleepers | tokens << 32
};

inline constexpr std::uint64_t condition_token = std::uint64_t{1} << 32;

inline bool condition_take_token(condition_state& c) noexcept {
  std::uint64_t counts = c.counts.load();
  while ((counts >> 32) > 0) {
    if (c.counts.compare_exchange_weak(counts, counts - condition_token)) return true;
  }
  return false;
}

inline void condition_require_owner(const lock_state& lock, const char* call) {
  if (!lock.mutex.held_by_this_thread()) {
    throw Error(std::string("Condition::") + call +
                ": the condition's lock is not held by this thread (acquire it first, e.g. "
                "std::unique_lock guard(condition))");
  }
}

inline bool condition_wait(condition_state& c, lock_state& lock, bool recursive, const deadline& until) {
  condition_require_owner(lock, "wait");
  const std::uint32_t registered = c.seq.load();
  c.counts.fetch_add(1);  // one more sleeper, registered while holding the lock, before any later notify
  const std::uint32_t depth = lock.depth;  // an RLock's; unused for a Lock
  if (recursive) lock.depth = 0;
  lock.mutex.unlock();  // all levels of an RLock, as Python's Condition does

  bool notified = false;
  for (;;) {
    const std::uint32_t seen = c.seq.load();
    if (seen != registered && condition_take_token(c)) {
      notified = true;
      break;
    }
    if (expired(until)) break;
    if (spin_until([&] { return c.seq.load(std::memory_order_relaxed) != seen; }, short_spin)) continue;
    futex_wait_bounded(c.seq, seen, until);  // a timeout is noticed at the top of the loop
  }

  lock.mutex.lock();
  if (recursive) lock.depth = depth;
  if (!notified) {
    std::uint64_t counts = c.counts.load();
    for (;;) {
      const bool have_sleeper = (counts & 0xffff'ffffU) > 0;
      const std::uint64_t next = have_sleeper ? counts - 1 : counts - condition_token;
      if (c.counts.compare_exchange_weak(counts, next)) {
        notified = !have_sleeper;
        break;
      }
    }
  }
  return notified;
}

inline void condition_notify(condition_state& c, const lock_state& lock, int n, const char* call) {
  condition_require_owner(lock, call);
  if (n <= 0) return;
  std::uint64_t counts = c.counts.load();
  std::uint64_t woken = 0;
  do {
    woken = std::min<std::uint64_t>(static_cast<std::uint64_t>(n), counts & 0xffff'ffffU);
    if (woken == 0) return;
  } while (!c.counts.compare_exchange_weak(counts, counts - woken + woken * condition_token));
  c.seq.fetch_add(1);
  futex_wake(c.seq, n == INT_MAX ? INT_MAX : static_cast<int>(woken));
}

// ---- Event ------------------------------------------------------------------------------------------------

struct event_state {
  std::atomic<std::uint32_t> flag{0};      // futex word
  std::atomic<std::uint32_t> sleepers{0};  // as in semaphore_state
};

inline bool event_wait(event_state& e, const deadline& until) {
  if (spin_until([&] { return e.flag.load(std::memory_order_acquire) != 0; }, short_spin)) return true;
  e.sleepers.fetch_add(1);
  while (e.flag.load() == 0) {
    if (!futex_wait_bounded(e.flag, 0, until)) break;
  }
  e.sleepers.fetch_sub(1);
  return e.flag.load() != 0;
}

// ---- Barrier ----------------------------------------------------------------------------------------------

// One robust mutex guards the counts; waiters sleep on `epoch`, bumped whenever a generation ends (passed or
// failed) or the barrier is aborted or reset. A generation's outcome is kept in a 64-generation history so that a
// waiter woken late still learns whether *its* generation passed or broke, without waiting for anyone to drain
// (Python's draining state would wedge on a waiter that died).
struct barrier_state {
  explicit barrier_state(int n) : parties(n) {}
  robust_mutex mutex;
  const int parties;
  int count = 0;                 // guarded by mutex: arrivals in the current generation
  std::uint32_t generation = 0;  // guarded by mutex: number of the generation now filling
  std::uint64_t passed = 0;      // guarded by mutex: bit g % 64 set if generation g passed
  bool broken = false;           // guarded by mutex
  std::atomic<std::uint32_t> epoch{0};  // futex word
};

inline void barrier_bump(barrier_state& b) noexcept {
  b.epoch.fetch_add(1);
  futex_wake(b.epoch);
}

// Ends the current generation as failed: its waiters get BrokenBarrierError. Holding b.mutex.
inline void barrier_fail_generation(barrier_state& b) noexcept {
  if (b.count > 0) {
    b.passed &= ~(std::uint64_t{1} << (b.generation % 64));
    ++b.generation;
    b.count = 0;
  }
  barrier_bump(b);
}

// Locks b.mutex; a holder that died mid-update may have left the counts half-written, so the barrier breaks.
inline void barrier_lock(barrier_state& b) {
  b.mutex.lock();
  if (b.mutex.previous_owner_died()) {
    b.broken = true;
    barrier_fail_generation(b);
  }
}

[[noreturn]] inline void throw_broken_barrier(const char* why) {
  throw BrokenBarrierError(std::string("Barrier::wait: the barrier is broken (") + why +
                           "); call reset() before using it again");
}

// Holding b.mutex: the result of a waiter of generation gen if that generation has ended.
inline std::optional<bool> barrier_outcome(const barrier_state& b, std::uint32_t gen) noexcept {
  if (b.generation == gen) return std::nullopt;
  if (b.generation - gen > 64) return true;  // too old for the history: it was not failed while we watched
  return ((b.passed >> (gen % 64)) & 1U) != 0;
}

inline int barrier_wait(barrier_state& b, const std::function<void()>& action, const deadline& until) {
  barrier_lock(b);
  if (b.broken) {
    b.mutex.unlock();
    throw_broken_barrier("aborted, timed out or reset while waited on");
  }
  const std::uint32_t gen = b.generation;
  const int index = b.count++;
  if (b.count == b.parties) {
    if (action) {
      try {
        action();
      } catch (...) {
        b.broken = true;
        barrier_fail_generation(b);
        b.mutex.unlock();
        throw;
      }
    }
    b.passed |= std::uint64_t{1} << (gen % 64);
    ++b.generation;
    b.count = 0;
    barrier_bump(b);
    b.mutex.unlock();
    return index;
  }
  for (;;) {
    const std::uint32_t seen = b.epoch.load();
    b.mutex.unlock();
    bool timed_out = false;
    if (!spin_until([&] { return b.epoch.load(std::memory_order_relaxed) != seen; }, short_spin)) {
      while (b.epoch.load() == seen) {
        if (!futex_wait_bounded(b.epoch, seen, until)) {
          timed_out = true;
          break;
        }
      }
    }
    barrier_lock(b);
    if (auto outcome = barrier_outcome(b, gen)) {
      b.mutex.unlock();
      if (*outcome) return index;
      throw_broken_barrier("aborted, reset, timed out or a party died while this process waited");
    }
    if (timed_out) {
      b.broken = true;  // as Python: a timeout breaks the barrier for every party
      barrier_fail_generation(b);
      b.mutex.unlock();
      throw_broken_barrier("this wait timed out");
    }
  }
}

}  // namespace detail

/// A non-recursive lock shared between processes (multiprocessing.Lock). Copies share the lock.
class Lock {
 public:
  /// A new, unlocked lock.
  Lock() : state_(detail::make_shared_state<detail::lock_state>("Lock")) {}
  Lock(const Lock&) = default;
  Lock& operator=(const Lock&) = default;

  /// Blocks until acquired. mp::Error if this thread already holds it (a Lock is not re-entrant: use an RLock).
  void acquire() { detail::lock_acquire(*state_, false, {}); }
  /// Waits at most `timeout`; false if it ran out.
  template <class Rep, class Period>
  bool acquire(std::chrono::duration<Rep, Period> timeout) {
    return detail::lock_acquire(*state_, false, detail::deadline_after(timeout));
  }
  /// Acquires only if free right now (Python's acquire(False)).
  bool try_acquire() { return detail::lock_try_acquire(*state_, false); }
  /// Releases; mp::Error if this thread does not hold it.
  void release() { detail::lock_release(*state_, false); }

  /// std Lockable / TimedLockable spellings, for std::lock_guard, std::unique_lock and std::scoped_lock.
  void lock() { acquire(); }
  void unlock() { release(); }
  bool try_lock() { return try_acquire(); }
  template <class Rep, class Period>
  bool try_lock_for(std::chrono::duration<Rep, Period> timeout) { return acquire(timeout); }
  template <class Clock, class Duration>
  bool try_lock_until(std::chrono::time_point<Clock, Duration> when) {
    return detail::lock_acquire(*state_, false, detail::deadline_at(when));
  }

  /// True while some thread of some process holds it (a snapshot).
  bool locked() const noexcept { return state_->mutex.locked_hint(); }
  /// For the holder: the previous holder died holding this lock, so the data it guards may be half-updated.
  /// True from that acquisition until release().
  bool owner_died() const noexcept {
    return state_->mutex.held_by_this_thread() && state_->mutex.previous_owner_died();
  }

  /// How a Lock crosses to a Process started by spawn or forkserver (its memory's descriptor travels along).
  void save(detail::output_archive& ar) const { state_.save(ar, "Lock"); }
  void load(detail::input_archive& ar) { state_.load(ar, "Lock"); }

 private:
  friend class Condition;
  detail::shared_ref<detail::lock_state> state_;
};

/// A re-entrant lock shared between processes (multiprocessing.RLock): its owner may acquire it again and must
/// release it as many times; release by any other thread throws mp::Error.
class RLock {
 public:
  /// A new, unlocked lock.
  RLock() : state_(detail::make_shared_state<detail::lock_state>("RLock")) {}
  RLock(const RLock&) = default;
  RLock& operator=(const RLock&) = default;

  /// Blocks until acquired (at once if this thread holds it already: one more level).
  void acquire() { detail::lock_acquire(*state_, true, {}); }
  /// Waits at most `timeout`; false if it ran out.
  template <class Rep, class Period>
  bool acquire(std::chrono::duration<Rep, Period> timeout) {
    return detail::lock_acquire(*state_, true, detail::deadline_after(timeout));
  }
  /// Acquires only if free right now or already held by this thread.
  bool try_acquire() { return detail::lock_try_acquire(*state_, true); }
  /// Drops one level; the last one releases. mp::Error if this thread does not hold it.
  void release() { detail::lock_release(*state_, true); }

  /// std Lockable / TimedLockable spellings.
  void lock() { acquire(); }
  void unlock() { release(); }
  bool try_lock() { return try_acquire(); }
  template <class Rep, class Period>
  bool try_lock_for(std::chrono::duration<Rep, Period> timeout) { return acquire(timeout); }
  template <class Clock, class Duration>
  bool try_lock_until(std::chrono::time_point<Clock, Duration> when) {
    return detail::lock_acquire(*state_, true, detail::deadline_at(when));
  }

  /// True while some thread of some process holds it (a snapshot).
  bool locked() const noexcept { return state_->mutex.locked_hint(); }
  /// True if the calling thread holds it.
  bool is_owned() const noexcept { return state_->mutex.held_by_this_thread(); }
  /// For the holder: the previous holder died holding this lock (true until the last release()).
  bool owner_died() const noexcept {
    return state_->mutex.held_by_this_thread() && state_->mutex.previous_owner_died();
  }

  /// How an RLock crosses to a Process started by spawn or forkserver.
  void save(detail::output_archive& ar) const { state_.save(ar, "RLock"); }
  void load(detail::input_archive& ar) { state_.load(ar, "RLock"); }

 private:
  template <class T>
  friend class Value;
  template <class T>
  friend class Array;
  friend class Condition;
  explicit RLock(detail::shared_ref<detail::lock_state> state) noexcept : state_(std::move(state)) {}
  detail::shared_ref<detail::lock_state> state_;
};

/// A counter shared between processes (multiprocessing.Semaphore): acquire() takes one, blocking at 0.
class Semaphore {
 public:
  /// mp::Error if value < 0.
  explicit Semaphore(int value = 1) : Semaphore(value, 0, "Semaphore") {}
  Semaphore(const Semaphore&) = default;
  Semaphore& operator=(const Semaphore&) = default;

  /// Blocks until the value is positive, then decrements it.
  void acquire() { detail::semaphore_acquire(*state_, {}); }
  /// Waits at most `timeout`; false if it ran out.
  template <class Rep, class Period>
  bool acquire(std::chrono::duration<Rep, Period> timeout) {
    return detail::semaphore_acquire(*state_, detail::deadline_after(timeout));
  }
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
  Semaphore(int value, int bound, const char* kind)
      : state_(detail::make_shared_state<detail::semaphore_state>(kind, checked(value, kind),
                                                                   static_cast<std::uint32_t>(bound))) {}

 private:
  static std::uint32_t checked(int value, const char* kind) {
    if (value < 0) {
      throw Error(std::string(kind) + ": initial value must be >= 0, got " + std::to_string(value));
    }
    return static_cast<std::uint32_t>(value);
  }
  detail::shared_ref<detail::semaphore_state> state_;
};

/// A Semaphore whose release() throws mp::Error rather than raise the value above its initial value
/// (multiprocessing.BoundedSemaphore; Python raises ValueError).
class BoundedSemaphore : public Semaphore {
 public:
  /// mp::Error if value < 1.
  explicit BoundedSemaphore(int value = 1) : Semaphore(value, checked_bound(value), "BoundedSemaphore") {}

 private:
  static int checked_bound(int value) {
    if (value < 1) throw Error("BoundedSemaphore: initial value must be >= 1, got " + std::to_string(value));
    return value;
  }
};

/// A condition variable shared between processes (multiprocessing.Condition), bound to a Lock or RLock.
class Condition {
 public:
  /// With a new RLock, as Python.
  Condition() : Condition(RLock()) {}
  /// Bound to `lock` (copies of it share it).
  explicit Condition(Lock lock) : Condition(std::move(lock.state_), false) {}
  explicit Condition(RLock lock) : Condition(std::move(lock.state_), true) {}
  Condition(const Condition&) = default;
  Condition& operator=(const Condition&) = default;

  /// The underlying lock's acquire/release, and the std Lockable spellings.
  void acquire() { detail::lock_acquire(*lock_, recursive_, {}); }
  template <class Rep, class Period>
  bool acquire(std::chrono::duration<Rep, Period> timeout) {
    return detail::lock_acquire(*lock_, recursive_, detail::deadline_after(timeout));
  }
  bool try_acquire() { return detail::lock_try_acquire(*lock_, recursive_); }
  void release() { detail::lock_release(*lock_, recursive_); }
  void lock() { acquire(); }
  void unlock() { release(); }
  bool try_lock() { return try_acquire(); }

  /// Releases the lock (every level of an RLock), sleeps until notified, reacquires. Lock must be held.
  void wait() { detail::condition_wait(*state_, *lock_, recursive_, {}); }
  /// As wait(), for at most `timeout`; false if it ran out (the lock is reacquired either way).
  template <class Rep, class Period>
  bool wait(std::chrono::duration<Rep, Period> timeout) {
    return detail::condition_wait(*state_, *lock_, recursive_, detail::deadline_after(timeout));
  }
  /// Waits until pred() is true (checked first, then after each wake-up); returns pred().
  template <class Pred>
  bool wait_for(Pred pred) {
    while (!pred()) wait();
    return true;
  }
  /// As wait_for(pred), giving up after `timeout`; returns the last pred().
  template <class Pred, class Rep, class Period>
  bool wait_for(Pred pred, std::chrono::duration<Rep, Period> timeout) {
    const detail::deadline until = detail::deadline_after(timeout);
    bool result = pred();
    while (!result) {
      if (detail::expired(until)) break;
      detail::condition_wait(*state_, *lock_, recursive_, until);
      result = pred();
    }
    return result;
  }
  /// Wakes up to n of the processes waiting now. Lock must be held.
  void notify(int n = 1) { detail::condition_notify(*state_, *lock_, n, "notify"); }
  /// Wakes every process waiting now. Lock must be held.
  void notify_all() { detail::condition_notify(*state_, *lock_, INT_MAX, "notify_all"); }

  /// For the holder: the lock's previous holder died holding it (see Lock::owner_died()).
  bool owner_died() const noexcept { return lock_->mutex.held_by_this_thread() && lock_->mutex.previous_owner_died(); }

  /// How a Condition (and its lock) crosses to a Process started by spawn or forkserver.
  void save(detail::output_archive& ar) const {
    lock_.save(ar, "Condition");
    ar(recursive_);
    state_.save(ar, "Condition");
  }
  void load(detail::input_archive& ar) {
    lock_.load(ar, "Condition");
    ar(recursive_);
    state_.load(ar, "Condition");
  }

 private:
  Condition(detail::shared_ref<detail::lock_state> lock, bool recursive)
      : lock_(std::move(lock)), recursive_(recursive),
        state_(detail::make_shared_state<detail::condition_state>("Condition")) {}
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

  /// Sets the flag and wakes every waiter.
  void set() {
    state_->flag.store(1);
    if (state_->sleepers.load() > 0) detail::futex_wake(state_->flag);
  }
  /// Clears the flag.
  void clear() noexcept { state_->flag.store(0); }
  /// The flag (a snapshot).
  bool is_set() const noexcept { return state_->flag.load() != 0; }
  /// Blocks until the flag is set.
  void wait() { detail::event_wait(*state_, {}); }
  /// Waits at most `timeout`; returns the flag (false: it ran out).
  template <class Rep, class Period>
  bool wait(std::chrono::duration<Rep, Period> timeout) {
    return detail::event_wait(*state_, detail::deadline_after(timeout));
  }

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
  explicit Barrier(int parties, std::function<void()> action = {},
                   std::optional<std::chrono::milliseconds> timeout = std::nullopt)
      : state_(detail::make_shared_state<detail::barrier_state>("Barrier", checked(parties))),
        action_(std::move(action)), timeout_(timeout) {}
  /// A Barrier(1): only as the value a spawned child decodes its argument into.
  Barrier() : Barrier(1) {}
  Barrier(const Barrier&) = default;
  Barrier& operator=(const Barrier&) = default;

  /// Waits for all parties; returns this arrival's index, 0 … parties-1 (parties-1: the last one, which ran the
  /// action). BrokenBarrierError if the barrier is or becomes broken, is reset, or the default timeout runs out.
  int wait() {
    return detail::barrier_wait(*state_, action_, timeout_ ? detail::deadline(detail::deadline_after(*timeout_))
                                                           : detail::deadline());
  }
  /// As wait(), for at most `timeout`; running out breaks the barrier (BrokenBarrierError here and for all).
  template <class Rep, class Period>
  int wait(std::chrono::duration<Rep, Period> timeout) {
    return detail::barrier_wait(*state_, action_, detail::deadline_after(timeout));
  }
  /// Back to the empty, unbroken state; processes waiting now get BrokenBarrierError.
  void reset() {
    detail::barrier_lock(*state_);
    detail::barrier_fail_generation(*state_);
    state_->broken = false;
    state_->mutex.unlock();
  }
  /// Breaks the barrier: current and future wait() calls throw BrokenBarrierError until reset().
  void abort() {
    detail::barrier_lock(*state_);
    state_->broken = true;
    detail::barrier_fail_generation(*state_);
    state_->mutex.unlock();
  }
  /// The number of processes required.
  int parties() const noexcept { return state_->parties; }
  /// The number of processes waiting now (a snapshot).
  int n_waiting() const {
    detail::barrier_lock(*state_);
    const int count = state_->broken ? 0 : state_->count;
    state_->mutex.unlock();
    return count;
  }
  /// How a Barrier crosses to a Process started by spawn or forkserver; one with an action cannot (the action is
  /// code of this process: SerializationError).
  void save(detail::output_archive& ar) const {
    if (action_) {
      throw SerializationError(
          "mp::serialize: a Barrier with an action cannot cross to a process started by spawn or forkserver (the "
          "action is a std::function of this process); use StartMethod::fork, or run the action after wait() "
          "in the process that gets index parties() - 1");
    }
    state_.save(ar, "Barrier");
    ar(timeout_);
  }
  void load(detail::input_archive& ar) {
    state_.load(ar, "Barrier");
    ar(timeout_);
    action_ = nullptr;
  }
  /// True if broken (aborted, timed out, an action threw, or a process died inside it) until reset().
  bool broken() const {
    detail::barrier_lock(*state_);
    const bool is_broken = state_->broken;
    state_->mutex.unlock();
    return is_broken;
  }

 private:
  static int checked(int parties) {
    if (parties < 1) throw Error("Barrier: parties must be >= 1, got " + std::to_string(parties));
    return parties;
  }
  detail::shared_ref<detail::barrier_state> state_;
  std::function<void()> action_;
  std::optional<std::chrono::milliseconds> timeout_;
};

}  // namespace mp
