// futex: sleep on a 32-bit word in shared memory until another process changes it and wakes us.
// Process-shared futexes (no FUTEX_PRIVATE_FLAG): the kernel keys them by the physical page, so waiters in
// different processes mapping the same segment meet. Deadlines are absolute CLOCK_MONOTONIC (std::chrono::
// steady_clock on Linux, detail/clock.hpp), so a wait interrupted by a signal resumes with the same deadline.
// Why not through the syscall seam (detail/syscall.hpp): a futex wait's "failures" are its answers — EAGAIN (the
// word already changed), EINTR (a signal: the caller re-checks its condition, so it must return, not retry),
// ETIMEDOUT — and are all handled here; a wake cannot fail in a way that changes anything. Both are also the hot
// path of every blocked primitive, where the seam's hook check would be a cost with nothing to test.
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>

#include <mp/detail/clock.hpp>
#include <mp/detail/config.hpp>

namespace mp::detail {

static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t), "futex words must be plain 32-bit");

/// Sleeps while *word == expected, until woken or the deadline passes. Returns false only on timeout;
/// true means "look again" (woken, value changed, or a signal arrived): callers re-check their condition.
MP_DECL bool futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected, const deadline& until = {});

/// Longest single sleep of futex_wait_bounded. A peer SIGKILLed between updating a word and its futex_wake leaves
/// the sleepers unwoken, and later wakers may see no sleeper left to wake: each sleeper looks again after this
/// long, so a dead waker costs a delay, never a hang.
inline constexpr std::chrono::milliseconds lost_wake_period{100};

/// futex_wait that never sleeps longer than lost_wake_period: false only once `until` has passed. For words whose
/// wakers may die mid-update; callers re-check their condition whatever it returns.
MP_DECL bool futex_wait_bounded(std::atomic<std::uint32_t>& word, std::uint32_t expected, const deadline& until = {});

/// Wakes up to n waiters on word (INT_MAX: all).
inline void futex_wake(std::atomic<std::uint32_t>& word, int n = INT_MAX) noexcept {
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE, n, nullptr, nullptr, 0);
}

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/futex.ipp>
#endif
