// The manager server: one thread, one poll() loop over the listening socket, every client connection, and the
// wake-ups that end it (the owner process exiting, SIGTERM/SIGINT through a signalfd).
//
// Why an event loop rather than a thread per client: blocking calls park in manager_store and are answered when
// another request releases them, so no client can block the server, the store needs no locking, and a client
// that hangs up while parked is noticed at once (its waiter is dropped; nothing is consumed on its behalf).
// Why the owner is watched through a pidfd rather than PR_SET_PDEATHSIG: the death signal fires when the parent
// *thread* exits, which would kill a manager created on a short-lived thread.
// Connections go through stages: greeting sent -> (answer checked -> our challenge answered) -> ready. Before
// ready a frame may be at most max_handshake bytes and no payload is handed to the store; any framing or protocol
// violation closes that connection only.
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <mp/detail/manager_auth.hpp>
#include <mp/detail/manager_protocol.hpp>
#include <mp/detail/manager_store.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail {

class manager_server {
 public:
  /// Serves on `listener` until a shutdown request, a readable `stop_fd` (a signalfd) or the exit of the process
  /// behind `owner_pidfd` (either may be -1). `remove` lists paths (a socket, then its directory) removed when it
  /// stops, before the connections close, so a client that sees its connection end never finds them.
  manager_server(unique_fd listener, std::string authkey, int owner_pidfd, int stop_fd,
                 std::vector<std::string> remove = {})
      : listener_(std::move(listener)), authkey_(std::move(authkey)), owner_pidfd_(owner_pidfd), stop_fd_(stop_fd),
        remove_(std::move(remove)) {
    int flags = ::fcntl(listener_.get(), F_GETFL);
    ::fcntl(listener_.get(), F_SETFL, flags | O_NONBLOCK);
  }

  void run() {
    std::vector<pollfd> fds;
    std::vector<std::uint64_t> order;  // fds[fixed + i] belongs to connection order[i]
    while (!stop_) {
      fds.clear(), order.clear();
      // While out of descriptors, stop polling the listener (it would stay readable and spin the loop) until a
      // connection closes.
      fds.push_back({accept_paused_ ? -1 : listener_.get(), POLLIN, 0});
      fds.push_back({owner_pidfd_, POLLIN, 0});
      fds.push_back({stop_fd_, POLLIN, 0});
      const std::size_t fixed = fds.size();
      for (auto& [id, c] : connections_) {
        short events = c.closing ? 0 : POLLIN | POLLRDHUP;
        if (c.out_at < c.out.size()) events |= POLLOUT;
        fds.push_back({c.fd.get(), events, 0});
        order.push_back(id);
      }
      int timeout = -1;
      auto deadline = store_.next_deadline();
      if (auto handshake = earliest_handshake_deadline(); handshake && (!deadline || *handshake < *deadline)) {
        deadline = handshake;
      }
      if (deadline) {
        auto left = std::chrono::ceil<std::chrono::milliseconds>(*deadline - manager_store::clock::now()).count();
        timeout = static_cast<int>(std::clamp<long long>(left, 0, 60'000));
      }
      if (retry_on_eintr([&] { return ::poll(fds.data(), fds.size(), timeout); }) < 0) throw_errno("poll", "manager server");
      auto now = manager_store::clock::now();
      if (fds[1].revents || fds[2].revents) break;  // the owner exited, or SIGTERM/SIGINT
      // First the clients that hung up (a process killed while blocked in get(), or one that sent its last request
      // and exited): apply what they sent, then forget them — before any request of the others in this batch can
      // hand them an item or a lock they would never receive.
      bool hung_up = false;
      for (std::size_t i = 0; i < order.size(); ++i) {
        if (!(fds[fixed + i].revents & (POLLHUP | POLLERR | POLLRDHUP))) continue;
        auto found = connections_.find(order[i]);
        if (found == connections_.end()) continue;
        receive(found->second, now);
        found->second.dead = hung_up = true;
      }
      if (hung_up) reap();
      for (std::size_t i = 0; i < order.size(); ++i) {
        auto revents = fds[fixed + i].revents;
        if (!revents) continue;
        auto found = connections_.find(order[i]);
        if (found == connections_.end()) continue;
        if (revents & POLLOUT) flush(found->second);
        if (revents & POLLIN) receive(found->second, now);
      }
      if (fds[0].revents) accept_all(now);
      drop_slow_handshakes(now);
      store_.expire(now, replies_);
      deliver();
      reap();
      if (store_.shutdown_requested()) stop_ = true;
    }
    listener_.reset();
    for (const auto& path : remove_) ::remove(path.c_str());
    // Best effort: let the shutdown reply reach its client before the sockets close.
    for (auto& [id, c] : connections_) {
      if (c.out_at < c.out.size()) {
        int flags = ::fcntl(c.fd.get(), F_GETFL);
        ::fcntl(c.fd.get(), F_SETFL, flags & ~O_NONBLOCK);
        flush(c);
      }
    }
  }

 private:
  enum class stage { await_answer, await_challenge, ready };
  struct connection {
    std::uint64_t id = 0;
    unique_fd fd;
    stage at = stage::ready;
    std::string challenge;  // the one we sent, while awaiting its answer
    std::string in;         // unparsed received bytes
    std::string out;        // frames not yet written, from out_at
    std::size_t out_at = 0;
    bool parked = false;    // its request waits in the store: later frames wait too
    bool closing = false;   // close once out is written (a failed handshake)
    bool dead = false;
    manager_store::clock::time_point handshake_deadline{};  // while not ready: closed if still not ready then
  };

  /// How long a new connection may take to authenticate: an idle peer cannot hold a descriptor forever.
  static constexpr std::chrono::seconds handshake_timeout{10};

  std::optional<manager_store::clock::time_point> earliest_handshake_deadline() const {
    std::optional<manager_store::clock::time_point> earliest;
    for (const auto& [id, c] : connections_) {
      if (c.at != stage::ready && (!earliest || c.handshake_deadline < *earliest)) earliest = c.handshake_deadline;
    }
    return earliest;
  }
  void drop_slow_handshakes(manager_store::clock::time_point now) {
    for (auto& [id, c] : connections_) {
      if (c.at != stage::ready && c.handshake_deadline <= now) c.dead = true;
    }
  }

  static void append_frame(std::string& out, std::string_view payload) {
    manager_protocol::writer w(out);
    w.u32(static_cast<std::uint32_t>(payload.size()));
    w.raw(payload.data(), payload.size());
  }

  void accept_all(manager_store::clock::time_point now) {
    for (;;) {
      int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        int err = last_errno();
        if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) accept_paused_ = true;
        return;  // EAGAIN, or a transient error (ECONNABORTED): retried on the next wake-up
      }
      set_nodelay(fd);     // harmless on Unix sockets (fails quietly)
      connection c;
      c.id = next_client_++;
      c.fd = unique_fd(fd);
      if (authkey_.empty()) {
        append_frame(c.out, welcome_tag);
      } else {
        c.at = stage::await_answer;
        c.challenge = make_challenge();
        c.handshake_deadline = now + handshake_timeout;
        append_frame(c.out, c.challenge);
      }
      auto id = c.id;
      auto& placed = connections_.emplace(id, std::move(c)).first->second;
      flush(placed);
    }
  }

  static void set_nodelay(int fd) {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }

  void receive(connection& c, manager_store::clock::time_point now) {
    char chunk[64 * 1024];
    for (;;) {
      auto got = retry_on_eintr([&] { return ::read(c.fd.get(), chunk, sizeof chunk); });
      if (got <= 0) {
        if (got == 0 || (last_errno() != EAGAIN && last_errno() != EWOULDBLOCK)) c.dead = true;
        return;
      }
      if (c.closing) return;  // a rejected client: ignore whatever it sends until FAILURE is written
      c.in.append(chunk, static_cast<std::size_t>(got));
      process(c, now);
      // A client sends one request at a time: more than one full request buffered is a protocol violation.
      if (c.in.size() > std::size_t{manager_protocol::max_request} + 8) c.dead = true;
      if (c.dead || static_cast<std::size_t>(got) < sizeof chunk) return;
    }
  }

  // Handles every complete frame in c.in, unless the connection is parked.
  void process(connection& c, manager_store::clock::time_point now) {
    auto id = c.id;
    std::size_t at = 0;
    while (!c.parked && !c.dead && !c.closing && c.in.size() - at >= 4) {
      manager_protocol::reader header(c.in.data() + at, 4);
      auto size = header.u32();
      auto limit = c.at == stage::ready ? manager_protocol::max_request : manager_protocol::max_handshake;
      if (size > limit) {
        c.dead = true;  // oversized: drop the connection before buffering the body
        break;
      }
      if (c.in.size() - at - 4 < size) break;
      std::string_view payload(c.in.data() + at + 4, size);
      at += 4 + size;
      if (c.at != stage::ready) {
        handshake(c, payload);
        continue;
      }
      auto before = replies_.size();
      if (!store_.handle(id, payload, now, replies_)) {
        c.dead = true;
        break;
      }
      c.parked = std::none_of(replies_.begin() + static_cast<std::ptrdiff_t>(before), replies_.end(),
                              [&](const manager_store::reply& r) { return r.client == id; });
    }
    c.in.erase(0, at);
  }

  void handshake(connection& c, std::string_view message) {
    if (c.at == stage::await_answer) {
      if (check_answer(authkey_, c.challenge, message)) {
        append_frame(c.out, welcome_tag);
        c.at = stage::await_challenge;
      } else {
        append_frame(c.out, failure_tag);
        c.closing = true;
      }
    } else {
      if (!message.starts_with(challenge_tag) || message.size() != challenge_tag.size() + challenge_size) {
        c.dead = true;
        return;
      }
      auto answer = answer_challenge(authkey_, message);
      append_frame(c.out, {reinterpret_cast<const char*>(answer.data()), answer.size()});
      c.at = stage::ready;
    }
    flush(c);
  }

  // Routes store replies to their connections; a reply to a parked connection unparks it, so its buffered
  // frames are handled now.
  void deliver() {
    while (!replies_.empty()) {
      batch_.clear();
      batch_.swap(replies_);  // swap, not move: both keep their capacity, so a request allocates no vector
      unparked_.clear();
      for (auto& r : batch_) {
        auto found = connections_.find(r.client);
        if (found == connections_.end() || found->second.dead) continue;
        auto& c = found->second;
        append_frame(c.out, r.bytes);
        if (c.parked) c.parked = false, unparked_.push_back(r.client);
      }
      if (unparked_.empty()) continue;
      auto now = manager_store::clock::now();
      for (auto id : unparked_) {
        auto found = connections_.find(id);
        if (found != connections_.end()) process(found->second, now);
      }
    }
    for (auto& [id, c] : connections_) {
      if (c.out_at < c.out.size() && !c.dead) flush(c);
    }
  }

  void flush(connection& c) {
    while (c.out_at < c.out.size()) {
      auto sent = retry_on_eintr([&] {
        return ::send(c.fd.get(), c.out.data() + c.out_at, c.out.size() - c.out_at, MSG_NOSIGNAL | MSG_DONTWAIT);
      });
      if (sent < 0) {
        if (last_errno() != EAGAIN && last_errno() != EWOULDBLOCK) c.dead = true;
        return;
      }
      c.out_at += static_cast<std::size_t>(sent);
    }
    c.out.clear(), c.out_at = 0;
    if (c.closing) c.dead = true;
  }

  // Closes dead connections; the store forgets them (releasing their locks), which may answer others.
  void reap() {
    for (bool again = true; again;) {
      again = false;
      for (auto it = connections_.begin(); it != connections_.end();) {
        if (!it->second.dead) {
          ++it;
          continue;
        }
        auto id = it->first;
        it = connections_.erase(it);
        accept_paused_ = false;  // a descriptor was freed
        store_.disconnect(id, replies_);
        again = true;
      }
      if (again) deliver();
    }
  }

  unique_fd listener_;
  std::string authkey_;
  int owner_pidfd_;
  int stop_fd_;
  std::vector<std::string> remove_;
  manager_store store_;
  std::unordered_map<std::uint64_t, connection> connections_;
  std::vector<manager_store::reply> replies_, batch_;
  std::vector<std::uint64_t> unparked_;
  std::uint64_t next_client_ = 1;
  bool stop_ = false;
  bool accept_paused_ = false;
};

}  // namespace mp::detail
