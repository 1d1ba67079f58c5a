// queue_state: what an mp::Queue handle holds in each process, and what a queue keeps beside its ring: the shared
// block (ring_buffer.hpp's ring, then the words JoinableQueue adds), created here or attached from a descriptor a
// spawned child received, the unfinished-task count that put(), task_done() and join() keep, and the messages of
// Full and Empty (out of line: a Queue<T> for each T need not compile them again).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <mp/detail/clock.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/fd_mailbox.hpp>
#include <mp/detail/futex.hpp>
#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/ring_buffer.hpp>
#include <mp/detail/shm_segment.hpp>
#include <mp/detail/unique_fd.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

// Shared memory after the ring's data: what JoinableQueue adds.
struct queue_extra {
  std::atomic<std::uint32_t> joinable{0};          // constant after creation
  std::atomic<std::uint32_t> unfinished_tasks{0};  // futex word: put() adds one, task_done() removes one

  bool is_joinable() const noexcept { return joinable.load(std::memory_order_relaxed) != 0; }
  /// put() of a JoinableQueue, before the item can be taken: so that join() never sees zero while an item is in
  /// flight (as Python).
  void add_unfinished() noexcept { unfinished_tasks.fetch_add(1, std::memory_order_seq_cst); }
  /// Takes back add_unfinished() for an item that was not put after all (a timeout, an exception).
  void remove_unfinished() noexcept {
    if (unfinished_tasks.fetch_sub(1, std::memory_order_seq_cst) == 1) futex_wake(unfinished_tasks);
  }
  /// task_done(): one item fully processed; wakes join() at zero. Throws mp::Error if none was unfinished.
  void task_done();
  /// join(): waits until no task is unfinished, or `until`; false on timeout.
  MP_DECL bool join(const deadline& until);
};

// The per-process state behind every copy of one queue handle.
struct queue_state {
  shm_segment segment;
  unique_fd mailbox;  // where large items' descriptors wait (fd_mailbox.hpp)
  ring_buffer ring;
  queue_extra* extra = nullptr;
  bool closed = false;

  /// The open files behind segment and mailbox (fd_identity), found at the first call: what a Queue sent with
  /// every Pool task tells the pool instead of an fstat per task.
  std::pair<fd_identity, fd_identity> identities() const {
    std::call_once(identified_, [&] { identities_ = {identity_of(segment.fd()), identity_of(mailbox.get())}; });
    return identities_;
  }

 private:
  mutable std::once_flag identified_;
  mutable std::pair<fd_identity, fd_identity> identities_;
};

/// A new queue: a ring of `capacity_bytes` (rounded up, ring_buffer::round_capacity) that holds at most `maxsize`
/// items (0: no bound), then its queue_extra; items of `large_item_threshold` bytes or more travel as segments, at
/// most `large_bytes_limit` bytes of them waiting at once.
MP_DECL std::shared_ptr<queue_state> make_queue_state(std::size_t maxsize, std::size_t capacity_bytes, bool joinable,
                                                      std::size_t large_item_threshold,
                                                      std::size_t large_bytes_limit);

/// A spawned child's view of a queue whose block and mailbox arrived as descriptors (Queue::load);
/// SerializationError if the block is too small for the ring it claims to hold.
MP_DECL std::shared_ptr<queue_state> attach_queue_state(unique_fd fd, unique_fd mailbox);

/// Where put() serializes an item, reused by its thread (released after an item of more than 4 MiB).
inline std::vector<std::byte>& queue_scratch() {
  thread_local std::vector<std::byte> scratch;
  return scratch;
}

/// Throws Full for a put that gave up with `status`: "Queue::put timed out after 250 ms: the queue is full
/// (maxsize 8)". `timeout` is empty for the _nowait forms.
[[noreturn]] MP_DECL void throw_full(const ring_buffer& ring, ring_status status, const char* operation,
                                     const std::string& timeout);
/// Throws Empty for a get that found no item ("Queue::get timed out after 250 ms", "Queue::get_nowait: the queue
/// is empty").
[[noreturn]] MP_DECL void throw_empty(const char* operation, const std::string& timeout);

// ---------------------------------------------------------------------------------------------------------------

// Inline: one atomic operation per item in the common case.
inline void queue_extra::task_done() {
  std::uint32_t count = unfinished_tasks.load(std::memory_order_seq_cst);
  do {
    if (count == 0)
      throw Error("JoinableQueue::task_done() called more times than items were put (Python's ValueError); call "
                  "it once per item taken with get()");
  } while (!unfinished_tasks.compare_exchange_weak(count, count - 1, std::memory_order_seq_cst));
  if (count == 1) futex_wake(unfinished_tasks);
}

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/queue_state.ipp>
#endif
