// connection_lane: definitions (see connection_lane.hpp).
#pragma once

#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <cstring>

#include <mp/detail/clock.hpp>
#include <mp/detail/connection_lane.hpp>
#include <mp/detail/manager/channel.hpp>
#include <mp/detail/robust_mutex.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

namespace lane_words {
inline constexpr std::uint64_t waiting(std::uint64_t r) noexcept { return (r << 2) | 1; }
inline constexpr std::uint64_t claimed(std::uint64_t r) noexcept { return (r << 2) | 2; }
}  // namespace lane_words

MP_DECL bool lane_try_send(connection_lane& lane, std::span<const std::byte> head,
                           std::span<const std::byte> tail) noexcept {
  const std::uint64_t s = lane.sent.load(std::memory_order_relaxed);
  lane.sender_cpu.store(manager::current_cpu(), std::memory_order_relaxed);
  const std::size_t size = head.size() + tail.size();
  std::uint64_t expected = lane_words::waiting(s);
  if (size <= pipe_lane_capacity && lane.offer.load() == expected) {
    // The thread's tid (cached, refreshed after fork): kill(tid, 0) fails with ESRCH once its process is gone.
    lane.claimer.store(this_thread_tid(), std::memory_order_relaxed);
    if (lane.offer.compare_exchange_strong(expected, lane_words::claimed(s))) {
      if (!head.empty()) std::memcpy(lane.slot, head.data(), head.size());
      if (!tail.empty()) std::memcpy(lane.slot + head.size(), tail.data(), tail.size());
      lane.size.store(static_cast<std::uint32_t>(size), std::memory_order_relaxed);
      lane.sent.store(s + 1);
      lane.published.store(s + 1, std::memory_order_release);
      return true;
    }
  }
  lane.sent.store(s + 1);
  return false;
}

// A sender claimed message r: wait until it is published. The sender is a memcpy away; if it takes long, check
// that it lives (its tid), so that a sender killed between claim and publish does not hang this receiver.
MP_DECL void lane_wait_published(connection_lane& lane, std::uint64_t r, std::atomic<std::uint32_t>& broken,
                                 const char* operation) {
  auto ready = [&] { return lane.published.load(std::memory_order_acquire) == r + 1; };
  if (spin_until(ready, std::chrono::milliseconds(1))) return;
  while (!ready()) {
    const pid_t claimer = lane.claimer.load(std::memory_order_relaxed);
    if (claimer > 0 && sys_try("kill", [&] { return ::kill(claimer, 0); }) == -1 && last_errno() == ESRCH &&
        !ready()) {
      broken.store(1, std::memory_order_relaxed);  // broken_reason::killed_mid_message
      throw Error(std::string(operation) +
                  ": a process was killed in the middle of a message on this connection, so the stream is corrupt; "
                  "close both ends and create a new Pipe");
    }
    ::sched_yield();
  }
}

MP_DECL lane_source lane_receive(connection_lane& lane, lane_history& history, std::atomic<std::uint32_t>& broken,
                                 const char* operation) {
  const std::uint64_t r = lane.received.load(std::memory_order_relaxed);
  const std::uint64_t waiting = lane_words::waiting(r), claimed = lane_words::claimed(r);
  // Retracts an offer (ours, or one a receiver killed while waiting left standing): false if a sender claimed it.
  auto retract = [&] {
    std::uint64_t expected = waiting;
    return lane.offer.compare_exchange_strong(expected, 0) || expected != claimed;
  };
  if (lane.offer.load() == claimed || (lane.sent.load() != r && !retract())) {
    lane_wait_published(lane, r, broken, operation);
    return lane_source::slot;
  }
  if (lane.sent.load() != r) return lane_source::socket;

  // Offer only when it has been paying off: after 4 empty spins in a row, once every 16 receives.
  const std::uint32_t misses = history.misses.load(std::memory_order_relaxed);
  if (misses >= 4 && (history.skips.fetch_add(1, std::memory_order_relaxed) & 15u) != 15u)
    return lane_source::socket;

  lane.offer.store(waiting);
  std::uint32_t colocated = 0;
  const bool arrived = manager::adaptive_spin_until(
      [&] { return lane.offer.load() == claimed || lane.sent.load() != r; }, lane.sender_cpu, colocated,
      pipe_lane_spin);
  history.misses.store(arrived ? 0 : misses + 1, std::memory_order_relaxed);
  if (retract()) return lane_source::socket;  // in the socket, or not sent yet: read() waits for it or for EOF
  lane_wait_published(lane, r, broken, operation);
  return lane_source::slot;
}

}  // namespace mp::detail
