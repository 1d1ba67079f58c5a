// spawn: how mp starts a fresh copy of this program (start methods spawn and forkserver), and what it sends it.
//
// spawn: posix_spawn("/proc/self/exe") — glibc implements it with clone(CLONE_VM | CLONE_VFORK), so unlike
// fork+exec it never copies the parent's page tables (a parent holding 1 GiB spawns as fast as a small one). The
// child finds MP_SPAWNED_CHILD=<fd> in its environment; mp::init reads its Process from that socket.
// forkserver: the fork server (detail/forkserver.hpp), itself spawned this way, forks the child instead.
// Either way the child receives a spawn_request (its name, identity, target as bytes) over a fresh socketpair,
// with the descriptors of its arguments beside it; start_fresh_child is the one place that does this, for
// Process, the Pool's worker factory and the Manager's server.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <mp/detail/code_address.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/start_method.hpp>
#include <mp/detail/unique_fd.hpp>

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

/// The child's side of a fresh start (defined with mp::Process, impl/process.ipp): reads its Process from
/// `socket`, becomes it, runs it and _exits. `direct_parent` is the pid whose death should end the child (the fork
/// server's, under forkserver). mp::init calls it in a spawned child, and hands it to the fork server for each
/// child it forks.
[[noreturn]] MP_DECL void run_spawned_child(int socket, pid_t direct_parent, bool via_server) noexcept;

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
MP_DECL std::string missing_init_message(std::string_view where, std::string_view method);

/// At exit of a fresh copy of the program that never reached mp::init: says so on stderr and _exits(1) (installed
/// at start-up by spawn.ipp, only in such a process).
MP_DECL void report_unconsumed_marker() noexcept;

/// Starts /proc/self/exe with `marker`=<fd> in its environment and `fd` inherited (all other mp descriptors are
/// close-on-exec). Returns the child's pid.
MP_DECL pid_t spawn_program(const char* marker, int fd, const std::string& what);

/// The value of `marker` in the environment as a descriptor, or -1; removes it so that the program's own children
/// do not see it.
MP_DECL int take_marker(const char* marker);

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
MP_DECL fresh_child start_fresh_child(StartMethod method, const spawn_request& request, std::span<const int> fds);

/// Waits for the one byte a fresh child writes once it is ready (its death signal armed): true, or false if it
/// ended first (end of file).
MP_DECL bool wait_until_ready(const fresh_child& child);

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/spawn.ipp>
#endif
