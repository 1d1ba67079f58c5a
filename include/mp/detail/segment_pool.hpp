// segment_pool: the memfd segments a thread (or a Pool) puts large items in — Queue items, Pool arguments and
// results — recycled once their consumer is done.
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
// Bounds: at most 4 segments and a byte budget per pool (a Queue's producing thread: QueueOptions::large_bytes_limit,
// kept while the thread lives, release_cached_segments() gives them back; a Pool: pool_segment_budget for its
// arguments, per worker for its results). After fork the child drops the parent's cache (never shared).
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

/// The header in front of a recyclable segment's item.
struct segment_header {
  std::atomic<std::uint32_t> consumed{0};  // 1 once the consumer is done with the item (or the put failed)
};
/// The consumer's end of an item: marks it consumed and wakes a producer sleeping for the segment (acquire).
MP_DECL void mark_consumed(segment_header& header) noexcept;
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

  /// A segment with room for `size` item bytes, marked busy: a consumed one from the cache, or a new one named
  /// `label` (in /proc/<pid>/fd and errors). The cache keeps at most `most` segments and `budget` bytes (a segment larger
  /// than the budget is still cached alone). With `wait`, a producer whose fitting segments are all being read sleeps
  /// up to `wait_ns` for one to be consumed (keeping it in step with its consumer on warm pages: the consumer's
  /// release wakes it); without, it makes a new one at once.
  MP_DECL pooled_segment& acquire(std::size_t size, std::size_t budget, const char* label = "mp-queue-item",
                                  bool wait = true, std::size_t most = 4, std::uint64_t wait_ns = 2'000'000);
  /// Drops every cached segment (descriptors closed, mappings removed).
  MP_DECL void clear() noexcept;

 private:
  MP_DECL void drop(std::size_t index) noexcept;
  std::vector<pooled_segment> segments_;
  int pid_ = 0;
};

/// A segment_pool that several threads share (a Pool's big arguments, written by submitting threads and by the
/// dispatcher): write() fills a recycled segment under the pool's mutex and returns a descriptor of it to send.
class shared_segment_pool {
 public:
  /// A descriptor of a segment holding `size` item bytes written by fill(std::span<std::byte>); the segment stays
  /// in the cache (at most `most`, `budget` bytes) and is reused once its reader marked it consumed. A fill that throws
  /// leaves the segment free. (`most`: as many as may be in flight at once, else the oldest busy one is dropped.)
  template <class Fill>
  unique_fd write(std::size_t size, std::size_t budget, std::size_t most, const char* label, Fill&& fill) {
    std::lock_guard lock(mutex_);
    pooled_segment& s = pool_.acquire(size, budget, label, false, most);
    try {
      fill(s.item(size));
      return duplicate(s.fd.get(), label);
    } catch (...) {
      s.header().consumed.store(1, std::memory_order_release);
      throw;
    }
  }
  /// Drops the cached segments (those still being read live on in their readers).
  void clear() noexcept {
    std::lock_guard lock(mutex_);
    pool_.clear();
  }

 private:
  MP_DECL static unique_fd duplicate(int fd, const char* label);
  std::mutex mutex_;
  segment_pool pool_;
};

/// The calling thread's pool.
inline segment_pool& thread_segment_pool() {
  thread_local segment_pool pool;
  return pool;
}

/// Gives back the segments the calling thread keeps for reuse (their descriptors and memory).
inline void release_cached_segments() noexcept { thread_segment_pool().clear(); }

/// A received segment mapped for reading the item (and setting `consumed`), checked to hold `size` item bytes;
/// SerializationError (naming `what`) if the descriptor is not such a segment. The destructor marks the item
/// consumed and unmaps.
class segment_reader {
 public:
  MP_DECL segment_reader(unique_fd fd, std::size_t size, const char* what = "Queue");
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
