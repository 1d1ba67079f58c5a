// segment_pool: the memfd segments a thread puts large Queue items in, recycled once their consumer is done.
//
// Why recycle: a fresh segment costs its pages — allocated, zeroed and, on a VM, often faulted in by the host — on
// every item. Measured on this project's 2-CPU Firecracker VM under load: writing 1 MiB into a fresh memfd ran at
// ~150 MB/s, against GB/s into pages already touched. A recycled segment's pages are already there.
// How: a segment starts with a 64-byte header whose `consumed` word the consumer sets once it has decoded the item
// (ring_buffer's get); the producing thread keeps its last few segments (their descriptors and writable mappings)
// and writes the next item into one whose word is set, of a fitting size. A consumer that dies before setting it
// leaves that segment busy for good: the cache drops it when it needs the room (the consumer's copy died with it).
// Why not sealed (blob.hpp seals its segments): a recycled segment must stay writable; every party of a Queue
// already shares its ring, so sealing would not make a hostile party harmless there.
// Bounds: at most 4 segments and QueueOptions::large_bytes_limit bytes per thread, kept while the thread lives
// (release_cached_segments() gives them back). After fork the child drops the parent's cache (never shared).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include <mp/detail/config.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail {

/// The header in front of a recyclable segment's item.
struct segment_header {
  std::atomic<std::uint32_t> consumed{0};  // 1 once the consumer is done with the item (or the put failed)
};
inline constexpr std::size_t segment_header_bytes = 64;

/// One cached segment: its descriptor and a writable mapping of header + capacity bytes.
struct pooled_segment {
  unique_fd fd;
  std::byte* data = nullptr;
  std::size_t capacity = 0;  // item bytes (the mapping is segment_header_bytes more)
  segment_header& header() const noexcept { return *reinterpret_cast<segment_header*>(data); }
  std::span<std::byte> item(std::size_t size) const noexcept { return {data + segment_header_bytes, size}; }
};

class segment_pool {
 public:
  segment_pool() = default;
  segment_pool(const segment_pool&) = delete;
  segment_pool& operator=(const segment_pool&) = delete;
  MP_DECL ~segment_pool();

  /// A segment with room for `size` item bytes, marked busy: a consumed one from the cache, or a new one. The cache
  /// keeps at most 4 segments and `budget` bytes (a segment larger than the budget is still cached alone).
  MP_DECL pooled_segment& acquire(std::size_t size, std::size_t budget);
  /// Drops every cached segment (descriptors closed, mappings removed).
  MP_DECL void clear() noexcept;

 private:
  MP_DECL void drop(std::size_t index) noexcept;
  std::vector<pooled_segment> segments_;
  int pid_ = 0;
};

/// The calling thread's pool.
inline segment_pool& thread_segment_pool() {
  thread_local segment_pool pool;
  return pool;
}

/// Gives back the segments the calling thread keeps for reuse (their descriptors and memory).
inline void release_cached_segments() noexcept { thread_segment_pool().clear(); }

/// A received segment mapped for reading the item (and setting `consumed`), checked to hold `size` item bytes;
/// SerializationError if the descriptor is not such a segment. The destructor marks the item consumed and unmaps.
class segment_reader {
 public:
  MP_DECL segment_reader(unique_fd fd, std::size_t size);
  segment_reader(const segment_reader&) = delete;
  segment_reader& operator=(const segment_reader&) = delete;
  MP_DECL ~segment_reader();
  std::span<const std::byte> bytes() const noexcept { return {data_ + segment_header_bytes, size_}; }

 private:
  std::byte* data_ = nullptr;
  std::size_t mapped_ = 0;
  std::size_t size_ = 0;
};

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/segment_pool.ipp>
#endif
