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

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <mutex>
#include <set>
#include <string>

#include <mp/detail/syscall.hpp>

namespace mp::detail {

class shm_tracker {
 public:
  /// This process family's tracker (started on first use; forked children share their parent's).
  static shm_tracker& instance() {
    static shm_tracker tracker;
    return tracker;
  }

  /// From now on `posix_name` is unlinked when this process family is gone, unless untrack()ed first.
  void track(const std::string& posix_name) { send_record('R', posix_name); }
  /// unlink() was called: nothing left to clean up for `posix_name`.
  void untrack(const std::string& posix_name) { send_record('U', posix_name); }

  /// Lets go of the tracker inherited from the parent: this process (and the children it forks later) start a
  /// family of their own at the next track(). Names registered before stay with the old tracker.
  void start_new_family() {
    std::lock_guard guard(start_mutex_);
    const int fd = fd_.exchange(-1);
    if (fd >= 0) ::close(fd);
  }

 private:
  shm_tracker() = default;

  void send_record(char kind, const std::string& posix_name) {
    const int fd = socket_fd();
    if (fd < 0) return;  // could not start a tracker: the block is then only unlinked by unlink()
    const std::string record = kind + posix_name;
    // A failure means the tracker is gone (killed); there is nobody left to tell, and unlink() still works.
    (void)retry_on_eintr([&] { return ::send(fd, record.data(), record.size(), MSG_NOSIGNAL); });
  }

  int socket_fd() {
    int fd = fd_.load(std::memory_order_acquire);
    if (fd != -1) return fd;
    std::lock_guard guard(start_mutex_);
    fd = fd_.load(std::memory_order_relaxed);
    if (fd == -1) {
      fd = start();
      fd_.store(fd, std::memory_order_release);
    }
    return fd;
  }

  // Returns our end of the socketpair, or -2 if no tracker could be started (not retried).
  static int start() {
    int ends[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ends) != 0) return -2;
    const pid_t middle = ::fork();
    if (middle == 0) {
      if (::fork() == 0) run(ends[1]);  // never returns
      ::_exit(0);
    }
    ::close(ends[1]);
    if (middle < 0) {
      ::close(ends[0]);
      return -2;
    }
    int status = 0;
    (void)retry_on_eintr([&] { return ::waitpid(middle, &status, 0); });
    return ends[0];
  }

  [[noreturn]] static void run(int socket) noexcept {
    // Outlive the process family: ignore the terminal's and the group's signals (Python's tracker ignores SIGINT
    // and SIGTERM too); SIGKILL still ends it, leaving the names for a manual `rm /dev/shm/mp-*`.
    ::signal(SIGINT, SIG_IGN);
    ::signal(SIGTERM, SIG_IGN);
    ::signal(SIGHUP, SIG_IGN);
    ::signal(SIGPIPE, SIG_IGN);
    ::prctl(PR_SET_NAME, "mp-shm-tracker", 0, 0, 0);
    // Hold nothing of the creator's but stderr: an inherited pipe or socket end would keep some peer from ever
    // seeing end-of-file, and an inherited stdout would keep a reader of the program's output waiting.
    for (int fd = 0; fd < 2; ++fd) {
      if (fd != socket) ::close(fd);
    }
    if (socket >= 3) {
      if (socket > 3) ::close_range(3, static_cast<unsigned>(socket - 1), 0);
      ::close_range(static_cast<unsigned>(socket + 1), UINT_MAX, 0);
    } else {
      ::close_range(3, UINT_MAX, 0);
    }

    std::set<std::string> names;
    char record[NAME_MAX + 2];
    for (;;) {
      const ssize_t n = retry_on_eintr([&] { return ::recv(socket, record, sizeof record, 0); });
      if (n <= 0) break;  // 0: every creator end is closed
      const std::string name(record + 1, static_cast<std::size_t>(n - 1));
      if (record[0] == 'R') {
        names.insert(name);
      } else {
        names.erase(name);
      }
    }
    for (const std::string& name : names) {
      if (::shm_unlink(name.c_str()) == 0) {
        const std::string warning = "mp: SharedMemory " + name +
                                    " was never unlinked; unlinked it after its creator exited (call unlink() "
                                    "when done, or create it with track = false to keep it)\n";
        (void)!::write(2, warning.data(), warning.size());
      }
    }
    ::_exit(0);
  }

  std::atomic<int> fd_{-1};  // -1: not started; -2: could not start
  std::mutex start_mutex_;
};

/// Lets go of this process's tracker: once every other process of the family has too (exited, or called this),
/// it unlinks what is still registered and exits. For the end of a program that must not leave the tracker behind
/// it, such as the test runner's leak check (the tracker is its orphan to reap).
inline void stop_shm_tracker() { shm_tracker::instance().start_new_family(); }

}  // namespace mp::detail
