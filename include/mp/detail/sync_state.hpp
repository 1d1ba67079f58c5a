// sync_state: the shared-memory state behind mp/sync.hpp's primitives and the functions that drive it — a robust
// mutex with a recursion depth (Lock, RLock, and the lock of a Condition, Value or Array), a futex counter
// (Semaphore), anonymous notification tokens (Condition), a futex flag (Event), a generation counter (Barrier).
// Every state is trivially destructible and lives in memory from detail/shared_state.hpp; a process may die at any
// instruction, so each wait re-checks its condition and sleeps at most lost_wake_period (detail/futex.hpp).
// Waiting: a waiter first watches its word for short_spin (detail/clock.hpp), then sleeps on a futex. The
// uncontended paths (a free lock, a positive semaphore, a set event, a notify nobody waits for) are inline here;
// the paths that sleep are in sync_state.ipp.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <functional>
#include <utility>

#include <mp/detail/archive.hpp>
#include <mp/detail/clock.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/futex.hpp>
#include <mp/detail/robust_mutex.hpp>
#include <mp/detail/shared_state.hpp>

namespace mp::detail {

// ---- Lock and RLock ---------------------------------------------------------------------------------------

struct lock_state {
  robust_mutex mutex;
  std::uint32_t depth = 0;  // guarded by mutex: RLock recursion depth (unused by a Lock)
};

/// Throws mp::Error: release() of a Lock (or RLock, `recursive`) by a thread that does not hold it.
[[noreturn]] MP_DECL void throw_not_owner(bool recursive);

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

inline void lock_release(lock_state& lock, bool recursive) {
  if (!recursive) {
    if (!lock.mutex.try_unlock()) throw_not_owner(false);
    return;
  }
  if (!lock.mutex.held_by_this_thread()) throw_not_owner(true);
  if (--lock.depth > 0) return;
  lock.mutex.unlock();
}

/// For the holder: its acquisition recovered the lock from a dead owner.
inline bool lock_owner_died(const lock_state& lock) noexcept {
  return lock.mutex.held_by_this_thread() && lock.mutex.previous_owner_died();
}

/// The one body of mp::Lock (Recursive = false) and mp::RLock (true): a handle to a lock_state. The public classes
/// inherit it privately and name its members, so each keeps its own type, name and documentation.
template <bool Recursive>
class basic_lock {
 public:
  /// "Lock" or "RLock": in messages and archives.
  static constexpr const char* kind = Recursive ? "RLock" : "Lock";

  void acquire() { lock_acquire(*state_, Recursive, {}); }
  template <class Rep, class Period>
  bool acquire(std::chrono::duration<Rep, Period> timeout) {
    return lock_acquire(*state_, Recursive, deadline_after(timeout));
  }
  bool try_acquire() { return lock_try_acquire(*state_, Recursive); }
  void release() { lock_release(*state_, Recursive); }

  void lock() { acquire(); }
  void unlock() { release(); }
  bool try_lock() { return try_acquire(); }
  template <class Rep, class Period>
  bool try_lock_for(std::chrono::duration<Rep, Period> timeout) { return acquire(timeout); }
  template <class Clock, class Duration>
  bool try_lock_until(std::chrono::time_point<Clock, Duration> when) {
    return lock_acquire(*state_, Recursive, deadline_at(when));
  }

  bool locked() const noexcept { return state_->mutex.locked_hint(); }
  bool is_owned() const noexcept { return state_->mutex.held_by_this_thread(); }
  bool owner_died() const noexcept { return lock_owner_died(*state_); }

  void save(output_archive& ar) const { state_.save(ar, kind); }
  void load(input_archive& ar) { state_.load(ar, kind); }

 protected:
  basic_lock() : state_(make_shared_state<lock_state>(kind)) {}
  explicit basic_lock(shared_ref<lock_state> state) noexcept : state_(std::move(state)) {}
  explicit basic_lock(for_load_t) noexcept {}
  shared_ref<lock_state> state_;
};

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

/// The contended part of semaphore_acquire: spin, then sleep until a unit is taken or `until` passes.
MP_DECL bool semaphore_wait(semaphore_state& s, const deadline& until);

/// Takes one unit, waiting until `until` (none: forever); false if it ran out.
inline bool semaphore_acquire(semaphore_state& s, const deadline& until) {
  return semaphore_try_take(s) || semaphore_wait(s, until);
}

/// Throws mp::Error: a BoundedSemaphore released above its bound `max`.
[[noreturn]] MP_DECL void throw_semaphore_overflow(std::uint32_t max);

inline void semaphore_release(semaphore_state& s) {
  if (s.max == 0) {
    s.value.fetch_add(1);
  } else {
    std::uint32_t value = s.value.load();
    do {
      if (value >= s.max) throw_semaphore_overflow(s.max);
    } while (!s.value.compare_exchange_weak(value, value + 1));
  }
  // Dekker with semaphore_wait(): see there.
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

/// Throws mp::Error: Condition::`call` by a thread that does not hold the condition's lock.
[[noreturn]] MP_DECL void throw_condition_not_held(const char* call);

/// Releases `lock` (every level of an RLock), sleeps until notified or `until` passes, reacquires; true if notified.
MP_DECL bool condition_wait(condition_state& c, lock_state& lock, bool recursive, const deadline& until);

/// Wakes up to n waiters (INT_MAX: all). `call` names the caller for the not-held message.
inline void condition_notify(condition_state& c, const lock_state& lock, int n, const char* call) {
  if (!lock.mutex.held_by_this_thread()) throw_condition_not_held(call);
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

/// The waiting part of event_wait: spin, then sleep until the flag is set or `until` passes.
MP_DECL bool event_wait_slow(event_state& e, const deadline& until);

/// Waits until the flag is set or `until` passes; returns the flag.
inline bool event_wait(event_state& e, const deadline& until) {
  return e.flag.load(std::memory_order_acquire) != 0 || event_wait_slow(e, until);
}

inline void event_set(event_state& e) noexcept {
  e.flag.store(1);
  if (e.sleepers.load() > 0) futex_wake(e.flag);
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

/// Waits for all parties (the last runs `action` first); returns the arrival index. BrokenBarrierError if the
/// barrier is or becomes broken, or `until` passes (which breaks it for every party).
MP_DECL int barrier_wait(barrier_state& b, const std::function<void()>& action, const deadline& until);
/// Back to the empty, unbroken state; current waiters get BrokenBarrierError.
MP_DECL void barrier_reset(barrier_state& b);
/// Breaks the barrier until reset(); current waiters get BrokenBarrierError.
MP_DECL void barrier_abort(barrier_state& b);
/// The parties waiting now (0 while broken).
MP_DECL int barrier_n_waiting(barrier_state& b);
/// True while broken.
MP_DECL bool barrier_broken(barrier_state& b);

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/sync_state.ipp>
#endif
