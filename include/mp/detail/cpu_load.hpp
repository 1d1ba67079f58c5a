// cpu_load: whether spinning can help a waiter right now. A waiter that spins hopes that the process it waits for is
// running on another CPU; when the machine has more runnable threads than CPUs, that process may be waiting for the
// very CPU the spinner holds, and every microsecond of spinning delays it. (Issue 14: Pool chunksize=1 at 64
// workers on 2 CPUs cost 9-15x its 2-worker cost.)
// The signal is the kernel's count of runnable threads (the 4th field of /proc/loadavg, "running/total"), read at
// most every 10 ms per process and cached (a read costs a few µs; a cached answer one relaxed load and a clock read
// the caller already makes), against the CPUs this process may run on.
#pragma once

#include <cstdint>

#include <mp/detail/config.hpp>

namespace mp::detail {

/// True while the machine had more runnable threads than this process has CPUs at the last look (at most 10 ms
/// old; `now_ns` is CLOCK_MONOTONIC, e.g. monotonic_ns()). False if /proc/loadavg cannot be read.
MP_DECL bool cpus_oversubscribed(std::uint64_t now_ns) noexcept;

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/cpu_load.ipp>
#endif
