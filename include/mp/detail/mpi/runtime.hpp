// runtime: this process's place in the MPI job — how it was launched, which ranks serve as workers, the one lock
// around rank 0's MPI calls, and the finalize handshake.
// Launched by mpirun (world size > 1): rank 0 runs main; ranks 1..N-1 never return from init() and serve (serve.hpp)
// until rank 0 sends tag_exit from its atexit handler, just before it finalizes MPI itself.
// Launched alone (world size 1): a Pool spawns its workers with MPI_Comm_spawn of this program (they see a parent
// communicator in init() and serve it); the group is kept for the next Pool and told to exit at finalize.
// Why one lock: MPI is initialized with MPI_THREAD_SERIALIZED (Open MPI's MPI_THREAD_MULTIPLE costs every call),
// so rank 0's threads take mpi_mutex() around every MPI call mp makes.
// Definitions are inline in both of mp's compile modes: mp::mp_compiled does not link MPI, so mp::mpi stays
// header-only (runtime.ipp is always included).
#pragma once

#include <mpi.h>

#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <mp/detail/unique_fd.hpp>

namespace mp::detail::mpi {

/// How this process was launched.
enum class launch { not_initialized, static_main, static_worker, spawned_worker, alone };

/// One worker rank as rank 0 sees it.
struct worker_slot {
  int rank = 0;          // in the group's communicator (remote rank for an intercommunicator)
  int pid = 0;           // reported in tag_hello
  std::string host;      // reported in tag_hello
  unique_fd pidfd;       // when the worker runs on rank 0's host: becomes readable when it dies
  bool alive = true;
};

/// The worker ranks a Pool runs on: MPI_COMM_WORLD's ranks 1..N-1, or a spawned group.
struct worker_group {
  MPI_Comm comm = MPI_COMM_NULL;
  bool spawned = false;
  bool in_use = false;   // a Pool owns it
  std::vector<worker_slot> workers;
  /// Workers not known dead.
  std::size_t alive() const {
    std::size_t n = 0;
    for (const worker_slot& w : workers) n += w.alive ? 1 : 0;
    return n;
  }
};

struct runtime {
  launch mode = launch::not_initialized;
  bool owns_mpi = false;          // we called MPI_Init (and so call MPI_Finalize)
  int world_rank = 0;
  int world_size = 1;
  std::string executable;         // absolute path of this program, for MPI_Comm_spawn
  std::vector<std::string> args;  // argv[1..], for MPI_Comm_spawn
  std::string host;
  MPI_Comm parent = MPI_COMM_NULL;      // spawned worker: the intercommunicator to rank 0
  std::unique_ptr<worker_group> world;  // static_main: ranks 1..N-1
  std::unique_ptr<worker_group> spawned;  // alone: the last spawned group
  bool finalized = false;
};

/// The process-wide state.
inline runtime& state();
/// Guards every MPI call of rank 0 (MPI_THREAD_SERIALIZED).
inline std::recursive_mutex& mpi_mutex();

/// mp::mpi::init: see mpi.hpp. Workers never return from it.
inline void initialize(int& argc, char**& argv);
/// A group of `processes` workers for a new Pool (0: every rank, or cpu_count() spawned); Error if none can be had.
inline worker_group& acquire_group(std::size_t processes, const char* caller);
/// The Pool is done with its group.
inline void release_group(worker_group& group) noexcept;
/// Rank 0's atexit handler: tells every worker to exit, disconnects the spawned group, finalizes MPI.
inline void finalize() noexcept;
/// "MPI_Xxx failed: <MPI's error string>".
inline std::string mpi_error(const char* call, int code);
/// Throws mp::Error(mpi_error(call, code)) unless code is MPI_SUCCESS.
inline void check(const char* call, int code);
/// Opens a pidfd for a worker on this host (empty if it runs elsewhere or pidfd_open is missing).
inline unique_fd watch_pid(int pid, const std::string& host);
/// True once the process behind `pidfd` has ended.
inline bool ended(const unique_fd& pidfd);

}  // namespace mp::detail::mpi

#include <mp/detail/mpi/runtime.ipp>
