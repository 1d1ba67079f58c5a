// pool_factory: a single-threaded process that forks the pool's workers (and their replacements) on request.
// Why: fork() copies only the calling thread. A Pool has a supervisor thread, and the user's program may have
// threads of its own; a worker forked from that parent while another thread holds a lock (an iostream, a user mutex,
// the allocator of a custom malloc) starts with that lock held forever. The factory is started once, in the Pool
// constructor before the pool starts any thread — forked under StartMethod::fork, a fresh run of the program under
// spawn and forkserver (pool_factory_entry) — and it never starts one itself, so every worker it forks later
// (a replacement after a crash, after maxtasksperchild, after a timeout) is a copy of that same single-threaded
// snapshot. Being the workers' parent, the factory also reaps them and reports each exit status (the parent cannot
// waitpid a grandchild), and it kills them all if the Pool's process dies (its socket reaches EOF).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio_ext.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <functional>
#include <iostream>
#include <vector>

#include <mp/detail/child_os.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail {

/// Parent -> factory.
struct pool_factory_request {
  enum op_type : std::uint32_t { spawn = 1, kill = 2, shutdown = 3 };
  std::uint32_t op = 0;
  std::uint32_t slot = 0;
  std::int32_t pid = 0;  // kill: the worker expected in that slot (a stale request must not hit its successor)
};

/// Factory -> parent.
struct pool_factory_event {
  enum kind_type : std::uint32_t { spawned = 1, exited = 2, spawn_failed = 3 };
  std::uint32_t kind = 0;
  std::uint32_t slot = 0;
  std::int32_t pid = 0;
  std::int32_t code = 0;  // exited: exit status, -N for signal N; spawn_failed: errno
};

/// Exit status as Process::exitcode() reports it: n from exit(n), -N when killed by signal N.
inline int pool_exit_code(const siginfo_t& info) noexcept {
  return info.si_code == CLD_EXITED ? info.si_status : -info.si_status;
}

/// Flushes C and C++ standard streams, so a fork does not duplicate buffered output.
inline void pool_flush_std_streams() noexcept {
  try {
    std::cout.flush();
    std::cerr.flush();
  } catch (...) {
  }
  std::fflush(nullptr);
}

/// After each task in a worker: what the task printed reaches the terminal or pipe now, not at the worker's exit.
/// Cheap when nothing was printed (__fpending reads the buffer pointers; fflush(nullptr) would lock every stream).
inline void pool_flush_task_output() noexcept {
  try {
    std::cout.flush();  // a no-op unless sync_with_stdio(false) gave cout its own buffer
  } catch (...) {
  }
  if (::__fpending(stdout) != 0) std::fflush(stdout);
  if (::__fpending(stderr) != 0) std::fflush(stderr);
}

/// The factory's main loop; never returns. `run_worker(slot)` runs in each forked worker and must not return.
[[noreturn]] inline void pool_factory_main(int sock, std::size_t slots, const std::function<void(std::size_t)>& run_worker) {
  struct child {
    pid_t pid = 0;
    unique_fd pidfd;  // readable when it exits
  };
  std::vector<child> children(slots);
  std::vector<pollfd> fds;
  std::vector<std::size_t> fd_slot;
  const pid_t self = ::getpid();

  auto send = [&](const pool_factory_event& event) {
    retry_on_eintr([&] { return ::send(sock, &event, sizeof event, MSG_NOSIGNAL); });
  };
  auto reap = [&](std::size_t slot) {
    siginfo_t info{};
    retry_on_eintr([&] { return ::waitid(P_PID, static_cast<id_t>(children[slot].pid), &info, WEXITED); });
    send({pool_factory_event::exited, static_cast<std::uint32_t>(slot), children[slot].pid, pool_exit_code(info)});
    children[slot].pid = 0;
    children[slot].pidfd.reset();
  };
  auto kill_all_and_exit = [&](int code) {
    for (std::size_t s = 0; s < slots; ++s)
      if (children[s].pid != 0) ::kill(children[s].pid, SIGKILL);
    for (std::size_t s = 0; s < slots; ++s)
      if (children[s].pid != 0) reap(s);
    ::_exit(code);
  };

  for (;;) {
    fds.clear();
    fd_slot.clear();
    fds.push_back({sock, POLLIN, 0});
    for (std::size_t s = 0; s < slots; ++s) {
      if (children[s].pid == 0) continue;
      fds.push_back({children[s].pidfd.get(), POLLIN, 0});
      fd_slot.push_back(s);
    }
    if (retry_on_eintr([&] { return ::poll(fds.data(), fds.size(), -1); }) < 0) kill_all_and_exit(70);
    for (std::size_t i = 1; i < fds.size(); ++i)
      if (fds[i].revents != 0) reap(fd_slot[i - 1]);
    if (fds[0].revents == 0) continue;

    pool_factory_request request;
    const auto got = retry_on_eintr([&] { return ::recv(sock, &request, sizeof request, 0); });
    if (got <= 0) kill_all_and_exit(0);  // the Pool's process is gone: take the workers with us
    if (request.op == pool_factory_request::shutdown) kill_all_and_exit(0);
    if (request.slot >= slots) continue;
    child& c = children[request.slot];
    if (request.op == pool_factory_request::kill) {
      if (c.pid != 0 && c.pid == request.pid) ::kill(c.pid, SIGKILL);
      continue;
    }
    if (request.op != pool_factory_request::spawn || c.pid != 0) continue;
    pool_flush_std_streams();
    const pid_t pid = ::fork();
    if (pid < 0) {
      send({pool_factory_event::spawn_failed, request.slot, 0, last_errno()});
      continue;
    }
    if (pid == 0) {
      // The worker: dies with the factory, never returns into the factory's loop.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != self) ::_exit(70);
      ::close(sock);
      for (auto& other : children) other.pidfd.reset();
      // As Python's workers (util._close_stdin): a worker does not compete with the parent for standard input.
      const int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (devnull >= 0) {
        ::dup2(devnull, STDIN_FILENO);
        ::close(devnull);
      }
      run_worker(request.slot);
      ::_exit(0);
    }
    c.pid = pid;
    c.pidfd.reset(pidfd_open(pid));
    if (!c.pidfd) {  // no pidfd (very old kernel or out of fds): we cannot watch it, so do not keep it
      ::kill(pid, SIGKILL);
      siginfo_t info{};
      retry_on_eintr([&] { return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED); });
      c.pid = 0;
      send({pool_factory_event::spawn_failed, request.slot, 0, last_errno()});
      continue;
    }
    send({pool_factory_event::spawned, request.slot, pid, 0});
  }
}

}  // namespace mp::detail
