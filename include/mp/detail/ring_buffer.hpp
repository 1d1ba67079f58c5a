// ring_buffer: the multi-producer multi-consumer byte ring in shared memory under every mp::Queue.
//
// Layout: a ring_header (producer side, consumer side and two wake-up words, each on its own cache line) followed by
// `capacity` bytes of data (a power of two). Items are records: an 8-byte header word then the payload, padded to 8.
// Positions are absolute 64-bit byte counts (never wrap in practice); the offset in the data is position & mask.
//
// Publication is the header word itself, not a shared tail index: a producer writes the payload, zeroes the header
// slot that follows its record, then stores its header (release). A consumer at `head` acquires that word: zero
// means "nothing yet", anything else is a complete record. So a consumer never reads the producers' cache line, and
// one cache-line transfer carries several small records at once (the batching that makes 8-byte items cheap).
// Invariant: the header slot at the producers' tail is always zero (the previous record zeroed it; the memfd starts
// zero-filled), so a non-zero word there means "published".
//
// Concurrency: producers serialize on producers.mutex, consumers on consumers.mutex (robust mutexes); a producer
// and a consumer run in parallel, like an SPSC ring. Whoever waits (a producer for space, a consumer for data) holds
// its side's mutex while waiting, so at most one process sleeps on each wake-up word; the others sleep on the mutex.
// Waits spin (tightly for ~2 µs, then yielding the CPU between looks, ~20 µs in all), then sleep on a futex; the
// other side issues a futex wake only when a sleeper has raised its flag, once per sleep (Dekker: raise flag then
// re-check, against store then check flag; the store-load barrier is a seq_cst store, or for the last store of a
// put or get the mutex release that follows it, see wake_after_unlock).
//
// Large items (from QueueOptions::large_item_threshold up, 256 KiB by default) do not enter the ring: each is written
// once into a memfd segment (segment_pool.hpp: recycled by its producing thread once consumed) whose descriptor
// waits in the queue's mailbox socket
// (fd_mailbox.hpp); the ring holds a 16-byte `segment` record {tag, size}. Producers post the descriptor and publish
// the record under their mutex, so mailbox messages and segment records are in the same order, tags increasing.
// A consumer that reads a segment record takes the mailbox's oldest message: a lower tag is an orphan (its producer
// died between posting and publishing: closed), a higher tag or none means the record's descriptor was taken by a
// consumer that died before its commit (the record is skipped: that item is the loss). It commits, unlocks, and
// maps the segment outside the lock, so consumers decode large items in parallel. The bytes of segments posted and
// not yet taken are bounded (ring_header::segment_limit; one segment passes alone whatever its size).
// Other items larger than capacity/4 stream through the ring as chunks (first, middle..., last); a producer holds
// its mutex for the whole item, so chunks of two items never interleave.
//
// Robustness (a process SIGKILLed anywhere): every state change of a side is a "commit" of a few words, written
// first to that side's journal (valid flag last), then applied, then the journal is cleared. The next holder of a
// mutex whose owner died finds the journal valid and re-applies it (roll-forward), so the words never disagree.
// A consumer that dies mid-record (before its commit) leaves the record in place: the next consumer takes it. One
// that dies in the middle of a streamed item leaves consumers.in_item set: the next consumer discards the rest of
// that item (the only loss). A producer that dies in the middle of a streamed item leaves producers.in_item set:
// the next producer (or a consumer starved in mid-item, which checks the producer mutex every 100 ms) appends an
// abort record, and consumers drop the partial item.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>

#include <mp/detail/clock.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/fd_mailbox.hpp>
#include <mp/detail/futex.hpp>
#include <mp/detail/robust_mutex.hpp>
#include <mp/detail/segment_pool.hpp>
#include <mp/detail/unique_fd.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

/// How long a waiter watches for its condition before sleeping in the kernel (a cross-CPU futex wake-up costs
/// ~50 µs on a small VM; a spin that finds the condition costs well under 1 µs).
inline constexpr std::chrono::nanoseconds ring_spin_time{20'000};
/// How often a consumer starved in the middle of a streamed item checks whether the producer died.
inline constexpr std::chrono::milliseconds ring_producer_check_period{100};

/// Test seam (fault injection): called by a consumer right after it has taken the first chunk of a streamed item,
/// i.e. while it is inside get() in the middle of an item. nullptr in production.
inline void (*ring_mid_item_hook)() = nullptr;
/// Test seam: called by a consumer that has taken a segment's descriptor from the mailbox and mapped it, before it
/// decodes the item (and, if `ring_segment_hook_before_commit`, before its commit too). nullptr in production.
inline void (*ring_segment_hook)() = nullptr;
inline bool ring_segment_hook_before_commit = false;

enum class record_kind : std::uint32_t { whole = 1, first = 2, middle = 3, last = 4, abort = 5, wrap = 6, segment = 7 };

// The payload of a segment record: the mailbox tag of its descriptor and the segment's size.
struct segment_record {
  std::uint64_t tag = 0;
  std::uint64_t size = 0;
};

inline constexpr std::uint64_t record_header(record_kind kind, std::uint64_t length) noexcept {
  return (static_cast<std::uint64_t>(kind) << 32) | length;
}
inline constexpr record_kind header_kind(std::uint64_t header) noexcept {
  return static_cast<record_kind>(header >> 32);
}
inline constexpr std::size_t header_length(std::uint64_t header) noexcept {
  return static_cast<std::size_t>(header & 0xffff'ffffU);
}
inline constexpr std::size_t record_size(std::size_t length) noexcept { return 8 + ((length + 7) & ~std::size_t{7}); }

// A commit in flight: what the side's words will be once it is applied. valid is written last and cleared last.
struct ring_journal {
  std::atomic<std::uint64_t> position{0};  // producers: where the record being published starts
  std::atomic<std::uint64_t> index{0};     // the new tail (producers) or head (consumers)
  std::atomic<std::uint64_t> count{0};     // the new put_count / get_count
  std::atomic<std::uint64_t> segment_bytes{0};  // the new segment_bytes
  std::atomic<std::uint32_t> in_item{0};   // the new in_item
  std::atomic<std::uint32_t> valid{0};
};

struct alignas(64) ring_producers {
  robust_mutex mutex;
  std::atomic<std::uint64_t> tail{0};        // where the next record goes; guarded by mutex
  std::atomic<std::uint64_t> put_count{0};   // items started; written under mutex, read by anyone (qsize)
  std::atomic<std::uint64_t> head_seen{0};   // consumers' head as last read; guarded by mutex (saves a miss)
  std::atomic<std::uint64_t> taken_seen{0};  // consumers' get_count as last read; guarded by mutex
  std::atomic<std::uint32_t> in_item{0};     // 1 while a streamed item is partly written; guarded by mutex
  std::atomic<std::uint64_t> next_tag{1};        // the mailbox tag of the next segment; guarded by mutex
  std::atomic<std::uint64_t> segment_bytes{0};   // bytes of segments published, ever; written under mutex
  ring_journal journal;                      // guarded by mutex
};

struct alignas(64) ring_consumers {
  robust_mutex mutex;
  std::atomic<std::uint64_t> head{0};       // the next record to read; written under mutex, read by producers
  std::atomic<std::uint64_t> get_count{0};  // items finished; written under mutex, read by anyone
  std::atomic<std::uint32_t> in_item{0};    // 1 while a streamed item is partly taken; guarded by mutex
  std::atomic<std::uint64_t> segment_bytes{0};  // bytes of segments taken, ever; written under mutex
  ring_journal journal;                     // guarded by mutex
};

// One side sleeps on seq (a futex word) after raising `sleeping`; the other side clears it, bumps seq and wakes.
struct alignas(64) ring_wake_word {
  std::atomic<std::uint32_t> seq{0};
  std::atomic<std::uint32_t> sleeping{0};
};

struct ring_header {
  std::uint64_t capacity = 0;  // data bytes: a power of two; constant after creation
  std::uint64_t maxsize = 0;   // item bound (0: none); constant after creation
  std::uint64_t segment_threshold = 0;  // items of this many bytes or more travel as segments; constant
  std::uint64_t segment_limit = 0;      // most bytes of segments posted and not yet taken; constant
  ring_producers producers;
  ring_consumers consumers;
  ring_wake_word data_ready;   // a consumer sleeps here for a record
  ring_wake_word space_ready;  // a producer sleeps here for room (bytes or maxsize)
};

// Where a consumer assembles a streamed item, reused by its thread: a fresh buffer of a MiB or more would be
// mmap'ed and page-faulted on every get (measured: a tenth of the throughput). A buffer grown past 16 MiB is
// released after its item (a 64 MiB item should not pin 64 MiB for the life of the thread).
struct assembly_buffer {
  std::unique_ptr<std::byte[]> data;
  std::size_t capacity = 0;
  std::byte* reserve(std::size_t size) {
    if (size > capacity) {
      data.reset();
      data.reset(new std::byte[size]);
      capacity = size;
    }
    return data.get();
  }
  void trim() noexcept {
    if (capacity > (std::size_t{16} << 20)) {
      data.reset();
      capacity = 0;
    }
  }
};
inline assembly_buffer& thread_assembly_buffer() {
  thread_local assembly_buffer buffer;
  return buffer;
}

/// Why a put or get gave up (timeouts and the _nowait forms).
enum class ring_status { ok, busy, full_items, full_bytes, full_segments, empty };

class ring_buffer {
 public:
  /// Smallest and largest data capacity (the header word holds record lengths in 32 bits).
  static constexpr std::size_t min_capacity = 4096;
  static constexpr std::size_t max_capacity = std::size_t{1} << 32;

  /// The capacity actually used for a requested one: rounded up to a power of two, at least min_capacity.
  MP_DECL static std::size_t round_capacity(std::size_t requested);

  /// Bytes the header takes in front of the data (a whole number of pages keeps the data page-aligned).
  static constexpr std::size_t header_bytes = (sizeof(ring_header) + 4095) & ~std::size_t{4095};

  /// Constructs a ring in zero-filled shared memory at `memory` (header_bytes + capacity bytes). Items of at least
  /// `segment_threshold` bytes travel as segments, of which at most `segment_limit` bytes wait at once.
  MP_DECL static ring_header* create(void* memory, std::size_t capacity, std::size_t maxsize,
                                     std::size_t segment_threshold = ~std::size_t{0},
                                     std::size_t segment_limit = 0);

  ring_buffer() = default;
  /// A view of the ring at `memory`; `mailbox` is this process's descriptor of the ring's fd_mailbox (-1: none,
  /// then segments cannot be put or taken).
  explicit ring_buffer(void* memory, int mailbox = -1) noexcept
      : header_(static_cast<ring_header*>(memory)),
        data_(static_cast<std::byte*>(memory) + header_bytes),
        capacity_(header_->capacity),
        mask_(header_->capacity - 1),
        mailbox_(mailbox) {}

  std::size_t capacity() const noexcept { return capacity_; }
  std::size_t maxsize() const noexcept { return header_->maxsize; }
  /// Items put and not yet fully taken (a snapshot).
  std::size_t size() const noexcept {
    const auto taken = header_->consumers.get_count.load(std::memory_order_acquire);
    const auto put = header_->producers.put_count.load(std::memory_order_acquire);
    return put > taken ? static_cast<std::size_t>(put - taken) : 0;
  }
  /// Largest payload stored as one record; larger ones stream as chunks.
  std::size_t max_whole_payload() const noexcept { return capacity_ / 4 - 16; }
  /// Items of this many bytes or more should be put with put_segment().
  std::size_t segment_threshold() const noexcept { return static_cast<std::size_t>(header_->segment_threshold); }
  /// Most bytes of segments posted and not yet taken (one segment passes alone whatever its size).
  std::size_t segment_limit() const noexcept { return static_cast<std::size_t>(header_->segment_limit); }
  /// Bytes of segments posted and not yet taken (a snapshot).
  std::size_t segment_bytes_waiting() const noexcept {
    const auto taken = header_->consumers.segment_bytes.load(std::memory_order_acquire);
    const auto put = header_->producers.segment_bytes.load(std::memory_order_acquire);
    return put > taken ? static_cast<std::size_t>(put - taken) : 0;
  }

  /// Puts one item of `payload` bytes. Waits (spin, then futex) for the producer lock, for maxsize and for room,
  /// until `until`; on timeout returns why and nothing was published. An item larger than max_whole_payload()
  /// honours `until` only until its first chunk is published; then it finishes, waiting for consumers.
  ring_status put(std::span<const std::byte> payload, const deadline& until);

  /// Puts one large item: the segment `fd` holding `size` item bytes (segment_pool.hpp) is posted to the mailbox
  /// (a dup: the caller closes its own) and a segment record names it. Waits as put() does, and for the segment
  /// bound (full_segments on timeout).
  MP_DECL ring_status put_segment(int fd, std::size_t size, const deadline& until);

  /// Takes one item and returns consume(std::span<const std::byte>)'s result; nullopt (and `why`) if none came by
  /// `until`. consume runs on the bytes in place (inside the ring, or an assembled buffer for a streamed item);
  /// the item counts as taken even if consume throws.
  template <class F>
  auto get(F&& consume, const deadline& until, ring_status& why)
      -> std::optional<std::invoke_result_t<F&, std::span<const std::byte>>>;

 private:
  std::atomic<std::uint64_t>& slot(std::uint64_t position) const noexcept {
    return *std::launder(reinterpret_cast<std::atomic<std::uint64_t>*>(data_ + (position & mask_)));
  }
  std::byte* at(std::uint64_t position) const noexcept { return data_ + (position & mask_); }

  // Producer side (producers.mutex held). Inline: what every put runs (its waits return at once while the
  // consumers' position last seen leaves room). In ring_buffer.ipp: recovery, streaming, and the waits proper.
  MP_DECL void recover_producers();
  bool wait_for_room(std::uint64_t end_position, const deadline& until);
  MP_DECL bool wait_for_head(std::uint64_t end_position, const deadline& until);
  bool wait_below_maxsize(const deadline& until);
  MP_DECL bool wait_for_get_count(std::uint64_t put, const deadline& until);
  bool reserve(std::size_t bytes, const deadline& until);
  void publish(record_kind kind, std::size_t length, bool counts, std::uint32_t in_item, bool wake_now = true,
               std::uint64_t segment_bytes = 0);
  MP_DECL bool wait_for_segment_room(std::size_t size, const deadline& until);
  MP_DECL void put_streamed(std::span<const std::byte> payload);

  // Consumer side (consumers.mutex held). commit is inline (every get runs it); the rest is in ring_buffer.ipp.
  MP_DECL void recover_consumers();
  void commit(std::uint64_t head, std::uint64_t count, std::uint32_t in_item, bool wake_now = true,
              std::uint64_t segment_bytes = 0);
  MP_DECL unique_fd take_segment(std::uint64_t tag);
  MP_DECL bool wait_for_record(std::uint64_t position, const deadline& until);
  MP_DECL void check_producer_alive();

  // Defined in ring_buffer.ipp and used only there (by the waits).
  template <class Ready>
  static bool wait_until_ready(ring_wake_word& word, Ready&& ready, const deadline& until);
  // The first waker after a sleeper registered clears the flag and makes the one syscall; later ones see it clear,
  // so a producer racing ahead of a waking consumer does not pay a futex_wake per item.
  static void wake(ring_wake_word& word) noexcept {
    if (word.sleeping.load(std::memory_order_seq_cst) != 0 && word.sleeping.exchange(0, std::memory_order_seq_cst)) {
      word.seq.fetch_add(1, std::memory_order_seq_cst);
      futex_wake(word.seq);
    }
  }

  // The last publish/commit of a put/get wakes the other side only after the mutex is released, and with a plain
  // release store instead of a seq_cst one: the unlock between the store and the sleeper check supplies the
  // store-load barrier the Dekker argument needs. That saves one locked instruction per put and per get (~20 ns
  // here). A put or get declares it before its unlock_on_exit, so that it runs after the unlock.
  struct wake_after_unlock {
    ring_wake_word* word = nullptr;
    ~wake_after_unlock() {
      if (word == nullptr) return;
#if defined(__x86_64__) || defined(__i386__)
      // pthread_mutex_unlock (robust) releases with an atomic exchange: a locked instruction, a full barrier on x86.
      // The call is opaque to the compiler, which cannot move the sleeper check above it either.
      std::atomic_signal_fence(std::memory_order_seq_cst);
#else
      std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
      wake(*word);
    }
  };

  // Releases a side's mutex when a put or get leaves, however it leaves (unlock cannot fail for the holder; a
  // destructor must not throw anyway).
  struct unlock_on_exit {
    robust_mutex& mutex;
    ~unlock_on_exit() {
      try {
        mutex.unlock();
      } catch (...) {
      }
    }
  };

  // The commit of a get that hands its item to consume(): made even if consume throws (a value that cannot be
  // decoded is not retried), and without a wake-up of its own (wake_after_unlock does it).
  struct commit_on_exit {
    ring_buffer& ring;
    std::uint64_t head, taken;
    ~commit_on_exit() { ring.commit(head, taken + 1, 0, false); }
  };

  ring_header* header_ = nullptr;
  std::byte* data_ = nullptr;
  std::size_t capacity_ = 0;
  std::uint64_t mask_ = 0;
  int mailbox_ = -1;
};

// ---------------------------------------------------------------------------------------------------------------
// The hot path, inline: a put of a whole record, and what every get runs.

// The fast path of every put: room up to end_position as of the consumers' head last seen; else wait_for_head.
inline bool ring_buffer::wait_for_room(std::uint64_t end_position, const deadline& until) {
  if (end_position - header_->producers.head_seen.load(std::memory_order_relaxed) <= capacity_) return true;
  return wait_for_head(end_position, until);
}

// The fast path of a put to a bounded queue: below maxsize as of the consumers' get_count last seen.
inline bool ring_buffer::wait_below_maxsize(const deadline& until) {
  const std::uint64_t maxsize = header_->maxsize;
  if (maxsize == 0) return true;
  auto& p = header_->producers;
  const auto put = p.put_count.load(std::memory_order_relaxed);
  if (put - p.taken_seen.load(std::memory_order_relaxed) < maxsize) return true;
  return wait_for_get_count(put, until);
}

// Makes `bytes` contiguous bytes available at the tail (publishing a wrap record first if the data end is too
// close), plus the 8 bytes of the following header slot that publish() zeroes.
inline bool ring_buffer::reserve(std::size_t bytes, const deadline& until) {
  auto& p = header_->producers;
  for (;;) {
    const auto tail = p.tail.load(std::memory_order_relaxed);
    const std::size_t to_end = capacity_ - static_cast<std::size_t>(tail & mask_);
    if (to_end < bytes) {
      if (!wait_for_room(tail + to_end + 8, until)) return false;
      publish(record_kind::wrap, to_end - 8, false, p.in_item.load(std::memory_order_relaxed));
      continue;
    }
    return wait_for_room(tail + bytes + 8, until);
  }
}

// The record's payload is already in place at the tail (after its header slot); room was reserved.
inline void ring_buffer::publish(record_kind kind, std::size_t length, bool counts, std::uint32_t in_item,
                                 bool wake_now, std::uint64_t segment_bytes) {
  auto& p = header_->producers;
  const auto tail = p.tail.load(std::memory_order_relaxed);
  const auto next = tail + (kind == record_kind::wrap ? length + 8 : record_size(length));
  const auto count = p.put_count.load(std::memory_order_relaxed) + (counts ? 1 : 0);
  const auto bytes = p.segment_bytes.load(std::memory_order_relaxed) + segment_bytes;
  slot(next).store(0, std::memory_order_relaxed);  // keeps the invariant: the slot at the tail is zero
  p.journal.position.store(tail, std::memory_order_relaxed);
  p.journal.index.store(next, std::memory_order_relaxed);
  p.journal.count.store(count, std::memory_order_relaxed);
  p.journal.segment_bytes.store(bytes, std::memory_order_relaxed);
  p.journal.in_item.store(in_item, std::memory_order_relaxed);
  p.journal.valid.store(1, std::memory_order_release);
  // The publication. seq_cst when the sleeper check follows at once; otherwise see wake_after_unlock.
  slot(tail).store(record_header(kind, length), wake_now ? std::memory_order_seq_cst : std::memory_order_release);
  p.tail.store(next, std::memory_order_relaxed);
  p.put_count.store(count, std::memory_order_release);
  if (segment_bytes != 0) p.segment_bytes.store(bytes, std::memory_order_release);
  p.in_item.store(in_item, std::memory_order_relaxed);
  p.journal.valid.store(0, std::memory_order_release);
  if (wake_now) wake(header_->data_ready);
}

inline ring_status ring_buffer::put(std::span<const std::byte> payload, const deadline& until) {
  auto& p = header_->producers;
  if (!p.mutex.try_lock_until(until)) return ring_status::busy;
  wake_after_unlock wake_consumer;
  unlock_on_exit unlock{p.mutex};
  if (p.mutex.previous_owner_died() || p.journal.valid.load(std::memory_order_acquire) != 0 ||
      p.in_item.load(std::memory_order_relaxed) != 0)
    recover_producers();
  if (!wait_below_maxsize(until)) return ring_status::full_items;
  if (payload.size() <= max_whole_payload()) {
    const std::size_t bytes = record_size(payload.size());
    if (!reserve(bytes, until)) return ring_status::full_bytes;
    const auto tail = p.tail.load(std::memory_order_relaxed);
    if (!payload.empty()) std::memcpy(at(tail + 8), payload.data(), payload.size());
    publish(record_kind::whole, payload.size(), true, 0, false);
    wake_consumer.word = &header_->data_ready;
    return ring_status::ok;
  }
  // Only the start of a streamed item honours the deadline: room for its first chunk.
  if (!reserve(capacity_ / 8, until)) return ring_status::full_bytes;
  put_streamed(payload);
  return ring_status::ok;
}

inline void ring_buffer::commit(std::uint64_t head, std::uint64_t count, std::uint32_t in_item, bool wake_now,
                                std::uint64_t segment_bytes) {
  auto& c = header_->consumers;
  const auto bytes = c.segment_bytes.load(std::memory_order_relaxed) + segment_bytes;
  c.journal.index.store(head, std::memory_order_relaxed);
  c.journal.count.store(count, std::memory_order_relaxed);
  c.journal.segment_bytes.store(bytes, std::memory_order_relaxed);
  c.journal.in_item.store(in_item, std::memory_order_relaxed);
  c.journal.valid.store(1, std::memory_order_release);
  c.in_item.store(in_item, std::memory_order_relaxed);
  if (segment_bytes != 0) c.segment_bytes.store(bytes, std::memory_order_seq_cst);
  c.get_count.store(count, std::memory_order_release);
  // Frees the room. seq_cst when the sleeper check follows at once; otherwise see wake_after_unlock.
  c.head.store(head, wake_now ? std::memory_order_seq_cst : std::memory_order_release);
  c.journal.valid.store(0, std::memory_order_release);
  if (wake_now) wake(header_->space_ready);
}

template <class F>
auto ring_buffer::get(F&& consume, const deadline& until, ring_status& why)
    -> std::optional<std::invoke_result_t<F&, std::span<const std::byte>>> {
  using result_type = std::invoke_result_t<F&, std::span<const std::byte>>;
  auto& c = header_->consumers;
  if (!c.mutex.try_lock_until(until)) {
    why = ring_status::busy;
    return std::nullopt;
  }
  // A segment taken under the lock is mapped and decoded after it (other consumers go on meanwhile).
  unique_fd segment;
  std::size_t segment_size = 0;
  {
  wake_after_unlock wake_producer;
  unlock_on_exit unlock{c.mutex};
  if (c.mutex.previous_owner_died() || c.journal.valid.load(std::memory_order_acquire) != 0) recover_consumers();

  // skipping: the rest of an item another consumer began (it died or failed) is discarded.
  bool skipping = c.in_item.load(std::memory_order_relaxed) != 0;
  bool assembling = false;
  std::byte* item = nullptr;  // in thread_assembly_buffer()
  std::size_t item_size = 0, item_filled = 0;
  struct trimmer {
    ~trimmer() { thread_assembly_buffer().trim(); }
  } trim_on_exit;

  for (;;) {
    const auto head = c.head.load(std::memory_order_relaxed);
    const auto word = slot(head).load(std::memory_order_acquire);
    if (word == 0) {
      if (skipping || assembling) {
        // Mid-item: the rest is coming from a producer that holds its mutex until the item is done. Wait for it
        // regardless of `until` (taken chunks cannot be put back), checking now and then that it is alive.
        if (!wait_for_record(head, deadline_after(ring_producer_check_period))) check_producer_alive();
        continue;
      }
      if (!wait_for_record(head, until)) {
        why = ring_status::empty;
        return std::nullopt;
      }
      continue;
    }
    const record_kind kind = header_kind(word);
    const std::size_t length = header_length(word);
    const std::byte* payload = at(head + 8);
    const std::uint64_t taken = c.get_count.load(std::memory_order_relaxed);
    switch (kind) {
      case record_kind::wrap:
        commit(head + 8 + length, taken, c.in_item.load(std::memory_order_relaxed));
        break;
      case record_kind::segment: {
        segment_record record;
        if (length != sizeof record)
          throw Error("Queue: a segment record of " + std::to_string(length) + " bytes; the queue's memory is corrupt");
        std::memcpy(&record, payload, sizeof record);
        unique_fd fd = take_segment(record.tag);
        if (fd && ring_segment_hook != nullptr && ring_segment_hook_before_commit) ring_segment_hook();
        if (!fd) {  // its descriptor went with a consumer that died before this commit: that item is lost
          commit(head + record_size(length), taken + 1, 0, true, record.size);
          break;
        }
        commit(head + record_size(length), taken + 1, 0, false, record.size);
        wake_producer.word = &header_->space_ready;
        segment = std::move(fd);
        segment_size = static_cast<std::size_t>(record.size);
        break;
      }
      case record_kind::whole: {
        // Consume in place; commit even if consume throws (a value that cannot be decoded is not retried).
        commit_on_exit commit_taken{*this, head + record_size(length), taken};
        wake_producer.word = &header_->space_ready;
        return std::optional<result_type>(consume(std::span<const std::byte>(payload, length)));
      }
      case record_kind::first: {
        std::uint64_t total = 0;
        std::memcpy(&total, payload, sizeof total);
        if (!skipping) {
          commit(head, taken, 1);  // in_item first: if the allocation below throws, the next consumer skips it
          item = thread_assembly_buffer().reserve(static_cast<std::size_t>(total));
          item_size = static_cast<std::size_t>(total);
          item_filled = length - sizeof total;
          std::memcpy(item, payload + sizeof total, item_filled);
          assembling = true;
        }
        commit(head + record_size(length), taken, 1);
        if (ring_mid_item_hook != nullptr) ring_mid_item_hook();
        break;
      }
      case record_kind::middle:
      case record_kind::last: {
        if (assembling) {
          if (item_filled + length > item_size)
            throw Error("Queue: a streamed item overflows its announced size; the queue's memory is corrupt");
          std::memcpy(item + item_filled, payload, length);
          item_filled += length;
        }
        if (kind == record_kind::middle) {
          commit(head + record_size(length), taken, 1);
          break;
        }
        if (!assembling) {  // the end of a skipped item
          commit(head + record_size(length), taken + 1, 0);
          skipping = false;
          break;
        }
        commit_on_exit commit_taken{*this, head + record_size(length), taken};
        wake_producer.word = &header_->space_ready;
        return std::optional<result_type>(consume(std::span<const std::byte>(item, item_filled)));
      }
      case record_kind::abort:
        commit(head + record_size(length), taken + (c.in_item.load(std::memory_order_relaxed) != 0 ? 1 : 0), 0);
        skipping = assembling = false;
        item = nullptr;
        break;
      default:
        throw Error("Queue: unknown record kind " + std::to_string(static_cast<unsigned>(kind)) +
                    "; the queue's shared memory is corrupt");
    }
    if (segment) break;
  }
  }  // the consumer lock is released, the producers woken; the item counts as taken whatever happens next
  // Checks its size; marks it consumed at the end. Its mapping is kept for the next item in the same recycled segment.
  const segment_reader reader(std::move(segment), segment_size, "Queue", &thread_segment_views());
  if (ring_segment_hook != nullptr && !ring_segment_hook_before_commit) ring_segment_hook();
  return std::optional<result_type>(consume(reader.bytes()));
}

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/ring_buffer.ipp>
#endif

