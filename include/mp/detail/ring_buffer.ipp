// ring_buffer: definitions (see ring_buffer.hpp): creation, recovery after a death, streamed items, and the waits.
#pragma once

#include <sched.h>

#include <algorithm>
#include <new>
#include <string>

#include <mp/detail/cpu_load.hpp>
#include <mp/detail/ring_buffer.hpp>

namespace mp::detail {

MP_DECL std::size_t ring_buffer::round_capacity(std::size_t requested) {
  if (requested > max_capacity)
    throw Error("Queue capacity_bytes = " + std::to_string(requested) + " is over the limit of " +
                std::to_string(max_capacity) + " bytes (4 GiB); items larger than the ring stream through it, "
                "so a smaller ring works for any item size");
  std::size_t capacity = min_capacity;
  while (capacity < requested) capacity <<= 1;
  return capacity;
}

MP_DECL ring_header* ring_buffer::create(void* memory, std::size_t capacity, std::size_t maxsize,
                                        std::size_t segment_threshold, std::size_t segment_limit) {
  auto* header = new (memory) ring_header();
  header->capacity = capacity;
  header->maxsize = maxsize;
  header->segment_threshold = segment_threshold;
  header->segment_limit = segment_limit;
  return header;
}

// Spin for ring_spin_time (reading only: the other side keeps its cache lines), then register as a sleeper and
// sleep on the futex until woken or `until`. `ready` must read with seq_cst (the Dekker argument above).
template <class Ready>
bool ring_buffer::wait_until_ready(ring_wake_word& word, Ready&& ready, const deadline& until) {
  if (ready()) return true;
  auto now = std::chrono::steady_clock::now();
  if (until && now >= *until) return false;
  // First a tight spin (the other side is usually running on the other CPU and answers within a µs), then a spin
  // that yields the CPU between looks: on a busy machine the other side may be waiting for this very CPU.
  // (Not clock.hpp's spin_until: that one spins tightly for its whole budget and knows no deadline. One clock read
  // serves both the deadline and the spin's end, hence `now` rather than expired(until). sched_yield bypasses the
  // syscall seam: it cannot fail on Linux, and nothing would change if it did.)
  // With more runnable threads than CPUs, the other side may be waiting for this very CPU: only the tight spin,
  // then one yield before sleeping (cpu_load.hpp; the answer is at most 10 ms old).
  const bool crowded = cpus_oversubscribed(static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count()));
  const auto tight_end = now + ring_spin_time / 8;
  const auto spin_end = crowded ? tight_end : now + ring_spin_time;
  for (;;) {
    for (int i = 0; i < 32; ++i) {
      cpu_relax();
      if (ready()) return true;
    }
    now = std::chrono::steady_clock::now();
    if (now >= spin_end || (until && now >= *until)) break;
    if (now >= tight_end) {
      ::sched_yield();
      if (ready()) return true;
    }
  }
  if (crowded) {
    ::sched_yield();
    if (ready()) return true;
  }
  for (;;) {
    const std::uint32_t seq = word.seq.load(std::memory_order_seq_cst);
    word.sleeping.store(1, std::memory_order_seq_cst);
    if (ready()) return true;  // a flag left raised costs one spare wake-up at most
    // Bounded sleeps: a waker SIGKILLed inside wake() (after clearing `sleeping`, before its futex_wake) must not
    // leave this waiter asleep for good.
    const bool in_time = futex_wait_bounded(word.seq, seq, until);
    if (ready()) return true;
    if (!in_time) return false;
  }
}

MP_DECL void ring_buffer::recover_producers() {
  auto& p = header_->producers;
  if (p.journal.valid.load(std::memory_order_acquire) != 0) {
    // Died while publishing: if its header word is out, the record is visible to consumers, so finish the commit.
    if (slot(p.journal.position.load(std::memory_order_relaxed)).load(std::memory_order_acquire) != 0) {
      p.tail.store(p.journal.index.load(std::memory_order_relaxed), std::memory_order_relaxed);
      p.put_count.store(p.journal.count.load(std::memory_order_relaxed), std::memory_order_release);
      p.segment_bytes.store(p.journal.segment_bytes.load(std::memory_order_relaxed), std::memory_order_release);
      p.in_item.store(p.journal.in_item.load(std::memory_order_relaxed), std::memory_order_relaxed);
    }
    p.journal.valid.store(0, std::memory_order_release);
  }
  // A producer sleeping for room holds the mutex, so after a death nobody else can be registered there.
  header_->space_ready.sleeping.store(0, std::memory_order_seq_cst);
  if (p.in_item.load(std::memory_order_relaxed) != 0) {
    // Its item can never be completed: tell consumers to drop what they took of it. Room for 16 bytes always comes
    // (consumers drain the partial item).
    reserve(record_size(0), {});
    publish(record_kind::abort, 0, false, 0);
  }
}

// Spins, then sleeps, until consumers have freed the data up to end_position (wait_for_room's slow path).
MP_DECL bool ring_buffer::wait_for_head(std::uint64_t end_position, const deadline& until) {
  auto& p = header_->producers;
  auto& c = header_->consumers;
  return wait_until_ready(
      header_->space_ready,
      [&] {
        const auto head = c.head.load(std::memory_order_seq_cst);
        p.head_seen.store(head, std::memory_order_relaxed);
        return end_position - head <= capacity_;
      },
      until);
}

// Spins, then sleeps, until consumers have taken enough items that `put` is below maxsize (wait_below_maxsize's
// slow path).
MP_DECL bool ring_buffer::wait_for_get_count(std::uint64_t put, const deadline& until) {
  const std::uint64_t maxsize = header_->maxsize;
  auto& p = header_->producers;
  auto& c = header_->consumers;
  return wait_until_ready(
      header_->space_ready,
      [&] {
        // get_count is stored before head (seq_cst), so reading head first orders this read after it.
        c.head.load(std::memory_order_seq_cst);
        const auto taken = c.get_count.load(std::memory_order_seq_cst);
        p.taken_seen.store(taken, std::memory_order_relaxed);
        return put - taken < maxsize;
      },
      until);
}

MP_DECL void ring_buffer::put_streamed(std::span<const std::byte> payload) {
  auto& p = header_->producers;
  // First chunk: the total size (8 bytes), then as much of the payload as fits; chunks are at most capacity/8 so
  // that a producer and a consumer work on different chunks at once.
  const std::size_t max_chunk = capacity_ / 8 - 8;
  const std::uint64_t total = payload.size();
  std::size_t sent = 0;
  bool first = true;
  while (first || sent < payload.size()) {
    const std::size_t prefix = first ? sizeof total : 0;
    std::size_t length = std::min(max_chunk, payload.size() - sent + prefix);
    // Shorten a chunk to end exactly at the data end rather than wrap, unless that leaves a sliver.
    const auto tail = p.tail.load(std::memory_order_relaxed);
    const std::size_t to_end = capacity_ - static_cast<std::size_t>(tail & mask_);
    if (record_size(length) > to_end && to_end >= 8 + 4096) length = (to_end - 8) & ~std::size_t{7};
    reserve(record_size(length), {});
    const auto start = p.tail.load(std::memory_order_relaxed) + 8;
    std::byte* out = at(start);
    if (first) std::memcpy(out, &total, sizeof total);
    std::memcpy(out + prefix, payload.data() + sent, length - prefix);
    sent += length - prefix;
    const bool last = sent == payload.size();
    publish(first ? record_kind::first : (last ? record_kind::last : record_kind::middle), length, first,
            last && !first ? 0 : 1);
    if (first && last) {
      // Cannot happen (streamed items exceed a chunk), but never leave in_item set.
      publish(record_kind::last, 0, false, 0);
    }
    first = false;
  }
}

MP_DECL ring_status ring_buffer::put_segment(int fd, std::size_t size, const deadline& until) {
  if (mailbox_ < 0) throw Error("Queue: this ring has no mailbox for large items");
  auto& p = header_->producers;
  if (!p.mutex.try_lock_until(until)) return ring_status::busy;
  wake_after_unlock wake_consumer;
  unlock_on_exit unlock{p.mutex};
  if (p.mutex.previous_owner_died() || p.journal.valid.load(std::memory_order_acquire) != 0 ||
      p.in_item.load(std::memory_order_relaxed) != 0)
    recover_producers();
  if (!wait_below_maxsize(until)) return ring_status::full_items;
  if (!wait_for_segment_room(size, until)) return ring_status::full_segments;
  const std::size_t bytes = record_size(sizeof(segment_record));
  if (!reserve(bytes, until)) return ring_status::full_bytes;
  // The tag is used up before the post: a producer killed after posting leaves a message whose tag no record will
  // ever carry (consumers drop it), never one that a later record's tag matches.
  const segment_record record{p.next_tag.load(std::memory_order_relaxed), size};
  p.next_tag.store(record.tag + 1, std::memory_order_relaxed);
  if (!fd_mailbox_post(mailbox_, record.tag, fd, until)) return ring_status::full_segments;
  std::memcpy(at(p.tail.load(std::memory_order_relaxed) + 8), &record, sizeof record);
  publish(record_kind::segment, sizeof record, true, 0, false, size);
  wake_consumer.word = &header_->data_ready;
  return ring_status::ok;
}

// Spins, then sleeps, until the segments waiting leave room for `size` more bytes (or none is waiting).
MP_DECL bool ring_buffer::wait_for_segment_room(std::size_t size, const deadline& until) {
  auto& p = header_->producers;
  auto& c = header_->consumers;
  const std::uint64_t limit = header_->segment_limit;
  const std::uint64_t put = p.segment_bytes.load(std::memory_order_relaxed);
  return wait_until_ready(
      header_->space_ready,
      [&] {
        const std::uint64_t waiting = put - c.segment_bytes.load(std::memory_order_seq_cst);
        return waiting == 0 || (waiting <= limit && size <= limit - waiting);
      },
      until);
}

// The descriptor of the segment record tagged `tag` (consumers.mutex held); empty if it is gone.
MP_DECL unique_fd ring_buffer::take_segment(std::uint64_t tag) {
  if (mailbox_ < 0) throw Error("Queue: this ring has no mailbox for large items");
  for (;;) {
    const auto oldest = fd_mailbox_peek(mailbox_);
    if (!oldest || *oldest > tag) return {};  // taken by a consumer that died before committing this record
    unique_fd fd = fd_mailbox_take(mailbox_);
    if (*oldest == tag) return fd;
    // Lower: posted by a producer that died before publishing its record; dropped (closing frees the segment).
  }
}

MP_DECL void ring_buffer::recover_consumers() {
  auto& c = header_->consumers;
  if (c.journal.valid.load(std::memory_order_acquire) != 0) {
    // Died while committing: its decision was made, finish applying it.
    c.in_item.store(c.journal.in_item.load(std::memory_order_relaxed), std::memory_order_relaxed);
    c.segment_bytes.store(c.journal.segment_bytes.load(std::memory_order_relaxed), std::memory_order_seq_cst);
    c.get_count.store(c.journal.count.load(std::memory_order_relaxed), std::memory_order_seq_cst);
    c.head.store(c.journal.index.load(std::memory_order_relaxed), std::memory_order_seq_cst);
    c.journal.valid.store(0, std::memory_order_release);
  }
  // A consumer sleeping for data holds the mutex, so after a death nobody else can be registered there.
  header_->data_ready.sleeping.store(0, std::memory_order_seq_cst);
}

MP_DECL bool ring_buffer::wait_for_record(std::uint64_t position, const deadline& until) {
  auto& word = slot(position);
  return wait_until_ready(
      header_->data_ready, [&] { return word.load(std::memory_order_seq_cst) != 0; }, until);
}

// A consumer in the middle of a streamed item with no data in sight: if no producer holds the producer mutex, the
// item's producer died (or gave up) and will never finish it; recovering the producer side appends the abort.
MP_DECL void ring_buffer::check_producer_alive() {
  auto& p = header_->producers;
  if (!p.mutex.try_lock()) return;  // a live producer is at work
  unlock_on_exit unlock{p.mutex};
  recover_producers();
}

}  // namespace mp::detail
