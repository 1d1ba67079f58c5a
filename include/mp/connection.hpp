// Connection<T>, Pipe<T>() and wait(): typed message channels between processes, as Python's
// multiprocessing.Pipe / multiprocessing.connection.Connection / multiprocessing.connection.wait.
// A duplex Pipe is a socketpair, a one-way Pipe a pipe(2); messages are length-prefixed frames of mp::serialize'd
// values (detail/wire.hpp), of any size. On a socketpair a message of 256 KiB and up travels in a recycled memfd
// segment whose descriptor rides beside a small frame (detail/segment_pool.hpp); a small message to a receiver already waiting in recv() goes
// through shared memory, with no system call (detail/connection_lane.hpp). fileno(), poll() and wait() see every
// message that waits while nobody is in recv().
// Process safety: a Connection is a handle. Copies in one process share one state (close() on any copy closes it
// for that process); a copy passed to a child refers to the same end. Several processes may send on one end at
// once: each whole message is written under a process-shared lock, so bytes of two messages never interleave.
// Several receivers on one end likewise each get whole messages. A process killed while sending leaves a partial
// message in the stream: later sends and receives on that direction throw mp::Error saying so.
#pragma once

#include <chrono>
#include <concepts>
#include <cstring>
#include <cstddef>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <mp/detail/clock.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/connection_state.hpp>
#include <mp/detail/fresh_pages.hpp>
#include <mp/detail/segment_pool.hpp>
#include <mp/detail/wire.hpp>
#include <mp/errors.hpp>
#include <mp/serialize.hpp>

namespace mp {

template <class T>
class Connection;

/// A connected pair. duplex: both ends send and receive (a socketpair). !duplex: first only receives and second
/// only sends (a pipe), as Python's Pipe(duplex=False) returns (reader, writer).
template <class T>
[[nodiscard]] std::pair<Connection<T>, Connection<T>> Pipe(bool duplex = true);

/// One end of a Pipe: sends and receives values of type T (any serializable type), or raw bytes.
template <class T>
class Connection {
  static_assert(serializable<T>, "mp::Connection<T>: T must be serializable (see mp/serialize.hpp)");

 public:
  /// A closed connection (closed() is true); assign one returned by Pipe().
  Connection() = default;

  /// Sends one value; the peer's recv() returns an equal value. Throws mp::Error if the other end is closed.
  void send(const T& value);
  /// The next value; throws EOFError once the other end is closed and every message has been read.
  [[nodiscard]] T recv();

  /// True if a message (or the end of the stream) is waiting: recv() would not block. Never blocks.
  [[nodiscard]] bool poll();
  /// Waits up to `timeout` for a message (or the end of the stream); false if none arrived in time.
  template <class Rep, class Period>
  [[nodiscard]] bool poll(std::chrono::duration<Rep, Period> timeout);

  /// Sends raw bytes as one message (read them with recv_bytes on the other end).
  void send_bytes(std::span<const std::byte> bytes);
  /// The next message as raw bytes; EOFError as recv().
  [[nodiscard]] std::vector<std::byte> recv_bytes();
  /// Reads the next message into `buffer` and returns its size; BufferTooShort (the message is consumed) if it
  /// does not fit.
  std::size_t recv_bytes_into(std::span<std::byte> buffer);

  /// Closes this end in this process (every copy here sees it closed); other processes' copies stay open.
  void close() noexcept;
  /// True once closed in this process (or default-constructed).
  [[nodiscard]] bool closed() const noexcept { return !state_ || !state_->fd; }
  /// The descriptor (for mp::wait, poll(2), select(2)); throws mp::Error if closed.
  [[nodiscard]] int fileno() const;
  /// True for copies of the same end.
  friend bool operator==(const Connection& a, const Connection& b) noexcept { return a.state_ == b.state_; }

  /// How a Connection crosses to a Process started by spawn or forkserver: its descriptor and its shared locks'
  /// memory travel along (detail/handle_transfer.hpp). Anywhere else it throws SerializationError.
  void save(detail::output_archive& ar) const { detail::save_connection_state(ar, state_.get()); }
  /// In a spawned child: the same end of the same Pipe.
  void load(detail::input_archive& ar) { state_ = detail::load_connection_state(ar); }

 private:
  friend std::pair<Connection<T>, Connection<T>> Pipe<T>(bool duplex);
  explicit Connection(std::shared_ptr<detail::connection_state> state) : state_(std::move(state)) {}

  detail::connection_state& open_state(const char* operation) const;
  detail::connection_direction& outgoing(const char* operation) const;
  detail::connection_direction& incoming(const char* operation) const;
  // Receives one message: a stream frame by on_stream(fd, length), which consumes exactly `length` bytes under the
  // receive lock; a message in the lane by on_bytes(its bytes) (under the lock); a blob frame by
  // on_segment(segment_reader&) after it, which reads it with read_segment (or leaves it unread: consumed).
  template <class OnStream, class OnBytes, class OnSegment>
  void receive_message(const char* operation, OnStream&& on_stream, OnBytes&& on_bytes, OnSegment&& on_segment);
  // Copies a received segment's payload to `out`; a segment that does not hold it marks the direction corrupt.
  void read_segment(detail::segment_reader& segment, std::byte* out, const char* operation);
  // Sends a blob frame whose segment fill(std::span<std::byte>) writes; fill returns the bytes it wrote (<= size).
  template <class Fill>
  void send_segment(detail::connection_direction& direction, std::size_t size, Fill&& fill, const char* operation);

  std::shared_ptr<detail::connection_state> state_;
};

/// Waits until at least one object is ready, and returns the ready ones in their input order (Python's
/// multiprocessing.connection.wait). Objects: Connections (a message or end of stream waits), Process pointers
/// (the process ended), or descriptors as ints (Process::sentinel(), Connection::fileno(), any fd).
template <std::ranges::forward_range R>
[[nodiscard]] std::vector<std::ranges::range_value_t<R>> wait(const R& objects);
/// As wait(objects), giving up after `timeout`: then the result is empty.
template <std::ranges::forward_range R, class Rep, class Period>
[[nodiscard]] std::vector<std::ranges::range_value_t<R>> wait(const R& objects,
                                                              std::chrono::duration<Rep, Period> timeout);
/// wait({a, b, c}) with a braced list.
template <class W>
[[nodiscard]] std::vector<W> wait(std::initializer_list<W> objects);
template <class W, class Rep, class Period>
[[nodiscard]] std::vector<W> wait(std::initializer_list<W> objects, std::chrono::duration<Rep, Period> timeout);

// ---- definitions ----------------------------------------------------------------------------------------------

template <class T>
std::pair<Connection<T>, Connection<T>> Pipe(bool duplex) {
  auto [first, second] = detail::make_pipe_states(duplex);
  return {Connection<T>(std::move(first)), Connection<T>(std::move(second))};
}

template <class T>
detail::connection_state& Connection<T>::open_state(const char* operation) const {
  if (closed()) throw Error(std::string(operation) + ": the connection is closed in this process");
  return *state_;
}

template <class T>
detail::connection_direction& Connection<T>::outgoing(const char* operation) const {
  auto& state = open_state(operation);
  if (state.outgoing == nullptr)
    throw Error(std::string(operation) +
                ": this end of a one-way Pipe only receives (Pipe(false) returns {receiver, sender})");
  return *state.outgoing;
}

template <class T>
detail::connection_direction& Connection<T>::incoming(const char* operation) const {
  auto& state = open_state(operation);
  if (state.incoming == nullptr)
    throw Error(std::string(operation) +
                ": this end of a one-way Pipe only sends (Pipe(false) returns {receiver, sender})");
  return *state.incoming;
}

template <class T>
template <class Fill>
void Connection<T>::send_segment(detail::connection_direction& direction, std::size_t size, Fill&& fill,
                                 const char* operation) {
  // Written straight into a segment: the one copy on this side, made outside the direction's locks (under this
  // end's segment pool's: its other threads' big messages wait, as they would for the send lock).
  constexpr detail::segment_lending pipe_lending{.wait = true, .wait_ns = detail::pipe_segment_patience_ns,
                                                 .sealed = true, .cache_oversized = false};
  state_->sent_segments.lend(size, detail::pipe_segment_budget, detail::pipe_segments_kept, "mp-pipe-message",
                             pipe_lending, [&](detail::pooled_segment& segment) {
                               const std::size_t written = fill(segment.item(size));
                               detail::send_blob_message(*state_, direction, segment.fd.get(), written, operation);
                             });
}

template <class T>
void Connection<T>::send(const T& value) {
  auto& direction = outgoing("Connection::send");
  const int fd = state_->fd.get();
  const auto kind = state_->kind;
  if constexpr (detail::is_bitwise_v<T> && sizeof(T) < detail::pipe_segment_threshold) {
    // Its bytes are its serialized form: header and value leave in one writev, no copy.
    const auto bytes = std::as_bytes(std::span<const T, 1>(&value, 1));
    detail::frame_guard guard(direction.send_mutex, direction.sending, direction, "Connection::send");
    guard.begin();
    if (!detail::lane_try_send(direction.lane, bytes)) detail::send_frame(fd, kind, {bytes});
    guard.end();
  } else {
    if (kind == detail::fd_kind::socket) {
      const std::size_t size = serialized_size(value);
      if (size >= detail::pipe_segment_threshold) {
        send_segment(direction, size, [&](std::span<std::byte> out) {
          detail::output_archive archive(detail::output_archive::presized_tag{}, out);
          archive(value);
          return out.size() - archive.unfilled();  // a serialize member that wrote less than it measured
        }, "Connection::send");
        return;
      }
    }
    auto& buffer = detail::connection_scratch();
    buffer.assign(detail::frame_header_size, std::byte{0});
    serialize_into(buffer, value);
    {
      detail::frame_guard guard(direction.send_mutex, direction.sending, direction, "Connection::send");
      guard.begin();
      if (!detail::lane_try_send(direction.lane, std::span(buffer).subspan(detail::frame_header_size)))
        detail::send_prefixed_frame(fd, kind, buffer);
      guard.end();
    }
    detail::trim_scratch(buffer);
  }
}

template <class T>
void Connection<T>::read_segment(detail::segment_reader& segment, std::byte* out, const char* operation) {
  if (!segment.copy_to(out)) detail::reject_segment(*state_->incoming, operation, segment.size());
}

template <class T>
template <class OnStream, class OnBytes, class OnSegment>
void Connection<T>::receive_message(const char* operation, OnStream&& on_stream, OnBytes&& on_bytes,
                                    OnSegment&& on_segment) {
  auto& direction = incoming(operation);
  const int fd = state_->fd.get();
  detail::unique_fd descriptor;
  detail::frame_length length = 0;
  {
    detail::frame_guard guard(direction.recv_mutex, direction.receiving, direction, operation);
    if (detail::lane_receive(direction.lane, state_->receive_history, direction.broken, operation) ==
        detail::lane_source::slot) {
      // In the lane's slot: taken (and the slot freed) even if on_bytes throws, e.g. on bytes of another type.
      guard.begin();
      struct take {
        detail::connection_lane& lane;
        detail::frame_guard& guard;
        ~take() {
          detail::lane_taken(lane);
          guard.end();
        }
      } taking{direction.lane, guard};
      on_bytes(detail::lane_payload(direction.lane));
      return;
    }
    auto header = detail::recv_frame_header(fd, state_->kind);
    if (!header)
      throw EOFError(std::string(operation) +
                     ": the other end of the connection is closed and every message has been read");
    detail::lane_count_socket_receive(direction.lane);
    if (header->malformed) detail::reject_frame(direction, operation, header->malformed);
    if (!header->blob) {
      guard.begin();
      on_stream(fd, header->length);
      guard.end();
      return;
    }
    // A blob frame is whole once its header is in: the stream is in step, and the lock goes before the copy.
    length = header->length;
    descriptor = std::move(header->descriptor);
    detail::release_blob_window(direction, length);
  }
  detail::segment_reader segment;
  try {
    segment = detail::segment_reader(std::move(descriptor), static_cast<std::size_t>(length), operation,
                                     &state_->received_segments, detail::segment_trust::map_if_sealed);
  } catch (const SerializationError&) {
    detail::reject_segment(direction, operation, static_cast<std::size_t>(length));
  }
  on_segment(segment);  // the one copy on this side: out of the segment
}

template <class T>
T Connection<T>::recv() {
  if constexpr (detail::is_bitwise_v<T> && sizeof(T) <= 4096) {
    alignas(T) std::byte bytes[sizeof(T)];
    bool size_mismatch = false;
    detail::frame_length got_length = 0;
    receive_message(
        "Connection::recv",
        [&](int fd, detail::frame_length length) {
          got_length = length;
          if (length == sizeof(T)) {
            if (detail::read_full(fd, bytes, sizeof bytes) != sizeof bytes)
              throw EOFError("Connection::recv: the connection ended inside a message: the sender closed or died "
                             "mid-send");
          } else {
            size_mismatch = true;  // not ours to interpret: consume it whole, then report
            std::vector<std::byte> discard;
            detail::recv_frame_payload(fd, length, discard);
          }
        },
        [&](std::span<const std::byte> payload) {
          got_length = payload.size();
          size_mismatch = payload.size() != sizeof(T);
          if (!size_mismatch) std::memcpy(bytes, payload.data(), sizeof bytes);
        },
        [&](detail::segment_reader& segment) {
          got_length = segment.size();
          size_mismatch = segment.size() != sizeof(T);
          if (!size_mismatch) read_segment(segment, bytes, "Connection::recv");
        });
    if (size_mismatch)
      throw SerializationError("Connection::recv: received a message of " + std::to_string(got_length) +
                               " bytes where a " + std::to_string(sizeof(T)) +
                               "-byte value was expected: both ends must use the same Connection<T>");
    return deserialize<T>(std::span<const std::byte>(bytes, sizeof bytes));
  } else {
    auto& buffer = detail::connection_scratch();
    std::optional<T> value;
    receive_message(
        "Connection::recv",
        [&](int fd, detail::frame_length length) { detail::recv_frame_payload(fd, length, buffer); },
        [&](std::span<const std::byte> payload) { value.emplace(deserialize<T>(payload)); },
        [&](detail::segment_reader& segment) {
          // Into this end's spare buffer, kept warm for the next big message (fresh memory is slow: segment_pool.hpp).
          std::vector<std::byte> spare;
          {
            std::lock_guard lock(state_->spare_mutex);
            spare.swap(state_->spare);
          }
          struct give_back {
            detail::connection_state& state;
            std::vector<std::byte>& spare;
            ~give_back() {
              if (spare.capacity() > detail::pipe_segment_budget) return;
              std::lock_guard lock(state.spare_mutex);
              if (spare.capacity() > state.spare.capacity()) state.spare.swap(spare);
            }
          } keep{*state_, spare};
          if (spare.size() < segment.size()) {
            spare.reserve(segment.size());
            detail::advise_huge_pages(spare.data(), segment.size());
            spare.resize(segment.size());
          }
          read_segment(segment, spare.data(), "Connection::recv");
          value.emplace(deserialize<T>(std::span<const std::byte>(spare.data(), segment.size())));
        });
    if (value) return std::move(*value);
    struct trim {
      std::vector<std::byte>& b;
      ~trim() { detail::trim_scratch(b); }
    } trimmer{buffer};
    return deserialize<T>(buffer);
  }
}

template <class T>
void Connection<T>::send_bytes(std::span<const std::byte> bytes) {
  auto& direction = outgoing("Connection::send_bytes");
  if (state_->kind == detail::fd_kind::socket && bytes.size() >= detail::pipe_segment_threshold) {
    send_segment(direction, bytes.size(), [&](std::span<std::byte> out) {
      std::memcpy(out.data(), bytes.data(), bytes.size());
      return bytes.size();
    }, "Connection::send_bytes");
    return;
  }
  detail::frame_guard guard(direction.send_mutex, direction.sending, direction, "Connection::send_bytes");
  guard.begin();
  if (!detail::lane_try_send(direction.lane, bytes)) detail::send_frame(state_->fd.get(), state_->kind, {bytes});
  guard.end();
}

template <class T>
std::vector<std::byte> Connection<T>::recv_bytes() {
  std::vector<std::byte> bytes;
  receive_message(
      "Connection::recv_bytes",
      [&](int fd, detail::frame_length length) { detail::recv_frame_payload(fd, length, bytes); },
      [&](std::span<const std::byte> payload) { bytes.assign(payload.begin(), payload.end()); },
      [&](detail::segment_reader& segment) {
        // Fresh memory (glibc maps every block this big anew): on huge pages where the system has them, and copied
        // straight into when the segment is mapped, with no zero-fill of ours on top of the kernel's.
        bytes.reserve(segment.size());
        detail::advise_huge_pages(bytes.data(), segment.size());
        if (const auto mapped = segment.bytes(); !mapped.empty()) {
          bytes.assign(mapped.begin(), mapped.end());
          segment.reset();  // consumed: its sender may reuse it
          return;
        }
        bytes.resize(segment.size());
        read_segment(segment, bytes.data(), "Connection::recv_bytes");
      });
  return bytes;
}

template <class T>
std::size_t Connection<T>::recv_bytes_into(std::span<std::byte> buffer) {
  detail::frame_length length = 0;
  bool fits = true;
  receive_message(
      "Connection::recv_bytes_into",
      [&](int fd, detail::frame_length n) {
        length = n;
        if (n <= buffer.size()) {
          if (detail::read_full(fd, buffer.data(), static_cast<std::size_t>(n)) != n)
            throw EOFError("Connection::recv_bytes_into: the connection ended inside a message: the sender closed "
                           "or died mid-send");
          return;
        }
        std::vector<std::byte> discard;
        detail::recv_frame_payload(fd, n, discard);
        fits = false;
      },
      [&](std::span<const std::byte> payload) {
        length = payload.size();
        fits = payload.size() <= buffer.size();
        if (fits && !payload.empty()) std::memcpy(buffer.data(), payload.data(), payload.size());
      },
      [&](detail::segment_reader& segment) {
        length = segment.size();
        fits = segment.size() <= buffer.size();
        if (fits) read_segment(segment, buffer.data(), "Connection::recv_bytes_into");  // else consumed unread
      });
  if (!fits)
    throw BufferTooShort("Connection::recv_bytes_into: the message has " + std::to_string(length) +
                         " bytes but the buffer holds " + std::to_string(buffer.size()) +
                         "; the message was consumed (use recv_bytes() for messages of unknown size)");
  return static_cast<std::size_t>(length);
}

template <class T>
bool Connection<T>::poll() {
  return poll(std::chrono::nanoseconds(0));
}

template <class T>
template <class Rep, class Period>
bool Connection<T>::poll(std::chrono::duration<Rep, Period> timeout) {
  incoming("Connection::poll");
  return detail::wait_readable(state_->fd.get(), detail::deadline_or_forever(timeout));
}

template <class T>
void Connection<T>::close() noexcept {
  if (state_) state_->fd.reset();
}

template <class T>
int Connection<T>::fileno() const {
  return open_state("Connection::fileno").fd.get();
}

namespace detail {

/// The descriptor mp::wait watches for one object: a Connection's fileno(), a Process's sentinel(), an int itself.
template <class W>
int wait_fd(const W& object) {
  if constexpr (std::is_pointer_v<W>) {
    return wait_fd(*object);
  } else if constexpr (std::is_integral_v<W>) {
    return static_cast<int>(object);
  } else if constexpr (requires { { object.fileno() } -> std::convertible_to<int>; }) {
    return object.fileno();
  } else if constexpr (requires { { object.sentinel() } -> std::convertible_to<int>; }) {
    return object.sentinel();
  } else {
    static_assert(sizeof(W) == 0,
                  "mp::wait: this type cannot be waited on; pass Connections, Process pointers, or file "
                  "descriptors (ints such as Process::sentinel() or Connection::fileno())");
  }
}

/// The indexes of the ready descriptors, in order; empty if the deadline passed first (impl/connection.ipp).
MP_DECL std::vector<std::size_t> wait_ready(const std::vector<int>& fds, const deadline& until);

/// wait()'s body: the objects that are ready, in their input order; none if `until` passed first.
template <class R>
std::vector<std::ranges::range_value_t<R>> wait_until(const R& objects, const deadline& until) {
  std::vector<int> fds;
  for (const auto& object : objects) fds.push_back(wait_fd(object));
  const auto ready = wait_ready(fds, until);
  std::vector<std::ranges::range_value_t<R>> result;
  result.reserve(ready.size());
  std::size_t index = 0;
  auto next = ready.begin();
  for (const auto& object : objects) {
    if (next == ready.end()) break;
    if (*next == index) {
      result.push_back(object);
      ++next;
    }
    ++index;
  }
  return result;
}

}  // namespace detail

template <std::ranges::forward_range R>
std::vector<std::ranges::range_value_t<R>> wait(const R& objects) {
  return detail::wait_until(objects, {});
}

template <std::ranges::forward_range R, class Rep, class Period>
std::vector<std::ranges::range_value_t<R>> wait(const R& objects, std::chrono::duration<Rep, Period> timeout) {
  return detail::wait_until(objects, detail::deadline_or_forever(timeout));
}

template <class W>
std::vector<W> wait(std::initializer_list<W> objects) {
  return detail::wait_until(objects, {});
}

template <class W, class Rep, class Period>
std::vector<W> wait(std::initializer_list<W> objects, std::chrono::duration<Rep, Period> timeout) {
  return detail::wait_until(objects, detail::deadline_or_forever(timeout));
}

}  // namespace mp

#if MP_INCLUDE_DEFINITIONS
#include <mp/impl/connection.ipp>
#endif
