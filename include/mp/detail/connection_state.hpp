// connection_state: the state behind a Pipe's two ends: the block they share (per direction, the process-shared
// locks that keep each frame of detail/wire.hpp whole, the flags that mark a stream a dying sender or a hostile
// peer left corrupt, and the window of blob bytes in flight), each end's per-process state, creating a new Pipe's
// ends, and an end's save/load for spawned children.
//
// Big messages (pipe_segment_threshold, 256 KiB, and up, on a socketpair) travel as blobs: the sender writes the
// serialized value straight into one of its end's recycled memfd segments (detail/segment_pool.hpp, sealed against
// shrinking), then sends only a blob frame (the length word, the descriptor beside it) under the send lock; the
// receiver takes the header and descriptor under the receive lock, releases it, and copies out of its end's kept
// mapping of the segment (segment_view_cache), or by preadv if the segment is not one it may map (not sealed: a
// hostile peer's). It then marks the segment consumed, for its sender to reuse. One copy on each side; a receiver
// killed while copying loses that message only (the stream is in step); the kernel frees a segment with the last
// descriptor, wherever it is (in flight included).
// Why a window: a blob frame costs the socket buffer a few hundred bytes whatever the payload, so without a bound a
// sender could queue hundreds of big segments ahead of a slow receiver. blob_bytes_in_flight counts the payload
// bytes sent and not yet taken; a sender waits (futex on blob_taken) while that plus its own exceeds
// pipe_blob_window, except that a message always goes when nothing is in flight (so any size passes).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <mp/detail/config.hpp>
#include <mp/detail/connection_lane.hpp>
#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/robust_mutex.hpp>
#include <mp/detail/segment_pool.hpp>
#include <mp/detail/shm_segment.hpp>
#include <mp/detail/unique_fd.hpp>
#include <mp/detail/wire.hpp>

namespace mp::detail {

class output_archive;
class input_archive;

// One direction of a Pipe, in memory shared by every process holding either end. The locks make each frame a unit
// for concurrent senders (and receivers) in different processes; the flags detect a process that died mid-frame,
// which leaves a partial frame in the stream that no later reader can re-synchronize on.
struct connection_direction {
  robust_mutex send_mutex;
  robust_mutex recv_mutex;
  std::atomic<std::uint32_t> sending{0};    // 1 while a sender is inside a frame; guarded by send_mutex
  std::atomic<std::uint32_t> receiving{0};  // 1 while a receiver is inside a frame; guarded by recv_mutex
  std::atomic<std::uint32_t> broken{0};     // a broken_reason once the stream cannot be trusted
  std::atomic<std::uint64_t> blob_bytes_in_flight{0};  // blob payload bytes sent, not yet taken by a receiver
  std::atomic<std::uint32_t> blob_taken{0};            // bumped by each receiver's take (futex word of the window)
  std::atomic<std::uint32_t> blob_sender_waiting{0};   // a sender sleeps on blob_taken: wake it
  connection_lane lane;  // small messages to a receiver waiting in recv() (detail/connection_lane.hpp)
};

/// Why a direction is broken (connection_direction::broken).
enum class broken_reason : std::uint32_t { none = 0, killed_mid_message = 1, malformed_frame = 2 };

/// Blob payload bytes that may be in flight in one direction before a sender waits for the receiver.
inline constexpr std::uint64_t pipe_blob_window = std::uint64_t{64} << 20;

/// Messages from this size up go through segments on a socketpair; below, the socket (or the lane) carries them.
/// The Queue's and the Pool's threshold: on the one segment pool with kept mappings, 256 KiB to 16 MiB messages cross
/// 3x faster through recycled segments than streamed through the socket (1 MiB: 11-15 GB/s against 3.6-4.3), and a
/// new Pipe's first message costs no more (a new child sending one 4 MiB message: 6.2-6.6 ms median, 7.5-7.8
/// streamed); docs/performance.md, "Big messages through a Pipe". (It was 32 MiB while the Pipe had a segment
/// mechanism of its own, whose first messages each paid a new segment.)
inline constexpr std::size_t pipe_segment_threshold = blob_threshold;
/// Segments a sending end keeps (per process), and their item bytes at most: a larger message gets a segment of its
/// own, dropped once sent (it lives on in the socket and in its receiver). A receiving end keeps as many mappings
/// of received segments, plus one, within the same bytes (plus headers).
inline constexpr std::size_t pipe_segments_kept = 3;
inline constexpr std::size_t pipe_segment_budget = std::size_t{128} << 20;
/// How long a sender waits at least for its receiver to give a segment back before it makes a new one (a receiver
/// killed while copying never does; segment_pool::acquire then drops that segment).
inline constexpr std::uint64_t pipe_segment_patience_ns = 200'000'000;

struct connection_shared {
  connection_direction direction[2];  // [0]: first -> second, [1]: second -> first
};

// The per-process state behind every copy of one Connection end.
struct connection_state {
  unique_fd fd;
  fd_kind kind = fd_kind::socket;
  std::shared_ptr<shm_segment> segment;       // keeps the shared locks mapped while an end lives here
  connection_direction* outgoing = nullptr;   // nullptr: this end does not send
  connection_direction* incoming = nullptr;   // nullptr: this end does not receive
  lane_history receive_history;               // how this process's recent offers on `incoming` went
  identity_cache fd_identity_cache;           // fd's open file, for export_fd (no fstat per Pool task)
  shared_segment_pool sent_segments;          // this process's kept segments for big messages on `outgoing`
  segment_view_cache received_segments{pipe_segments_kept + 1, segment_header_bytes + pipe_segment_budget,
                                       pipe_segment_budget + 4 * segment_header_bytes};  // of those on `incoming`
  std::mutex spare_mutex;                     // guards spare
  std::vector<std::byte> spare;               // recv()'s buffer for big messages, kept warm (at most the budget)
};

/// The two ends of a new Pipe (a socketpair if duplex, else a pipe whose first end reads) and their shared block.
MP_DECL std::pair<std::shared_ptr<connection_state>, std::shared_ptr<connection_state>> make_pipe_states(bool duplex);

/// Connection::save: the end's descriptor and its shared block's, and which directions it sends and receives.
/// `state` may be null (a closed Connection): export_fd then throws SerializationError.
MP_DECL void save_connection_state(output_archive& ar, const connection_state* state);
/// Connection::load: the same end, in a spawned child; SerializationError if the bytes are malformed.
MP_DECL std::shared_ptr<connection_state> load_connection_state(input_archive& ar);

/// Throws mp::Error: "operation: a process was killed in the middle of a message on this connection, ..." (or
/// "... received a malformed message ..."), after `reason`.
[[noreturn]] MP_DECL void throw_broken_connection(const char* operation, broken_reason reason);

/// A receiver found a frame it cannot trust (`what`): marks the direction broken and throws SerializationError.
/// Call with the receive lock held.
[[noreturn]] MP_DECL void reject_frame(connection_direction& direction, const char* operation, const std::string& what);

/// Sends a blob frame for the segment `segment` holding `size` payload bytes on `state`'s socket: waits for room
/// in the direction's window, then sends under the send lock. Throws as send does (peer closed, broken direction).
MP_DECL void send_blob_message(connection_state& state, connection_direction& direction, int segment,
                               std::size_t size, const char* operation);

/// A received segment that is not what its blob frame announced (`valid()` false, or shrunk while read): takes the
/// receive lock and rejects the frame (reject_frame).
[[noreturn]] MP_DECL void reject_segment(connection_direction& direction, const char* operation, std::size_t size);

/// A receiver took a blob frame of `size` bytes off the socket: gives the window back and wakes a waiting sender.
MP_DECL void release_blob_window(connection_direction& direction, std::uint64_t size) noexcept;

// Holds one of a direction's locks for one frame and maintains its in-frame flag. A lock recovered from a dead
// holder that was inside a frame marks the direction broken. Inline: every send and receive takes one.
class frame_guard {
 public:
  frame_guard(robust_mutex& mutex, std::atomic<std::uint32_t>& in_frame, connection_direction& direction,
              const char* operation)
      : mutex_(mutex), in_frame_(in_frame) {
    mutex_.lock();
    if (mutex_.previous_owner_died() && in_frame_.load(std::memory_order_relaxed) != 0) {
      direction.broken.store(static_cast<std::uint32_t>(broken_reason::killed_mid_message), std::memory_order_relaxed);
      in_frame_.store(0, std::memory_order_relaxed);
    }
    if (const auto reason = direction.broken.load(std::memory_order_relaxed); reason != 0) {
      mutex_.unlock();
      throw_broken_connection(operation, static_cast<broken_reason>(reason));
    }
  }
  frame_guard(const frame_guard&) = delete;
  frame_guard& operator=(const frame_guard&) = delete;
  /// Marks the start of the frame's bytes (after this, dying leaves a partial frame behind).
  void begin() noexcept { in_frame_.store(1, std::memory_order_relaxed); }
  /// The frame went through whole.
  void end() noexcept { in_frame_.store(0, std::memory_order_relaxed); }
  ~frame_guard() {
    try {
      mutex_.unlock();
    } catch (...) {
    }
  }

 private:
  robust_mutex& mutex_;
  std::atomic<std::uint32_t>& in_frame_;
};

// Scratch buffers reused across messages by one thread; a buffer that grew for a huge message is released.
inline std::vector<std::byte>& connection_scratch() {
  thread_local std::vector<std::byte> scratch;
  return scratch;
}
inline void trim_scratch(std::vector<std::byte>& scratch) {
  if (scratch.capacity() > (std::size_t{4} << 20)) std::vector<std::byte>().swap(scratch);
}

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/connection_state.ipp>
#endif
