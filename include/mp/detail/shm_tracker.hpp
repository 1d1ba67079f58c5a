// shm_tracker: unlinks the named SharedMemory blocks a process family created and never unlinked, once every
// process of that family is gone — however they ended, SIGKILL included (Python's resource_tracker, for shm only).
// Why a separate process: a process killed by SIGKILL runs no exit handler, so only an outside observer can clean
// up after it. The tracker is a grandchild (double fork: no process ever has to reap it, and it is nobody's child
// in active_children()); it holds one end of a SOCK_SEQPACKET socketpair, the creating process the other, and
// forked children inherit that end. Once the last holder is gone the tracker reads end-of-file, unlinks what is
// still registered (with a warning on stderr, as Python's tracker does) and exits.
// Why SEQPACKET rather than a pipe: one record per name (no framing), and send(MSG_NOSIGNAL) cannot raise SIGPIPE
// in the user's process if the tracker was killed.
#pragma once

#include <atomic>
#include <mutex>
#include <string>

#include <mp/detail/config.hpp>

namespace mp::detail {

class shm_tracker {
 public:
  /// This process family's tracker (started on first use; forked children share their parent's).
  MP_DECL static shm_tracker& instance();

  /// From now on `posix_name` is unlinked when this process family is gone, unless untrack()ed first.
  void track(const std::string& posix_name) { send_record('R', posix_name); }
  /// unlink() was called: nothing left to clean up for `posix_name`.
  void untrack(const std::string& posix_name) { send_record('U', posix_name); }

  /// Lets go of the tracker inherited from the parent: this process (and the children it forks later) start a
  /// family of their own at the next track(). Names registered before stay with the old tracker.
  MP_DECL void start_new_family();

 private:
  shm_tracker() = default;

  MP_DECL void send_record(char kind, const std::string& posix_name);
  // Our end of the socketpair, starting the tracker on first use; negative if none could be started.
  MP_DECL int socket_fd();
  // Returns our end of the socketpair, or -2 if no tracker could be started (not retried).
  MP_DECL static int start();
  // The tracker's life: collect names until end-of-file, then unlink what is left.
  [[noreturn]] MP_DECL static void run(int socket) noexcept;

  std::atomic<int> fd_{-1};  // -1: not started; -2: could not start
  std::mutex start_mutex_;
};

/// Lets go of this process's tracker: once every other process of the family has too (exited, or called this),
/// it unlinks what is still registered and exits. For the end of a program that must not leave the tracker behind
/// it, such as the test runner's leak check (the tracker is its orphan to reap).
inline void stop_shm_tracker() { shm_tracker::instance().start_new_family(); }

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/shm_tracker.ipp>
#endif
