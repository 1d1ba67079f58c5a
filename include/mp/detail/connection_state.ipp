// connection_state: definitions (see connection_state.hpp).
#pragma once

#include <fcntl.h>
#include <linux/sockios.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <limits>
#include <new>
#include <string>

#include <mp/detail/connection_state.hpp>
#include <mp/detail/archive.hpp>
#include <mp/detail/futex.hpp>
#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

MP_DECL std::pair<std::shared_ptr<connection_state>, std::shared_ptr<connection_state>> make_pipe_states(bool duplex) {
  int fds[2];
  fd_kind kind;
  if (duplex) {
    sys("socketpair", "AF_UNIX, SOCK_STREAM", [&] { return ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds); });
    kind = fd_kind::socket;
  } else {
    sys("pipe2", "O_CLOEXEC", [&] { return ::pipe2(fds, O_CLOEXEC); });
    kind = fd_kind::pipe;
  }
  unique_fd first_fd(fds[0]), second_fd(fds[1]);

  auto segment = std::make_shared<shm_segment>(
      shm_segment::create(sizeof(connection_shared), "mp-pipe-" + std::to_string(::getpid())));
  // Default-initialized, not value-initialized: the lanes' slots stay untouched (a fresh memfd reads as zeros anyway),
  // so a Pipe costs memory only for the pages its messages use.
  auto* shared = new (segment->data()) connection_shared;

  auto first = std::make_shared<connection_state>();
  auto second = std::make_shared<connection_state>();
  first->fd = std::move(first_fd);
  second->fd = std::move(second_fd);
  first->kind = second->kind = kind;
  first->segment = second->segment = segment;
  if (duplex) {
    first->outgoing = &shared->direction[0];
    second->incoming = &shared->direction[0];
    second->outgoing = &shared->direction[1];
    first->incoming = &shared->direction[1];
  } else {
    second->outgoing = &shared->direction[0];  // pipe: fds[1] (second) writes, fds[0] (first) reads
    first->incoming = &shared->direction[0];
  }
  return {std::move(first), std::move(second)};
}

MP_DECL void save_connection_state(output_archive& ar, const connection_state* state) {
  if (state == nullptr || !state->fd) export_fd(-1, "Connection");  // throws: the connection is closed
  const int fd = state->fd.get();
  const std::uint32_t fd_index = export_fd(ar, fd, "Connection", state->fd_identity_cache.get(fd));
  const std::uint32_t segment_index = export_fd(ar, state->segment->fd(), "Connection", state->segment->identity());
  auto* shared = static_cast<connection_shared*>(state->segment->data());
  auto direction_index = [shared](const connection_direction* direction) {
    return static_cast<std::int8_t>(direction ? direction - shared->direction : -1);
  };
  ar(fd_index, segment_index, static_cast<std::uint8_t>(state->kind), direction_index(state->outgoing),
     direction_index(state->incoming));
}

MP_DECL std::shared_ptr<connection_state> load_connection_state(input_archive& ar) {
  std::uint32_t fd_index = 0, segment_index = 0;
  std::uint8_t kind = 0;
  std::int8_t outgoing = -1, incoming = -1;
  ar(fd_index, segment_index, kind, outgoing, incoming);
  auto valid = [](std::int8_t index) { return index >= -1 && index <= 1; };
  if (kind > 1 || !valid(outgoing) || !valid(incoming)) {
    throw SerializationError("mp::deserialize: a Connection with kind " + std::to_string(kind) + " and directions " +
                             std::to_string(outgoing) + "/" + std::to_string(incoming) + " is malformed");
  }
  auto state = std::make_shared<connection_state>();
  state->fd = import_fd(fd_index, "Connection");
  state->kind = static_cast<fd_kind>(kind);
  state->segment = import_shared<shm_segment>(segment_index, "Connection", [](unique_fd fd) {
    return std::make_shared<shm_segment>(shm_segment::from_fd(std::move(fd), "mp-pipe (received)"));
  });
  if (state->segment->size() < sizeof(connection_shared)) {
    throw SerializationError("mp::deserialize: a Connection's shared block is " +
                             std::to_string(state->segment->size()) + " bytes, too small");
  }
  auto* shared = static_cast<connection_shared*>(state->segment->data());
  state->outgoing = outgoing < 0 ? nullptr : &shared->direction[outgoing];
  state->incoming = incoming < 0 ? nullptr : &shared->direction[incoming];
  return state;
}

MP_DECL void throw_broken_connection(const char* operation, broken_reason reason) {
  if (reason == broken_reason::malformed_frame) {
    throw Error(std::string(operation) +
                ": a malformed message was received on this connection (a hostile or confused peer), so the stream "
                "cannot be trusted; close both ends and create a new Pipe");
  }
  throw Error(std::string(operation) +
              ": a process was killed in the middle of a message on this connection, so the stream is corrupt; "
              "close both ends and create a new Pipe");
}

MP_DECL void release_blob_window(connection_direction& direction, std::uint64_t size) noexcept {
  std::uint64_t in_flight = direction.blob_bytes_in_flight.load();
  // Saturating: after a malformed frame the count may no longer match what is in the socket.
  while (!direction.blob_bytes_in_flight.compare_exchange_weak(in_flight, in_flight >= size ? in_flight - size : 0)) {
  }
  direction.blob_taken.fetch_add(1);
  if (direction.blob_sender_waiting.exchange(0) != 0) futex_wake(direction.blob_taken);
}

MP_DECL void reject_frame(connection_direction& direction, const char* operation, const std::string& what) {
  direction.broken.store(static_cast<std::uint32_t>(broken_reason::malformed_frame), std::memory_order_relaxed);
  release_blob_window(direction, std::numeric_limits<std::uint64_t>::max());  // a waiting sender looks again
  throw SerializationError(std::string(operation) + ": received " + what +
                           ": the peer is not mp or is hostile; the connection is marked corrupt");
}

// True once every copy of the other end is closed (POLLHUP) or the socket failed: a window wait would never end.
MP_DECL bool peer_gone(int socket) {
  pollfd p{socket, POLLOUT, 0};
  const int n = sys_try("poll", [&] { return ::poll(&p, 1, 0); });
  return n == 1 && (p.revents & (POLLHUP | POLLERR | POLLNVAL)) != 0;
}

// True if no byte this socket sent is still unread by its peer (SIOCOUTQ: what the kernel still charges to the
// sender). Then no blob frame is in flight whatever the count says: a receiver killed between taking a frame and
// giving its bytes back left the count too high, and this is where it heals.
MP_DECL bool nothing_unread(int socket) {
  int unread = 0;
  return sys_try("ioctl", [&] { return ::ioctl(socket, SIOCOUTQ, &unread); }) == 0 && unread == 0;
}

// Under the send lock (so the senders' order is kept): until the window has room for `size` more bytes, or nothing
// is in flight. The no-lost-wake-up argument is the Dekker pattern of manager/channel.hpp on seq_cst atomics: the
// sender raises blob_sender_waiting, then re-reads the count; a receiver lowers the count, then reads the flag.
MP_DECL void wait_for_blob_window(connection_state& state, connection_direction& direction, std::uint64_t size,
                                  const char* operation) {
  auto has_room = [&] {
    const std::uint64_t in_flight = direction.blob_bytes_in_flight.load();
    return in_flight == 0 || in_flight + size <= pipe_blob_window;
  };
  while (!has_room()) {
    const std::uint32_t taken = direction.blob_taken.load();
    direction.blob_sender_waiting.store(1);
    if (has_room()) break;
    if (nothing_unread(state.fd.get())) {
      direction.blob_bytes_in_flight.store(0);
      break;
    }
    // Bounded: a receiver killed between taking a frame and giving its bytes back, or a receiving end closed
    // everywhere, is noticed here rather than waited on forever.
    futex_wait_bounded(direction.blob_taken, taken, deadline_after(lost_wake_period));
    if (const auto reason = direction.broken.load(std::memory_order_relaxed); reason != 0)
      throw_broken_connection(operation, static_cast<broken_reason>(reason));
    if (peer_gone(state.fd.get())) throw Error(peer_closed_message(state.fd.get()));
  }
  direction.blob_sender_waiting.store(0);
}

MP_DECL void send_blob_message(connection_state& state, connection_direction& direction, int segment,
                               std::size_t size, const char* operation) {
  frame_guard guard(direction.send_mutex, direction.sending, direction, operation);
  wait_for_blob_window(state, direction, size, operation);
  // Counted before it is sent, so that a receiver's give-back never comes first. No guard.begin(): one 8-byte
  // sendmsg goes whole or not at all, so a sender killed anywhere here leaves the stream in step.
  direction.blob_bytes_in_flight.fetch_add(size);
  lane_count_socket_send(direction.lane);
  try {
    send_blob_frame(state.fd.get(), size, segment);
  } catch (...) {
    release_blob_window(direction, size);
    throw;
  }
}

MP_DECL void reject_segment(connection_direction& direction, const char* operation, std::size_t size) {
  frame_guard guard(direction.recv_mutex, direction.receiving, direction, operation);
  reject_frame(direction, operation,
               "a blob frame of " + std::to_string(size) +
                   " bytes whose descriptor is not a memfd segment holding them (or it shrank while read)");
}

}  // namespace mp::detail
