// channel: the shared-memory fast path of one local manager connection (a Unix socket).
//
// Why: every manager call used to be a socket round trip, and on a small VM waking a sleeping process on another
// CPU costs 20-40 µs, so a call could never get much below 10 µs. Here, after the handshake, the client creates
// a memfd segment and sends its descriptor over the socket (SCM_RIGHTS, op attach_channel); from then on requests
// and replies travel through the segment while both sides are awake, and the socket is only the doorbell (a
// zero-length frame, sent to a peer that said it sleeps) and the lifeline (EOF still tells the server a client
// died, and the client that the server died). TCP connections keep the socket for everything.
//
// Why one slot per direction rather than a ring: a connection carries one call at a time (the client waits for
// each reply before it sends the next request), so at most one message per direction is ever in flight and a
// ring degenerates to a slot. A slot always starts at offset 0: a small call touches one or two cache lines of
// data and no page the call does not need, however many calls went before.
//
// Protocol. The client copies a request payload (no 4-byte length: request_size carries it) into `request`,
// stores request_size, then request_seq + 1 (seq_cst, which includes release): the server acquires request_seq
// before it reads the bytes, and a client killed before that store never published anything, so the server
// never reads a half-written frame. Replies go the same way through reply / reply_size / reply_seq. A request
// larger than the slot goes over the socket as a normal frame; a reply larger than the slot goes over the socket
// too, announced by reply_size == reply_on_socket in the slot. The server copies each request out of the segment
// before parsing it (the client may scribble on it meanwhile) and checks request_size against the capacity.
//
// Waiting and the no-lost-wake-up argument (both directions are the same Dekker pattern on seq_cst atomics):
//   waiter:  sleeping := 1 (seq_cst);  if seq moved (seq_cst load): don't sleep;  else block in poll/read
//   poster:  seq := n (seq_cst);       if sleeping (seq_cst load) == 1: send a doorbell on the socket
// All four operations are seq_cst, so they have one total order S. If the waiter's load missed the new seq, that
// load precedes the store of seq in S, hence sleeping := 1 precedes the poster's load of sleeping, which then
// reads 1 (nobody else stores 1, and the waiter clears it only once it stopped waiting) and the doorbell is sent:
// the waiter either sees the message or gets a doorbell. A stale doorbell (both saw each other) costs the waiter
// one extra look, never a wrong answer, because every wake-up re-checks seq.
// The server sleeps only after raising server_sleeping in every channel and re-checking every request_seq; after
// poll() returns it clears the flags before it looks at the channels again. The client raises client_sleeping
// before it blocks in read() on the socket; the server, after publishing a reply, takes the flag (exchange to 0)
// and, if it was set, appends one doorbell to that client's socket. The client clears the flag with an exchange
// when it stops waiting: if it finds 0, the server took it and a doorbell is on its way, which the client reads
// before its next sleep, so stale doorbells never pile up in the socket. The server never blocks on a channel: a
// reply that does not fit goes to the socket's (non-blocking, buffered) output.
#pragma once

#include <sched.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <utility>

#include <mp/detail/clock.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail::manager {

/// Bytes of payload each direction of a channel carries; larger requests and replies use the socket.
inline constexpr std::uint32_t channel_capacity = 1u << 20;
/// reply_size value meaning "the reply is the next non-empty frame on the socket".
inline constexpr std::uint32_t reply_on_socket = 0xffff'ffffu;
/// How long a client watches for its reply before it sleeps on the socket: longer than a call takes in the server
/// when it is awake, and than waking a sleeping server takes, so a client on an idle machine rarely sleeps.
inline constexpr std::chrono::microseconds client_spin{50};
/// How long the server keeps watching the channels after the last request it found there, before it sleeps in
/// poll(): long enough to catch the next call of a client that calls in a loop; after it the server costs no CPU.
inline constexpr std::chrono::microseconds server_spin{50};
/// While spinning, how often the server also polls the sockets (new clients, hang-ups, socket-only clients).
inline constexpr std::chrono::microseconds socket_poll_period{50};

/// The CPU this thread runs on (glibc reads it from rseq or the vDSO: no system call), -1 if unknown.
inline int current_cpu() noexcept { return ::sched_getcpu(); }

/// How many hand-overs by sched_yield (see adaptive_spin_until) in a row before a waiter sleeps instead, once.
inline constexpr std::uint32_t colocated_yields = 1000;

/// Spins until ready() or `budget` passed; ready()'s last answer. While the peer last ran on this thread's CPU
/// (`peer_cpu`), it yields the CPU between looks instead: on a busy machine both ends of a channel can share a
/// CPU, and a pure spin would hold the peer off for the whole budget (measured: 25 µs a call instead of 0.3).
/// `colocated` counts those yields across calls: after colocated_yields (~1.5 ms of sharing) it gives up at once,
/// so the caller sleeps and is woken by a doorbell. Why: yielding never moves a thread to another CPU, but a
/// wake-up does, to an idle one if there is any, and a new server starts on its creator's CPU, so without this the
/// two could share one CPU for long while the other idles (measured: 360k calls/s instead of 1.1M).
/// (clock.hpp's spin_until is the plain spin; this one adds the hand-over to a peer on the same CPU.)
template <class Ready>
bool adaptive_spin_until(Ready&& ready, const std::atomic<std::int32_t>& peer_cpu, std::uint32_t& colocated,
                         std::chrono::nanoseconds budget) {
  const std::uint64_t start = monotonic_ns();
  const auto limit = static_cast<std::uint64_t>(budget.count());
  for (;;) {
    if (ready()) return true;
    if (peer_cpu.load(std::memory_order_relaxed) == current_cpu()) {
      if (++colocated >= colocated_yields) {
        colocated = 0;
        return false;
      }
      ::sched_yield();  // at once: a pause here only delays the peer, which needs this CPU to answer
    } else {
      colocated = 0;
      for (int i = 0; i < 16 && !ready(); ++i) cpu_relax();
    }
    if (monotonic_ns() - start >= limit) return ready();
  }
}

/// Test and benchmark seam: when false, new connections of this process stay on the socket (the old transport).
inline bool channels_enabled = true;

/// The segment of one channel. Each control line holds what one side writes plus what the other reads after its
/// own store (so the poster's flag check after a publish hits the line it just wrote).
struct channel_shared {
  alignas(64) std::atomic<std::uint32_t> request_seq{0};  // requests published (client)
  std::atomic<std::uint32_t> request_size{0};             // payload bytes of the last one (client)
  std::atomic<std::uint32_t> server_sleeping{0};          // the server sleeps in poll(): ring the doorbell (server)
  std::atomic<std::int32_t> client_cpu{-1};               // where the client ran when it published (client)
  alignas(64) std::atomic<std::uint32_t> reply_seq{0};    // replies published (server)
  std::atomic<std::uint32_t> reply_size{0};               // payload bytes, or reply_on_socket (server)
  std::atomic<std::uint32_t> client_sleeping{0};          // the client sleeps in read(): ring the doorbell (client)
  std::atomic<std::int32_t> server_cpu{-1};               // where the server ran when it replied (server)
  alignas(64) std::byte request[channel_capacity];
  alignas(64) std::byte reply[channel_capacity];
};

/// One mapping of a channel segment (the descriptor is not kept: the mapping holds the memory).
class channel {
 public:
  channel() noexcept = default;
  channel(channel&& other) noexcept : shared_(std::exchange(other.shared_, nullptr)) {}
  channel& operator=(channel&& other) noexcept {
    if (this != &other) {
      unmap();
      shared_ = std::exchange(other.shared_, nullptr);
    }
    return *this;
  }
  ~channel() { unmap(); }

  /// Client: a new sealed segment (size fixed, so the server can never fault on a shrunk file) and its
  /// descriptor to send; an empty channel if memfd or mmap fail (the connection then stays on the socket).
  MP_DECL static std::pair<channel, unique_fd> create() noexcept;

  /// Server: maps a segment a client sent; an empty channel unless it is a sealed memfd of the right size.
  MP_DECL static channel open(int fd) noexcept;

  explicit operator bool() const noexcept { return shared_ != nullptr; }
  channel_shared& operator*() const noexcept { return *shared_; }
  channel_shared* operator->() const noexcept { return shared_; }

 private:
  MP_DECL bool map(int fd) noexcept;
  MP_DECL void unmap() noexcept;

  channel_shared* shared_ = nullptr;
};

}  // namespace mp::detail::manager

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/manager/channel.ipp>
#endif
