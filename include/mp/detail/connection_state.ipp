// connection_state: definitions (see connection_state.hpp).
#pragma once

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <new>
#include <string>

#include <mp/detail/connection_state.hpp>
#include <mp/detail/archive.hpp>
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
  auto* shared = new (segment->data()) connection_shared();

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
  const int fd = state ? state->fd.get() : -1;
  const std::uint32_t fd_index = export_fd(fd, "Connection");
  const std::uint32_t segment_index = export_fd(state->segment->fd(), "Connection");
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

MP_DECL void throw_broken_connection(const char* operation) {
  throw Error(std::string(operation) +
              ": a process was killed in the middle of a message on this connection, so the stream is corrupt; "
              "close both ends and create a new Pipe");
}

}  // namespace mp::detail
