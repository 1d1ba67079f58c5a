// spawn: how mp starts a fresh copy of this program (start methods spawn and forkserver), and the fork server.
//
// spawn: posix_spawn("/proc/self/exe") — glibc implements it with clone(CLONE_VM | CLONE_VFORK), so unlike
// fork+exec it never copies the parent's page tables (a parent holding 1 GiB spawns as fast as a small one). The
// child finds MP_SPAWNED_CHILD=<fd> in its environment; mp::init reads its Process from that socket.
// forkserver: at first use, one server is spawned the same way with MP_FORKSERVER=<fd>; mp::init makes it loop in
// run_forkserver(): it is single-threaded, so each child it forks holds no other thread's lock. Each request
// carries the child's end of a fresh socketpair (SCM_RIGHTS); the server answers with the child's pid and the
// read end of a per-child status pipe, to which it writes the child's wait status when it reaps it — the parent
// cannot waitpid a grandchild, so that pipe is both the sentinel and the exit code.
// The server ends when its control socket reaches end of file (the parent exited or died): then it sends each
// child still running the signal a forked child gets when its parent dies (SIGKILL daemon, SIGTERM others).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <mp/detail/archive.hpp>
#include <mp/detail/code_address.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/fork_thread.hpp>
#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/detail/start_method.hpp>
#include <mp/detail/unique_fd.hpp>
#include <mp/errors.hpp>

extern char** environ;

namespace mp::detail {

/// The environment markers a fresh copy of the program finds (mp::init consumes them).
inline constexpr const char* spawned_child_env = "MP_SPAWNED_CHILD";
inline constexpr const char* forkserver_env = "MP_FORKSERVER";

/// What mp::init did in this process. A forked child inherits it.
enum class init_state : int { not_called = 0, called = 1 };
inline std::atomic<int>& the_init_state() {
  static std::atomic<int> state{0};
  return state;
}

/// argv[0] as main() received it: a spawned child gets the same one (ps shows the same program).
inline std::string& program_name() {
  static std::string* name = new std::string("mp-child");
  return *name;
}

/// The child's side of a fresh start (defined with mp::Process): reads its Process from `socket`, becomes it, runs
/// it and _exits. `direct_parent` is the pid whose death should end the child (the fork server's, under
/// forkserver). mp::init calls it in a spawned child, and hands it to the fork server for each child it forks.
[[noreturn]] MP_DECL void run_spawned_child(int socket, pid_t direct_parent, bool via_server) noexcept;
using fresh_child_main = void (*)(int socket, pid_t direct_parent, bool via_server) noexcept;

/// A target and its arguments as a child started by spawn or forkserver receives them: the entry function that
/// decodes and calls them (located by module and offset: ASLR moves every module) and the bytes it decodes.
struct spawn_target {
  code_address entry;
  std::vector<std::byte> bytes;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(entry, bytes);
  }
};

/// Everything a child started by spawn or forkserver needs to become its Process.
struct spawn_request {
  std::string name;
  std::vector<unsigned> identity;
  bool daemon = false;
  std::string parent_name;
  std::int32_t parent_pid = 0;
  std::optional<StartMethod> start_method;  // the child's default as set in the parent (none: not set), as Python passes it
  std::optional<spawn_target> target;
  std::optional<spawn_target> subclass;  // a registered Process subclass: factory + its serialized fields

  template <class Archive>
  void serialize(Archive& ar) {
    ar(name, identity, daemon, parent_name, parent_pid, start_method, target, subclass);
  }
};


/// The message for a program that uses spawn or forkserver without calling mp::init first.
inline std::string missing_init_message(std::string_view where, std::string_view method) {
  return std::string(where) + ": start method " + std::string(method) +
         " starts this program anew, and mp::init(argc, argv) was not called: make "
         "`mp::init(argc, argv);` the first line of main() (the C++ `if __name__ == '__main__':`), so that a "
         "new process runs its target there instead of the whole program again";
}

// A fresh copy of the program whose main() never called mp::init would run the whole program again, and start
// processes again — the fork bomb Python's bootstrapping check prevents. Process::start refuses to start while
// init was not called (the_init_state); this hook also makes such a child end with a clear message, not a
// silent second run, if it gets to exit() without ever reaching mp::init.
inline void report_unconsumed_marker() noexcept {
  if (std::getenv(spawned_child_env) == nullptr && std::getenv(forkserver_env) == nullptr) return;
  static constexpr char message[] =
      "mp: this process was started by mp (start method spawn or forkserver) but main() returned without "
      "calling mp::init(argc, argv): make `mp::init(argc, argv);` the first line of main()\n";
  std::fflush(nullptr);  // what the program printed is still shown (it did run)
  (void)!::write(STDERR_FILENO, message, sizeof message - 1);
  ::_exit(1);
}
inline const bool unconsumed_marker_check_installed = [] {
  if (std::getenv(spawned_child_env) != nullptr || std::getenv(forkserver_env) != nullptr) {
    std::atexit(report_unconsumed_marker);
    return true;
  }
  return false;
}();

/// Starts /proc/self/exe with `marker`=<fd> in its environment and `fd` inherited (all other mp descriptors are
/// close-on-exec). Returns the child's pid.
inline pid_t spawn_program(const char* marker, int fd, const std::string& what) {
  const std::string assignment = std::string(marker) + "=" + std::to_string(fd);
  std::vector<char*> env;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    std::string_view text(*entry);
    if (text.starts_with(std::string(spawned_child_env) + "=") || text.starts_with(std::string(forkserver_env) + "="))
      continue;
    env.push_back(*entry);
  }
  env.push_back(const_cast<char*>(assignment.c_str()));
  env.push_back(nullptr);
  std::string name = program_name();
  char* argv[] = {name.data(), nullptr};

  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attributes;
  if (int err = ::posix_spawn_file_actions_init(&actions); err != 0) throw_errno("posix_spawn_file_actions_init", what, err);
  if (int err = ::posix_spawnattr_init(&attributes); err != 0) {
    ::posix_spawn_file_actions_destroy(&actions);
    throw_errno("posix_spawnattr_init", what, err);
  }
  // dup2 onto itself clears FD_CLOEXEC in the child only (glibc >= 2.29): no other thread's child inherits it.
  int err = ::posix_spawn_file_actions_adddup2(&actions, fd, fd);
  // The new program starts with no signal blocked, whatever the starting thread had blocked.
  sigset_t empty;
  sigemptyset(&empty);
  if (err == 0) err = ::posix_spawnattr_setsigmask(&attributes, &empty);
  if (err == 0) err = ::posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK);
  pid_t pid = 0;
  if (err == 0) err = ::posix_spawn(&pid, "/proc/self/exe", &actions, &attributes, argv, env.data());
  ::posix_spawnattr_destroy(&attributes);
  ::posix_spawn_file_actions_destroy(&actions);
  if (err != 0) throw_errno("posix_spawn", "/proc/self/exe for " + what, err);
  return pid;
}

/// The value of `marker` in the environment as a descriptor, or -1; removes it so that the program's own children
/// do not see it.
inline int take_marker(const char* marker) {
  const char* value = std::getenv(marker);
  if (value == nullptr) return -1;
  char* end = nullptr;
  long fd = std::strtol(value, &end, 10);
  ::unsetenv(marker);
  if (end == value || *end != '\0' || fd < 0 || fd > 1 << 24) {
    std::fprintf(stderr, "mp::init: malformed %s=%s in the environment\n", marker, value);
    ::_exit(1);
  }
  return static_cast<int>(fd);
}

// ---------------------------------------------------------------------------------------------------------------
// The fork server: its client (in the parent) and its loop (in the server).

struct forkserver_client {
  std::mutex mutex;  // guards every member; one request at a time
  unique_fd control;
  pid_t pid = 0;
};

inline forkserver_client& the_forkserver() {
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

/// A child the server forked: its pid and the read end of its status pipe.
struct server_child {
  pid_t pid = 0;
  unique_fd status;
};

inline void start_forkserver_locked(forkserver_client& client) {
  int pair[2];
  sys("socketpair", "forkserver", [&] { return ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair); });
  unique_fd mine(pair[0]);
  unique_fd theirs(pair[1]);
  client.pid = spawn_program(forkserver_env, theirs.get(), "the forkserver");
  client.control = std::move(mine);
}

/// Asks the server (started at first use) to fork a child that reads its Process from `child_socket`.
inline server_child forkserver_fork(int child_socket, bool daemon) {
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
      // The server died (killed from outside): start a new one, once.
      client.control.reset();
      if (client.pid > 0) retry_on_eintr([&] { return ::waitpid(client.pid, nullptr, 0); });
      client.pid = 0;
      if (attempt > 0) throw;
    }
  }
}

/// Stops this process's fork server (if it runs) and reaps it; the next forkserver start starts a new one.
/// Call it when the children it started have ended: those still running get the signal of a parent's death.
inline void stop_forkserver() noexcept {
  forkserver_client& client = the_forkserver();
  std::lock_guard lock(client.mutex);
  if (!client.control) return;
  client.control.reset();  // end of file: the server exits
  if (client.pid > 0) retry_on_eintr([&] { return ::waitpid(client.pid, nullptr, 0); });
  client.pid = 0;
}

/// The pid of this process's fork server, 0 if none runs (for tests and diagnostics).
inline pid_t forkserver_pid() {
  forkserver_client& client = the_forkserver();
  std::lock_guard lock(client.mutex);
  return client.pid;
}

/// A child started by start_fresh_child.
struct fresh_child {
  pid_t pid = 0;
  unique_fd status;  // forkserver: the server writes the child's wait status here once it reaped it; spawn: empty
  unique_fd socket;  // this end of the child's socket: the request went out on it, and the child's answers come in
};

/// Starts a fresh copy of this program that becomes the Process `request` describes — posix_spawn of
/// /proc/self/exe under spawn, a fork of the fork server under forkserver — and sends it the request with `fds`
/// beside it (SCM_RIGHTS). Used by Process, the Pool's worker factory and the Manager's server alike.
/// Call it with the registry mutex held: a fork-method start in another thread holds it across fork(), so no such
/// child can inherit the new child's end of the socket (the parent would then never see end of file on it if the
/// child died). The start itself runs on the main thread or on mp's fork thread, since the child's death signal
/// follows the thread that creates it (detail/fork_thread.hpp).
inline fresh_child start_fresh_child(StartMethod method, const spawn_request& request, std::span<const int> fds) {
  std::vector<std::byte> bytes;
  {
    output_archive archive(bytes);
    archive(request);
  }
  int pair[2];
  sys("socketpair", request.name, [&] { return ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair); });
  fresh_child child;
  child.socket.reset(pair[0]);
  unique_fd theirs(pair[1]);
  auto launch = [&] {
    if (method == StartMethod::forkserver) {
      server_child forked = forkserver_fork(theirs.get(), request.daemon);
      child.pid = forked.pid;
      child.status = std::move(forked.status);
    } else {
      child.pid = spawn_program(spawned_child_env, theirs.get(), request.name);
    }
  };
  if (on_main_thread()) {
    launch();
  } else {
    run_on_fork_thread(launch);
  }
  theirs.reset();
  try {
    send_fd_frame(child.socket.get(), bytes, fds, request.name.c_str());
  } catch (const Error&) {
    // It died before reading its request (killed from outside): wait_until_ready() sees end of file.
  }
  return child;
}

/// Waits for the one byte a fresh child writes once it is ready (its death signal armed): true, or false if it
/// ended first (end of file).
inline bool wait_until_ready(const fresh_child& child) {
  char ready = 0;
  return retry_on_eintr([&] { return ::recv(child.socket.get(), &ready, 1, 0); }) == 1;
}

/// The server's loop; never returns. Single-threaded by construction: it runs in mp::init, before main() starts
/// anything (static initializers that start threads defeat it: see docs/start-methods.md).
[[noreturn]] inline void run_forkserver(int control_fd, fresh_child_main run_child) noexcept {
  struct child_entry {
    int status_write;
    bool daemon;
  };
  std::map<pid_t, child_entry> children;
  try {
    unique_fd control(control_fd);
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
        pid_t pid = ::waitpid(-1, &status, WNOHANG);
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
      if (::poll(watched, 2, -1) == -1) {
        if (last_errno() == EINTR) continue;
        throw_errno("poll", "forkserver");
      }
      if (watched[1].revents != 0) {
        signalfd_siginfo info;
        while (::read(reaper.get(), &info, sizeof info) > 0) {
        }
        reap();
      }
      if (watched[0].revents == 0) continue;
      char peek;
      ssize_t n = retry_on_eintr([&] { return ::recv(control.get(), &peek, 1, MSG_PEEK | MSG_DONTWAIT); });
      if (n == 0 || (n == -1 && last_errno() != EAGAIN)) break;  // the parent closed its end or died
      if (n == -1) continue;
      fd_frame request = receive_fd_frame(control.get(), "forkserver request", 16);
      if (request.bytes.size() != 1 || request.fds.fds.size() != 1) break;  // not our parent speaking
      const bool daemon = request.bytes[0] != std::byte{0};
      int status_pipe[2];
      std::int32_t answer = 0;
      unique_fd status_read;
      pid_t pid = -1;
      if (::pipe2(status_pipe, O_CLOEXEC) == -1) {
        answer = -last_errno();
      } else {
        status_read.reset(status_pipe[0]);
        pid = ::fork();
        if (pid == 0) {
          // The child: it owns nothing of the server's but its own socket.
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
