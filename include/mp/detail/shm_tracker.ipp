// shm_tracker: definitions (see shm_tracker.hpp).
#pragma once

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <set>
#include <string>

#include <mp/detail/child_os.hpp>
#include <mp/detail/shm_tracker.hpp>
#include <mp/detail/syscall.hpp>

namespace mp::detail {

MP_DECL shm_tracker& shm_tracker::instance() {
  static shm_tracker tracker;
  return tracker;
}

MP_DECL void shm_tracker::start_new_family() {
  std::lock_guard guard(start_mutex_);
  const int fd = fd_.exchange(-1);
  if (fd >= 0) ::close(fd);
}

MP_DECL void shm_tracker::send_record(char kind, const std::string& posix_name) {
  const int fd = socket_fd();
  if (fd < 0) return;  // could not start a tracker: the block is then only unlinked by unlink()
  const std::string record = kind + posix_name;
  // A failure means the tracker is gone (killed); there is nobody left to tell, and unlink() still works.
  (void)sys_try("send", [&] { return ::send(fd, record.data(), record.size(), MSG_NOSIGNAL); });
}

MP_DECL int shm_tracker::socket_fd() {
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

MP_DECL int shm_tracker::start() {
  int ends[2];
  if (sys_try("socketpair", [&] { return ::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ends); }) != 0) {
    return -2;
  }
  const pid_t middle = sys_try("fork", [] { return ::fork(); });
  if (middle == 0) {
    // The middle child only forks the tracker and exits: raw calls, as every freshly forked child's (syscall.hpp).
    if (::fork() == 0) run(ends[1]);  // never returns
    ::_exit(0);
  }
  ::close(ends[1]);
  if (middle < 0) {
    ::close(ends[0]);
    return -2;
  }
  int status = 0;
  (void)sys_try("waitpid", [&] { return ::waitpid(middle, &status, 0); });
  return ends[0];
}

// The tracker process: raw calls (retrying EINTR) rather than the seam, as in every freshly forked child — a fault
// hook belongs to the process that set it, and nothing here has anyone to report a failure to.
MP_DECL void shm_tracker::run(int socket) noexcept {
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
  close_descriptors_except({socket});

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

}  // namespace mp::detail
