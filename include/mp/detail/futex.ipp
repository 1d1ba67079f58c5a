// futex: definitions (see futex.hpp) — the waits.
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <mp/detail/futex.hpp>
#include <mp/detail/syscall.hpp>

namespace mp::detail {

MP_DECL bool futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected, const deadline& until) {
  timespec ts{};
  timespec* tsp = nullptr;
  if (until) {
    ts = to_timespec(*until);
    tsp = &ts;
  }
  // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, unlike FUTEX_WAIT's relative one.
  long rc = ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT_BITSET, expected, tsp, nullptr,
                      FUTEX_BITSET_MATCH_ANY);
  if (rc == 0) return true;
  const int err = last_errno();
  if (err == ETIMEDOUT) return false;
  if (err == EAGAIN || err == EINTR) return true;
  throw_errno("futex(FUTEX_WAIT_BITSET)", {}, err);
}

MP_DECL bool futex_wait_bounded(std::atomic<std::uint32_t>& word, std::uint32_t expected, const deadline& until) {
  const auto look_again = std::chrono::steady_clock::now() + lost_wake_period;
  if (until && *until <= look_again) return futex_wait(word, expected, until);
  futex_wait(word, expected, look_again);
  return true;
}

}  // namespace mp::detail
