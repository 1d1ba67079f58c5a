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
#include <sched.h>
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
#include <mp/detail/manager_channel.hpp>
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
      // Still watching the channels (a request came in the last manager_server_spin): look at the sockets and
      // come straight back.
      const bool spinning = manager_store::clock::now() - last_channel_request_ < manager_server_spin;
      auto deadline = store_.next_deadline();
      if (auto handshake = earliest_handshake_deadline(); handshake && (!deadline || *handshake < *deadline)) {
        deadline = handshake;
      }
      if (deadline) {
        auto left = std::chrono::ceil<std::chrono::milliseconds>(*deadline - manager_store::clock::now()).count();
        timeout = static_cast<int>(std::clamp<long long>(left, 0, 60'000));
      }
      if (spinning) timeout = 0;
      // Before sleeping, tell the channels' clients to ring the doorbell, then look once more (no lost wake-up).
      const bool sleeping = timeout != 0 && set_server_sleeping(1);
      if (sleeping && channel_request_pending()) timeout = 0;
      if (retry_on_eintr([&] { return ::poll(fds.data(), fds.size(), timeout); }) < 0) throw_errno("poll", "manager server");
      if (sleeping) set_server_sleeping(0);
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
      if (!stop_) serve_channels();
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
    std::vector<unique_fd> fds;  // descriptors received (SCM_RIGHTS), for attach_channel
    manager_channel channel;     // the client's shared-memory channel, once attached
    std::uint32_t requests_seen = 0, replies_sent = 0;  // channel sequence numbers (ours, not the client's words)
  };

  /// Descriptors one connection may hold unused: a client sends one, with attach_channel.
  static constexpr std::size_t max_received_fds = 4;

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

  // recvmsg rather than read: a client attaching a channel sends its memfd with the request.
  static ssize_t read_with_fds(connection& c, char* data, std::size_t size) {
    iovec part{data, size};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_received_fds)];
    msghdr message{};
    message.msg_iov = &part;
    message.msg_iovlen = 1;
    message.msg_control = control;
    message.msg_controllen = sizeof control;
    auto got = ::recvmsg(c.fd.get(), &message, MSG_CMSG_CLOEXEC);
    if (got < 0 || message.msg_controllen == 0) return got;
    for (cmsghdr* cmsg = CMSG_FIRSTHDR(&message); cmsg; cmsg = CMSG_NXTHDR(&message, cmsg)) {
      if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
      const std::size_t n = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < n; ++i) {
        int fd = -1;
        std::memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof fd);
        unique_fd owned(fd);
        if (c.fds.size() < max_received_fds) c.fds.push_back(std::move(owned));  // else: closed
      }
    }
    return got;
  }

  void receive(connection& c, manager_store::clock::time_point now) {
    char chunk[64 * 1024];
    for (;;) {
      auto got = retry_on_eintr([&] { return read_with_fds(c, chunk, sizeof chunk); });
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
      if (size == 0 && c.channel) continue;  // a doorbell: its request is in the channel
      if (payload.size() == 9 && payload[0] == static_cast<char>(manager_protocol::op::attach_channel)) {
        attach(c);
        continue;
      }
      handle(c, payload, now);
    }
    c.in.erase(0, at);
  }

  // Applies one request of c; it parks if the store answered nothing yet.
  void handle(connection& c, std::string_view payload, manager_store::clock::time_point now) {
    auto before = replies_.size();
    if (!store_.handle(c.id, payload, now, replies_)) {
      c.dead = true;
      return;
    }
    c.parked = std::none_of(replies_.begin() + static_cast<std::ptrdiff_t>(before), replies_.end(),
                            [&](const manager_store::reply& r) { return r.client == c.id; });
  }

  // attach_channel: maps the memfd that came with the request. The reply goes over the socket (the client reads
  // it there); an error reply leaves the connection on the socket.
  void attach(connection& c) {
    if (!c.channel && !c.fds.empty()) c.channel = manager_channel::open(c.fds.front().get());
    c.fds.clear();  // the mapping keeps the memory; no descriptor stays open per client
    std::string reply;
    manager_protocol::writer w(reply);
    if (c.channel) {
      w.u8(static_cast<std::uint8_t>(manager_protocol::status::ok));
    } else {
      w.u8(static_cast<std::uint8_t>(manager_protocol::status::error));
      w.u8(static_cast<std::uint8_t>(manager_protocol::error_kind::error));
      w.blob("the manager server could not map the channel: it stays on the socket");
    }
    append_frame(c.out, reply);
    flush(c);
  }

  // Publishes a reply in c's channel (or, too big for it, on the socket, announced in the channel) and rings the
  // client's doorbell if it sleeps. Never blocks: the socket's output is buffered.
  void post(connection& c, std::string_view bytes) {
    auto& shared = *c.channel;
    if (bytes.size() <= manager_channel_capacity) {
      std::memcpy(shared.reply, bytes.data(), bytes.size());
      shared.reply_size.store(static_cast<std::uint32_t>(bytes.size()), std::memory_order_relaxed);
    } else {
      append_frame(c.out, bytes);
      shared.reply_size.store(manager_reply_on_socket, std::memory_order_relaxed);
    }
    shared.server_cpu.store(manager_current_cpu(), std::memory_order_relaxed);
    shared.reply_seq.store(++c.replies_sent);  // seq_cst: publishes, and orders the flag load below
    if (shared.client_sleeping.exchange(0) != 0) append_frame(c.out, {});  // one doorbell per sleep
  }

  // The request c published in its channel and the server has not taken yet, if any (not while parked: a
  // well-behaved client sends nothing then, and a misbehaving one must not keep the server awake).
  static bool channel_has_request(const connection& c) {
    return c.channel && !c.parked && !c.dead && c.channel->request_seq.load() != c.requests_seen;
  }
  bool channel_request_pending() const {
    return std::any_of(connections_.begin(), connections_.end(),
                       [](const auto& entry) { return channel_has_request(entry.second); });
  }
  // Raises or lowers server_sleeping in every channel; false if there is none (nothing to announce).
  bool set_server_sleeping(std::uint32_t value) {
    bool any = false;
    for (auto& [id, c] : connections_) {
      if (c.channel) c.channel->server_sleeping.store(value), any = true;  // seq_cst
    }
    return any || value == 0;
  }

  // Whether c's peer hung up (its process died): its socket reports it at once, its channel never does.
  static bool hung_up(const connection& c) {
    pollfd fd{c.fd.get(), POLLRDHUP, 0};
    return ::poll(&fd, 1, 0) > 0 && (fd.revents & (POLLHUP | POLLERR | POLLRDHUP));
  }

  // Takes at most one request from every channel (so every client gets its turn) and applies it; the count taken.
  // A request that parks (a blocking call) is followed by a look at its socket: a client killed right after it
  // published the request is forgotten before a later request (of this round) can hand it an item or a lock.
  std::size_t take_channel_requests(manager_store::clock::time_point now) {
    std::size_t taken = 0;
    pending_ids_.clear();
    for (auto& [id, c] : connections_) {
      if (channel_has_request(c)) pending_ids_.push_back(id);
    }
    for (auto id : pending_ids_) {
      auto found = connections_.find(id);
      if (found == connections_.end() || !channel_has_request(found->second)) continue;
      auto& c = found->second;
      auto& shared = *c.channel;
      c.requests_seen = shared.request_seq.load(std::memory_order_acquire);
      const std::uint32_t size = shared.request_size.load(std::memory_order_relaxed);
      if (size > manager_channel_capacity) {
        c.dead = true;  // a corrupt channel: close the connection, as for a malformed frame
        continue;
      }
      // Copied out: the client's process may write the slot while we parse it.
      request_.assign(reinterpret_cast<const char*>(shared.request), size);
      last_client_cpu_ = shared.client_cpu.load(std::memory_order_relaxed);
      handle(c, request_, now);
      ++taken;
      if (c.parked && hung_up(c)) {
        c.dead = true;
        reap();
      }
    }
    return taken;
  }

  // Clients that hung up while parked (killed in queue get, lock acquire, ...): forgotten before a request taken
  // from a channel can hand them an item or a lock they would never receive, as the poll() loop does for sockets.
  void reap_parked_hangups() {
    hangup_fds_.clear(), hangup_ids_.clear();
    for (auto& [id, c] : connections_) {
      if (c.parked && !c.dead) hangup_fds_.push_back({c.fd.get(), POLLRDHUP, 0}), hangup_ids_.push_back(id);
    }
    if (hangup_fds_.empty() || ::poll(hangup_fds_.data(), hangup_fds_.size(), 0) <= 0) return;
    for (std::size_t i = 0; i < hangup_fds_.size(); ++i) {
      if (!(hangup_fds_[i].revents & (POLLHUP | POLLERR | POLLRDHUP))) continue;
      auto found = connections_.find(hangup_ids_[i]);
      if (found != connections_.end()) found->second.dead = true;
    }
    reap();
  }

  // Serves the channels while requests keep coming: returns manager_server_spin after the last one, or after
  // manager_socket_poll_period so that the sockets (and the store's deadlines) are looked at too.
  void serve_channels() {
    auto now = manager_store::clock::now();
    const auto slice_end = now + manager_socket_poll_period;
    for (;;) {
      if (channel_request_pending()) {
        reap_parked_hangups();
        if (take_channel_requests(now) > 0) last_channel_request_ = now;
        deliver();
        reap();
        if (store_.shutdown_requested()) {
          stop_ = true;
          return;
        }
      }
      now = manager_store::clock::now();
      if (now - last_channel_request_ >= manager_server_spin || now >= slice_end) return;
      if (last_client_cpu_ == manager_current_cpu()) {
        ::sched_yield();  // the client we answered last may be waiting for this very CPU (see manager_spin_until)
      } else {
        for (int i = 0; i < 32; ++i) cpu_relax();
      }
    }
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
        if (c.channel) {
          post(c, r.bytes);
        } else {
          append_frame(c.out, r.bytes);
        }
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
  std::string request_;                             // a request copied out of a channel
  std::vector<pollfd> hangup_fds_;                  // reap_parked_hangups' scratch
  std::vector<std::uint64_t> hangup_ids_;
  std::vector<std::uint64_t> pending_ids_;          // take_channel_requests' scratch
  manager_store::clock::time_point last_channel_request_{};
  int last_client_cpu_ = -1;  // where the client of the last channel request ran
  std::uint64_t next_client_ = 1;
  bool stop_ = false;
  bool accept_paused_ = false;
};

}  // namespace mp::detail
