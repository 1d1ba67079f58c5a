// runtime: definitions (see runtime.hpp).
#pragma once

#include <poll.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include <mp/detail/child_os.hpp>
#include <mp/detail/mpi/runtime.hpp>
#include <mp/detail/mpi/serve.hpp>
#include <mp/errors.hpp>
#include <mp/process.hpp>

namespace mp::detail::mpi {

inline runtime& state() {
  static runtime r;
  return r;
}

inline std::recursive_mutex& mpi_mutex() {
  static std::recursive_mutex m;
  return m;
}

inline std::string mpi_error(const char* call, int code) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return std::string(call) + " failed with error " + std::to_string(code);
  return std::string(call) + " failed: " + std::string(text, static_cast<std::size_t>(length));
}

inline void check(const char* call, int code) {
  if (code != MPI_SUCCESS) throw Error(mpi_error(call, code));
}

inline unique_fd watch_pid(int pid, const std::string& host) {
  if (pid <= 0 || host != state().host) return {};
  return unique_fd(detail::pidfd_open(static_cast<pid_t>(pid)));
}

inline bool ended(const unique_fd& pidfd) {
  if (!pidfd) return false;
  pollfd p{pidfd.get(), POLLIN, 0};
  return ::poll(&p, 1, 0) > 0;
}

inline std::string this_host() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0) return "localhost";
  return name;
}
inline std::string this_executable() {
  std::vector<char> path(4096);
  const ssize_t n = ::readlink("/proc/self/exe", path.data(), path.size() - 1);
  if (n <= 0) return {};
  return std::string(path.data(), static_cast<std::size_t>(n));
}
/// A worker's end: finalize MPI (and leave the spawning job) and exit, without returning into main.
[[noreturn]] inline void worker_exit(runtime& rt) {
  if (rt.parent != MPI_COMM_NULL) MPI_Comm_disconnect(&rt.parent);
  if (rt.owns_mpi) MPI_Finalize();
  rt.finalized = true;
  std::exit(0);
}

inline void initialize(int& argc, char**& argv) {
  runtime& rt = state();
  if (rt.mode != launch::not_initialized) return;
  int already = 0;
  MPI_Initialized(&already);
  if (already == 0) {
    int provided = 0;
    check("MPI_Init_thread", MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided));
    rt.owns_mpi = true;
  }
  MPI_Comm_rank(MPI_COMM_WORLD, &rt.world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &rt.world_size);
  rt.host = this_host();
  rt.executable = this_executable();
  for (int i = 1; i < argc; ++i) rt.args.emplace_back(argv[i]);
  MPI_Comm_get_parent(&rt.parent);
  if (rt.parent != MPI_COMM_NULL) {
    rt.mode = launch::spawned_worker;
    serve(rt.parent, rt.host);
    worker_exit(rt);
  }
  if (rt.world_rank != 0) {
    rt.mode = launch::static_worker;
    serve(MPI_COMM_WORLD, rt.host);
    worker_exit(rt);
  }
  if (rt.world_size > 1) {
    rt.mode = launch::static_main;
    rt.world = std::make_unique<worker_group>();
    rt.world->comm = MPI_COMM_WORLD;
    for (int r = 1; r < rt.world_size; ++r) rt.world->workers.emplace_back().rank = r;
  } else {
    rt.mode = launch::alone;
  }
  std::atexit([] { finalize(); });
}

/// Starts n workers with MPI_Comm_spawn of this program; Error with the way out if MPI cannot.
inline std::unique_ptr<worker_group> spawn_group(std::size_t n, const char* caller) {
  runtime& rt = state();
  std::vector<char*> args;
  for (std::string& a : rt.args) args.push_back(a.data());
  args.push_back(nullptr);
  MPI_Info info;
  MPI_Info_create(&info);
  // One node's slots are its cores: without oversubscription a 2-core machine cannot take 2 workers + rank 0.
  MPI_Info_set(info, "map_by", "slot:OVERSUBSCRIBE");
  MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN);
  MPI_Comm inter = MPI_COMM_NULL;
  std::vector<int> codes(n, MPI_SUCCESS);
  const int rc = MPI_Comm_spawn(rt.executable.c_str(), rt.args.empty() ? MPI_ARGV_NULL : args.data(),
                                static_cast<int>(n), info, 0, MPI_COMM_SELF, &inter, codes.data());
  MPI_Info_free(&info);
  int failed = rc;
  for (int c : codes) failed = failed != MPI_SUCCESS ? failed : c;
  if (failed != MPI_SUCCESS) {
    throw Error(std::string(caller) + ": this program was launched alone, and starting " + std::to_string(n) +
                " worker processes with MPI_Comm_spawn failed (" + mpi_error("MPI_Comm_spawn", failed) +
                "). Launch it with mpirun instead, e.g. `mpirun -n " + std::to_string(n + 1) + " " + rt.executable +
                "`: rank 0 runs main and the other ranks serve as the pool's workers");
  }
  auto group = std::make_unique<worker_group>();
  group->comm = inter;
  group->spawned = true;
  for (std::size_t r = 0; r < n; ++r) group->workers.emplace_back().rank = static_cast<int>(r);
  return group;
}

/// Tells the workers of a group to exit; a spawned group is disconnected too, unless a worker died (disconnecting
/// waits for every process of the other side).
inline void dismiss(worker_group& group) noexcept {
  for (worker_slot& w : group.workers) {
    if (w.alive) MPI_Send(nullptr, 0, MPI_BYTE, w.rank, tag_exit, group.comm);
  }
  if (group.spawned && group.alive() == group.workers.size()) MPI_Comm_disconnect(&group.comm);
}

inline worker_group& acquire_group(std::size_t processes, const char* caller) {
  runtime& rt = state();
  switch (rt.mode) {
    case launch::not_initialized:
      throw Error(std::string(caller) + ": MPI is not set up: call mp::mpi::init(argc, argv) first in main");
    case launch::static_worker:
    case launch::spawned_worker:
      throw Error(std::string(caller) + ": a Pool can be created on rank 0 only, not in a worker rank");
    default:
      break;
  }
  if (rt.finalized) throw Error(std::string(caller) + ": MPI was already finalized (the program is exiting)");
  std::lock_guard lock(mpi_mutex());
  if (rt.mode == launch::static_main) {
    worker_group& group = *rt.world;
    if (group.in_use)
      throw Error(std::string(caller) + ": another mp::mpi::Pool holds the worker ranks; close() and join() it "
                  "first (the ranks serve one Pool at a time)");
    const std::size_t ranks = group.workers.size();
    if (processes > ranks)
      throw Error(std::string(caller) + ": " + std::to_string(processes) + " processes asked, but mpirun started " +
                  std::to_string(ranks + 1) + " ranks (rank 0 + " + std::to_string(ranks) + " workers); launch with "
                  "`mpirun -n " + std::to_string(processes + 1) + "` or ask for fewer");
    if (group.alive() == 0) throw Error(std::string(caller) + ": every worker rank has died");
    group.in_use = true;
    return group;
  }
  const std::size_t n = processes != 0 ? processes : std::max<std::size_t>(1, cpu_count());
  if (rt.spawned && rt.spawned->in_use)
    throw Error(std::string(caller) + ": another mp::mpi::Pool holds the spawned workers; close() and join() it first");
  if (!rt.spawned || rt.spawned->alive() != rt.spawned->workers.size() || rt.spawned->workers.size() < n) {
    if (rt.spawned) dismiss(*rt.spawned);
    rt.spawned.reset();
    rt.spawned = spawn_group(n, caller);
  }
  rt.spawned->in_use = true;
  return *rt.spawned;
}

inline void release_group(worker_group& group) noexcept {
  std::lock_guard lock(mpi_mutex());
  group.in_use = false;
}

inline void finalize() noexcept {
  runtime& rt = state();
  if (rt.finalized || (rt.mode != launch::static_main && rt.mode != launch::alone)) return;
  rt.finalized = true;
  int done = 0;
  MPI_Finalized(&done);
  if (done != 0) return;
  std::lock_guard lock(mpi_mutex());
  if (rt.world) dismiss(*rt.world);
  if (rt.spawned) dismiss(*rt.spawned);
  if (rt.owns_mpi) MPI_Finalize();
}

}  // namespace mp::detail::mpi
