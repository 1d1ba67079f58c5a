// queue_state: definitions (see queue_state.hpp).
#pragma once

#include <unistd.h>

#include <new>
#include <utility>

#include <mp/detail/queue_state.hpp>

namespace mp::detail {

MP_DECL bool queue_extra::join(const deadline& until) {
  for (;;) {
    const std::uint32_t count = unfinished_tasks.load(std::memory_order_seq_cst);
    if (count == 0) return true;
    if (!futex_wait(unfinished_tasks, count, until)) return unfinished_tasks.load(std::memory_order_seq_cst) == 0;
  }
}

MP_DECL std::shared_ptr<queue_state> make_queue_state(std::size_t maxsize, std::size_t capacity_bytes, bool joinable,
                                                      std::size_t large_item_threshold,
                                                      std::size_t large_bytes_limit) {
  const std::size_t capacity = ring_buffer::round_capacity(capacity_bytes);
  auto state = std::make_shared<queue_state>();
  state->segment = shm_segment::create(ring_buffer::header_bytes + capacity + sizeof(queue_extra),
                                       "mp-queue-" + std::to_string(::getpid()));
  state->mailbox = make_fd_mailbox();
  auto* base = static_cast<std::byte*>(state->segment.data());
  ring_buffer::create(base, capacity, maxsize, large_item_threshold, large_bytes_limit);
  state->ring = ring_buffer(base, state->mailbox.get());
  state->extra = new (base + ring_buffer::header_bytes + capacity) queue_extra();
  state->extra->joinable.store(joinable ? 1 : 0, std::memory_order_relaxed);
  return state;
}

MP_DECL std::shared_ptr<queue_state> attach_queue_state(unique_fd fd, unique_fd mailbox) {
  auto state = std::make_shared<queue_state>();
  state->segment = shm_segment::from_fd(std::move(fd), "mp-queue (received)");
  state->mailbox = std::move(mailbox);
  auto* base = static_cast<std::byte*>(state->segment.data());
  if (state->segment.size() < ring_buffer::header_bytes + sizeof(queue_extra)) {
    throw SerializationError("mp::deserialize: a Queue's shared block is " + std::to_string(state->segment.size()) +
                             " bytes, too small for a queue");
  }
  state->ring = ring_buffer(base, state->mailbox.get());
  const std::size_t capacity = state->ring.capacity();
  if (capacity > state->segment.size() - ring_buffer::header_bytes - sizeof(queue_extra)) {
    throw SerializationError("mp::deserialize: a Queue's ring claims " + std::to_string(capacity) +
                             " bytes but its block holds " + std::to_string(state->segment.size()));
  }
  state->extra = reinterpret_cast<queue_extra*>(base + ring_buffer::header_bytes + capacity);
  return state;
}

MP_DECL void throw_full(const ring_buffer& ring, ring_status status, const char* operation,
                        const std::string& timeout) {
  std::string message = operation;
  if (!timeout.empty()) message += " timed out after " + timeout;
  switch (status) {
    case ring_status::full_items:
      message += ": the queue is full (maxsize " + std::to_string(ring.maxsize()) + ")";
      break;
    case ring_status::full_segments:
      message += ": the queue's large items not yet taken hold " + std::to_string(ring.segment_bytes_waiting()) +
                 " bytes (QueueOptions::large_bytes_limit " + std::to_string(ring.segment_limit()) +
                 "); take items sooner or raise the limit";
      break;
    case ring_status::full_bytes:
      message += ": the queue's ring buffer is full (" + std::to_string(ring.capacity()) +
                 " bytes of items not yet taken); raise QueueOptions::capacity_bytes or take items sooner";
      break;
    default:
      if (ring.maxsize() != 0 && ring.size() >= ring.maxsize())
        message += ": the queue is full (maxsize " + std::to_string(ring.maxsize()) + ")";
      else
        message += ": other processes were putting, or waiting for room, the whole time";
      break;
  }
  throw Full(message);
}

MP_DECL void throw_empty(const char* operation, const std::string& timeout) {
  if (!timeout.empty()) throw Empty(std::string(operation) + " timed out after " + timeout);
  throw Empty(std::string(operation) + ": the queue is empty");
}

}  // namespace mp::detail
