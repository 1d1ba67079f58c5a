// Queue<T>, JoinableQueue<T>, SimpleQueue<T>: FIFO queues between processes, as Python's multiprocessing.Queue,
// JoinableQueue and SimpleQueue. Items are mp::serialize'd values of any size.
// Unlike Python's (a pipe fed by a background thread), an mp queue is a ring buffer in shared memory and put()
// writes the item into it before returning: a process may put and exit at once and nothing is lost. A large item
// (256 KiB or more by default) is written once into a memory segment of its own, whose descriptor the queue keeps
// for the consumer: put() of a 64 MiB item returns without waiting for a consumer either. When the ring is full (too
// many bytes not yet taken), or large items not yet taken hold too many bytes, put blocks until consumers make room;
// see docs/pipes-and-queues.md.
// Process safety: a Queue is a handle. Copies in one process share one state (close() on any copy closes it for
// that process); copies passed to children refer to the same queue. Any number of processes may put and get at
// once. A process killed inside get() loses at most the item it was taking; the queue stays usable for the others.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <mp/detail/clock.hpp>
#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/queue_state.hpp>
#include <mp/detail/ring_buffer.hpp>
#include <mp/detail/segment_pool.hpp>
#include <mp/errors.hpp>
#include <mp/serialize.hpp>

namespace mp {

/// Queue construction options, for designated initializers: `mp::Queue<int> q({.maxsize = 100});`
struct QueueOptions {
  /// Most items the queue holds before put() blocks (Python's maxsize); 0: no item bound.
  std::size_t maxsize = 0;
  /// Bytes of the shared ring (rounded up to a power of two, at least 4 KiB, at most 4 GiB). When items not yet
  /// taken fill it, put() blocks. Smaller items larger than a quarter of it stream through it in pieces.
  std::size_t capacity_bytes = std::size_t{1} << 20;
  /// Items whose serialized form has at least this many bytes are large: each is written once into a memfd segment
  /// (recycled by the producing thread once consumed) and only its descriptor passes through the ring (SIZE_MAX:
  /// never).
  std::size_t large_item_threshold = std::size_t{256} << 10;
  /// Most bytes of large items put and not yet taken; put() waits beyond it. One large item passes alone whatever
  /// its size, so any item fits; producers' memory stays bounded by this plus the items they are putting.
  std::size_t large_bytes_limit = std::size_t{256} << 20;
};

/// A FIFO queue between processes (multiprocessing.Queue). put/get block; the timeout and _nowait forms throw
/// Full / Empty; try_put / try_get report instead of throwing.
template <class T>
class Queue {
  static_assert(serializable<T>, "mp::Queue<T>: T must be serializable (see mp/serialize.hpp)");

 public:
  /// A queue holding at most `maxsize` items (0: no item bound) in a ring of the default size (1 MiB).
  explicit Queue(std::size_t maxsize = 0) : Queue(QueueOptions{.maxsize = maxsize}) {}
  /// A queue with explicit options: `Queue<T> q({.maxsize = 8, .capacity_bytes = 64 << 20});`
  explicit Queue(QueueOptions options) : Queue(options, false) {}
  /// mp's decoders only: an empty handle that load() fills in (no queue of its own; see detail::for_load_t).
  explicit Queue(detail::for_load_t) noexcept {}

  /// Puts an item, waiting as long as the queue is full. Throws mp::Error if this handle was closed.
  /// (Takes const T&, not T by value as in API.md: the item is serialized straight into shared memory, never copied.)
  void put(const T& item) { put_until(item, {}, "Queue::put", {}); }
  /// Puts an item, waiting at most `timeout` for room; throws Full if there was none.
  template <class Rep, class Period>
  void put(const T& item, std::chrono::duration<Rep, Period> timeout) {
    put_until(item, detail::deadline_or_forever(timeout), "Queue::put", detail::describe_timeout(timeout));
  }
  /// Puts an item if there is room right now; throws Full otherwise.
  void put_nowait(const T& item) { put_until(item, std::chrono::steady_clock::now(), "Queue::put_nowait", {}); }
  /// Puts an item if there is room right now; false otherwise.
  [[nodiscard]] bool try_put(const T& item) {
    return put_status(item, std::chrono::steady_clock::now(), "Queue::try_put") == detail::ring_status::ok;
  }

  /// Takes the oldest item, waiting as long as the queue is empty.
  [[nodiscard]] T get() { return get_until({}, "Queue::get", {}); }
  /// Takes the oldest item, waiting at most `timeout`; throws Empty if none came.
  template <class Rep, class Period>
  [[nodiscard]] T get(std::chrono::duration<Rep, Period> timeout) {
    return get_until(detail::deadline_or_forever(timeout), "Queue::get", detail::describe_timeout(timeout));
  }
  /// Takes the oldest item if there is one right now; throws Empty otherwise.
  [[nodiscard]] T get_nowait() { return get_until(std::chrono::steady_clock::now(), "Queue::get_nowait", {}); }
  /// Takes the oldest item if there is one right now; nullopt otherwise.
  [[nodiscard]] std::optional<T> try_get();

  /// Items put and not yet taken (approximate while other processes put and get, as in Python).
  [[nodiscard]] std::size_t qsize() const { return open_state("Queue::qsize").ring.size(); }
  /// True if no item is waiting (approximate, as qsize).
  [[nodiscard]] bool empty() const { return qsize() == 0; }
  /// True if maxsize items are waiting (never true without a maxsize; the ring's bytes are not counted).
  [[nodiscard]] bool full() const;
  /// The item bound given at construction (0: none).
  [[nodiscard]] std::size_t maxsize() const { return live_state().ring.maxsize(); }
  /// The ring's size in bytes (QueueOptions::capacity_bytes after rounding).
  [[nodiscard]] std::size_t capacity_bytes() const { return live_state().ring.capacity(); }

  /// This process will use the queue no more: later put/get on any copy here throw mp::Error. Other processes
  /// are unaffected and every item already put stays in the queue.
  void close() noexcept;
  /// True after close() on any copy in this process (or for a moved-from handle).
  [[nodiscard]] bool closed() const noexcept { return !state_ || state_->closed; }
  /// Python compatibility: there is no feeder thread to join, so these do nothing.
  void join_thread() noexcept {}
  void cancel_join_thread() noexcept {}

  /// How a Queue crosses to a Process started by spawn or forkserver: its ring's and its mailbox's descriptors
  /// travel along (detail/handle_transfer.hpp). As in Python, a Queue cannot travel through another Queue: that
  /// throws.
  void save(detail::output_archive& ar) const {
    const detail::queue_state& state = live_state();
    const auto [segment, mailbox] = state.identities();
    ar(detail::export_fd(ar, state.segment.fd(), "Queue", segment),
       detail::export_fd(ar, state.mailbox.get(), "Queue", mailbox));
  }
  /// In a spawned child: the same queue.
  void load(detail::input_archive& ar);

 protected:
  /// The state, unless this handle was moved from (mp::Error then).
  detail::queue_state& live_state() const;
  /// The state, unless moved from or closed in this process (mp::Error naming `operation` then).
  detail::queue_state& open_state(const char* operation) const;

 private:
  template <class U>
  friend class JoinableQueue;
  Queue(QueueOptions options, bool joinable)
      : state_(detail::make_queue_state(options.maxsize, options.capacity_bytes, joinable,
                                        options.large_item_threshold, options.large_bytes_limit)) {}

  detail::ring_status put_status(const T& item, const detail::deadline& until, const char* operation);
  detail::ring_status put_large(const T& item, std::size_t size, const detail::deadline& until);
  void put_until(const T& item, const detail::deadline& until, const char* operation, const std::string& timeout);
  std::optional<T> get_status(const detail::deadline& until, const char* operation, detail::ring_status& why);
  T get_until(const detail::deadline& until, const char* operation, const std::string& timeout);

  std::shared_ptr<detail::queue_state> state_;
};

/// A Queue whose consumers confirm each item with task_done(), so that join() can wait for all of them
/// (multiprocessing.JoinableQueue).
template <class T>
class JoinableQueue : public Queue<T> {
 public:
  explicit JoinableQueue(std::size_t maxsize = 0) : JoinableQueue(QueueOptions{.maxsize = maxsize}) {}
  explicit JoinableQueue(QueueOptions options) : Queue<T>(options, true) {}
  /// mp's decoders only: an empty handle that load() fills in.
  explicit JoinableQueue(detail::for_load_t tag) noexcept : Queue<T>(tag) {}

  /// One item taken by get() is fully processed. Throws mp::Error if called more times than items were put.
  void task_done() { this->open_state("JoinableQueue::task_done").extra->task_done(); }
  /// Waits until every item put has been confirmed with task_done().
  void join() { this->open_state("JoinableQueue::join").extra->join({}); }
  /// As join(), waiting at most `timeout`; false if items were still unfinished.
  template <class Rep, class Period>
  [[nodiscard]] bool join(std::chrono::duration<Rep, Period> timeout) {
    return this->open_state("JoinableQueue::join").extra->join(detail::deadline_or_forever(timeout));
  }
};

/// A queue without maxsize or timeouts (multiprocessing.SimpleQueue): put, get, empty, close.
template <class T>
class SimpleQueue {
 public:
  SimpleQueue() : queue_(QueueOptions{}) {}
  /// capacity_bytes is honoured; maxsize must be 0.
  explicit SimpleQueue(QueueOptions options) : queue_(check(options)) {}
  /// mp's decoders only: an empty handle that load() fills in.
  explicit SimpleQueue(detail::for_load_t tag) noexcept : queue_(tag) {}

  /// Puts an item (waits only if the ring's bytes are full).
  void put(const T& item) { queue_.put(item); }
  /// Takes the oldest item, waiting as long as the queue is empty.
  [[nodiscard]] T get() { return queue_.get(); }
  /// True if no item is waiting.
  [[nodiscard]] bool empty() const { return queue_.empty(); }
  /// How a SimpleQueue crosses to a Process started by spawn or forkserver (as Queue).
  void save(detail::output_archive& ar) const { queue_.save(ar); }
  void load(detail::input_archive& ar) { queue_.load(ar); }
  /// This process will use the queue no more (later put/get here throw mp::Error).
  void close() noexcept { queue_.close(); }

 private:
  static QueueOptions check(const QueueOptions& options);
  Queue<T> queue_;
};

// ---- definitions ----------------------------------------------------------------------------------------------

template <class T>
std::optional<T> Queue<T>::try_get() {
  detail::ring_status why{};
  return get_status(std::chrono::steady_clock::now(), "Queue::try_get", why);
}

template <class T>
bool Queue<T>::full() const {
  const auto& state = open_state("Queue::full");
  return state.ring.maxsize() != 0 && state.ring.size() >= state.ring.maxsize();
}

template <class T>
void Queue<T>::close() noexcept {
  if (state_) state_->closed = true;
}

template <class T>
void Queue<T>::load(detail::input_archive& ar) {
  std::uint32_t index = 0, mailbox = 0;
  ar(index, mailbox);
  // A Pool worker attaches once for all the tasks that carry this queue, again only after close() here.
  state_ = detail::import_shared<detail::queue_state>(
      index, "Queue",
      [mailbox](detail::unique_fd fd) {
        return detail::attach_queue_state(std::move(fd), detail::import_fd(mailbox, "Queue"));
      },
      [](const detail::queue_state& state) { return !state.closed; });
}

template <class T>
detail::queue_state& Queue<T>::live_state() const {
  if (!state_) throw Error("Queue: this handle was moved from; use a copy of the queue instead");
  return *state_;
}

template <class T>
detail::queue_state& Queue<T>::open_state(const char* operation) const {
  live_state();
  if (state_->closed)
    throw Error(std::string(operation) + ": the queue is closed in this process (close() was called)");
  return *state_;
}

template <class T>
detail::ring_status Queue<T>::put_status(const T& item, const detail::deadline& until, const char* operation) {
  auto& state = open_state(operation);
  auto* extra = state.extra;
  const bool joinable = extra->is_joinable();
  if (joinable) extra->add_unfinished();
  detail::ring_status status;
  try {
    if constexpr (detail::is_bitwise_v<T>) {
      // Its bytes are its serialized form: copied straight into the ring (or a segment).
      if (sizeof(T) >= state.ring.segment_threshold())
        status = put_large(item, sizeof(T), until);
      else
        status = state.ring.put(std::as_bytes(std::span<const T, 1>(&item, 1)), until);
    } else {
      const std::size_t size = serialized_size(item);
      if (size >= state.ring.segment_threshold() && size != 0) {
        status = put_large(item, size, until);
      } else {
        auto& buffer = detail::queue_scratch();
        buffer.clear();
        serialize_into(buffer, item);
        status = state.ring.put(buffer, until);
        if (buffer.capacity() > (std::size_t{4} << 20)) std::vector<std::byte>().swap(buffer);
      }
    }
  } catch (...) {
    if (joinable) extra->remove_unfinished();
    throw;
  }
  if (status != detail::ring_status::ok && joinable) extra->remove_unfinished();
  return status;
}

// A large item: serialized once, straight into a segment (detail/segment_pool.hpp: recycled once its consumer is
// done), whose descriptor the ring then takes.
template <class T>
detail::ring_status Queue<T>::put_large(const T& item, std::size_t size, const detail::deadline& until) {
  auto& segment = detail::thread_segment_pool().acquire(size, state_->ring.segment_limit());
  struct release_unless_put {
    detail::segment_header& header;
    bool put = false;
    ~release_unless_put() {
      if (!put) header.consumed.store(1, std::memory_order_relaxed);  // not sent: ours to reuse
    }
  } guard{segment.header()};
  const auto bytes = segment.item(size);
  if constexpr (detail::is_bitwise_v<T>) {
    std::memcpy(bytes.data(), static_cast<const void*>(&item), sizeof(T));
  } else {
    detail::output_archive archive(detail::output_archive::presized_tag{}, bytes);
    archive(item);
    if (archive.unfilled() != 0)
      throw SerializationError("Queue::put: the item's serialize member wrote " +
                               std::to_string(size - archive.unfilled()) + " bytes after measuring " +
                               std::to_string(size) + "; it must write the same bytes every time");
  }
  const auto status = state_->ring.put_segment(segment.fd.get(), size, until);
  guard.put = status == detail::ring_status::ok;
  return status;
}

template <class T>
void Queue<T>::put_until(const T& item, const detail::deadline& until, const char* operation,
                         const std::string& timeout) {
  const auto status = put_status(item, until, operation);
  if (status != detail::ring_status::ok) detail::throw_full(state_->ring, status, operation, timeout);
}

template <class T>
std::optional<T> Queue<T>::get_status(const detail::deadline& until, const char* operation,
                                      detail::ring_status& why) {
  auto& state = open_state(operation);
  return state.ring.get(
      [](std::span<const std::byte> bytes) -> T {
        if constexpr (detail::is_bitwise_v<T> && std::is_default_constructible_v<T>) {
          // Its serialized form is its bytes (see put_status): one memcpy out of the ring.
          if (bytes.size() != sizeof(T))
            throw SerializationError("Queue::get: an item of " + std::to_string(bytes.size()) + " bytes where a " +
                                     std::to_string(sizeof(T)) + "-byte value was expected");
          T value;
          std::memcpy(static_cast<void*>(&value), bytes.data(), sizeof(T));
          return value;
        } else {
          return deserialize<T>(bytes);
        }
      },
      until, why);
}

template <class T>
T Queue<T>::get_until(const detail::deadline& until, const char* operation, const std::string& timeout) {
  detail::ring_status why{};
  auto item = get_status(until, operation, why);
  if (item) return std::move(*item);
  detail::throw_empty(operation, timeout);
}

template <class T>
QueueOptions SimpleQueue<T>::check(const QueueOptions& options) {
  if (options.maxsize != 0)
    throw Error("SimpleQueue has no maxsize (got " + std::to_string(options.maxsize) + "); use Queue<T> for a "
                "bounded queue");
  return options;
}

}  // namespace mp
