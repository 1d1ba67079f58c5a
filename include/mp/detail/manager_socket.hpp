// Sockets for the manager: listening and connecting on Unix and TCP addresses, and the client side of one
// connection (framed request/reply and the authentication handshake).
//
// Why not detail/wire.hpp: the server multiplexes many clients in one poll() loop and must parse frames from
// non-blocking sockets incrementally with a per-connection size limit chosen by the authentication stage (tiny
// before the handshake, max_request after it); the client reads each reply with one read() into a reusable buffer
// in the common case. Both are specific enough to the manager to live here.
#pragma once

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <mp/detail/manager_auth.hpp>
#include <mp/detail/manager_channel.hpp>
#include <mp/detail/manager_protocol.hpp>
#include <mp/detail/child_os.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/detail/unique_fd.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

/// Where a manager listens: a Unix socket path, or a TCP host and port.
struct manager_endpoint {
  bool tcp = false;
  std::string host;
  std::uint16_t port = 0;
  std::string path;

  bool empty_address() const { return !tcp && path.empty(); }
  std::string to_string() const {
    return tcp ? "tcp://" + host + ":" + std::to_string(port) : "unix:" + path;
  }
};

inline sockaddr_un unix_address(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(address.sun_path)) {
    throw Error("manager Unix socket path '" + path + "' must be 1 to " + std::to_string(sizeof(address.sun_path) - 1) +
                " bytes long: choose a shorter path");
  }
  std::memcpy(address.sun_path, path.data(), path.size());
  return address;
}

/// Resolves host:port to the first usable address (numeric or a name from /etc/hosts or DNS).
template <class F>
unique_fd with_tcp_address(const manager_endpoint& endpoint, const char* what, F&& use) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (endpoint.host.empty() ? AI_PASSIVE : 0);
  addrinfo* found = nullptr;
  auto service = std::to_string(endpoint.port);
  if (int rc = ::getaddrinfo(endpoint.host.empty() ? nullptr : endpoint.host.c_str(), service.c_str(), &hints, &found)) {
    throw Error(std::string(what) + "(" + endpoint.to_string() + "): cannot resolve the host: " + ::gai_strerror(rc));
  }
  int err = 0;
  unique_fd result;
  for (auto* a = found; a && !result; a = a->ai_next) {
    unique_fd fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
    if (!fd) {
      err = last_errno();
      continue;
    }
    if (use(fd.get(), a->ai_addr, a->ai_addrlen)) {
      result = std::move(fd);
    } else {
      err = last_errno();
    }
  }
  ::freeaddrinfo(found);
  if (!result) throw_errno(what, endpoint.to_string(), err);
  return result;
}

inline void set_nodelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // replies are small: never wait for Nagle
}

/// A listening socket bound to `endpoint`; for TCP port 0 the kernel picks a port, written back into endpoint.
inline unique_fd listen_on(manager_endpoint& endpoint) {
  unique_fd fd;
  if (endpoint.tcp) {
    fd = with_tcp_address(endpoint, "bind", [](int s, const sockaddr* a, socklen_t n) {
      int one = 1;
      ::setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      return ::bind(s, a, n) == 0;
    });
    sockaddr_storage bound{};
    socklen_t length = sizeof bound;
    sys("getsockname", endpoint.to_string(), [&] { return ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &length); });
    endpoint.port = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                                      : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  } else {
    auto address = unix_address(endpoint.path);
    fd = unique_fd(sys("socket", endpoint.path, [] { return ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0); }));
    sys("bind", endpoint.path, [&] { return ::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address); });
  }
  sys("listen", endpoint.to_string(), [&] { return ::listen(fd.get(), SOMAXCONN); });
  return fd;
}

/// One client connection to a manager server: blocking, used by one thread at a time.
class manager_connection {
 public:
  /// Connects and runs the handshake; AuthenticationError if the keys differ, mp::Error if nothing listens.
  manager_connection(const manager_endpoint& endpoint, const std::string& authkey) : endpoint_(endpoint) {
    if (endpoint.tcp) {
      fd_ = with_tcp_address(endpoint, "connect", [](int s, const sockaddr* a, socklen_t n) {
        return retry_on_eintr([&] { return ::connect(s, a, n); }) == 0;
      });
      set_nodelay(fd_.get());
    } else {
      auto address = unix_address(endpoint.path);
      fd_ = unique_fd(sys("socket", endpoint.path, [] { return ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0); }));
      if (retry_on_eintr([&] { return ::connect(fd_.get(), reinterpret_cast<sockaddr*>(&address), sizeof address); })) {
        throw_errno("connect", endpoint.path + ": no manager server listens there (it has shut down, or the address is wrong)");
      }
    }
    handshake(authkey);
    if (!endpoint.tcp && manager_channels_enabled) attach_channel();
  }

  /// Sends one request frame (its first 4 bytes are reserved for the length) and returns the reply payload,
  /// valid until the next call.
  std::string_view call(std::vector<std::byte>& frame) {
    auto payload = frame.size() - 4;
    if (payload > manager_protocol::max_request) {
      throw Error("a manager request of " + std::to_string(payload) + " bytes exceeds the server's frame limit of " +
                  std::to_string(manager_protocol::max_request) + " bytes: send the data in smaller parts");
    }
    if (channel_ && payload <= manager_channel_capacity) {
      auto& shared = *channel_;
      std::memcpy(shared.request, frame.data() + 4, payload);
      shared.request_size.store(static_cast<std::uint32_t>(payload), std::memory_order_relaxed);
      shared.client_cpu.store(manager_current_cpu(), std::memory_order_relaxed);
      shared.request_seq.store(++requests_);  // seq_cst: publishes the bytes, and orders the flag load below
      if (shared.server_sleeping.load() != 0) ring_doorbell();
      return await_reply();
    }
    for (std::size_t i = 0; i < 4; ++i) frame[i] = static_cast<std::byte>(payload >> (8 * i));
    send_all(frame.data(), frame.size());
    return channel_ ? await_reply() : receive();
  }

  /// True once requests and replies travel through shared memory (see manager_channel.hpp).
  bool has_channel() const noexcept { return static_cast<bool>(channel_); }
  /// Test seam: the channel's shared memory (nullptr without a channel).
  manager_channel_shared* channel_memory() const noexcept { return channel_ ? &*channel_ : nullptr; }

  int fd() const noexcept { return fd_.get(); }
  /// Closes the descriptor only (a forked child's copy of its parent's connection); the object must not be used.
  void abandon() noexcept { fd_.reset(); }

 private:
  void handshake(const std::string& authkey) {
    auto greeting = std::string(receive());
    if (greeting == welcome_tag) {
      if (!authkey.empty()) {
        throw AuthenticationError("the manager server at " + endpoint_.to_string() +
                                  " does not check an authkey, but one was given: start the server with the same authkey");
      }
      return;
    }
    if (!greeting.starts_with(challenge_tag) || greeting.size() != challenge_tag.size() + challenge_size) {
      throw AuthenticationError("the server at " + endpoint_.to_string() + " did not greet as an mp manager");
    }
    if (authkey.empty()) {
      throw AuthenticationError("the manager server at " + endpoint_.to_string() +
                                " requires an authkey: pass the key it was started with");
    }
    auto answer = answer_challenge(authkey, greeting);
    send_message({reinterpret_cast<const char*>(answer.data()), answer.size()});
    if (receive() != welcome_tag) {
      throw AuthenticationError("the manager server at " + endpoint_.to_string() +
                                " rejected the authkey (digest mismatch): use the key the server was started with");
    }
    // Now make the server prove it knows the key too, so a client never talks to an impostor.
    auto challenge = make_challenge();
    send_message(challenge);
    if (!check_answer(authkey, challenge, receive())) {
      throw AuthenticationError("the manager server at " + endpoint_.to_string() +
                                " failed to prove it knows the authkey: it is not the server you meant");
    }
  }

  void send_message(std::string_view message) {
    std::vector<std::byte> frame(4 + message.size());
    std::memcpy(frame.data() + 4, message.data(), message.size());
    for (std::size_t i = 0; i < 4; ++i) frame[i] = static_cast<std::byte>(message.size() >> (8 * i));
    send_all(frame.data(), frame.size());
  }

  // Offers the server a shared-memory channel; on any failure (no memfd, an old server) the socket carries on.
  void attach_channel() {
    auto [channel, fd] = manager_channel::create();
    if (!channel) return;
    std::vector<std::byte> frame;
    manager_protocol::writer out(frame);
    out.u32(1 + 8);
    out.u8(static_cast<std::uint8_t>(manager_protocol::op::attach_channel));
    out.u64(0);
    if (!manager_send_with_fd(fd_.get(), frame.data(), frame.size(), fd.get())) {
      int err = last_errno();
      if (err == EPIPE || err == ECONNRESET) server_gone(err);
      throw_errno("sendmsg", endpoint_.to_string(), err);
    }
    fd.reset();  // the server has its own descriptor now; the mapping keeps the memory
    auto reply = receive();
    if (!reply.empty() && reply[0] == static_cast<char>(manager_protocol::status::ok)) channel_ = std::move(channel);
  }

  // A doorbell: an empty frame (no request or reply is empty) that wakes the server's poll().
  void ring_doorbell() {
    const std::byte empty[4] = {};
    send_all(empty, sizeof empty);
  }

  // Waits for the reply to the request just sent: spins on reply_seq, then sleeps in read() on the socket until
  // the server's doorbell (or the reply itself, when it is too big for the slot, or EOF if the server died).
  // The reply stays valid until the next call: the server writes the slot again only for the next request.
  std::string_view await_reply() {
    auto& shared = *channel_;
    const std::uint32_t expected = ++replies_;
    auto ready = [&] { return shared.reply_seq.load(std::memory_order_acquire) == expected; };
    std::string_view on_socket;
    if (!manager_spin_until(ready, shared.server_cpu, colocated_yields_, manager_client_spin)) {
      // Doorbells owed from earlier sleeps come first (they are on their way: the server took the flag).
      for (; doorbells_owed_ > 0; --doorbells_owed_) {
        if (!receive().empty()) protocol_broken();
      }
      for (;;) {
        shared.client_sleeping.store(1);  // seq_cst, then re-check: see the argument in manager_channel.hpp
        if (shared.reply_seq.load() == expected) break;
        on_socket = receive();  // a doorbell (empty; the server cleared the flag) or a reply too big for the slot
        if (!on_socket.empty()) break;
      }
      // Still 1: the server did not see it, no doorbell comes. 0: the server took it; its doorbell is owed.
      if (shared.client_sleeping.exchange(0) == 0) ++doorbells_owed_;
    }
    // A reply on the socket is announced in the slot before it is written to the socket: it is published now.
    const bool published = shared.reply_seq.load(std::memory_order_acquire) == expected;
    const std::uint32_t size = shared.reply_size.load(std::memory_order_relaxed);
    if (!published || (size > manager_channel_capacity && size != manager_reply_on_socket) ||
        (!on_socket.empty() && size != manager_reply_on_socket)) {
      protocol_broken();
    }
    if (size != manager_reply_on_socket) return {reinterpret_cast<const char*>(shared.reply), size};
    while (on_socket.empty()) {
      on_socket = receive();
      if (on_socket.empty() && doorbells_owed_ > 0) --doorbells_owed_;  // an owed doorbell came before it
    }
    return on_socket;
  }

  [[noreturn]] void protocol_broken() const {
    throw Error("the manager server at " + endpoint_.to_string() +
                " broke the shared-memory channel protocol: it runs another version of mp, or memory is corrupt");
  }

  [[noreturn]] void server_gone(int err) const {
    throw Error("the manager server at " + endpoint_.to_string() + " closed the connection (" +
                (err ? std::string(std::strerror(err)) : std::string("end of file")) +
                "): it has shut down or died; create a new Manager or connect to a running server");
  }

  void send_all(const std::byte* data, std::size_t size) {
    while (size > 0) {
      auto sent = retry_on_eintr([&] { return ::send(fd_.get(), data, size, MSG_NOSIGNAL); });
      if (sent < 0) {
        int err = last_errno();
        if (err == EPIPE || err == ECONNRESET) server_gone(err);
        throw_errno("send", endpoint_.to_string(), err);
      }
      data += sent, size -= static_cast<std::size_t>(sent);
    }
  }

  // Reads until buffer_ holds `wanted` unread bytes. buffer_'s size is its capacity (bytes [start_, end_) are
  // unread), so a read never pays for zero-filling a fresh buffer.
  void fill(std::size_t wanted) {
    if (end_ - start_ >= wanted) return;
    if (start_ + wanted > buffer_.size()) {  // compact, then grow if still too small
      std::memmove(buffer_.data(), buffer_.data() + start_, end_ - start_);
      end_ -= start_, start_ = 0;
      if (wanted > buffer_.size()) buffer_.resize(std::max(wanted, 2 * buffer_.size()));
    }
    while (end_ - start_ < wanted) {
      auto got = retry_on_eintr([&] { return ::read(fd_.get(), buffer_.data() + end_, buffer_.size() - end_); });
      if (got == 0) server_gone(0);
      if (got < 0) {
        int err = last_errno();
        if (err == ECONNRESET) server_gone(err);
        throw_errno("read", endpoint_.to_string(), err);
      }
      end_ += static_cast<std::size_t>(got);
    }
  }

  std::string_view receive() {
    if (start_ == end_) start_ = end_ = 0;
    fill(4);
    std::uint32_t size = 0;
    for (std::size_t i = 0; i < 4; ++i) size |= std::uint32_t{static_cast<unsigned char>(buffer_[start_ + i])} << (8 * i);
    fill(4 + std::size_t{size});
    std::string_view payload(buffer_.data() + start_ + 4, size);
    start_ += 4 + size;
    return payload;
  }

  manager_endpoint endpoint_;
  unique_fd fd_;
  std::string buffer_ = std::string(64 * 1024, '\0');
  std::size_t start_ = 0, end_ = 0;
  manager_channel channel_;  // empty: everything goes over the socket
  std::uint32_t requests_ = 0, replies_ = 0;  // published through channel_, and awaited
  std::uint32_t doorbells_owed_ = 0;          // sent by the server for a sleep that ended without reading them
  std::uint32_t colocated_yields_ = 0;        // hand-overs to a server on this CPU in a row (manager_spin_until)
};

}  // namespace mp::detail
