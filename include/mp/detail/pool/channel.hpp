// channel: the shared-memory transport between a Pool and its workers.
// Every worker slot owns two single-producer/single-consumer byte rings (inbox: parent -> worker tasks; outbox:
// worker -> parent results). Why per-worker SPSC rings rather than one shared queue: the parent knows exactly which
// chunks sit in which worker's inbox, so a worker that dies fails only the chunk it was running (WorkerLost) and
// the unstarted ones are handed to another worker; and no lock is ever shared with a process that may be
// SIGKILLed while holding it. Messages are length-prefixed and may be larger than a ring: they stream through.
//
// Waiting: the worker spins briefly, then sleeps on the ring's futex word; the parent never sleeps on a futex of
// the rings but in poll() on an eventfd that workers write only when no parent thread is awake to collect
// (shared_region::collectors_awake), so the hot path costs no system call at all.
// Everything here is on the per-task path of one side or the other, hence inline.
#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include <mp/detail/clock.hpp>
#include <mp/detail/futex.hpp>
#include <mp/detail/pool/wait_policy.hpp>
#include <mp/detail/syscall.hpp>

namespace mp::detail::pool {

/// Bytes in each direction of one worker's channel; larger messages stream through in pieces.
inline constexpr std::uint32_t ring_capacity = 1u << 20;

// One direction of a channel, in shared memory. Positions are free-running 32-bit byte counters (the capacity is a
// power of two far below 2^32, so head - tail is the fill level even across wrap-around); each is also the futex
// word its waiter sleeps on. Memory ordering: the producer copies the bytes, then stores head (release); the
// consumer loads head (acquire) before reading them. The "sleeping" flags and the positions are accessed seq_cst so
// that "set my flag, re-check the position" against "move the position, check the flag" cannot both miss.
struct ring {
  alignas(64) std::atomic<std::uint32_t> head{0};           // bytes written so far; producer only
  std::atomic<std::uint32_t> consumer_sleeping{0};          // the consumer sleeps (or will) on head
  alignas(64) std::atomic<std::uint32_t> tail{0};           // bytes consumed so far; consumer only
  std::atomic<std::uint32_t> producer_sleeping{0};          // the producer waits for space (on tail, or in poll)
  alignas(64) std::byte data[ring_capacity];

  /// Producer: bytes that fit now.
  std::uint32_t writable() const noexcept { return ring_capacity - (head.load(std::memory_order_relaxed) - tail.load()); }
  /// Consumer: bytes ready to read.
  std::uint32_t readable() const noexcept { return head.load() - tail.load(std::memory_order_relaxed); }

  /// Producer: copies as much of [p, p+n) as fits and publishes it; returns the count copied.
  std::size_t write_some(const std::byte* p, std::size_t n) noexcept {
    const std::uint32_t h = head.load(std::memory_order_relaxed);
    const std::size_t count = std::min<std::size_t>(n, writable());
    if (count == 0) return 0;
    const std::size_t at = h & (ring_capacity - 1);
    const std::size_t first = std::min(count, ring_capacity - at);
    std::memcpy(data + at, p, first);
    std::memcpy(data, p + first, count - first);
    head.store(h + static_cast<std::uint32_t>(count));
    return count;
  }

  /// Consumer: copies up to n ready bytes to p and releases their space; returns the count copied.
  std::size_t read_some(std::byte* p, std::size_t n) noexcept {
    const std::uint32_t t = tail.load(std::memory_order_relaxed);
    const std::size_t count = std::min<std::size_t>(n, readable());
    if (count == 0) return 0;
    const std::size_t at = t & (ring_capacity - 1);
    const std::size_t first = std::min(count, ring_capacity - at);
    std::memcpy(p, data + at, first);
    std::memcpy(p + first, data, count - first);
    tail.store(t + static_cast<std::uint32_t>(count));
    return count;
  }

  /// Only when neither end is using the ring (its worker is dead and reaped).
  void reset() noexcept {
    head.store(0);
    tail.store(0);
    consumer_sleeping.store(0);
    producer_sleeping.store(0);
  }
};

/// The shared state of one worker slot. A replacement worker reuses its dead predecessor's slot.
struct shared_slot {
  alignas(64) std::atomic<std::uint64_t> current_chunk{0};  // id of the chunk the worker runs, 0 when idle
  std::atomic<std::uint64_t> started_ns{0};                 // monotonic_ns() when it started it
  std::atomic<std::uint64_t> last_run_ns{0};                // how long its last chunk ran (prefetch_depth)
  ring inbox;                                               // parent -> worker
  ring outbox;                                              // worker -> parent
};

/// The pool's shared segment: this head, followed by `slots` shared_slot.
struct shared_region {
  alignas(64) std::atomic<std::uint32_t> collectors_awake{0};  // parent threads currently spinning on results
  std::atomic<std::uint32_t> worker_spin_ns{0};  // how long an idle worker spins (wait_policy.hpp: worker_spin_for)
  std::atomic<std::uint32_t> crowded{0};         // 1: more workers than CPUs (wait_policy.hpp)

  shared_slot& slot(std::size_t i) noexcept {
    auto* first = reinterpret_cast<shared_slot*>(reinterpret_cast<std::byte*>(this) + slots_offset());
    return first[i];
  }
  static constexpr std::size_t slots_offset() noexcept {
    return (sizeof(shared_region) + alignof(shared_slot) - 1) / alignof(shared_slot) * alignof(shared_slot);
  }
  static constexpr std::size_t bytes_for(std::size_t slots) noexcept {
    return slots_offset() + slots * sizeof(shared_slot);
  }
};

/// A nonblocking eventfd for the supervisor to poll.
inline int make_eventfd() {
  return sys("eventfd", [] { return ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); });
}

/// Writes 1 to the eventfd the parent's supervisor polls.
inline void signal_eventfd(int fd) noexcept {
  // Not through sys_try: this write cannot fail in a way that matters (EAGAIN only once the counter nears 2^64,
  // which means the supervisor has a wake-up pending anyway), and a failure injected here would only lose a wake-up.
  const std::uint64_t one = 1;
  [[maybe_unused]] auto n = retry_on_eintr([&] { return ::write(fd, &one, sizeof one); });
}

/// A worker's way to its parent: the shared segment and the worker's own descriptor of the parent's eventfd. Not in
/// the segment itself: under spawn and forkserver the eventfd reaches the factory by SCM_RIGHTS under another
/// number than the parent's.
struct parent_link {
  shared_region& shared;
  int wake_fd;

  /// Wakes the parent's supervisor (always: for rare events such as a timed task starting).
  void wake_parent() const noexcept { signal_eventfd(wake_fd); }
  /// Wakes the supervisor only if no parent thread is spinning to collect (the common case costs no syscall).
  void notify_parent() const noexcept {
    if (shared.collectors_awake.load() == 0) wake_parent();
  }
};

// ----------------------------------------------------------------------------------------------------------------
// Worker side: blocking reads and writes (spin, then sleep on the ring's futex word).

/// Worker: reads exactly n bytes from its inbox, sleeping when it is empty; sends the notice of results held back
/// (`held`, see hold_result_notice) before it sleeps.
inline void read_exact(const parent_link& link, ring& ring, std::byte* p, std::size_t n, unsigned& held) {
  const std::chrono::nanoseconds spin(link.shared.worker_spin_ns.load(std::memory_order_relaxed));
  while (n > 0) {
    if (ring.readable() == 0 && (spin.count() == 0 || !spin_until([&] { return ring.readable() != 0; }, spin))) {
      if (held != 0) {
        held = 0;
        link.notify_parent();
      }
      for (;;) {
        const std::uint32_t seen = ring.head.load();
        ring.consumer_sleeping.store(1);
        if (ring.head.load() != ring.tail.load(std::memory_order_relaxed)) break;
        futex_wait(ring.head, seen);
        if (ring.readable() != 0) break;
      }
      ring.consumer_sleeping.store(0);
    }
    const std::size_t got = ring.read_some(p, n);
    p += got;
    n -= got;
    // The parent streams a large task piece by piece: tell it there is room again.
    if (got != 0 && ring.producer_sleeping.load() != 0) {
      ring.producer_sleeping.store(0);
      link.wake_parent();
    }
  }
}

/// Worker: writes all n bytes to its outbox, waiting for the parent to drain it when it is full. The parent is
/// notified of each piece but the last, and of the last unless `notify_last` is false (the caller decides:
/// hold_result_notice).
inline void write_all(const parent_link& link, ring& ring, const std::byte* p, std::size_t n,
                      bool notify_last = true) {
  while (n > 0) {
    const std::size_t put = ring.write_some(p, n);
    p += put;
    n -= put;
    if (put != 0) {
      if (n != 0 || notify_last) link.notify_parent();
      continue;
    }
    const std::chrono::nanoseconds spin(link.shared.worker_spin_ns.load(std::memory_order_relaxed));
    if (spin.count() != 0 && spin_until([&] { return ring.writable() != 0; }, spin)) continue;
    for (;;) {
      const std::uint32_t seen = ring.tail.load();
      ring.producer_sleeping.store(1);
      if (ring.writable() != 0) break;
      link.wake_parent();  // make sure someone drains
      futex_wait(ring.tail, seen, deadline_after(std::chrono::milliseconds(50)));
      if (ring.writable() != 0) break;
    }
    ring.producer_sleeping.store(0);
  }
}

// ----------------------------------------------------------------------------------------------------------------
// Parent side: never blocks; wakes the worker when it sleeps.

/// Parent: after writing into a worker's inbox. (Only the worker takes its flag down: a waker that did could
/// clear it between the worker raising it and sleeping, and the worker would then sleep through the next write.)
inline void wake_consumer(ring& ring) noexcept {
  if (ring.consumer_sleeping.load() != 0) futex_wake(ring.head);
}
/// Parent: after draining a worker's outbox.
inline void wake_producer(ring& ring) noexcept {
  if (ring.producer_sleeping.load() != 0) futex_wake(ring.tail);
}

}  // namespace mp::detail::pool
