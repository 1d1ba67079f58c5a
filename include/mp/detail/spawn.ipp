// spawn: definitions (see spawn.hpp).
#pragma once

#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include <mp/detail/archive.hpp>
#include <mp/detail/fork_thread.hpp>
#include <mp/detail/forkserver.hpp>
#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/spawn.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/errors.hpp>

extern char** environ;

namespace mp::detail {

MP_DECL std::string missing_init_message(std::string_view where, std::string_view method) {
  return std::string(where) + ": start method " + std::string(method) +
         " starts this program anew, and mp::init(argc, argv) was not called: make "
         "`mp::init(argc, argv);` the first line of main() (the C++ `if __name__ == '__main__':`), so that a "
         "new process runs its target there instead of the whole program again";
}

// A fresh copy of the program whose main() never called mp::init would run the whole program again, and start
// processes again — the fork bomb Python's bootstrapping check prevents. Process::start refuses to start while
// init was not called (the_init_state); this hook also makes such a child end with a clear message, not a
// silent second run, if it gets to exit() without ever reaching mp::init.
MP_DECL void report_unconsumed_marker() noexcept {
  if (std::getenv(spawned_child_env) == nullptr && std::getenv(forkserver_env) == nullptr) return;
  static constexpr char message[] =
      "mp: this process was started by mp (start method spawn or forkserver) but main() returned without "
      "calling mp::init(argc, argv): make `mp::init(argc, argv);` the first line of main()\n";
  std::fflush(nullptr);  // what the program printed is still shown (it did run)
  (void)!::write(STDERR_FILENO, message, sizeof message - 1);  // failure changes nothing: it is the last word
  ::_exit(1);
}

// Installed during static initialization, once per program: header-only, every translation unit that includes
// spawn.hpp defines this same inline variable (initialized once); separately compiled, mp::mp_compiled's one
// source does, and it is linked into every program that uses mp.
inline const bool unconsumed_marker_check_installed = [] {
  if (std::getenv(spawned_child_env) != nullptr || std::getenv(forkserver_env) != nullptr) {
    std::atexit(report_unconsumed_marker);
    return true;
  }
  return false;
}();

MP_DECL pid_t spawn_program(const char* marker, int fd, const std::string& what) {
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

  // The posix_spawn family returns an error number instead of setting errno. The set-up calls fail only for lack
  // of memory and stay outside the seam; posix_spawn itself goes through it.
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
  if (err == 0) {
    // Through the seam (as -1 and errno) so that a test can make the start fail.
    const int result = sys_try("posix_spawn", [&] {
      const int spawn_err = ::posix_spawn(&pid, "/proc/self/exe", &actions, &attributes, argv, env.data());
      if (spawn_err == 0) return 0;
      errno = spawn_err;
      return -1;
    });
    if (result == -1) err = last_errno();
  }
  ::posix_spawnattr_destroy(&attributes);
  ::posix_spawn_file_actions_destroy(&actions);
  if (err != 0) throw_errno("posix_spawn", "/proc/self/exe for " + what, err);
  return pid;
}

MP_DECL int take_marker(const char* marker) {
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

MP_DECL fresh_child start_fresh_child(StartMethod method, const spawn_request& request, std::span<const int> fds) {
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

MP_DECL bool wait_until_ready(const fresh_child& child) {
  char ready = 0;
  return sys_try("recv", [&] { return ::recv(child.socket.get(), &ready, 1, 0); }) == 1;
}

}  // namespace mp::detail
