// net: the manager's sockets — where a server listens (a Unix socket path or a TCP host and port), listening and
// connecting there, and sending and receiving descriptors (SCM_RIGHTS) beside a connection's bytes.
//
// Why not detail/wire.hpp: the server multiplexes many clients in one poll() loop and must parse frames from
// non-blocking sockets incrementally with a per-connection size limit chosen by the authentication stage (tiny
// before the handshake, max_request after it); the client reads each reply with one read() into a reusable buffer
// in the common case. Both are specific enough to the manager to live here and in client.hpp / server.hpp.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <mp/detail/config.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail::manager {

/// Where a manager listens: a Unix socket path, or a TCP host and port.
struct endpoint {
  bool tcp = false;
  std::string host;
  std::uint16_t port = 0;
  std::string path;

  bool empty_address() const { return !tcp && path.empty(); }
  std::string to_string() const { return tcp ? "tcp://" + host + ":" + std::to_string(port) : "unix:" + path; }
};

/// The sockaddr of a Unix socket path; mp::Error if the path is empty or too long for sun_path.
MP_DECL sockaddr_un unix_address(const std::string& path);

/// Resolves host:port (numeric, or a name from /etc/hosts or DNS) and returns a socket of the first address for
/// which use(socket, address, length) returns true (bind or connect it there); mp::Error "what(endpoint): ..." if
/// none does.
MP_DECL unique_fd with_tcp_address(const endpoint& where, const char* what,
                                   const std::function<bool(int socket, const sockaddr* address, socklen_t length)>& use);

/// TCP_NODELAY: replies are small, never wait for Nagle. Harmless on a Unix socket (it fails quietly there).
MP_DECL void set_nodelay(int fd) noexcept;

/// A listening socket bound to `where`; for TCP port 0 the kernel picks a port, written back into where.port.
/// A Unix socket is created with mode 0600 whatever the umask, unless `other_users` (then the umask decides).
MP_DECL unique_fd listen_on(endpoint& where, bool other_users = false);

/// Sends all of `bytes` with `fd` attached to the first byte (SCM_RIGHTS); false (errno set) on failure.
MP_DECL bool send_with_fd(int socket, const std::byte* bytes, std::size_t size, int fd) noexcept;

/// Descriptors one connection may hold unused: a client sends one, with attach_channel.
inline constexpr std::size_t max_received_fds = 4;

/// One recvmsg(2) of up to `size` bytes: the descriptors that came with them are appended to `fds` while it holds
/// fewer than max_received_fds (the others are closed). Returns what recvmsg returned (-1 with errno set, EAGAIN
/// included).
MP_DECL ssize_t receive_with_fds(int socket, char* data, std::size_t size, std::vector<unique_fd>& fds);

}  // namespace mp::detail::manager

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/manager/net.ipp>
#endif
