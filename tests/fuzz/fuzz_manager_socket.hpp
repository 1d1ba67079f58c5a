// What the manager fuzz targets that speak over a real Unix socket share (fuzz_manager_client plays the server,
// fuzz_manager_session the client): one listener per run, length-prefixed frames, and a poll that survives
// libFuzzer's SIGALRM.
#pragma once

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <string>
#include <string_view>

#include <mp/detail/manager/net.hpp>
#include <mp/detail/manager/protocol.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp_fuzz {

namespace manager = mp::detail::manager;

/// poll(2) that goes on after a signal: libFuzzer's SIGALRM (its -timeout check) interrupts it.
inline int poll_on(pollfd* fds, nfds_t n, int timeout_ms) {
  int ready;
  do {
    ready = ::poll(fds, n, timeout_ms);
  } while (ready < 0 && errno == EINTR);
  return ready;
}

/// One listener for the whole run, on an abstract Unix socket of this process ("\0mp-fuzz-<name>-<pid>"): it has no
/// file, so nothing is left in /tmp however the run ends (a crash, a timeout, a SIGKILL; a file socket stayed there
/// after libFuzzer's _Exit). unix_address() copies the leading NUL, and the server's bind and the clients' connect
/// both pass the whole sockaddr_un, so both name the same abstract address.
struct listener {
  manager::endpoint where;
  mp::detail::unique_fd fd;
  explicit listener(std::string_view name) {
    where.tcp = false;
    where.path = std::string(1, '\0') + "mp-fuzz-" + std::string(name) + "-" + std::to_string(::getpid());
    fd = manager::listen_on(where);
  }
};

/// A frame as it crosses the socket: u32 length, then the payload.
inline std::string frame(std::string_view payload) {
  std::string out;
  manager::protocol::writer w(out);
  w.u32(static_cast<std::uint32_t>(payload.size()));
  w.raw(payload.data(), payload.size());
  return out;
}

}  // namespace mp_fuzz
