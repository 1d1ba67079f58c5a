// forkserver: definitions (see forkserver.hpp).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <new>
#include <span>
#include <vector>

#include <mp/detail/forkserver.hpp>
#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/spawn.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

MP_DECL forkserver_client& the_forkserver() {
  // Leaked: children may be started from static destructors and exit handlers.
  static forkserver_client* client = [] {
    auto* created = new forkserver_client;
    // A forked child (fork start method, or any raw fork) must not keep the parent's server alive, nor share its
    // connection: it forgets it and starts its own server if it needs one. The mutex may have been held by
    // another thread at fork(): only a fresh one is correct in the single-threaded child.
    ::pthread_atfork(nullptr, nullptr, [] {
      forkserver_client& self = the_forkserver();
      new (&self.mutex) std::mutex;
      self.control.reset();
      self.pid = 0;
    });
    return created;
  }();
  return *client;
}

MP_DECL void start_forkserver_locked(forkserver_client& client) {
  int pair[2];
  sys("socketpair", "forkserver", [&] { return ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair); });
  unique_fd mine(pair[0]);
  unique_fd theirs(pair[1]);
  client.pid = spawn_program(forkserver_env, theirs.get(), "the forkserver");
  client.control = std::move(mine);
}

MP_DECL server_child forkserver_fork(int child_socket, bool daemon) {
  forkserver_client& client = the_forkserver();
  std::lock_guard lock(client.mutex);
  for (int attempt = 0;; ++attempt) {
    if (!client.control) start_forkserver_locked(client);
    const std::byte flags{static_cast<unsigned char>(daemon ? 1 : 0)};
    const int fds[] = {child_socket};
    try {
      send_fd_frame(client.control.get(), std::span(&flags, 1), fds, "forkserver request");
      fd_frame reply = receive_fd_frame(client.control.get(), "forkserver reply", 64);
      std::int32_t pid = 0;
      if (reply.bytes.size() != sizeof pid) throw ProcessError("forkserver reply: malformed");
      std::memcpy(&pid, reply.bytes.data(), sizeof pid);
      if (pid < 0) throw_errno("fork", "in the forkserver", -pid);
      if (reply.fds.fds.size() != 1) throw ProcessError("forkserver reply: no status pipe");
      return server_child{pid, std::move(reply.fds.fds[0])};
    } catch (const Error&) {
      // The server died (killed from outside): start a new one, once. (Reaping it cannot fail in a way that
      // matters: it is our child, and a failure leaves nothing to do.)
      client.control.reset();
      if (client.pid > 0) retry_on_eintr([&] { return ::waitpid(client.pid, nullptr, 0); });
      client.pid = 0;
      if (attempt > 0) throw;
    }
  }
}

MP_DECL void stop_forkserver() noexcept {
  forkserver_client& client = the_forkserver();
  std::lock_guard lock(client.mutex);
  if (!client.control) return;
  client.control.reset();  // end of file: the server exits
  if (client.pid > 0) retry_on_eintr([&] { return ::waitpid(client.pid, nullptr, 0); });
  client.pid = 0;
}

MP_DECL pid_t forkserver_pid() {
  forkserver_client& client = the_forkserver();
  std::lock_guard lock(client.mutex);
  return client.pid;
}

MP_DECL void run_forkserver(int control_fd, fresh_child_main run_child) noexcept {
  struct child_entry {
    int status_write;
    bool daemon;
  };
  std::map<pid_t, child_entry> children;
  try {
    unique_fd control(control_fd);
    // Failures below change nothing the server could act on: it runs on with what it has.
    ::fcntl(control_fd, F_SETFD, FD_CLOEXEC);
    // The server never reads standard input; it must not keep a terminal or a pipe open either.
    if (int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC); devnull >= 0) {
      ::dup2(devnull, STDIN_FILENO);
      ::close(devnull);
    }
    // A SIGCHLD ignored by the program that started the server survives exec, and then the kernel would reap
    // the children itself: their exit statuses, which the server reports, would be lost.
    ::signal(SIGCHLD, SIG_DFL);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigset_t previous;
    ::sigprocmask(SIG_BLOCK, &chld, &previous);
    unique_fd reaper(sys("signalfd", "forkserver", [&] { return ::signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK); }));
    const pid_t server = ::getpid();
    auto reap = [&] {
      for (;;) {
        int status = 0;
        pid_t pid = sys_try("waitpid", [&] { return ::waitpid(-1, &status, WNOHANG); });
        if (pid <= 0) break;
        auto found = children.find(pid);
        if (found == children.end()) continue;
        // A pipe write of 4 bytes is atomic and fits any pipe buffer: it never blocks.
        (void)!::write(found->second.status_write, &status, sizeof status);
        ::close(found->second.status_write);
        children.erase(found);
      }
    };
    for (;;) {
      pollfd watched[2] = {{control.get(), POLLIN, 0}, {reaper.get(), POLLIN, 0}};
      if (sys_try("poll", [&] { return ::poll(watched, 2, -1); }) == -1) throw_errno("poll", "forkserver");
      if (watched[1].revents != 0) {
        signalfd_siginfo info;
        while (::read(reaper.get(), &info, sizeof info) > 0) {  // drains it; EAGAIN once empty
        }
        reap();
      }
      if (watched[0].revents == 0) continue;
      char peek;
      ssize_t n = sys_try("recv", [&] { return ::recv(control.get(), &peek, 1, MSG_PEEK | MSG_DONTWAIT); });
      if (n == 0 || (n == -1 && last_errno() != EAGAIN)) break;  // the parent closed its end or died
      if (n == -1) continue;
      fd_frame request = receive_fd_frame(control.get(), "forkserver request", 16);
      if (request.bytes.size() != 1 || request.fds.fds.size() != 1) break;  // not our parent speaking
      const bool daemon = request.bytes[0] != std::byte{0};
      int status_pipe[2];
      std::int32_t answer = 0;
      unique_fd status_read;
      pid_t pid = -1;
      if (sys_try("pipe2", [&] { return ::pipe2(status_pipe, O_CLOEXEC); }) == -1) {
        answer = -last_errno();
      } else {
        status_read.reset(status_pipe[0]);
        pid = sys_try("fork", [] { return ::fork(); });
        if (pid == 0) {
          // The child: it owns nothing of the server's but its own socket. Async-signal-safe calls only until
          // run_child, which must not throw; their failures change nothing (syscall.hpp's listed exception).
          for (auto& [other, entry] : children) ::close(entry.status_write);
          ::close(status_pipe[1]);
          status_read.reset();
          reaper.reset();
          control.reset();
          ::sigprocmask(SIG_SETMASK, &previous, nullptr);
          int socket = request.fds.fds[0].release();
          run_child(socket, server, true);  // never returns
        }
        if (pid == -1) {
          answer = -last_errno();
          ::close(status_pipe[1]);
          status_read.reset();
        } else {
          answer = pid;
          children[pid] = child_entry{status_pipe[1], daemon};
        }
      }
      std::vector<int> fds;
      if (status_read) fds.push_back(status_read.get());
      send_fd_frame(control.get(), std::as_bytes(std::span(&answer, 1)), fds, "forkserver reply");
    }
  } catch (...) {
  }
  // The parent is gone (or spoke nonsense): its children get the signal they would get from a forked parent's
  // death (PR_SET_PDEATHSIG under fork).
  for (auto& [pid, entry] : children) ::kill(pid, entry.daemon ? SIGKILL : SIGTERM);
  ::_exit(0);
}

}  // namespace mp::detail
