// registry: definitions (see registry.hpp).
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>

#include <cstdlib>
#include <new>

#include <mp/detail/child_os.hpp>
#include <mp/detail/registry.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

MP_DECL void process_record::throw_reaped_elsewhere() const {
  throw ProcessError("waitpid(" + std::to_string(pid) + ") for " + name +
                     ": the child was reaped by someone else (is SIGCHLD ignored, or does code call "
                     "waitpid(-1)?), so its exit code is lost");
}

MP_DECL std::optional<int> process_record::poll() {
  std::lock_guard lock(mutex);
  if (returncode || pid <= 0) return returncode;
  if (reaped_elsewhere) throw_reaped_elsewhere();
  if (via_server) return poll_server_status();
  int status = 0;
  pid_t reaped = sys_try("waitpid", [&] { return ::waitpid(pid, &status, WNOHANG); });
  if (reaped == pid) {
    returncode = exitcode_from_status(status);
  } else if (reaped == -1) {
    // ECHILD: not our child any more. Never wait on this pid again: it may be reused.
    reaped_elsewhere = true;
    throw_reaped_elsewhere();
  }
  return returncode;
}

MP_DECL std::optional<int> process_record::poll_server_status() {
  pollfd ready{status_fd.get(), POLLIN, 0};
  if (!status_fd || sys_try("poll", [&] { return ::poll(&ready, 1, 0); }) != 1) return returncode;
  int status = 0;
  ssize_t n = sys_try("read", [&] { return ::read(status_fd.get(), &status, sizeof status); });
  if (n == static_cast<ssize_t>(sizeof status)) {
    returncode = exitcode_from_status(status);
    // The server closes its end right after writing (no other process holds it): wait for that end of file, so
    // that the pipe, which is the sentinel, stays readable from now on.
    char more;
    while (sys_try("read", [&] { return ::read(status_fd.get(), &more, 1); }) > 0) {
    }
    return returncode;
  }
  // End of file without a status: the fork server died (it was killed) before it could reap the child.
  reaped_elsewhere = true;
  throw ProcessError("wait for " + name + " (pid " + std::to_string(pid) +
                     "): the forkserver that started it died, so its exit code is lost");
}

MP_DECL bool process_record::wait_until(const deadline& until) {
  for (;;) {
    if (poll()) return true;
    // A forkserver child has ended once the server reported it: wait on that pipe, not on the pidfd (readable
    // already before the report).
    const int fd = via_server ? status_fd.get() : pidfd.get();
    // poll(2) ignores a negative fd and would just sleep: never wait without a sentinel.
    if (fd < 0) throw ProcessError("wait for " + name + ": it has no sentinel (was it started?)");
    if (poll_timeout_ms(until) == 0) return false;
    pollfd ready{fd, POLLIN, 0};
    // The timeout is computed anew on each try: a signal (EINTR) does not lengthen the wait.
    if (sys_try("poll", [&] { return ::poll(&ready, 1, poll_timeout_ms(until)); }) == -1) {
      throw_errno("poll", "pidfd of " + name);
    }
  }
}

MP_DECL void process_record::send_signal(int sig) {
  std::lock_guard lock(mutex);
  if (returncode || pid <= 0 || reaped_elsewhere) return;
  if (via_server) {
    // The server reaps the child, so its pid may be reused at any time: signal through a pidfd only.
    if (pidfd && sys_try("pidfd_send_signal", [&] { return detail::pidfd_send_signal(pidfd.get(), sig); }) == -1 &&
        last_errno() != ESRCH) {
      throw_errno("pidfd_send_signal", std::to_string(pid) + ", " + std::to_string(sig));
    }
    return;
  }
  if (sys_try("kill", [&] { return ::kill(pid, sig); }) == -1 && last_errno() != ESRCH) {
    throw_errno("kill", std::to_string(pid) + ", " + std::to_string(sig));
  }
}

MP_DECL void process_record::finish() noexcept {
  try {
    if (daemon) {
      send_signal(SIGTERM);
      if (!wait_until(deadline_after(daemon_term_grace))) send_signal(SIGKILL);
    }
    wait_until(std::nullopt);
  } catch (...) {
    // An exit code lost to a foreign waitpid: nothing is left to reap.
  }
}

MP_DECL void reap_finished_children_locked(registry& reg) {
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

MP_DECL std::vector<process_record*> live_children() {
  registry& reg = the_registry();
  std::lock_guard lock(reg.mutex);
  reap_finished_children_locked(reg);
  return reg.children;
}

MP_DECL void remove_child(process_record* record) {
  registry& reg = the_registry();
  std::lock_guard lock(reg.mutex);
  std::erase(reg.children, record);
}

MP_DECL void run_exit_function() noexcept {
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

MP_DECL void register_exit_function_locked(registry& reg) {
  if (reg.exit_handler_registered) return;
  if (std::atexit([] { run_exit_function(); }) != 0) {
    throw ProcessError("atexit: cannot register mp's exit handler (too many atexit handlers)");
  }
  reg.exit_handler_registered = true;
}

MP_DECL std::vector<unsigned> next_identity() {
  registry& reg = the_registry();
  std::lock_guard lock(reg.mutex);
  std::vector<unsigned> identity = reg.identity;
  identity.push_back(++reg.counter);
  return identity;
}

MP_DECL std::string identity_string(const std::vector<unsigned>& identity) {
  std::string text;
  for (unsigned part : identity) {
    if (!text.empty()) text += ':';
    text += std::to_string(part);
  }
  return text;
}

MP_DECL void become_child(registry& reg, process_record& self, parent_record parent) {
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

MP_DECL void become_pool_worker(std::string name, parent_record parent) noexcept {
  try {
    // Leaked on purpose: the worker ends with _exit. current_process() wraps it in a Process when first asked.
    auto* state = new process_record;
    state->identity = next_identity();
    state->name = std::move(name);
    state->creator_pid = parent.pid;
    state->pid = ::getpid();
    state->started = true;
    registry& reg = the_registry();
    std::lock_guard lock(reg.mutex);
    reg.current = state;
    reg.identity = state->identity;
    reg.counter = 0;
    reg.children.clear();
    reg.parent = std::move(parent);
  } catch (...) {
    // Out of memory before the first task: the worker runs on under its factory's name.
  }
}

}  // namespace mp::detail
