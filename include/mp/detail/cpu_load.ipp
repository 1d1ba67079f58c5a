// cpu_load: definitions (see cpu_load.hpp).
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>

#include <mp/detail/cpu_load.hpp>

namespace mp::detail {

namespace cpu_load_cache {
inline constexpr std::uint64_t refresh_ns = 10'000'000;
inline std::atomic<std::uint64_t> checked_ns{0};
inline std::atomic<bool> oversubscribed{false};

// The CPUs this process may run on (its affinity mask), at least 1.
inline long usable_cpus() noexcept {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  const long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? n : 1;
}

// Runnable threads on the machine (this one included), from /proc/loadavg: "0.50 0.40 0.30 3/512 12345"; -1 if
// unreadable. Plain system calls: a failure only means "spin as usual", nothing to report.
inline long runnable_threads() noexcept {
  const int fd = ::open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char text[128];
  const ssize_t n = ::read(fd, text, sizeof text - 1);
  ::close(fd);
  if (n <= 0) return -1;
  text[n] = '\0';
  // The field after the third space.
  const char* p = text;
  for (int spaces = 0; *p != '\0' && spaces < 3; ++p)
    if (*p == ' ') ++spaces;
  char* end = nullptr;
  const long running = std::strtol(p, &end, 10);
  return end == p || *end != '/' ? -1 : running;
}
}  // namespace cpu_load_cache

MP_DECL bool cpus_oversubscribed(std::uint64_t now_ns) noexcept {
  using namespace cpu_load_cache;
  std::uint64_t last = checked_ns.load(std::memory_order_relaxed);
  if (now_ns - last < refresh_ns || !checked_ns.compare_exchange_strong(last, now_ns, std::memory_order_relaxed))
    return oversubscribed.load(std::memory_order_relaxed);
  static const long cpus = usable_cpus();
  const long running = runnable_threads();
  const bool answer = running > cpus;
  oversubscribed.store(answer, std::memory_order_relaxed);
  return answer;
}

}  // namespace mp::detail
