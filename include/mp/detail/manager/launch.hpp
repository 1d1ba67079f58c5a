// launch: starting and stopping a manager's server process — forked (a copy of this process, start method fork) or
// fresh (spawn and forkserver: a new copy of the program) — serving in this process instead, and the server's
// signals and files.
//
// A server started by spawn or forkserver is a fresh copy of the program: nothing of the owner's memory, only
// what it is sent. It starts as any mp child (run_spawned_child, which mp::init runs) whose target is
// run_fresh_server, located by code address; the server is type-agnostic (store.hpp), so it needs no user code.
// It gets what a forked server inherits: the bound listener, the authkey, the paths to remove, and a pidfd of the
// owner to watch — opened by the owner on itself and sent with SCM_RIGHTS, so no reused pid can be mistaken for it,
// and not getppid(): under forkserver the server's OS parent is the fork server.
// The server itself (server.hpp, store.hpp) is compiled only where these functions are defined (launch.ipp).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include <mp/detail/config.hpp>
#include <mp/detail/manager/net.hpp>
#include <mp/detail/start_method.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail::manager {

/// The server process a Manager started, and what to clean up after it.
struct server_process {
  pid_t pid = 0;
  pid_t owner = 0;           // the process that started it: only that process stops it
  unique_fd pidfd;           // for waiting with a deadline
  bool via_server = false;   // started by the fork server: its child, not ours (waitpid cannot reap it)
  unique_fd status;          // via_server: readable once the fork server reaped it (it writes the wait status)
  std::string socket_path;   // removed after it stops (Unix sockets)
  std::string directory;     // the private directory holding a default socket
  bool same_user_only = true;  // Unix sockets: peers of another uid are refused (ManagerOptions::allow_other_users)
};

/// A private directory (mode 0700) for the default Unix socket: other users cannot reach the socket, and the
/// directory is removed when the server stops.
MP_DECL std::string make_private_directory();

/// Removes a server's Unix socket, then the private directory holding it (the server does it when it stops; the
/// owner does too, when the server could not or did not).
MP_DECL void remove_server_files(const std::string& socket_path, const std::string& directory) noexcept;

/// Forks the server (start method fork), which serves `listener` until its owner (this process, server.owner)
/// stops it or ends; fills in server.pid and server.pidfd.
MP_DECL void start_forked_server(server_process& server, unique_fd listener, const std::string& authkey);

/// Starts the server as a fresh copy of this program (spawn, forkserver), a Process named "SyncManager-<identity>"
/// whose parent is `parent_name`, and returns once it serves; mp::Error (after reaping it) if it ended first.
MP_DECL void start_fresh_server(server_process& server, const unique_fd& listener, const std::string& authkey,
                                StartMethod method, std::vector<unsigned> identity, std::string parent_name);

/// Waits for a server that was asked to stop, kills it if it has not within 5 s, and reaps it: its wait status.
MP_DECL int reap_server(server_process& server);

/// Serves on `where` in this process until SIGTERM/SIGINT or a client's shutdown request (Manager::serve_forever).
MP_DECL void serve_in_this_process(endpoint where, std::string authkey, bool same_user_only = true);

/// Waits until the server behind `server_pidfd` ends or this process gets SIGTERM/SIGINT (blocked and read
/// through a signalfd meanwhile; the previous signal mask is restored).
MP_DECL void wait_for_server_or_stop_signal(int server_pidfd);

}  // namespace mp::detail::manager

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/manager/launch.ipp>
#endif
