// robust_mutex: the one process-shared mutex under every mp lock (Lock, RLock, a Value's lock, queues, pools).
// Why a pthread robust mutex: when a holder dies (SIGKILL included) the kernel walks the dead thread's robust list,
// marks the lock word FUTEX_OWNER_DIED and wakes one waiter, so nobody is wedged; glibc reports that to the next
// locker as EOWNERDEAD, which acquired() turns into previous_owner_died() — EOWNERDEAD is handled there only.
// Why the spin: glibc robust mutexes never spin, and a cross-CPU futex wake-up costs ~50 µs on a small VM while a
// critical section of a few instructions ends in well under 1 µs; so we watch the lock word for a few µs first.
#pragma once

#include <linux/futex.h>
#include <pthread.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <string>

#include <mp/detail/futex.hpp>
#include <mp/detail/syscall.hpp>

#ifndef __GLIBC__
#error "mp's robust_mutex reads glibc's robust futex word: build against glibc"
#endif

namespace mp::detail {

/// How many cpu_relax() rounds a waiter watches a busy lock or word before sleeping in the kernel: ~3 µs here
/// (a pause is ~23 ns on the target VM) — longer than a short critical section, far shorter than a futex wake-up.
inline constexpr int lock_spin_rounds = 128;
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
  robust_mutex() {
    pthread_mutexattr_t attr;
    check(::pthread_mutexattr_init(&attr), "pthread_mutexattr_init");
    // ERRORCHECK: relocking by the holder reports EDEADLK (we throw) instead of hanging; unlock by a non-holder
    // reports EPERM. Robust mutexes track their owner anyway, so this costs nothing.
    ::pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK);
    ::pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    ::pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    const int rc = ::pthread_mutex_init(&mutex_, &attr);
    ::pthread_mutexattr_destroy(&attr);
    check(rc, "pthread_mutex_init");
  }
  robust_mutex(const robust_mutex&) = delete;
  robust_mutex& operator=(const robust_mutex&) = delete;
  // Trivial on purpose: the memory is shared and outlives any one process's view of it; a robust mutex owns no
  // kernel object, so there is nothing to destroy.
  ~robust_mutex() = default;

  /// Blocks until acquired; throws mp::Error if the calling thread already holds it (that would deadlock).
  void lock() {
    if (spin_try()) return;
    while (!timed_lock(std::chrono::steady_clock::now() + lock_rearm_period)) {
    }
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
    if (spin_try()) return true;
    for (;;) {  // in steps of lock_rearm_period (see there)
      const auto step = std::chrono::steady_clock::now() + lock_rearm_period;
      if (step >= *until) break;
      if (timed_lock(step)) return true;
    }
    const timespec ts = to_timespec(*until);
    const int rc = ::pthread_mutex_clocklock(&mutex_, CLOCK_MONOTONIC, &ts);
    if (rc == EDEADLK) {
      // Held by this very thread: nobody else can release it before the deadline, so the answer is "timed out"
      // (as Python's lock.acquire(timeout=t) on a lock its thread holds); honour the wait it asked for.
      while (::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
      }
      return false;
    }
    return acquired(rc, "pthread_mutex_clocklock");
  }

  /// Releases; throws mp::Error if the calling thread does not hold it.
  void unlock() {
    if (!try_unlock()) {
      throw Error("cannot release a lock that this thread does not hold (release it in the process that acquired it)");
    }
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
  // One bounded wait: true if acquired (EDEADLK throws), false when `step` passed.
  bool timed_lock(std::chrono::steady_clock::time_point step) {
    const timespec ts = to_timespec(step);
    return acquired(::pthread_mutex_clocklock(&mutex_, CLOCK_MONOTONIC, &ts), "pthread_mutex_clocklock");
  }

  // glibc keeps the robust futex word (owner tid | FUTEX_WAITERS | FUTEX_OWNER_DIED) in __data.__lock: it is the
  // kernel's robust-futex ABI, so its meaning is fixed; we only ever read it.
  unsigned lock_word() const noexcept {
    return static_cast<unsigned>(__atomic_load_n(&mutex_.__data.__lock, __ATOMIC_RELAXED));
  }

  // Watches the lock word (no writes, so the holder keeps its cache line) and tries once it looks free.
  bool spin_try() {
    // Exponential backoff between looks: a spinner polling the holder's cache line slows the holder down (2-process
    // contended lock+increment: 0.75x a raw pthread mutex with a look every pause, 1.0-1.5x with backoff).
    for (int round = 0, pause = 1; round < lock_spin_rounds; round += pause, pause = std::min(pause * 2, 32)) {
      if (!locked_hint() && try_lock()) return true;
      for (int i = 0; i < pause; ++i) cpu_relax();
    }
    return false;
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
      case EDEADLK:
        (void)call;
        throw Error("acquire: this thread already holds this lock; acquiring it again would deadlock (use an RLock "
                    "to re-enter, or release it first)");
      default:
        throw_errno(call, {}, rc);
    }
  }

  static void check(int rc, const char* call) {
    if (rc != 0) throw_errno(call, {}, rc);
  }

  pthread_mutex_t mutex_;
  bool owner_died_ = false;  // guarded by mutex_: only the holder reads or writes it
};

}  // namespace mp::detail
