// robust_mutex: definitions (see robust_mutex.hpp) — construction, the blocking paths, the messages.
#pragma once

#include <pthread.h>
#include <time.h>

#include <mp/detail/robust_mutex.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

MP_DECL robust_mutex::robust_mutex() {
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

MP_DECL void robust_mutex::lock_blocking() {
  while (!timed_lock(std::chrono::steady_clock::now() + lock_rearm_period)) {
  }
}

MP_DECL bool robust_mutex::lock_blocking_until(std::chrono::steady_clock::time_point until) {
  for (;;) {  // in steps of lock_rearm_period (see there)
    const auto step = std::chrono::steady_clock::now() + lock_rearm_period;
    if (step >= until) break;
    if (timed_lock(step)) return true;
  }
  const timespec ts = to_timespec(until);
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

MP_DECL bool robust_mutex::timed_lock(std::chrono::steady_clock::time_point step) {
  const timespec ts = to_timespec(step);
  return acquired(::pthread_mutex_clocklock(&mutex_, CLOCK_MONOTONIC, &ts), "pthread_mutex_clocklock");
}

MP_DECL void robust_mutex::throw_not_holder() {
  throw Error("cannot release a lock that this thread does not hold (release it in the process that acquired it)");
}

MP_DECL void robust_mutex::throw_lock_error(int rc, const char* call) {
  if (rc == EDEADLK) {
    throw Error("acquire: this thread already holds this lock; acquiring it again would deadlock (use an RLock "
                "to re-enter, or release it first)");
  }
  throw_errno(call, {}, rc);
}

}  // namespace mp::detail
