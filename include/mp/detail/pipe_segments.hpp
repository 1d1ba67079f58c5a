// pipe_segments: the memfd segments a Pipe end's big messages cross in, recycled per sending end, and the receiving
// side's reading of one. Used by connection.hpp for messages of pipe_segment_threshold bytes and up on a socketpair.
//
// Why recycled: a segment per message is fresh memory every time, and on the VMs measured a fresh page costs
// ~12.5 us to touch (fresh memory at ~330 MB/s against ~15 GB/s for a copy between warm buffers), so a new segment
// per message capped 64 MiB messages at 26-53 MB/s. A sending end keeps its last few segments (descriptor and a
// writable mapping, pages warm) and writes the next message into one its receiver is done with.
// Layout: a segment is a 4 KiB header page, then the payload. The header's first word is the sender's *token*
// (busy); the receiver reads header and payload with one preadv and, once done, pwrites the token's complement
// there: that is how the sender knows the segment is free again. The receiver never maps a segment: pread of a
// segment its (hostile) sender shrank returns short — a SerializationError, never SIGBUS — and the sender seals
// its own segments against shrinking (F_SEAL_SHRINK), so a hostile receiver cannot make the sender's mapping fault.
// A hostile receiver that marks a segment done early only hurts itself (it reads the next message's bytes).
// Bounds: at most pipe_segments_kept segments and pipe_segment_budget bytes per sending end (per process); a larger
// message gets a segment of its own, dropped once sent (it lives on in the socket and in its receiver). A sender
// whose kept segments are all unread waits for the oldest (as for a full socket buffer). A receiver killed mid-copy
// leaves its segment busy: the sender drops it after a while (the kernel frees it with the last descriptor).
// After fork a child drops the parent's segments (never shared between two senders).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <vector>

#include <mp/detail/config.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail {

/// Counters a Pipe direction shares for its segments (in connection_direction): blob frames numbered as sent, and
/// receivers' done marks (a futex word) with a flag for a sender sleeping on it.
struct pipe_segment_signals {
  std::atomic<std::uint32_t> sent{0};     // blob frames sent so far (under the send lock)
  std::atomic<std::uint32_t> done{0};     // bumped by each receiver done with a segment
  std::atomic<std::uint32_t> waiting{0};  // a sender sleeps on `done`: wake it
};

/// Messages from this size up go through segments on a socketpair; below, the socket (or the lane) carries them.
/// Why 32 MiB: below it glibc's malloc recycles the receiver's buffer and streaming through the socket copies warm
/// memory at GB/s, while a Pipe's first few big messages each pay a new segment's fresh pages (~330 MB/s here:
/// shmem gets no huge pages); measured with 256 KiB, 4-16 MiB messages ran 3-10x slower through segments than
/// streamed on a new Pipe (docs/performance.md, "Big messages through a Pipe"). From 32 MiB up malloc hands out
/// fresh memory for every message on the stream path too, and recycled segments win (64 MiB: 3-10x).
inline constexpr std::size_t pipe_segment_threshold = std::size_t{32} << 20;
/// Payload offset in a segment: the header page.
inline constexpr std::size_t pipe_segment_header = 4096;
/// Segments a sending end keeps, and their payload bytes at most.
inline constexpr std::size_t pipe_segments_kept = 3;
inline constexpr std::size_t pipe_segment_budget = std::size_t{128} << 20;

/// One kept segment of a sending end.
struct pipe_segment {
  unique_fd fd;
  std::byte* data = nullptr;  // writable mapping of header + capacity bytes
  std::size_t capacity = 0;   // payload bytes
  std::uint64_t token = 0;    // what the header says while busy; ~token once the receiver is done (0: never used)
  std::uint32_t sequence = 0; // the direction's blob number it was last sent as
  bool sent = false;          // sequence is valid
  std::atomic<std::uint64_t>& word() const noexcept { return *reinterpret_cast<std::atomic<std::uint64_t>*>(data); }
  bool free() const noexcept { return token == 0 || word().load(std::memory_order_acquire) == ~token; }
};

class pipe_segment_cache;

/// A segment being written for one message: bytes() is where its payload goes.
class pipe_segment_lease {
 public:
  pipe_segment_lease() = default;
  pipe_segment_lease(const pipe_segment_lease&) = delete;
  pipe_segment_lease& operator=(const pipe_segment_lease&) = delete;
  MP_DECL ~pipe_segment_lease();

  std::span<std::byte> bytes() const noexcept { return bytes_; }
  int fd() const noexcept { return fd_; }
  /// The message went out as blob number `sequence` of its direction: the segment stays busy until read.
  MP_DECL void sent(std::uint32_t sequence) noexcept;

 private:
  friend class pipe_segment_cache;
  pipe_segment_cache* cache_ = nullptr;
  pipe_segment* kept_ = nullptr;  // a kept segment, or (null) the one-shot segment below
  unique_fd own_fd_;
  std::byte* own_data_ = nullptr;
  std::size_t own_mapped_ = 0;
  int fd_ = -1;
  std::span<std::byte> bytes_;
  bool sent_ = false;
};

/// A sending end's kept segments (one per end and process; thread-safe).
class pipe_segment_cache {
 public:
  pipe_segment_cache() = default;
  pipe_segment_cache(const pipe_segment_cache&) = delete;
  pipe_segment_cache& operator=(const pipe_segment_cache&) = delete;
  MP_DECL ~pipe_segment_cache();

  /// A segment with room for `size` payload bytes, marked busy: a free kept one, a new kept one within the
  /// bounds, else the oldest kept one once its receiver is done with it (waited for: back-pressure), or a one-shot
  /// segment (a message over the budget; a wait that cannot end). From the direction: `taken` counts blob frames
  /// receivers took (connection_direction::blob_taken), `broken` its broken flag; `socket`: this end's.
  MP_DECL void acquire(pipe_segment_lease& lease, std::size_t size, pipe_segment_signals& signals,
                       const std::atomic<std::uint32_t>& taken, const std::atomic<std::uint32_t>& broken, int socket);

 private:
  friend class pipe_segment_lease;
  MP_DECL void drop_all() noexcept;
  std::mutex mutex_;
  std::vector<pipe_segment*> segments_;
  std::uint64_t next_token_ = 1;
  int pid_ = 0;
};

/// A receiving end's read-only mappings of the segments it received (per process; thread-safe). A sender recycles
/// its segments, so the same few files come back: mapping one again per message would cost its page tables each
/// time (measured here: mmap + copy + munmap of 16 MiB at ~470 MB/s, preadv ~1 GB/s, a copy out of a mapping kept
/// ~4 GB/s). Only segments sealed against shrinking (F_SEAL_SHRINK: no page of the mapping can vanish, so no
/// SIGBUS) on shmem (not hugetlbfs, whose faults can fail) and at most pipe_segment_budget long are mapped; at most
/// pipe_segments_kept + 1 mappings are kept, the least recently used one unmapped first. A kept mapping keeps its
/// file alive after its sender dropped it, so the kept bytes are bounded as the sender's are.
class segment_mappings {
 public:
  segment_mappings() = default;
  segment_mappings(const segment_mappings&) = delete;
  segment_mappings& operator=(const segment_mappings&) = delete;
  MP_DECL ~segment_mappings();
  /// A mapping of at least `length` bytes of the file `fd` (identified by `device`/`inode`, `file_size` long), or
  /// null if it is not to be mapped (then the caller preads).
  MP_DECL const std::byte* find_or_map(int fd, std::uint64_t device, std::uint64_t inode, std::size_t file_size,
                                       std::size_t length) noexcept;

 private:
  struct mapping {
    std::uint64_t device = 0, inode = 0;
    const std::byte* data = nullptr;
    std::size_t length = 0;
    std::uint64_t used = 0;
  };
  MP_DECL void drop_all() noexcept;
  std::mutex mutex_;
  std::vector<mapping> mappings_;
  std::uint64_t clock_ = 0;
  int pid_ = 0;
};

/// A segment received beside a blob frame, read once (out of a kept mapping, or by preadv); marks it done for its
/// sender when read (or dropped unread).
class received_segment {
 public:
  /// valid() is false unless `fd` is a memfd holding at least the header and `size` payload bytes. `signals`: the
  /// direction's, told when the segment is done (a sender may be waiting for it).
  MP_DECL received_segment(unique_fd fd, std::size_t size, pipe_segment_signals* signals,
                           segment_mappings* mappings);
  received_segment(const received_segment&) = delete;
  received_segment& operator=(const received_segment&) = delete;
  MP_DECL ~received_segment();

  bool valid() const noexcept { return valid_; }
  std::size_t size() const noexcept { return size_; }
  /// Copies the payload to `out` (size() bytes): false if the segment no longer holds them (a sender that shrank
  /// it: hostile). Marks the segment done.
  MP_DECL bool read_into(std::byte* out) noexcept;

 private:
  MP_DECL void mark_done() noexcept;
  unique_fd fd_;
  std::size_t size_ = 0;
  pipe_segment_signals* signals_ = nullptr;
  const std::byte* mapped_ = nullptr;  // the segment in a kept mapping, or null: preadv
  std::uint64_t token_ = 0;
  bool have_token_ = false;
  bool valid_ = false;
  bool done_ = false;
};

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/pipe_segments.ipp>
#endif
