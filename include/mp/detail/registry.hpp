// Per-process state behind mp::Process: what Python keeps in multiprocessing.process's module globals
// (_current_process, _parent_process, _process_counter, _children) and util._exit_function.
//
// One registry per process. A forked child resets it in become_child(): new identity, empty children, counter
// from 1. Every Process owns one heap-allocated process_record, so the registry's pointers stay valid when the
// Process object is moved (into a std::vector, out of a function); the record points back at its owner.
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include <mp/detail/child_os.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/detail/unique_fd.hpp>
#include <mp/errors.hpp>

namespace mp {
class Process;
}

namespace mp::detail {

/// How long a daemon child may take to end after SIGTERM (destructor, exit handler) before it gets SIGKILL.
/// Python joins it forever; a daemon that ignores SIGTERM would then hang the parent's exit.
inline constexpr std::chrono::seconds daemon_term_grace{2};

/// The state of one Process, started or not. Lives on the heap so that pointers to it survive moves.
struct process_record {
  enum class kind { child, main };

  kind role = kind::child;
  pid_t creator_pid = ::getpid();   // Python's _parent_pid: only this process may start, join or poll it
  std::vector<unsigned> identity;   // Python's _identity: {1, 2} is "Process-1:2"
  std::string name;
  bool daemon = false;
  bool started = false;
  bool closed = false;
  Process* owner = nullptr;         // guarded by registry::mutex; updated when the Process moves

  std::mutex mutex;                 // guards returncode and the reaping of pid
  pid_t pid = 0;                    // written once by start(), before the record is shared with other threads
  unique_fd pidfd;                  // readable once the child has ended; stays valid until close()
  std::optional<int> returncode;    // guarded by mutex
  bool reaped_elsewhere = false;    // guarded by mutex; the exit status was taken by someone else's wait
  // Under forkserver the child is the server's, not ours: we cannot waitpid it. The server writes its wait status
  // to a pipe whose read end is status_fd; pidfd (the sentinel, and the target of signals) is still the child's.
  bool via_server = false;
  unique_fd status_fd;

  /// The error for a child whose exit status someone else took.
  [[noreturn]] void throw_reaped_elsewhere() const {
    throw ProcessError("waitpid(" + std::to_string(pid) + ") for " + name +
                       ": the child was reaped by someone else (is SIGCHLD ignored, or does code call "
                       "waitpid(-1)?), so its exit code is lost");
  }

  /// Non-blocking: reaps the child if it has ended (Python's Popen.poll). Throws ProcessError if someone else
  /// reaped it (SIGCHLD set to SIG_IGN, or a waitpid(-1) elsewhere), since its exit status is then lost.
  std::optional<int> poll() {
    std::lock_guard lock(mutex);
    if (returncode || pid <= 0) return returncode;
    if (reaped_elsewhere) throw_reaped_elsewhere();
    if (via_server) return poll_server_status();
    int status = 0;
    pid_t reaped = retry_on_eintr([&] { return ::waitpid(pid, &status, WNOHANG); });
    if (reaped == pid) {
      returncode = exitcode_from_status(status);
    } else if (reaped == -1) {
      // ECHILD: not our child any more. Never wait on this pid again: it may be reused.
      reaped_elsewhere = true;
      throw_reaped_elsewhere();
    }
    return returncode;
  }

  /// poll() for a forkserver child: the status pipe holds the wait status once the server reaped the child.
  std::optional<int> poll_server_status() {
    pollfd ready{status_fd.get(), POLLIN, 0};
    if (!status_fd || retry_on_eintr([&] { return ::poll(&ready, 1, 0); }) != 1) return returncode;
    int status = 0;
    ssize_t n = retry_on_eintr([&] { return ::read(status_fd.get(), &status, sizeof status); });
    if (n == static_cast<ssize_t>(sizeof status)) {
      returncode = exitcode_from_status(status);
      // The server closes its end right after writing (no other process holds it): wait for that end of file, so
      // that the pipe, which is the sentinel, stays readable from now on.
      char more;
      while (retry_on_eintr([&] { return ::read(status_fd.get(), &more, 1); }) > 0) {
      }
      return returncode;
    }
    // End of file without a status: the fork server died (it was killed) before it could reap the child.
    reaped_elsewhere = true;
    throw ProcessError("wait for " + name + " (pid " + std::to_string(pid) +
                       "): the forkserver that started it died, so its exit code is lost");
  }

  /// Waits until the child ends or the deadline passes (no deadline: forever); true if it ended. Sleeps in
  /// poll(2) on the pidfd: no busy wait, and no pid-reuse race since the pid is reaped only here, under mutex.
  bool wait_until(std::optional<std::chrono::steady_clock::time_point> deadline) {
    for (;;) {
      if (poll()) return true;
      // A forkserver child has ended once the server reported it: wait on that pipe, not on the pidfd (readable
      // already before the report).
      const int fd = via_server ? status_fd.get() : pidfd.get();
      // poll(2) ignores a negative fd and would just sleep: never wait without a sentinel.
      if (fd < 0) throw ProcessError("wait for " + name + ": it has no sentinel (was it started?)");
      int timeout_ms = -1;
      if (deadline) {
        auto left = std::chrono::ceil<std::chrono::milliseconds>(*deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) return false;
        timeout_ms = static_cast<int>(std::min<long long>(left.count(), INT_MAX));
      }
      pollfd ready{fd, POLLIN, 0};
      int n = ::poll(&ready, 1, timeout_ms);
      if (n == -1 && last_errno() != EINTR) throw_errno("poll", "pidfd of " + name);
    }
  }

  /// Sends sig unless the child was already reaped (then its pid may belong to another process).
  void send_signal(int sig) {
    std::lock_guard lock(mutex);
    if (returncode || pid <= 0 || reaped_elsewhere) return;
    if (via_server) {
      // The server reaps the child, so its pid may be reused at any time: signal through a pidfd only.
      if (pidfd && ::syscall(SYS_pidfd_send_signal, pidfd.get(), sig, nullptr, 0U) == -1 && last_errno() != ESRCH) {
        throw_errno("pidfd_send_signal", std::to_string(pid) + ", " + std::to_string(sig));
      }
      return;
    }
    if (::kill(pid, sig) == -1 && last_errno() != ESRCH) {
      throw_errno("kill", std::to_string(pid) + ", " + std::to_string(sig));
    }
  }

  /// Destructor and exit-handler policy: join a non-daemon child; SIGTERM a daemon one, then SIGKILL it if it
  /// has not ended within daemon_term_grace. Never throws.
  void finish() noexcept {
    try {
      if (daemon) {
        send_signal(SIGTERM);
        if (!wait_until(std::chrono::steady_clock::now() + daemon_term_grace)) send_signal(SIGKILL);
      }
      wait_until(std::nullopt);
    } catch (...) {
      // An exit code lost to a foreign waitpid: nothing is left to reap.
    }
  }
};

/// The parent of this process as the child saw it at start (Python's _ParentProcess).
struct parent_record {
  std::string name;
  pid_t pid = 0;
  bool via_server = false;  // started by the fork server: the OS parent is the server, not this one
};

/// Python's module globals of multiprocessing.process, one set per process.
struct registry {
  std::mutex mutex;                        // guards every member below, and process_record::owner
  process_record* current = nullptr;       // the running Process in a child; nullptr in the main process
  std::vector<unsigned> identity;          // current's identity; empty in the main process
  unsigned counter = 0;                    // Python's _process_counter: numbers this process's Process objects
  std::vector<process_record*> children;   // started here and not yet reaped (Python's _children)
  std::optional<parent_record> parent;     // empty in the main process
  bool exit_handler_registered = false;    // atexit() registrations are inherited by fork, so is this flag
};

/// The one registry of this process. Leaked on purpose: the atexit handler runs after static destructors of
/// objects constructed later, so the registry must outlive every static.
inline registry& the_registry() {
  static registry* instance = new registry;
  return *instance;
}

/// Python's _cleanup(): drops (and reaps) the children that have ended. Call with registry::mutex held.
inline void reap_finished_children_locked(registry& reg) {
  const pid_t self = ::getpid();
  std::erase_if(reg.children, [self](process_record* child) {
    // After a raw fork() (not through mp) the registry still lists the parent's children: they are not ours to
    // poll, signal or join.
    if (child->creator_pid != self) return true;
    try {
      return child->poll().has_value();
    } catch (const ProcessError&) {
      return true;  // reaped elsewhere: it is no longer our child
    }
  });
}

/// The children started here that are still running (Python's active_children() before it maps to objects).
inline std::vector<process_record*> live_children() {
  registry& reg = the_registry();
  std::lock_guard lock(reg.mutex);
  reap_finished_children_locked(reg);
  return reg.children;
}

/// Forgets a child (joined, closed or destroyed).
inline void remove_child(process_record* record) {
  registry& reg = the_registry();
  std::lock_guard lock(reg.mutex);
  std::erase(reg.children, record);
}

/// Python's util._exit_function: SIGTERM every daemon child, then join every child. Runs at exit() of every
/// process that started children, and at the end of every child's run().
inline void run_exit_function() noexcept {
  std::vector<process_record*> children;
  try {
    children = live_children();
  } catch (...) {
    return;
  }
  for (process_record* child : children) {
    if (child->daemon) {
      try {
        child->send_signal(SIGTERM);
      } catch (...) {
      }
    }
  }
  for (process_record* child : children) {
    child->finish();
    try {
      remove_child(child);
    } catch (...) {
    }
  }
}

/// Registers run_exit_function with atexit() once per process tree (a child inherits the registration).
/// Call with registry::mutex held.
inline void register_exit_function_locked(registry& reg) {
  if (reg.exit_handler_registered) return;
  if (std::atexit([] { run_exit_function(); }) != 0) {
    throw ProcessError("atexit: cannot register mp's exit handler (too many atexit handlers)");
  }
  reg.exit_handler_registered = true;
}

/// The next identity for a Process created in this process: the current identity plus the next counter value.
inline std::vector<unsigned> next_identity() {
  registry& reg = the_registry();
  std::lock_guard lock(reg.mutex);
  std::vector<unsigned> identity = reg.identity;
  identity.push_back(++reg.counter);
  return identity;
}

/// "1:2" for identity {1, 2}.
inline std::string identity_string(const std::vector<unsigned>& identity) {
  std::string text;
  for (unsigned part : identity) {
    if (!text.empty()) text += ':';
    text += std::to_string(part);
  }
  return text;
}

/// In a freshly forked child, with registry::mutex held since before fork() and only this thread running:
/// makes `self` the current process and starts an empty family, then releases the mutex.
inline void become_child(registry& reg, process_record& self, parent_record parent) {
  reg.current = &self;
  reg.identity = self.identity;
  reg.counter = 0;
  reg.children.clear();  // the parent's children are not ours to join
  reg.parent = std::move(parent);
  self.pid = ::getpid();
  self.started = true;
  // The record's mutex may have been held by another parent thread at fork(): it was copied locked. No other
  // thread exists here, so a fresh mutex is the only correct state.
  new (&self.mutex) std::mutex;
  reg.mutex.unlock();  // locked by the forking thread, which this thread is a copy of
}

}  // namespace mp::detail
