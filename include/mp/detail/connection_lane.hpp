// connection_lane: the shared-memory lane of one Pipe direction: a small message handed over without a system call
// or a wake-up while its receiver is waiting for it.
//
// Why: through the socket, a message costs the receiver a wake-up when it sleeps in read(), 20-40 µs on a small VM
// (a small-int Pipe round trip measured 32-35 µs, Python's 33-58). Here a receiver about to wait *offers* to take
// the next message from shared memory and watches for it a few µs; a sender that finds the offer claims it and
// copies the message into the lane's slot. No system call on either side.
//
// The socket stays the lifeline and what fileno(), poll() and mp::wait watch: only a receiver inside recv() ever
// offers, and a sender uses the lane only for the message that receiver waits for, i.e. when every earlier message
// has been taken. So while nobody is in recv(), every message goes to the socket and poll() sees it. End of stream,
// a dead peer, big messages and many senders work through the socket as before; the lane needs no doorbell.
//
// Protocol. `sent` counts the messages sent in this direction (guarded by the send lock), `received` those taken
// (guarded by the receive lock); the next message's number is received on the receiving side, sent on the sending.
//   receiver (r = received): if sent != r, message r is in the socket (or being written): read it there.
//     Else offer := waiting(r) (seq_cst), and spin until offer == claimed(r) or sent != r; then retract with
//     CAS(offer: waiting(r) -> idle). A failed CAS means a sender claimed: wait for `published`, take the slot.
//   sender (s = sent): if offer == waiting(s) and CAS(offer: waiting(s) -> claimed(s)) succeeds: copy into the
//     slot, sent := s + 1, published := s + 1 (release). Else sent := s + 1, then write the frame to the socket.
// A claim and a retraction are CASes on one word from one value: exactly one wins, so a message is either in the
// slot (and the receiver takes it) or in the socket (and the receiver reads it there), never both, never lost. The
// receiver's "sent != r" check after its offer is the Dekker pattern of manager/channel.hpp: a sender that missed
// the offer bumps `sent` after, and the spinning receiver sees it; the slot is reused only after its receiver set
// the offer back to idle, since the next claim needs a new offer (waiting(r + 1)).
// Deaths: a sender killed between its claim and publishing leaves a receiver waiting for `published`; the receiver
// checks that the claimer's thread lives and else marks the direction broken (as for a sender killed mid-frame). A receiver
// killed while its offer stands may leave the next message in the slot, where poll() does not see it; the next
// recv() takes it (a documented limit).
// When spinning cannot help: the spin yields the CPU while the sender last ran on this CPU
// (manager::adaptive_spin_until), and a receiver whose last spins all ended empty stops offering, probing again
// every 16 receives, so a peer that is slow to answer (or has no CPU) costs no spinning.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>

#include <mp/detail/config.hpp>

namespace mp::detail {

/// Payload bytes the lane carries; larger messages go to the socket.
inline constexpr std::size_t pipe_lane_capacity = (std::size_t{64} << 10) - 256;
/// How long a receiver watches the lane before it sleeps on the socket: longer than a small round trip through
/// the peer when it has a CPU, far shorter than a time slice.
inline constexpr std::chrono::microseconds pipe_lane_spin{50};

// In the Pipe's shared block, one per direction. Each line holds what one side writes.
struct connection_lane {
  alignas(64) std::atomic<std::uint64_t> offer{0};  // idle (0), waiting(r) = 4r + 1, claimed(r) = 4r + 2
  std::atomic<std::uint64_t> received{0};            // messages taken (guarded by the receive lock)
  alignas(64) std::atomic<std::uint64_t> sent{0};    // messages sent (guarded by the send lock)
  std::atomic<std::uint64_t> published{0};           // s + 1 once message s is in the slot (sender)
  std::atomic<std::uint32_t> size{0};                // its payload bytes (sender)
  std::atomic<std::int32_t> claimer{0};              // tid of the sender that claims (stored before the claim)
  std::atomic<std::int32_t> sender_cpu{-1};          // where the last sender ran (for the receiver's spin)
  alignas(64) std::byte slot[pipe_lane_capacity];
};

/// A receiving end's memory of how its recent offers went (per process; relaxed atomics: threads may share it).
struct lane_history {
  std::atomic<std::uint32_t> misses{0};  // spins in a row that ended with nothing
  std::atomic<std::uint32_t> skips{0};   // receives since the last probe while misses is high
};

/// Sender, under the send lock, with the frame begun: delivers the message whose payload is `head` then `tail`
/// through the slot if a receiver waits for exactly it (true); else counts it as going to the socket (false: the
/// caller writes it there now).
MP_DECL bool lane_try_send(connection_lane& lane, std::span<const std::byte> head,
                           std::span<const std::byte> tail = {}) noexcept;
/// Sender, under the send lock: counts a message that goes to the socket whatever (a blob frame).
inline void lane_count_socket_send(connection_lane& lane) noexcept {
  lane.sent.store(lane.sent.load(std::memory_order_relaxed) + 1);
}

enum class lane_source { socket, slot };

/// Receiver, under the receive lock: where the next message is. slot: it is in the slot (lane_payload), take it
/// and call lane_taken. socket: read the next frame from the socket (blocking), and call lane_count_socket_receive
/// once its header is in. Spins when that is worth it. `broken` is the direction's broken word: set (and
/// mp::Error thrown) if a claiming sender died before publishing.
MP_DECL lane_source lane_receive(connection_lane& lane, lane_history& history, std::atomic<std::uint32_t>& broken,
                                 const char* operation);
/// The payload of the message in the slot (after lane_receive returned slot).
inline std::span<const std::byte> lane_payload(const connection_lane& lane) noexcept {
  return {lane.slot, lane.size.load(std::memory_order_relaxed)};
}
/// The receiver is done with the slot: the message is taken, the slot free for the next claim.
inline void lane_taken(connection_lane& lane) noexcept {
  lane.received.store(lane.received.load(std::memory_order_relaxed) + 1);
  lane.offer.store(0);
}
/// A message's header was read from the socket.
inline void lane_count_socket_receive(connection_lane& lane) noexcept {
  lane.received.store(lane.received.load(std::memory_order_relaxed) + 1);
}

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/connection_lane.ipp>
#endif
