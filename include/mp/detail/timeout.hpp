// timeout: turning a user's std::chrono timeout into a deadline, and into words for error messages.
// Why not deadline_after() alone: now() + duration::max() overflows the clock's representation, and Python users
// pass "a very long time" for "forever"; timeouts of a century or more therefore mean no deadline at all.
#pragma once

#include <chrono>
#include <string>

#include <mp/detail/futex.hpp>

namespace mp::detail {

/// A deadline `timeout` from now; none (wait forever) for timeouts of a century or more, e.g. duration::max().
template <class Rep, class Period>
deadline deadline_or_forever(std::chrono::duration<Rep, Period> timeout) {
  constexpr double century_seconds = 100.0 * 365 * 24 * 3600;
  if (std::chrono::duration<double>(timeout).count() >= century_seconds) return {};
  return deadline_after(timeout);
}

/// "250 ms" (or "40 us" below a millisecond) for messages such as "Queue::get timed out after 250 ms".
template <class Rep, class Period>
std::string describe_timeout(std::chrono::duration<Rep, Period> timeout) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count();
  if (ms != 0 || timeout <= timeout.zero()) return std::to_string(ms) + " ms";
  return std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(timeout).count()) + " us";
}

}  // namespace mp::detail
