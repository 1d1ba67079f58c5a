// clock: time as mp's waits use it — deadlines on std::chrono::steady_clock (CLOCK_MONOTONIC on Linux, one clock
// for every process of the machine, so a deadline or a start time can cross), timeouts in words for messages, and
// bounded spinning before a wait sleeps in the kernel.
// Why "a century means forever": now() + duration::max() overflows the clock's representation, and Python users
// pass "a very long time" for "forever"; such timeouts therefore mean no deadline at all.
#pragma once

#include <time.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>

namespace mp::detail {

/// An absolute deadline; empty: wait forever.
using deadline = std::optional<std::chrono::steady_clock::time_point>;

/// A deadline `timeout` from now (negative timeouts count as zero).
template <class Rep, class Period>
std::chrono::steady_clock::time_point deadline_after(std::chrono::duration<Rep, Period> timeout) {
  if (timeout < timeout.zero()) timeout = timeout.zero();
  return std::chrono::steady_clock::now() + std::chrono::ceil<std::chrono::steady_clock::duration>(timeout);
}

/// A deadline `timeout` from now; none (wait forever) for timeouts of a century or more, e.g. duration::max().
template <class Rep, class Period>
deadline deadline_or_forever(std::chrono::duration<Rep, Period> timeout) {
  constexpr double century_seconds = 100.0 * 365 * 24 * 3600;
  if (std::chrono::duration<double>(timeout).count() >= century_seconds) return {};
  return deadline_after(timeout);
}

/// A deadline for a time_point of any clock (std::unique_lock::try_lock_until may pass system_clock's).
template <class Clock, class Duration>
deadline deadline_at(std::chrono::time_point<Clock, Duration> when) {
  if constexpr (std::is_same_v<Clock, std::chrono::steady_clock>) {
    return std::chrono::time_point_cast<std::chrono::steady_clock::duration>(when);
  } else {
    return deadline_after(when - Clock::now());
  }
}

/// True once `until` has passed (never for "forever").
inline bool expired(const deadline& until) noexcept { return until && std::chrono::steady_clock::now() >= *until; }

/// `t` as an absolute CLOCK_MONOTONIC timespec (steady_clock's clock on Linux), for futex and clocklock calls.
inline timespec to_timespec(std::chrono::steady_clock::time_point t) noexcept {
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  if (ns < 0) ns = 0;
  return timespec{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
}

/// The time left until `until` as a relative timespec, zero once it passed: for poll-like calls.
inline timespec time_left(std::chrono::steady_clock::time_point until) noexcept {
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(until - std::chrono::steady_clock::now()).count();
  if (ns < 0) ns = 0;
  return timespec{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
}

/// Milliseconds left until `until` for poll(2): -1 for forever, 0 once passed, rounded up otherwise.
inline int poll_timeout_ms(const deadline& until) noexcept {
  if (!until) return -1;
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(*until - std::chrono::steady_clock::now()).count();
  if (left <= 0) return 0;
  return left > 1'000'000'000 ? 1'000'000'000 : static_cast<int>(left);
}

/// CLOCK_MONOTONIC in nanoseconds, for time stamps kept in shared memory (a task's start time crosses processes).
inline std::uint64_t monotonic_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(ts.tv_nsec);
}

/// "250 ms" (or "40 us" below a millisecond) for messages such as "Queue::get timed out after 250 ms".
template <class Rep, class Period>
std::string describe_timeout(std::chrono::duration<Rep, Period> timeout) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count();
  if (ms != 0 || timeout <= timeout.zero()) return std::to_string(ms) + " ms";
  return std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(timeout).count()) + " us";
}

/// One pause of a spin loop: lets the sibling hyperthread run and saves power.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

/// How long a waiter watches a word before sleeping on it when the awaited change is a short critical section
/// away: longer than such a section, far shorter than a futex wake-up across CPUs (~50 µs on a small VM).
inline constexpr std::chrono::nanoseconds short_spin{3'000};

/// How long a lock's waiter (robust_mutex) watches the lock word before sleeping: about one futex sleep + wake-up
/// across CPUs, the classic bound for spinning (it never costs more than twice the best choice). A lock, unlike the
/// words above, is often taken by a stream of short critical sections (a loop of "lock; one map operation;
/// unlock"): the holder re-takes it at once, the waiter gets it only now and then, and a waiter that gave up after
/// short_spin slept, so each of the holder's next releases paid a futex wake-up call. 2 processes doing shm::map
/// set+find under one Lock made ~190k futex calls per 6M operations with short_spin and ~13k with 40 µs, and ran
/// 1.2x faster (docs/shared-memory.md, SharedHeap "How the heap got here").
inline constexpr std::chrono::nanoseconds lock_spin{40'000};

/// Spins for about `budget` calling ready(); true as soon as it returns true, else ready()'s last answer.
/// Reads the clock every 64 rounds only (a vDSO call, ~20 ns).
template <class Ready>
bool spin_until(Ready&& ready, std::chrono::nanoseconds budget) {
  const std::uint64_t until = monotonic_ns() + static_cast<std::uint64_t>(budget.count());
  for (unsigned round = 1;; ++round) {
    if (ready()) return true;
    cpu_relax();
    if ((round & 63u) == 0 && monotonic_ns() >= until) return ready();
  }
}

}  // namespace mp::detail
