// The one seam between mp and the kernel: the only place that reads errno.
// System calls whose failure mp reports or handles go through sys() (retries EINTR, throws "call(detail):
// strerror") or sys_try() (retries EINTR, returns -1 with errno set for the caller to handle EAGAIN, ESRCH, ...).
// Both consult the fault hook first, so a test can make any named call fail with the errno of its choice.
// Not through the seam, on purpose: calls whose failure changes nothing (close(2) on Linux frees the descriptor
// whatever it returns; a futex wake; clock_gettime on CLOCK_MONOTONIC), and the few calls a freshly forked child
// makes before it runs user code (async-signal-safe code must not throw). Also outside: calls made for a side effect
// rather than their result (bind_child_calls_once binds a forked child's calls in its parent), and posix_spawn's
// set-up calls, which return an error number instead of setting errno (posix_spawn itself goes through the seam).
#pragma once

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include <mp/errors.hpp>

namespace mp::detail {

/// The current errno as a value; the only read of errno outside this file is through this function.
inline int last_errno() noexcept { return errno; }

/// Throws mp::Error "call(detail): strerror(err)" — or "call: strerror(err)" when detail is empty.
[[noreturn]] inline void throw_errno(const char* call, const std::string& detail = {}, int err = errno) {
  std::string message = call;
  if (!detail.empty()) message += "(" + detail + ")";
  message += ": ";
  message += std::strerror(err);
  throw Error(message);
}

/// Test seam: asked before every call through sys()/sys_try() with the call's name; a nonzero answer is the errno
/// that call then fails with, without being made. Null (the default) costs one relaxed load.
using fault_hook = int (*)(const char* call) noexcept;
inline std::atomic<fault_hook>& the_fault_hook() noexcept {
  static std::atomic<fault_hook> hook{nullptr};
  return hook;
}

/// Calls f() until it does not fail with EINTR; returns its result (failures still return -1 with errno set).
template <class F>
auto retry_on_eintr(F&& f) noexcept(noexcept(f())) {
  for (;;) {
    auto result = f();
    if (!(result == -1 && errno == EINTR)) return result;
  }
}

/// Calls f() retrying EINTR, after asking the fault hook about `call`; returns its result (-1 with errno set on
/// failure, for the caller to handle).
template <class F>
auto sys_try(const char* call, F&& f) noexcept(noexcept(f())) -> decltype(f()) {
  if (fault_hook hook = the_fault_hook().load(std::memory_order_relaxed)) {
    if (const int err = hook(call); err != 0) {
      errno = err;
      return -1;
    }
  }
  return retry_on_eintr(std::forward<F>(f));
}

/// Calls f() retrying EINTR; throws mp::Error naming `call` and `detail` if it still fails.
template <class F>
auto sys(const char* call, const std::string& detail, F&& f) {
  auto result = sys_try(call, std::forward<F>(f));
  if (result == -1) throw_errno(call, detail);
  return result;
}
template <class F>
auto sys(const char* call, F&& f) {
  return sys(call, std::string{}, std::forward<F>(f));
}

}  // namespace mp::detail
