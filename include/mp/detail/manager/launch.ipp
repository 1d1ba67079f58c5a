// launch: definitions (see launch.hpp).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <span>
#include <string_view>
#include <utility>

#include <mp/detail/manager/launch.hpp>
#include <mp/detail/archive.hpp>
#include <mp/detail/child_os.hpp>
#include <mp/detail/code_address.hpp>
#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/manager/server.hpp>
#include <mp/detail/registry.hpp>
#include <mp/detail/spawn.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/errors.hpp>

namespace mp::detail::manager {

// The signals that stop a server, read through a signalfd by its poll loop.
MP_DECL sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}

// The signalfd that reads SIGTERM. Made by the owner before it forks a server, so that running out of descriptors
// is the owner's clear error ("signalfd(manager server): Too many open files"), not a server that dies at start.
MP_DECL unique_fd make_stop_signalfd() {
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  return unique_fd(
      sys("signalfd", "manager server", [&] { return ::signalfd(-1, &stop, SFD_CLOEXEC | SFD_NONBLOCK); }));
}

// A server process's signals (forked or fresh): SIGINT from the terminal goes to the whole process group, so, as
// Python's manager, the server ignores it and stops when its owner does; SIGPIPE is ignored (a client may vanish
// mid-reply); SIGTERM is blocked and read through the signalfd, so it stops the server cleanly. `stop_fd` is that
// signalfd if the owner made it already, else one is made here.
// (signal and sigprocmask cannot fail with these arguments: not through the seam.)
MP_DECL unique_fd server_signals(unique_fd stop_fd = {}) {
  ::signal(SIGINT, SIG_IGN);
  ::signal(SIGPIPE, SIG_IGN);
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  ::sigprocmask(SIG_BLOCK, &stop, nullptr);
  return stop_fd ? std::move(stop_fd) : make_stop_signalfd();
}

// What a server removes when it stops, in order: its Unix socket, then the private directory holding it.
MP_DECL std::vector<std::string> server_files(const std::string& socket_path, const std::string& directory) {
  std::vector<std::string> files;
  if (!socket_path.empty()) files.push_back(socket_path);
  if (!directory.empty()) files.push_back(directory);
  return files;
}

MP_DECL void remove_server_files(const std::string& socket_path, const std::string& directory) noexcept {
  if (!socket_path.empty()) ::unlink(socket_path.c_str());  // best effort, as close(2): nothing to do on failure
  if (!directory.empty()) ::rmdir(directory.c_str());
}

MP_DECL std::string make_private_directory() {
  const char* base = std::getenv("TMPDIR");
  std::string root = base && *base && std::string_view(base).size() < 60 ? base : "/tmp";
  std::string pattern = root + "/mp-manager-" + std::to_string(::getpid()) + "-XXXXXX";
  // mkdtemp reports failure as a null pointer, not -1: through the seam with a translation, for its fault hook.
  if (sys_try("mkdtemp", [&] { return ::mkdtemp(pattern.data()) == nullptr ? -1 : 0; }) == -1) {
    throw_errno("mkdtemp", pattern);
  }
  return pattern;
}

// Runs a server on `listener` in this process until it stops.
MP_DECL void run_server(unique_fd listener, std::string authkey, int owner_pidfd, int stop_fd,
                        std::vector<std::string> remove, bool same_user_only) {
  server serving(std::move(listener), std::move(authkey), owner_pidfd, stop_fd, std::move(remove), same_user_only);
  serving.run();
}

/// The bytes a fresh server gets. Its descriptors travel beside them: #0 the listener, #1 the write end of the
/// ready pipe (one byte once it serves), #2 a pidfd of the owner if owner_pidfd (Linux >= 5.3).
struct server_start {
  std::string authkey;
  std::string socket_path;  // removed when it stops (Unix sockets), then...
  std::string directory;    // ...the private directory holding a default socket
  bool owner_pidfd = false;
  bool same_user_only = true;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(authkey, socket_path, directory, owner_pidfd, same_user_only);
  }
};

// The target of a server started by spawn or forkserver: serves, cleans up and _exits.
[[noreturn]] MP_DECL void run_fresh_server(std::span<const std::byte> bytes) {
  server_start start;
  input_archive archive(bytes);
  archive(start);
  if (archive.remaining() != 0) {
    throw Error("manager server: " + std::to_string(archive.remaining()) +
                " bytes left over after its start message: its owner runs another binary");
  }
  fd_inbox* box = current_fd_inbox();
  const std::size_t expected = start.owner_pidfd ? 3 : 2;
  if (box == nullptr || box->fds.size() != expected) {
    throw Error("manager server: its owner sent " + std::to_string(box ? box->fds.size() : 0) + " descriptors, not " +
                std::to_string(expected));
  }
  // Taken, not dup'ed (import_fd): the inbox is never destroyed in this process, and a copy of the ready pipe's
  // write end left there would hide this server's death from the owner.
  unique_fd listener = std::move(box->fds[0]);
  unique_fd ready = std::move(box->fds[1]);
  unique_fd owner_pidfd;
  if (start.owner_pidfd) owner_pidfd = std::move(box->fds[2]);
  int code = 0;
  try {
    unique_fd stop_fd = server_signals();
    bool owner_alive = true;
    if (owner_pidfd) {
      // The death signal run_in_child armed (SIGTERM, now read through stop_fd) would fire when the owner's
      // *thread* that started the server ends (spawn), or with the fork server: the pidfd watches the owner.
      ::prctl(PR_SET_PDEATHSIG, 0);  // cannot fail with a valid signal: not through the seam
      pollfd gone{owner_pidfd.get(), POLLIN, 0};
      // Not alive if it was killed while it waited for the ready byte.
      owner_alive = sys_try("poll", [&] { return ::poll(&gone, 1, 0); }) == 0;
    }
    // Without a pidfd the death signal stays: under spawn the owner is the OS parent; under forkserver the fork
    // server sends SIGTERM to its children when the owner (its client) ends.
    (void)sys_try("write", [&] { return ::write(ready.get(), "1", 1); });  // if it fails, the owner sees end of file
    ready.reset();
    if (owner_alive) {
      close_descriptors_except({listener.get(), stop_fd.get(), owner_pidfd.get()});
      run_server(std::move(listener), std::move(start.authkey), owner_pidfd.get(), stop_fd.get(),
                 server_files(start.socket_path, start.directory), start.same_user_only);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mp::Manager server (pid %d) stopped: %s\n", static_cast<int>(::getpid()), e.what());
    code = 1;
  } catch (...) {
    code = 1;
  }
  remove_server_files(start.socket_path, start.directory);
  ::_exit(code);
}

MP_DECL void start_forked_server(server_process& server, unique_fd listener, const std::string& authkey) {
  unique_fd made_stop_fd;
  try {
    made_stop_fd = make_stop_signalfd();
  } catch (...) {
    remove_server_files(server.socket_path, server.directory);
    throw;
  }
  const pid_t child = sys_try("fork", [] { return ::fork(); });
  if (child == -1) {
    const int err = last_errno();
    remove_server_files(server.socket_path, server.directory);
    throw_errno("fork", "manager server", err);
  }
  if (child == 0) {
    int code = 0;
    try {
      unique_fd stop_fd = server_signals(std::move(made_stop_fd));
      const int owner_pidfd = pidfd_open(server.owner);
      if (owner_pidfd < 0) {
        // No pidfd (Linux < 5.3): the parent-death signal instead. It is SIGTERM, blocked and read through the
        // signalfd, so the server still stops cleanly; it fires when the creating *thread* ends (see server.hpp).
        ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      }
      if (::getppid() != server.owner) ::_exit(0);  // the owner died before we could watch it
      close_descriptors_except({listener.get(), stop_fd.get(), owner_pidfd});
      run_server(std::move(listener), authkey, owner_pidfd, stop_fd.get(),
                 server_files(server.socket_path, server.directory), server.same_user_only);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "mp::Manager server (pid %d) stopped: %s\n", static_cast<int>(::getpid()), e.what());
      code = 1;
    } catch (...) {
      code = 1;
    }
    remove_server_files(server.socket_path, server.directory);
    ::_exit(code);
  }
  made_stop_fd.reset();  // the server's now
  server.pid = child;
  server.pidfd = unique_fd(pidfd_open(child));
}

MP_DECL void start_fresh_server(server_process& server, const unique_fd& listener, const std::string& authkey,
                                StartMethod method, std::vector<unsigned> identity, std::string parent_name) {
  server_start start{authkey, server.socket_path, server.directory, false, server.same_user_only};
  unique_fd self(pidfd_open(server.owner));
  start.owner_pidfd = static_cast<bool>(self);
  std::vector<std::byte> bytes;
  {
    output_archive archive(bytes);
    archive(start);
  }
  spawn_request request;
  request.name = "SyncManager-" + identity_string(identity);
  request.identity = std::move(identity);
  request.parent_name = std::move(parent_name);
  request.parent_pid = server.owner;
  request.start_method = start_method_setting();
  request.target = spawn_target{locate_code(reinterpret_cast<std::uintptr_t>(&run_fresh_server)), std::move(bytes)};

  unique_fd ready;
  fresh_child child;
  {
    std::lock_guard lock(the_registry().mutex);  // see start_fresh_child: held until our ends are closed
    int pipe_ends[2];
    sys("pipe2", "manager server", [&] { return ::pipe2(pipe_ends, O_CLOEXEC); });
    ready.reset(pipe_ends[0]);
    unique_fd ready_write(pipe_ends[1]);
    std::vector<int> fds{listener.get(), ready_write.get()};
    if (self) fds.push_back(self.get());
    child = start_fresh_child(method, request, fds);  // not a daemon: SIGTERM (a clean stop) if we die
    server.pid = child.pid;
    server.via_server = method == StartMethod::forkserver;
    server.status = std::move(child.status);
    // The server cannot end before it answers below unless killed from outside; the pidfd is opened now, while
    // its pid surely names it.
    server.pidfd.reset(pidfd_open(child.pid));
  }
  // One byte when its Process is armed (it must be read: the server writes it), then one when it serves; end of
  // file if it died first.
  (void)wait_until_ready(child);
  char byte = 0;
  if (sys_try("read", [&] { return ::read(ready.get(), &byte, 1); }) == 1) return;
  const int status = reap_server(server);
  throw Error("Manager: its server (pid " + std::to_string(server.pid) + ", start method " +
              std::string(mp::to_string(method)) + ") ended before serving (" + describe_wait_status(status) +
              "); its reason, if it gave one, is on stderr");
}

MP_DECL int reap_server(server_process& server) {
  // Without a pidfd (Linux < 5.3): the fork server's status pipe, or else SIGTERM (the server stops cleanly on it).
  const int sentinel = server.pidfd ? server.pidfd.get() : server.status.get();
  if (sentinel >= 0) {
    pollfd wait{sentinel, POLLIN, 0};
    if (sys_try("poll", [&] { return ::poll(&wait, 1, 5000); }) <= 0) {
      if (!server.pidfd || pidfd_send_signal(server.pidfd.get(), SIGKILL) == -1) {
        ::kill(server.pid, SIGKILL);  // ESRCH at worst: it ended meanwhile
      }
    }
  } else {
    ::kill(server.pid, SIGTERM);  // ESRCH at worst, as above
  }
  int status = 0;
  if (server.via_server) {
    // The fork server's child, not ours: it reaps it and writes the wait status (end of file if it died itself).
    if (sys_try("read", [&] { return ::read(server.status.get(), &status, sizeof status); }) != sizeof status) {
      status = 0;
    }
  } else {
    (void)sys_try("waitpid", [&] { return ::waitpid(server.pid, &status, 0); });
  }
  return status;
}

// Blocks the stop signals in this thread for its lifetime, then restores the previous mask. (pthread_sigmask
// cannot fail with these arguments: not through the seam.)
struct stop_signals_blocked {
  sigset_t stop = stop_signals();
  sigset_t previous;
  stop_signals_blocked() { ::pthread_sigmask(SIG_BLOCK, &stop, &previous); }
  ~stop_signals_blocked() { ::pthread_sigmask(SIG_SETMASK, &previous, nullptr); }
  stop_signals_blocked(const stop_signals_blocked&) = delete;
  stop_signals_blocked& operator=(const stop_signals_blocked&) = delete;
  unique_fd signalfd() const {
    return unique_fd(sys("signalfd", "manager", [&] { return ::signalfd(-1, &stop, SFD_CLOEXEC | SFD_NONBLOCK); }));
  }
};

MP_DECL void serve_in_this_process(endpoint where, std::string authkey, bool same_user_only) {
  auto listener = listen_on(where, !same_user_only);
  stop_signals_blocked blocked;
  // Removed before the mask is restored (a SIGTERM that stopped the server is still pending, and is delivered
  // then); needed only when the server threw before removing it.
  struct unlink_socket {
    std::string path;
    ~unlink_socket() {
      if (!path.empty()) ::unlink(path.c_str());
    }
  } unlink_on_exit{where.tcp ? std::string() : where.path};
  unique_fd stop_fd = blocked.signalfd();
  std::vector<std::string> remove;
  if (!where.tcp) remove.push_back(where.path);
  run_server(std::move(listener), std::move(authkey), -1, stop_fd.get(), std::move(remove), same_user_only);
}

MP_DECL void wait_for_server_or_stop_signal(int server_pidfd) {
  stop_signals_blocked blocked;
  unique_fd stop_fd = blocked.signalfd();
  pollfd waits[2] = {{server_pidfd, POLLIN, 0}, {stop_fd.get(), POLLIN, 0}};
  (void)sys_try("poll", [&] { return ::poll(waits, 2, -1); });  // a failure ends the wait too: the caller stops it
  signalfd_siginfo consumed;  // read it, or it would be delivered (and kill us) once the mask is restored
  while (sys_try("read", [&] { return ::read(stop_fd.get(), &consumed, sizeof consumed); }) ==
         static_cast<ssize_t>(sizeof consumed)) {
  }
}

}  // namespace mp::detail::manager
