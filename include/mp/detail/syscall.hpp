// The one seam between mp and the kernel: the only place that reads errno.
// Every system call goes through sys() (retries EINTR, throws "call(detail): strerror") or retry_on_eintr().
#pragma once

#include <cerrno>
#include <cstring>
#include <string>
#include <system_error>
#include <type_traits>
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

/// Calls f() until it does not fail with EINTR; returns its result (failures still return -1 with errno set).
template <class F>
auto retry_on_eintr(F&& f) noexcept(noexcept(f())) {
  for (;;) {
    auto result = f();
    if (!(result == -1 && errno == EINTR)) return result;
  }
}

/// Calls f() retrying EINTR; throws mp::Error naming `call` and `detail` if it still fails.
template <class F>
auto sys(const char* call, const std::string& detail, F&& f) {
  auto result = retry_on_eintr(std::forward<F>(f));
  if (result == -1) throw_errno(call, detail);
  return result;
}
template <class F>
auto sys(const char* call, F&& f) {
  return sys(call, std::string{}, std::forward<F>(f));
}

}  // namespace mp::detail
