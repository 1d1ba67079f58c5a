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
// Sealing: a Queue's or Pool's segments are not sealed (every party already shares the ring, so sealing would not
// make a hostile party harmless there). A Pipe's and a Manager connection's are (`sealed`): the peer may be any
// process, so their sizes are sealed (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), and a receiver maps only a segment
// sealed so (segment_trust: a Pipe reads a peer's unsealed descriptor by preadv, a Manager refuses it), so that a
// peer shrinking it cannot raise SIGBUS here.
// Bounds: at most 4 segments and a byte budget per pool (a Queue's producing thread: QueueOptions::large_bytes_limit,
// kept while the thread lives, release_cached_segments() gives them back; a Pool: pool_segment_budget for its
// arguments, per worker for its results; a Pipe end: pipe_segment_budget per process, connection_state.hpp). After
// fork the child drops the parent's cache (never shared).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <utility>
#include <vector>

#include <mp/detail/config.hpp>
#include <mp/detail/futex.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail {

/// The header in front of a recyclable segment's item.
struct segment_header {
  // 1 once the consumer is done with the item (or the put failed); 0 while it is being read; 2 while it is being
  // read and its producer sleeps on this word (a futex) for it.
  std::atomic<std::uint32_t> consumed{0};
};

/// Marks the item in a segment consumed (its producer may reuse the segment), waking the producer if it waits.
inline void mark_consumed(segment_header& header) noexcept {
  if (header.consumed.exchange(1, std::memory_order_acq_rel) == 2) futex_wake(header.consumed);
}
inline constexpr std::size_t segment_header_bytes = 64;

/// Queue items and Pool payloads from this size up travel in segments: below it a ring or socket copy is cheaper
/// than a hand-off of a descriptor (measured in docs/performance.md, "Big data").
inline constexpr std::size_t blob_threshold = std::size_t{256} << 10;

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
  /// With `sealed`, every new segment is sealed as acquire's `sealed` makes it (the Manager's big values: each side
  /// maps what the other made).
  explicit segment_pool(bool sealed) noexcept : sealed_(sealed) {}
  segment_pool(segment_pool&&) noexcept = default;
  segment_pool(const segment_pool&) = delete;
  segment_pool& operator=(const segment_pool&) = delete;
  MP_DECL ~segment_pool();

  /// A segment with room for `size` item bytes, marked busy: a consumed one from the cache, or a new one named
  /// `label` (in /proc/<pid>/fd and errors). The cache keeps at most `most` segments and `budget` bytes (a segment larger
  /// than the budget is still cached alone). With `wait`, a producer whose fitting segments are all being read (two or
  /// more, or one that a new segment could only push out of the cache) waits for one, keeping it in step with its consumer on warm pages: up to 2 ms, or while a consumer has been giving
  /// segments back (one was reused in the last second) up to 2 ms + 4 ns per byte (a consumer slower than
  /// 250 MB/s: a new segment then, whose fresh pages cost about as much), and at least `wait_ns`; without, it makes
  /// a new one at once.
  /// With `sealed` (or a pool made sealed), a new segment's size is sealed (see the file comment).
  MP_DECL pooled_segment& acquire(std::size_t size, std::size_t budget, const char* label = "mp-queue-item",
                                  bool wait = true, std::size_t most = 4, std::uint64_t wait_ns = 2'000'000,
                                  bool sealed = false);
  /// Drops every cached segment (descriptors closed, mappings removed).
  MP_DECL void clear() noexcept;

 private:
  MP_DECL void drop(std::size_t index) noexcept;
  std::vector<pooled_segment> segments_;
  int pid_ = 0;
  std::uint64_t reused_ns_ = 0;  // monotonic_ns() of the last reuse of a consumed segment
  bool sealed_ = false;
};

/// A new segment of header + `size` item bytes (rounded up to pages), mapped writable with its pages populated; not
/// kept by any pool (unmap_segment when done: the descriptor closes with it).
MP_DECL pooled_segment make_segment(std::size_t size, const char* label, bool sealed = false);
MP_DECL void unmap_segment(pooled_segment& segment) noexcept;

/// How a shared_segment_pool lends its segments (the Pool's arguments: the defaults; a Pipe end: all set).
struct segment_lending {
  bool wait = false;                  // segment_pool::acquire's `wait` (and `wait_ns`): in step with the reader
  std::uint64_t wait_ns = 2'000'000;
  bool sealed = false;                // segment_pool::acquire's `sealed`
  bool cache_oversized = true;        // false: an item over the budget gets a segment of its own, unmapped after use
};

/// A segment_pool that several threads share (a Pool's big arguments, written by submitting threads and by the
/// dispatcher; a Pipe end's big messages, sent by any thread of its process): lend() gives a recycled segment to a
/// callback under the pool's mutex; write() fills one and returns a descriptor of it to send.
class shared_segment_pool {
 public:
  /// Calls use(pooled_segment&) under the mutex with a segment that has room for `size` item bytes, marked busy;
  /// the segment stays in the cache (at most `most`, `budget` bytes) and is reused once its reader marked it
  /// consumed. A use that throws leaves the segment free. (`most`: as many as may be in flight at once, else the
  /// oldest busy one is dropped.)
  template <class Use>
  void lend(std::size_t size, std::size_t budget, std::size_t most, const char* label, const segment_lending& how,
            Use&& use) {
    if (!how.cache_oversized && size > budget) {  // not the pool's: no lock
      pooled_segment own = make_segment(size, label, how.sealed);
      struct unmap {
        pooled_segment& s;
        ~unmap() { unmap_segment(s); }
      } unmapper{own};
      use(own);
      return;
    }
    std::lock_guard lock(mutex_);
    pooled_segment& s = pool_.acquire(size, budget, label, how.wait, most, how.wait_ns, how.sealed);
    try {
      use(s);
    } catch (...) {
      s.header().consumed.store(1, std::memory_order_release);
      throw;
    }
  }
  /// A descriptor of a segment holding `size` item bytes written by fill(std::span<std::byte>) (lent as above).
  template <class Fill>
  unique_fd write(std::size_t size, std::size_t budget, std::size_t most, const char* label, Fill&& fill) {
    unique_fd out;
    lend(size, budget, most, label, segment_lending{}, [&](pooled_segment& s) {
      fill(s.item(size));
      out = duplicate(s.fd.get(), label);
    });
    return out;
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

/// Mappings of received segments that a consuming thread keeps, so that the next item a producer writes into the
/// same recycled segment is read without mapping it again: a fresh mapping costs its page-table entries (mmap with
/// MAP_POPULATE of 1 MiB took ~0.4 ms on this project's VM, as long as copying the item out), a kept one nothing.
/// A segment is known again by its inode (fstat of the descriptor received; the kept mapping holds the inode, so
/// no other file can have it meanwhile) and its size. At most `most_views` mappings of at most `largest_view`
/// bytes each and `budget` in all, least recently used dropped first; a mapping in use is never dropped. Kept
/// mappings hold their segments' memory after their producer let them go, up to that budget, until the thread
/// exits or release_cached_segments(); no descriptor is kept. After fork the child drops its parent's.
/// The Pool keeps one per worker for big results (parent) and one per worker for big arguments (worker); a Pipe end
/// one per process for the segments it receives. Thread-safe (a Pipe end's receivers may be several threads).
class segment_view_cache {
 public:
  explicit segment_view_cache(std::size_t most_views = 4, std::size_t largest_view = std::size_t{32} << 20,
                              std::size_t budget = std::size_t{64} << 20) noexcept
      : most_views_(most_views), largest_view_(largest_view), budget_(budget) {}
  segment_view_cache(const segment_view_cache&) = delete;
  segment_view_cache& operator=(const segment_view_cache&) = delete;
  ~segment_view_cache() { clear(); }

  /// A mapping of the whole segment `fd` (`file_bytes` long, inode `dev`/`ino`), kept or new, marked in use; nullptr
  /// if it is too large to keep (the caller maps it alone). Throws as mmap does.
  MP_DECL std::byte* acquire(int fd, std::uint64_t dev, std::uint64_t ino, std::size_t file_bytes, const char* what);
  /// The mapping at `data` (from acquire) is no longer in use.
  MP_DECL void release(const std::byte* data) noexcept;
  /// Unmaps every mapping not in use.
  MP_DECL void clear() noexcept;

 private:
  struct view {
    std::byte* data = nullptr;
    std::size_t bytes = 0;
    std::uint64_t dev = 0, ino = 0;
    std::uint32_t users = 0;
  };
  MP_DECL void drop(std::size_t index) noexcept;
  MP_DECL void clear_unlocked() noexcept;
  std::mutex mutex_;
  std::vector<view> views_;  // least recently used first
  std::size_t most_views_, largest_view_, budget_;
  int pid_ = 0;
};

/// Bytes of received segments a Queue's consuming thread keeps mapped: a producer's two alternating segments of
/// 64 MiB items (each 64 MiB + a page + the header), or one of a 128 MiB item. Mapping a 64 MiB segment anew for each
/// item (MAP_POPULATE, then munmap) took a fifth of the consumer's time in the Queue's 64 MiB row.
inline constexpr std::size_t queue_view_budget = (std::size_t{128} << 20) + (std::size_t{128} << 10);

/// The calling thread's kept mappings (a Queue's consumer: ring_buffer::get).
inline segment_view_cache& thread_segment_views() {
  thread_local segment_view_cache views(4, queue_view_budget, queue_view_budget);
  return views;
}

/// Gives back the segments the calling thread keeps for reuse (their descriptors and memory), and the mappings of
/// received segments it keeps (segment_view_cache).
inline void release_cached_segments() noexcept {
  thread_segment_pool().clear();
  thread_segment_views().clear();
}

/// How far a segment_reader trusts the process that sent it a segment.
enum class segment_trust {
  trusted,  // a process of this program sharing the ring anyway (a Queue's producer, a Pool's worker): map it
  // A peer that may be hostile (a Pipe's): the descriptor must be a memfd (never a socket, pipe or device whose read
  // could block), and only one whose size is sealed, on shmem (not hugetlbfs, whose faults can fail), is mapped, and
  // only through `keep`; any other is read by preadv (copy_to), so that a sender that shrinks it makes copy_to fail,
  // never SIGBUS.
  map_if_sealed,
  sealed_required,  // a peer that may be hostile and always seals (a Manager connection's): refuse any other
};

/// A received segment mapped for reading the item (and setting `consumed`), checked to hold `size` item bytes;
/// SerializationError (naming `what`) if the descriptor is not such a segment. The destructor marks the item
/// consumed and unmaps. With `keep`, the mapping comes from and returns to that cache (a Queue's consumer thread's,
/// a Pool worker's: the writer's recycled segments come back again and again). Empty when default-constructed.
/// `trust`: see segment_trust; with anything but `trusted`, bytes() is empty unless mapped: read with copy_to.
class segment_reader {
 public:
  segment_reader() = default;
  MP_DECL segment_reader(unique_fd fd, std::size_t size, const char* what = "Queue",
                         segment_view_cache* keep = nullptr, segment_trust trust = segment_trust::trusted);
  segment_reader(segment_reader&& other) noexcept { *this = std::move(other); }
  segment_reader& operator=(segment_reader&& other) noexcept {
    if (this != &other) {
      reset();
      data_ = std::exchange(other.data_, nullptr);
      mapped_ = other.mapped_;
      size_ = other.size_;
      cache_ = other.cache_;
      unmapped_ = std::move(other.unmapped_);
    }
    return *this;
  }
  ~segment_reader() { reset(); }
  std::span<const std::byte> bytes() const noexcept {
    return data_ == nullptr ? std::span<const std::byte>() : std::span{data_ + segment_header_bytes, size_};
  }
  std::size_t size() const noexcept { return size_; }
  explicit operator bool() const noexcept { return data_ != nullptr || unmapped_; }
  /// Copies the item to `out` (size() bytes) and marks it consumed: false if the segment no longer holds them (read
  /// by preadv from a sender that shrank it: hostile).
  MP_DECL bool copy_to(std::byte* out) noexcept;
  /// Marks the item consumed now (its writer may reuse the segment) and lets the mapping go.
  MP_DECL void reset() noexcept;

 private:
  std::byte* data_ = nullptr;
  std::size_t mapped_ = 0;  // 0: a kept mapping (cache_)
  std::size_t size_ = 0;
  segment_view_cache* cache_ = nullptr;
  unique_fd unmapped_;  // map_if_sealed: a segment read by preadv
};

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/segment_pool.ipp>
#endif
