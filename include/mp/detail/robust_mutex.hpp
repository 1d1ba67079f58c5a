// robust_mutex: the one process-shared mutex under every mp lock (Lock, RLock, a Value's lock, queues, pools).
// Why a pthread robust mutex: when a holder dies (SIGKILL included) the kernel walks the dead thread's robust list,
// marks the lock word FUTEX_OWNER_DIED and wakes one waiter, so nobody is wedged; glibc reports that to the next
// locker as EOWNERDEAD, which acquired() turns into previous_owner_died() — EOWNERDEAD is handled there only.
// Why the spin: glibc robust mutexes never spin, and a cross-CPU futex wake-up costs ~50 µs on a small VM while a
// critical section of a few instructions ends in well under 1 µs; so we watch the lock word for lock_spin
// (detail/clock.hpp: about one futex wake-up, longer than the short_spin of other waits, as a lock is often re-taken
// by a stream of short critical sections) first — ~40-45 µs in fact, see spin_try. It is a spin of its
// own, not spin_until: it backs off exponentially between looks at the lock word, which the holder is about to
// write, so that a holder that re-acquires at once keeps the lock (throughput over strict hand-off, as pthread
// mutexes; mp promises no FIFO order).
// Not through the syscall seam (detail/syscall.hpp): pthread_mutex_* and clock_nanosleep return their error rather
// than set errno, and every one of their results is interpreted in acquired() or check(); gettid() cannot fail.
// The uncontended paths (lock's first attempt, try_lock, unlock) are inline; the blocking ones in robust_mutex.ipp.
#pragma once

#include <linux/futex.h>
#include <pthread.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>

#include <mp/detail/clock.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/cpu_load.hpp>
#include <mp/detail/syscall.hpp>

#ifndef __GLIBC__
#error "mp's robust_mutex reads glibc's robust futex word: build against glibc"
#endif

namespace mp::detail {

/// Longest single sleep in the kernel of a blocked lock(). glibc's unlock wakes one waiter and clears
/// FUTEX_WAITERS; that waiter sets it again when it finds the lock taken. If it is SIGKILLed after the wake-up while
/// another thread took the lock by an uncontended trylock (no FUTEX_WAITERS), the kernel passes nothing on (the lock
/// has a live owner) and the remaining sleepers are never woken. Each bounded sleep re-enters pthread's lock path,
/// which sets FUTEX_WAITERS again: a dead waiter costs a delay, never a hang.
inline constexpr std::chrono::milliseconds lock_rearm_period{100};

// gettid() is a system call; a lock's owner check runs on every RLock acquire, so each thread caches its tid.
// fork() gives the child's (only) thread a new tid but a copy of the parent's cache: an atfork handler clears it.
inline pid_t& cached_thread_tid() noexcept {
  thread_local pid_t tid = 0;
  return tid;
}

/// The calling thread's kernel tid (what a robust lock word holds), cached per thread and refreshed after fork.
inline pid_t this_thread_tid() noexcept {
  pid_t& tid = cached_thread_tid();
  if (tid == 0) {
    static const int registered = ::pthread_atfork(nullptr, nullptr, [] { cached_thread_tid() = 0; });
    (void)registered;
    tid = static_cast<pid_t>(::gettid());
  }
  return tid;
}

// Lives in shared memory (placement-new by the creator before the memory is shared). Process-shared, robust:
// if the holder dies, the next locker gets the lock and learns it.
class robust_mutex {
 public:
  MP_DECL robust_mutex();
  robust_mutex(const robust_mutex&) = delete;
  robust_mutex& operator=(const robust_mutex&) = delete;
  // Trivial on purpose: the memory is shared and outlives any one process's view of it; a robust mutex owns no
  // kernel object, so there is nothing to destroy.
  ~robust_mutex() = default;

  /// Blocks until acquired; throws mp::Error if the calling thread already holds it (that would deadlock).
  void lock() {
    if (!locked_hint() && try_lock()) return;  // free: taken without entering the spin's loop
    if (!spin_try()) lock_blocking();
  }

  /// Acquires if free right now.
  bool try_lock() {
    const int rc = ::pthread_mutex_trylock(&mutex_);
    if (rc == EDEADLK) return false;  // held by this thread: "not free right now", as Python's acquire(False)
    return acquired(rc, "pthread_mutex_trylock");
  }

  /// Acquires before `until` (none: wait forever); false on timeout.
  bool try_lock_until(const deadline& until) {
    if (!until) {
      lock();
      return true;
    }
    // The spin ends at the deadline too: acquire(timeout) with a timeout shorter than lock_spin waits that long only.
    const auto limit = std::chrono::duration_cast<std::chrono::nanoseconds>(until->time_since_epoch()).count();
    return spin_try(limit < 0 ? 0 : static_cast<std::uint64_t>(limit)) || lock_blocking_until(*until);
  }

  /// Releases; throws mp::Error if the calling thread does not hold it.
  void unlock() {
    if (!try_unlock()) throw_not_holder();
  }

  /// Releases if the calling thread holds it; false (and nothing changes) if it does not.
  bool try_unlock() {
    const bool died = owner_died_;
    owner_died_ = false;  // before the release: afterwards the flag belongs to the next holder
    const int rc = ::pthread_mutex_unlock(&mutex_);
    if (rc == EPERM) {
      owner_died_ = died;  // we were not the holder: leave the holder's flag alone
      return false;
    }
    check(rc, "pthread_mutex_unlock");
    return true;
  }

  /// For the current holder: this acquisition recovered the lock from a dead owner (true until unlock).
  bool previous_owner_died() const noexcept { return owner_died_; }

  /// True if some thread (of any process) holds the lock at this instant: a hint, stale as soon as it returns.
  bool locked_hint() const noexcept { return (lock_word() & FUTEX_TID_MASK) != 0; }

  /// True if the calling thread holds the lock. Exact, not a hint: the word holds the owner's tid, only the owner
  /// changes it away from that tid, and the kernel clears it when the owner dies.
  bool held_by_this_thread() const noexcept {
    return static_cast<pid_t>(lock_word() & FUTEX_TID_MASK) == this_thread_tid();
  }

 private:
  // The blocking part of lock(): sleeps in steps of lock_rearm_period (see there) until acquired.
  MP_DECL void lock_blocking();
  // The blocking part of try_lock_until: as lock_blocking, giving up at `until`.
  MP_DECL bool lock_blocking_until(std::chrono::steady_clock::time_point until);
  // One bounded wait: true if acquired (EDEADLK throws), false when `step` passed.
  MP_DECL bool timed_lock(std::chrono::steady_clock::time_point step);
  [[noreturn]] MP_DECL static void throw_not_holder();
  // acquired()'s answer to anything but success, a dead owner, EBUSY and ETIMEDOUT.
  [[noreturn]] MP_DECL static void throw_lock_error(int rc, const char* call);

  // glibc keeps the robust futex word (owner tid | FUTEX_WAITERS | FUTEX_OWNER_DIED) in __data.__lock: it is the
  // kernel's robust-futex ABI, so its meaning is fixed; we only ever read it.
  unsigned lock_word() const noexcept {
    return static_cast<unsigned>(__atomic_load_n(&mutex_.__data.__lock, __ATOMIC_RELAXED));
  }

  // Watches the lock word (no writes, so the holder keeps its cache line) and tries once it looks free, until the
  // first look at the longest pause after lock_spin (the first 1 + 2 + ... + 256 pauses take ~10 µs at 20 ns a
  // pause, then a look every 256).
  // `limit`: a monotonic_ns() at which to stop sooner.
  bool spin_try(std::uint64_t limit = UINT64_MAX) {
    if (!locked_hint() && try_lock()) return true;
    // With more runnable threads than CPUs the holder may be waiting for this very CPU: spin only short_spin then
    // (detail/cpu_load.hpp), as the rings' waits do.
    const std::uint64_t now = monotonic_ns();
    const auto budget = cpus_oversubscribed(now) ? short_spin : lock_spin;
    const std::uint64_t until = std::min(now + static_cast<std::uint64_t>(budget.count()), limit);
    // Exponential backoff between looks: each look pulls the holder's cache line across CPUs (~230 ns one way on
    // the reference VM), and the holder pays that on its next lock or unlock. A holder that releases and at once
    // re-acquires (a loop of short critical sections) keeps the lock and its data local while the waiter looks
    // rarely: 2 processes doing shm::map set+find under one Lock ran 5.1-6.6M ops/s with looks at most 32 pauses
    // apart, 9.2-10.9M at most 256 apart (1 process alone: 16M; docs/shared-memory.md). A waiter sees a release
    // at most one interval late, and the interval grows only while the lock stays taken. The clock is read only
    // between the longest pauses.
    for (int pause = 1;; pause = std::min(pause * 2, max_pause)) {
      for (int i = 0; i < pause; ++i) cpu_relax();
      if (!locked_hint() && try_lock()) return true;
      if ((pause == max_pause || until == limit) && monotonic_ns() >= until) return false;
    }
  }

  // The only place that interprets a lock result. EOWNERDEAD: we hold the lock, its previous holder died inside
  // its critical section; mark the mutex consistent at once (so it never becomes ENOTRECOVERABLE, even if we die
  // too) and tell the new holder through previous_owner_died() so it can repair what the lock guards.
  bool acquired(int rc, const char* call) {
    switch (rc) {
      case 0:
        owner_died_ = false;
        return true;
      case EOWNERDEAD:
        ::pthread_mutex_consistent(&mutex_);
        owner_died_ = true;
        return true;
      case EBUSY:
      case ETIMEDOUT:
        return false;
      default:
        throw_lock_error(rc, call);  // EDEADLK and real errors
    }
  }

  static void check(int rc, const char* call) {
    if (rc != 0) throw_errno(call, {}, rc);
  }

  static constexpr int max_pause = 256;  // cpu_relax() rounds between looks at the word, at most (~5 µs)

  pthread_mutex_t mutex_;
  bool owner_died_ = false;  // guarded by mutex_: only the holder reads or writes it
};

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/robust_mutex.ipp>
#endif
