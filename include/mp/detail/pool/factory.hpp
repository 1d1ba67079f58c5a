// factory: the processes on the workers' side of a Pool — the factory, a single-threaded process that forks the
// workers (and their replacements) on request, and the worker's main loop.
// Why a factory: fork() copies only the calling thread. A Pool has a supervisor thread, and the user's program may
// have threads of its own; a worker forked from that parent while another thread holds a lock (an iostream, a user
// mutex, the allocator of a custom malloc) starts with that lock held forever. The factory is started once, in the
// Pool constructor before the pool starts any thread — forked under StartMethod::fork, a fresh run of the program
// under spawn and forkserver (factory_entry) — and it never starts one itself, so every worker it forks later (a
// replacement after a crash, after maxtasksperchild, after a timeout) is a copy of that same single-threaded
// snapshot. Being the workers' parent, the factory also reaps them and reports each exit status (the parent cannot
// waitpid a grandchild), and it kills them all if the Pool's process dies (its socket reaches EOF).
//
// Under spawn and forkserver the factory is a fresh copy of the program, started with start_fresh_child
// (spawn.hpp): it receives the shared segment, the eventfd and its socket by SCM_RIGHTS and the settings as bytes
// (factory_boot). The factory is not always the Pool's child (under forkserver it is the server's): its death is
// seen as end of file on its socket, and it is reaped by whoever is its parent.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include <mp/detail/code_address.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/pool/channel.hpp>

namespace mp::detail::pool {

/// Parent -> factory, on the factory's socket.
struct factory_request {
  enum op_type : std::uint32_t { spawn = 1, kill = 2, shutdown = 3 };
  std::uint32_t op = 0;
  std::uint32_t slot = 0;
  std::int32_t pid = 0;  // kill: the worker expected in that slot (a stale request must not hit its successor)
};

/// Parent: sends a request; a spawn request carries the new worker's end of its socket (`fd`, -1: none) by
/// SCM_RIGHTS. Failures are ignored: the factory is gone, and the parent sees end of file on the socket.
MP_DECL void send_factory_request(int sock, const factory_request& request, int fd) noexcept;

/// Factory -> parent.
struct factory_event {
  enum kind_type : std::uint32_t { spawned = 1, exited = 2, spawn_failed = 3 };
  std::uint32_t kind = 0;
  std::uint32_t slot = 0;
  std::int32_t pid = 0;
  std::int32_t code = 0;  // exited: exit code as Python's (n for exit(n), -N for signal N); spawn_failed: errno
};

/// What a fresh factory receives as bytes (the descriptors travel beside them: segment, eventfd, socket).
struct factory_boot {
  std::uint64_t processes = 0;
  std::uint64_t maxtasksperchild = 0;
  std::uint64_t initializer = 0;       // the parent's address of the initializer's trampoline; 0: none
  std::vector<std::byte> initializer_state;  // its callable and arguments (handles: descriptors 3... beside)
  std::vector<loaded_module> modules;  // the parent's, to translate its code addresses
  std::string parent_name;             // the Pool's process, as its workers' parent_process()
  std::int64_t parent_pid = 0;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(processes, maxtasksperchild, initializer, initializer_state, modules, parent_name, parent_pid);
  }
};

/// The factory's main loop; never returns. `run_worker(slot, socket, number)` runs in each forked worker (socket:
/// its end of the worker's socket, -1 if none arrived; number: 1 for the first worker forked, and so on) and
/// must not return.
[[noreturn]] MP_DECL void factory_main(int sock, std::size_t slots,
                                       const std::function<void(std::size_t, int, unsigned)>& run_worker);

/// The fresh program a Pool started by spawn or forkserver runs as its factory (called by mp::Process's
/// spawned-child path with the descriptors in current_fd_inbox()); never returns.
MP_DECL void factory_entry(std::span<const std::byte> bytes);

/// The worker process: runs the initializer, then chunks until told to stop or its task budget
/// (maxtasksperchild, 0: none) is spent.
[[noreturn]] MP_DECL void worker_main(const parent_link& link, std::size_t slot, int socket,
                                      const std::function<void()>& initializer, std::size_t maxtasksperchild);

}  // namespace mp::detail::pool

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/pool/factory.ipp>
#endif
