// forkserver: the fork server of start method forkserver — its client (in each process that starts children by
// forkserver) and its loop (in the server).
// At first use, one server is spawned like a spawn child (detail/spawn.hpp) with MP_FORKSERVER=<fd>; mp::init makes
// it loop in run_forkserver(): it is single-threaded, so each child it forks holds no other thread's lock. Each
// request carries the child's end of a fresh socketpair (SCM_RIGHTS); the server answers with the child's pid and
// the read end of a per-child status pipe, to which it writes the child's wait status when it reaps it — the parent
// cannot waitpid a grandchild, so that pipe is both the sentinel and the exit code.
// The server ends when its control socket reaches end of file (the parent exited or died): then it sends each
// child still running the signal a forked child gets when its parent dies (SIGKILL daemon, SIGTERM others).
#pragma once

#include <sys/types.h>

#include <mutex>

#include <mp/detail/config.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail {

/// This process's connection to its fork server.
struct forkserver_client {
  std::mutex mutex;  // guards every member; one request at a time
  unique_fd control;
  pid_t pid = 0;
};

/// The client of this process (a forked child forgets its parent's server and starts its own when it needs one).
MP_DECL forkserver_client& the_forkserver();

/// A child the server forked: its pid and the read end of its status pipe.
struct server_child {
  pid_t pid = 0;
  unique_fd status;
};

/// Spawns the server (call with client.mutex held).
MP_DECL void start_forkserver_locked(forkserver_client& client);

/// Asks the server (started at first use) to fork a child that reads its Process from `child_socket`.
MP_DECL server_child forkserver_fork(int child_socket, bool daemon);

/// Stops this process's fork server (if it runs) and reaps it; the next forkserver start starts a new one.
/// Call it when the children it started have ended: those still running get the signal of a parent's death.
MP_DECL void stop_forkserver() noexcept;

/// The pid of this process's fork server, 0 if none runs (for tests and diagnostics).
MP_DECL pid_t forkserver_pid();

/// What the server runs in each child it forks (mp::init passes run_spawned_child): never returns.
using fresh_child_main = void (*)(int socket, pid_t direct_parent, bool via_server) noexcept;

/// The server's loop; never returns. Single-threaded by construction: it runs in mp::init, before main() starts
/// anything (static initializers that start threads defeat it: see docs/start-methods.md).
[[noreturn]] MP_DECL void run_forkserver(int control_fd, fresh_child_main run_child) noexcept;

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/forkserver.ipp>
#endif
