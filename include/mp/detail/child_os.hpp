// child_os: the small OS calls around child processes that Process, Pool and Manager all make — pidfds, wait
// statuses as Python reports them, closing inherited descriptors, flushing standard streams before a fork.
// Why pidfds: a pid can be reused as soon as its process is reaped, a pidfd cannot; it is readable once the process
// ended, so poll()/mp::wait() can watch it, and signals sent through it never reach a stranger.
#pragma once

#include <sys/types.h>

#include <initializer_list>
#include <iosfwd>
#include <string>

#include <mp/detail/config.hpp>

namespace mp::detail {

/// pidfd_open(2) through syscall() (glibc < 2.36 has no wrapper): a close-on-exec pidfd, or -1 with errno set.
MP_DECL int pidfd_open(pid_t pid) noexcept;
/// pidfd_send_signal(2): 0, or -1 with errno set (ESRCH once the process has been reaped).
MP_DECL int pidfd_send_signal(int pidfd, int signal) noexcept;

/// A wait status as Python's exit code: n for exit(n), -N for a process killed by signal N.
MP_DECL int exitcode_from_status(int status) noexcept;
/// A wait status in words for messages: "exit code 1", "killed by signal 9 (SIGKILL)".
MP_DECL std::string describe_wait_status(int status);
/// An exit code as Python's _exitcode_to_name spells it in a Process's repr: "-SIGTERM" for -15, the number
/// itself for other codes (and for signals without a name).
MP_DECL std::string exitcode_name(int code);

/// Closes every descriptor from 3 up except those in `keep` (close_range(2)): a new child must not hold its
/// creator's pipes, sockets or pidfds (a pipe's reader would never see end of file). Async-signal-safe.
MP_DECL void close_descriptors_except(std::initializer_list<int> keep) noexcept;

/// False when `stream` writes straight through to C stdio (libstdc++'s std::cout/cerr/clog under the default
/// sync_with_stdio(true)): fflush() covers it, and flushing it too would run, and fault into a fresh child, more
/// library code. True when unsure.
MP_DECL bool has_own_buffer(std::ostream& stream) noexcept;

/// Flushes C stdio and the C++ standard streams that have buffers of their own, before a fork: buffered output
/// would otherwise be written twice, once by each process.
MP_DECL void flush_standard_streams() noexcept;
/// Writes what is pending in stdout/stderr (and a std::cout with its own buffer) now; cheap when nothing is (after
/// each task of a pool worker, so a task's output is not held until the worker exits).
MP_DECL void flush_pending_output() noexcept;

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/child_os.ipp>
#endif
