// serve: a worker rank's loop. It waits for rank 0's messages (polling with a backoff, protocol.hpp), runs each
// task's trampoline (pool/task.hpp: the same codec as mp::Pool's spawn workers, addresses translated through rank
// 0's module table) and sends the result back, until tag_exit.
// A task with a timeout runs in a forked child of the worker (run_timed): at the deadline the child is killed and
// the worker reports the timeout, so the rank, which MPI cannot lose without aborting the job, goes on serving.
// The child never touches MPI: it runs the trampoline, writes the result to a pipe and _exits.
#pragma once

#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <mp/detail/pool/task.hpp>

namespace mp::detail::mpi {

/// How a task ended, as the first byte of a tag_result message after the chunk id.
/// block_follows: it ran, and its result's block follows as a tag_part message (protocol.hpp).
enum class outcome : std::uint8_t { ran = 0, timed_out = 1, lost = 2, block_follows = 3 };

/// Serves rank 0 (rank 0 of `comm`, or of the remote group of an intercommunicator) until tag_exit.
inline void serve(MPI_Comm comm, const std::string& host);

/// Runs trampoline(payload) in a forked child and appends its result body to `out`; at `timeout_ns` the child is
/// killed. Returns how it ended and, for `lost`, the child's exit code in `code` (-N: killed by signal N).
inline outcome run_timed(pool::trampoline_fn trampoline, std::span<const std::byte> payload, std::vector<std::byte>& out,
                         std::uint64_t timeout_ns, int& code);

}  // namespace mp::detail::mpi

#include <mp/detail/mpi/serve.ipp>
