// wait_policy: when the waits of a Pool (channel.hpp, core) spin, sleep, wake the other side or batch — pure
// decisions, kept apart from the mechanism so that tests can check them without timing anything.
//
// The problem they solve (issue 14): on a machine with fewer CPUs than a pool has workers, a spinning waiter takes
// the CPU of the very process it waits for, and every wake-up costs a context switch on each side. Measured on
// this project's 2-CPU VM, map(chunksize=1): 64 workers cost 4-5x 2 workers before these rules (idle machine).
// So a crowded pool (more workers than CPUs) spins nowhere, gives each worker a deeper queue of tiny tasks (one
// wake-up then serves many), and lets a worker with more work queued hold back the notice of its results.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

namespace mp::detail::pool {

/// How long an idle worker spins before it sleeps: long enough to catch the next task of a sequential apply loop.
inline constexpr std::chrono::microseconds worker_spin{100};

/// An idle worker's spin budget in ns for a pool of `workers` where this process may run on `cpus` CPUs: none in
/// a crowded pool, where a spinning worker takes the CPU from the worker or parent it waits for (measured:
/// chunksize=1 with 64 workers on 2 CPUs cost 26-28 µs per item with spinning, 1.7-4.1 µs with 2 workers).
inline constexpr std::uint32_t worker_spin_for(std::size_t workers, std::size_t cpus) noexcept {
  return workers <= cpus ? static_cast<std::uint32_t>(std::chrono::nanoseconds(worker_spin).count()) : 0;
}

/// Chunks below this run time count as tiny: they get a deeper prefetch queue, and their results may be batched.
inline constexpr std::uint64_t tiny_chunk_ns = 200'000;

/// How many chunks the parent keeps queued per worker (the running one included), from the typical chunk run time
/// as the workers measure it: one behind the running one hides the round trip; tiny chunks get more, and more
/// still in a crowded pool, where a worker that runs dry sleeps and costs a futex wake-up and two context switches
/// to restart, and the parent — one thread among many runnable workers — refills it late.
inline constexpr std::size_t prefetch_depth(std::uint64_t typical_chunk_ns, bool crowded) noexcept {
  if (typical_chunk_ns >= tiny_chunk_ns) return 2;
  return crowded ? 32 : 8;
}

/// At most this many results a worker holds back before it tells the parent (hold_result_notice).
inline constexpr unsigned notice_batch = 16;
/// A crowded pool's supervisor looks for results every this often while work is outstanding, whether told or
/// not: the bound on how late a held-back result is seen.
inline constexpr int crowded_look_ms = 1;

/// Worker, after writing a result: true to hold back its notice rather than wake the parent now. In a crowded pool
/// nobody spins to collect, so every notice is an eventfd write that wakes the supervisor to collect that one
/// result. A worker whose next task already waits in its inbox (`next_task_waiting`) and whose last task was tiny
/// (`task_ns`) lets results pile up and tells the parent once: when its inbox runs dry (before it sleeps), after
/// `notice_batch` results, or when the supervisor looks on its own (crowded_look_ms). `held`: notices held back
/// since the last one sent.
inline constexpr bool hold_result_notice(bool crowded, bool next_task_waiting, std::uint64_t task_ns,
                                         unsigned held) noexcept {
  return crowded && next_task_waiting && task_ns < tiny_chunk_ns && held + 1 < notice_batch;
}

}  // namespace mp::detail::pool
