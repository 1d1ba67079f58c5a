// Per-process state behind mp::Process: what Python keeps in multiprocessing.process's module globals
// (_current_process, _parent_process, _process_counter, _children) and util._exit_function.
//
// One registry per process. A forked child resets it in become_child(): new identity, empty children, counter
// from 1. Every Process owns one heap-allocated process_record, so the registry's pointers stay valid when the
// Process object is moved (into a std::vector, out of a function); the record points back at its owner.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <mp/detail/clock.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/unique_fd.hpp>

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
  [[noreturn]] void throw_reaped_elsewhere() const;
  /// Non-blocking: reaps the child if it has ended (Python's Popen.poll). Throws ProcessError if someone else
  /// reaped it (SIGCHLD set to SIG_IGN, or a waitpid(-1) elsewhere), since its exit status is then lost.
  std::optional<int> poll();
  /// poll() for a forkserver child: the status pipe holds the wait status once the server reaped the child.
  std::optional<int> poll_server_status();
  /// Waits until the child ends or `until` passes (no deadline: forever); true if it ended. Sleeps in poll(2) on
  /// the pidfd: no busy wait, and no pid-reuse race since the pid is reaped only here, under mutex.
  bool wait_until(const deadline& until);
  /// Sends sig unless the child was already reaped (then its pid may belong to another process).
  void send_signal(int sig);
  /// Destructor and exit-handler policy: join a non-daemon child; SIGTERM a daemon one, then SIGKILL it if it
  /// has not ended within daemon_term_grace. Never throws.
  void finish() noexcept;
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
MP_DECL void reap_finished_children_locked(registry& reg);

/// The children started here that are still running (Python's active_children() before it maps to objects).
MP_DECL std::vector<process_record*> live_children();

/// Forgets a child (joined, closed or destroyed).
MP_DECL void remove_child(process_record* record);

/// Python's util._exit_function: SIGTERM every daemon child, then join every child. Runs at exit() of every
/// process that started children, and at the end of every child's run().
MP_DECL void run_exit_function() noexcept;

/// Registers run_exit_function with atexit() once per process tree (a child inherits the registration).
/// Call with registry::mutex held.
MP_DECL void register_exit_function_locked(registry& reg);

/// The next identity for a Process created in this process: the current identity plus the next counter value.
MP_DECL std::vector<unsigned> next_identity();

/// "1:2" for identity {1, 2}.
MP_DECL std::string identity_string(const std::vector<unsigned>& identity);

/// In a new Pool worker (single-threaded): current_process() becomes a Process named `name` (Python's
/// PoolWorker-N) whose parent is `parent` (current_process() wraps the record in a Process when first asked).
MP_DECL void become_pool_worker(std::string name, parent_record parent) noexcept;

/// In a freshly forked child, with registry::mutex held since before fork() and only this thread running:
/// makes `self` the current process and starts an empty family, then releases the mutex.
MP_DECL void become_child(registry& reg, process_record& self, parent_record parent);

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/registry.ipp>
#endif
