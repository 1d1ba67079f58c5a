// server: definitions (see server.hpp).
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include <mp/detail/manager/server.hpp>
#include <mp/detail/clock.hpp>
#include <mp/detail/manager/auth.hpp>
#include <mp/detail/manager/net.hpp>
#include <mp/detail/manager/protocol.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/errors.hpp>

namespace mp::detail::manager {

MP_DECL server::server(unique_fd listener, std::string authkey, int owner_pidfd, int stop_fd,
                       std::vector<std::string> remove, bool same_user_only)
    : listener_(std::move(listener)), authkey_(std::move(authkey)), owner_pidfd_(owner_pidfd), stop_fd_(stop_fd),
      remove_(std::move(remove)) {
  sockaddr_storage bound{};
  socklen_t length = sizeof bound;
  if (sys_try("getsockname", [&] { return ::getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&bound), &length); }) == 0) {
    unix_listener_ = bound.ss_family == AF_UNIX;
    check_peer_uid_ = same_user_only && unix_listener_;
  }
  const int flags = sys("fcntl", "manager server", [&] { return ::fcntl(listener_.get(), F_GETFL); });
  sys("fcntl", "manager server", [&] { return ::fcntl(listener_.get(), F_SETFL, flags | O_NONBLOCK); });
  store_.allow_reply_tails(true);  // big values read are copied once, into the reader's segment (take_tail)
}

MP_DECL void server::run() {
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
    buffered_in_ = 0;
    for (const auto& [id, c] : connections_) buffered_in_ += c.in.size();
    budget_waiters_ = false;
    for (auto& [id, c] : connections_) {
      // A backlogged client is not read from (its requests wait in the kernel) until it reads its replies; one
      // past the request budget, until the lane is free.
      const bool readable = !backlogged(c) && (c.closing || may_read(c));
      if (!readable && !backlogged(c)) budget_waiters_ = true;
      short events = c.closing ? 0 : !readable ? POLLRDHUP : POLLIN | POLLRDHUP;
      if (c.out_at < c.out.size()) events |= POLLOUT;
      fds.push_back({c.fd.get(), events, 0});
      order.push_back(id);
    }
    int timeout = -1;
    // Still watching the channels (a request came in the last server_spin): look at the sockets and
    // come straight back.
    const bool spinning = store::clock::now() - last_channel_request_ < server_spin;
    auto deadline = store_.next_deadline();
    if (auto handshake = earliest_handshake_deadline(); handshake && (!deadline || *handshake < *deadline)) {
      deadline = handshake;
    }
    if (auto stalled = stalled_lane_deadline(); stalled && (!deadline || *stalled < *deadline)) deadline = stalled;
    if (deadline) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(*deadline - store::clock::now()).count();
      timeout = static_cast<int>(std::clamp<long long>(left, 0, 60'000));
    }
    if (spinning) timeout = 0;
    // Before sleeping, tell the channels' clients to ring the doorbell, then look once more (no lost wake-up).
    const bool sleeping = timeout != 0 && set_server_sleeping(1);
    if (sleeping && channel_request_pending()) timeout = 0;
    sys("poll", "manager server", [&] { return ::poll(fds.data(), fds.size(), timeout); });
    if (sleeping) set_server_sleeping(0);
    auto now = store::clock::now();
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
      if (revents & POLLOUT) {
        flush(found->second);
        // Its replies drained: the requests it sent meanwhile are handled now.
        if (!found->second.in.empty() && !backlogged(found->second)) process(found->second, now);
      }
      if (revents & POLLIN) receive(found->second, now);
    }
    if (fds[0].revents) accept_all(now);
    drop_slow_handshakes(now);
    drop_stalled_lane(now);
    store_.expire(now, replies_);
    deliver();
    reap();
    if (store_.shutdown_requested()) stop_ = true;
    if (!stop_) serve_channels();
  }
  listener_.reset();
  for (const auto& path : remove_) ::remove(path.c_str());  // best effort: the owner removes them too
  // Best effort: let the shutdown reply reach its client before the sockets close.
  for (auto& [id, c] : connections_) {
    if (c.out_at < c.out.size()) {
      const int fd = c.fd.get();
      const int flags = sys_try("fcntl", [&] { return ::fcntl(fd, F_GETFL); });
      if (flags == -1 || sys_try("fcntl", [&] { return ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK); }) == -1) continue;
      flush(c);
    }
  }
}

MP_DECL std::optional<server::time_point> server::earliest_handshake_deadline() const {
  std::optional<time_point> earliest;
  for (const auto& [id, c] : connections_) {
    if (c.at != stage::ready && (!earliest || c.handshake_deadline < *earliest)) earliest = c.handshake_deadline;
  }
  return earliest;
}

MP_DECL void server::drop_slow_handshakes(time_point now) {
  for (auto& [id, c] : connections_) {
    if (c.at != stage::ready && c.handshake_deadline <= now) c.dead = true;
  }
}

// Whether c may be read from now (see in_allowance); takes the lane for c when it is free and c needs it.
MP_DECL bool server::may_read(connection& c) {
  if (c.at != stage::ready || c.in.size() < in_allowance || buffered_in_ < request_budget || in_lane_ == c.id) return true;
  auto lane = connections_.find(in_lane_);
  if (lane != connections_.end() && !lane->second.dead && lane->second.in.size() >= in_allowance) return false;
  in_lane_ = c.id;
  return true;
}

// When the lane's holder is closed if it still sends nothing, while others wait for the budget.
MP_DECL std::optional<server::time_point> server::stalled_lane_deadline() const {
  if (!budget_waiters_) return std::nullopt;
  auto lane = connections_.find(in_lane_);
  if (lane == connections_.end() || lane->second.in.size() < in_allowance) return std::nullopt;
  return lane->second.last_in + stalled_request_timeout;
}

MP_DECL void server::drop_stalled_lane(time_point now) {
  auto deadline = stalled_lane_deadline();
  if (!deadline || now < *deadline) return;
  auto& c = connections_.find(in_lane_)->second;
  std::fprintf(stderr,
               "mp::Manager server (pid %d): closed a connection that held %zu bytes of an unfinished request and "
               "sent nothing for %lld ms while other clients waited for the server's request budget\n",
               static_cast<int>(::getpid()), c.in.size(), static_cast<long long>(stalled_request_timeout.count()));
  c.dead = true;
  in_lane_ = 0;
}

MP_DECL void server::append_frame(std::string& out, std::string_view payload) {
  protocol::writer w(out);
  w.u32(static_cast<std::uint32_t>(payload.size()));
  w.raw(payload.data(), payload.size());
}

MP_DECL void server::send_frame(connection& c, std::string_view payload) {
  if (!c.session) {
    append_frame(c.out, payload);
    return;
  }
  const auto mac = frame_mac(*c.session, direction::to_client, c.frames_sent++, payload);
  protocol::writer w(c.out);
  w.u32(static_cast<std::uint32_t>(payload.size() + hmac_size));
  w.raw(payload.data(), payload.size());
  w.raw(mac.data(), mac.size());
}

MP_DECL void server::accept_all(time_point now) {
  for (;;) {
    const int fd =
        sys_try("accept4", [&] { return ::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC); });
    if (fd < 0) {
      int err = last_errno();
      if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) accept_paused_ = true;
      return;  // EAGAIN, or a transient error (ECONNABORTED): retried on the next wake-up
    }
    if (!peer_allowed(fd)) {
      ::close(fd);  // another user's process: nothing is said to it (close cannot fail in a way we could handle)
      continue;
    }
    set_nodelay(fd);     // harmless on Unix sockets (fails quietly)
    connection c;
    c.id = next_client_++;
    c.fd = unique_fd(fd);
    c.unix_socket = unix_listener_;
    if (authkey_.empty()) {
      append_frame(c.out, welcome_tag);
    } else {
      c.at = stage::await_answer;
      c.challenge = make_challenge();
      c.handshake_deadline = now + handshake_timeout;
      append_frame(c.out, c.challenge);
    }
    auto id = c.id;
    const bool pending = c.at != stage::ready;
    if (pending) c.peer = peer_of(fd);
    auto& placed = connections_.emplace(id, std::move(c)).first->second;
    flush(placed);
    if (pending) cap_unauthenticated(placed.peer);
  }
}

// Who is at the other end, for the per-peer cap: the IP address (without the port) of a TCP peer; the pid of a Unix
// peer (all of a user's processes share its uid; one process opening many connections is the flood).
MP_DECL std::string server::peer_of(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof address;
  if (sys_try("getpeername", [&] { return ::getpeername(fd, reinterpret_cast<sockaddr*>(&address), &length); }) != 0) {
    return {};
  }
  if (address.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(address).sin_addr;
    return std::string(reinterpret_cast<const char*>(&in), sizeof in);
  }
  if (address.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(address).sin6_addr;
    return std::string(reinterpret_cast<const char*>(&in6), sizeof in6);
  }
  ucred peer{};
  socklen_t size = sizeof peer;
  if (sys_try("getsockopt", [&] { return ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &size); }) != 0) return {};
  return "pid " + std::to_string(peer.pid);
}

// Closes the oldest connection still authenticating of `peer` past the per-peer cap, else the oldest of all past
// the total cap (ids grow with time: the smallest is the oldest).
MP_DECL void server::cap_unauthenticated(const std::string& peer) {
  std::size_t total = 0, of_peer = 0;
  connection* oldest = nullptr;
  connection* oldest_of_peer = nullptr;
  for (auto& [id, c] : connections_) {
    if (c.at == stage::ready || c.dead) continue;
    ++total;
    if (!oldest || c.id < oldest->id) oldest = &c;
    if (c.peer == peer) {
      ++of_peer;
      if (!oldest_of_peer || c.id < oldest_of_peer->id) oldest_of_peer = &c;
    }
  }
  if (of_peer > max_unauthenticated_per_peer) {
    oldest_of_peer->dead = true;
  } else if (total > max_unauthenticated) {
    oldest->dead = true;
  }
  // Closed now, not at the end of the loop: a flood must not hold more descriptors than the caps while accepting.
  if (of_peer > max_unauthenticated_per_peer || total > max_unauthenticated) reap();
}

// A Unix socket's peer must run as our user (or root), unless the owner opted in to other users: the socket file
// is created 0600, and this check holds even if its mode or its directory's is loosened later.
MP_DECL bool server::peer_allowed(int fd) const {
  if (!check_peer_uid_) return true;
  ucred peer{};
  socklen_t length = sizeof peer;
  if (sys_try("getsockopt", [&] { return ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &length); }) != 0) {
    return false;
  }
  return peer.uid == ::geteuid() || peer.uid == 0;
}

MP_DECL void server::receive(connection& c, time_point now) {
  char chunk[64 * 1024];
  for (;;) {
    if (!c.closing && !may_read(c)) return;  // past the request budget: the rest waits in the kernel
    // recvmsg rather than read: a client attaching a channel sends its memfd with the request.
    auto got = receive_with_fds(c.fd.get(), chunk, sizeof chunk, c.fds);
    if (got <= 0) {
      if (got == 0 || (last_errno() != EAGAIN && last_errno() != EWOULDBLOCK)) c.dead = true;
      return;
    }
    if (c.closing) return;  // a rejected client: ignore whatever it sends until FAILURE is written
    c.last_in = now;
    const std::size_t held = c.in.size();
    c.in.append(chunk, static_cast<std::size_t>(got));
    process(c, now);
    buffered_in_ = buffered_in_ - std::min(buffered_in_, held) + c.in.size();
    // A client sends one request at a time: more than one full request buffered is a protocol violation.
    if (c.in.size() > std::size_t{protocol::max_request} + 8) c.dead = true;
    if (c.dead || backlogged(c) || static_cast<std::size_t>(got) < sizeof chunk) return;
  }
}

// Handles every complete frame in c.in, unless the connection is parked.
MP_DECL void server::process(connection& c, time_point now) {
  std::size_t at = 0;
  std::size_t queued = 0;  // bytes of c's replies made here, still in replies_ until deliver() moves them to c.out
  c.throttled = false;
  while (!c.parked && !c.dead && !c.closing && c.in.size() - at >= 4) {
    if (c.out.size() - c.out_at + queued > max_unsent) {
      c.throttled = true;  // the rest waits until its replies are read (deliver, or the POLLOUT that drains them)
      break;
    }
    protocol::reader header(c.in.data() + at, 4);
    auto size = header.u32();
    auto limit = c.at != stage::ready ? protocol::max_handshake
                                      : protocol::max_request + static_cast<std::uint32_t>(c.session ? hmac_size : 0);
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
    if (c.session && size > 0) {  // empty frames are doorbells: they carry nothing to authenticate
      const auto body = payload.substr(0, size >= hmac_size ? size - hmac_size : 0);
      if (size < hmac_size || !frame_mac_matches(*c.session, direction::to_server, c.frames_received++, body,
                                                 payload.substr(body.size()))) {
        c.dead = true;  // altered, injected, replayed or reordered: the connection is closed, nothing applied
        break;
      }
      payload = body;
    }
    if (size == 0 && c.channel) continue;  // a doorbell: its request is in the channel
    if (payload.size() == 9 && payload[0] == static_cast<char>(protocol::op::attach_channel)) {
      attach(c);
      continue;
    }
    const std::size_t before = replies_.size();
    if (!payload.empty() && payload[0] == static_cast<char>(protocol::op::large_request)) {
      handle_large(c, payload, now);
    } else if (!c.fds.empty()) {
      c.dead = true;  // a descriptor beside a frame that takes none: a confused or hostile client
      break;
    } else {
      handle(c, payload, now);
    }
    for (std::size_t i = before; i < replies_.size(); ++i) {
      if (replies_[i].client == c.id) queued += replies_[i].bytes.size();
    }
  }
  c.in.erase(0, at);
  // A large request handled: give its memory back, or every connection that once sent one would keep it.
  if (c.in.size() < in_allowance && c.in.capacity() > 2 * in_allowance) c.in.shrink_to_fit();
}

// Applies one request of c; it parks if the store answered nothing yet.
MP_DECL void server::handle(connection& c, std::string_view payload, time_point now) {
  auto before = replies_.size();
  if (!store_.handle(c.id, payload, now, replies_)) {
    c.dead = true;
    return;
  }
  for (auto i = before; i < replies_.size(); ++i) {
    if (!replies_[i].tail.empty()) take_tail(replies_[i]);
  }
  c.parked = std::none_of(replies_.begin() + static_cast<std::ptrdiff_t>(before), replies_.end(),
                          [&](const store::reply& r) { return r.client == c.id; });
}

// large_request: exactly one descriptor came with the frame, a size-sealed segment holding the announced request
// (large.hpp), which must not itself be a large_request. Anything else closes the connection (as a malformed frame
// does); nothing is applied. The store parses the request in place, in the mapping, and copies what it keeps; the
// segment is marked consumed (the client may reuse it) and its descriptor closed once handled, whatever happens.
MP_DECL void server::handle_large(connection& c, std::string_view payload, time_point now) {
  segment_reader segment;
  try {
    protocol::reader in(payload);
    in.u8(), in.u64();
    const auto size = in.u64();
    in.expect_end();
    if (c.unix_socket && c.fds.size() == 1 && size > 0 && size <= protocol::max_request) {
      segment = segment_reader(std::move(c.fds.front()), static_cast<std::size_t>(size), "Manager request",
                               &request_views_, segment_trust::sealed_required);
    }
  } catch (const protocol::malformed&) {
  } catch (const Error&) {  // not a size-sealed segment holding the request, or it cannot be mapped now
  }
  c.fds.clear();
  const std::string_view request(reinterpret_cast<const char*>(segment.bytes().data()), segment.bytes().size());
  if (!segment || request[0] == static_cast<char>(protocol::op::large_request)) {
    c.dead = true;
    return;
  }
  handle(c, request, now);  // the store copies what it keeps, and replies with copies: the segment is free again
}

// Only when nothing else of c's is waiting to be written (the descriptor must ride on this frame's first byte),
// and the frame goes out at once (a full socket buffer: it is framed instead). One call at a time per connection:
// the client marked the previous reply's segment consumed before it sent the request this one answers, so the
// segment is reused (a client that never does gets a new one each time: segment_pool drops the old).
MP_DECL bool server::send_large(connection& c, std::string_view bytes) {
  if (!c.unix_socket || c.out_at != c.out.size()) return false;
  pooled_segment* segment = nullptr;
  try {
    segment = &c.reply_segments.acquire(bytes.size(), protocol::kept_bytes, "mp-manager-reply", false, 1);
  } catch (const Error&) {
    return false;  // no memfd or memory for it now: the reply is framed
  }
  std::memcpy(segment->item(bytes.size()).data(), bytes.data(), bytes.size());
  return send_segment(c, *segment, bytes.size());
}

MP_DECL bool server::send_segment(connection& c, pooled_segment& segment, std::size_t size) {
  if (c.out_at != c.out.size()) {
    segment.header().consumed.store(1, std::memory_order_release);
    return false;
  }
  std::string note;
  protocol::writer w(note);
  w.u8(static_cast<std::uint8_t>(protocol::status::in_segment));
  w.u64(size);
  c.out.clear(), c.out_at = 0;
  const auto frames_sent = c.frames_sent;
  send_frame(c, note);
  const long sent = send_some_with_fd(c.fd.get(), c.out.data(), c.out.size(), segment.fd.get(), MSG_DONTWAIT);
  if (sent <= 0) {
    c.out.clear(), c.frames_sent = frames_sent;  // not sent: as if never framed (its MAC's sequence number too)
    segment.header().consumed.store(1, std::memory_order_release);  // free again
    return false;
  }
  c.out_at = static_cast<std::size_t>(sent);  // the rest of the small frame (if any) follows plainly
  if (segment.capacity > protocol::kept_bytes) c.reply_segments.clear();  // the client's descriptor keeps it
  return true;
}

MP_DECL void server::take_tail(store::reply& r) {
  const std::string_view tail = std::exchange(r.tail, {});
  const std::size_t size = r.bytes.size() + tail.size();
  auto found = connections_.find(r.client);
  if (found != connections_.end() && found->second.unix_socket && !found->second.dead &&
      found->second.reply_written == nullptr && size <= max_reply) {
    auto& c = found->second;
    try {
      pooled_segment& segment = c.reply_segments.acquire(size, protocol::kept_bytes, "mp-manager-reply", false, 1);
      std::byte* at = segment.item(size).data();
      std::memcpy(at, r.bytes.data(), r.bytes.size());
      std::memcpy(at + r.bytes.size(), tail.data(), tail.size());
      c.reply_written = &segment, c.reply_written_size = size;
      r.bytes.clear();
      return;
    } catch (const Error&) {  // no memfd or memory for it now: the reply is framed
    }
  }
  std::string bytes = std::move(store::spare_reply());  // warm pages (store.hpp)
  bytes.assign(r.bytes).append(tail);
  r.bytes = std::move(bytes);
}

MP_DECL void server::send_written(connection& c) {
  pooled_segment& segment = *std::exchange(c.reply_written, nullptr);
  const std::size_t size = c.reply_written_size;
  if (send_segment(c, segment, size)) return;
  send_frame(c, {reinterpret_cast<const char*>(segment.item(size).data()), size});
}

// attach_channel: maps the memfd that came with the request. The reply goes over the socket (the client reads
// it there); an error reply leaves the connection on the socket.
MP_DECL void server::attach(connection& c) {
  if (!c.channel && !c.fds.empty()) c.channel = channel::open(c.fds.front().get());
  c.fds.clear();  // the mapping keeps the memory; no descriptor stays open per client
  std::string reply;
  protocol::writer w(reply);
  if (c.channel) {
    w.u8(static_cast<std::uint8_t>(protocol::status::ok));
  } else {
    w.u8(static_cast<std::uint8_t>(protocol::status::error));
    w.u8(static_cast<std::uint8_t>(protocol::error_kind::error));
    w.blob("the manager server could not map the channel: it stays on the socket");
  }
  send_frame(c, reply);
  flush(c);
}

// Publishes a reply in c's channel (or, too big for it, on the socket, announced in the channel) and rings the
// client's doorbell if it sleeps. Never blocks: the socket's output is buffered.
MP_DECL void server::post(connection& c, std::string_view bytes) {
  auto& shared = *c.channel;
  const bool fits = !bytes.empty() && bytes.size() <= channel_capacity;  // empty: in c's segment (take_tail)
  if (fits) {
    std::memcpy(shared.reply, bytes.data(), bytes.size());
    shared.reply_size.store(static_cast<std::uint32_t>(bytes.size()), std::memory_order_relaxed);
  } else {
    shared.reply_size.store(reply_on_socket, std::memory_order_relaxed);
  }
  shared.server_cpu.store(current_cpu(), std::memory_order_relaxed);
  shared.reply_seq.store(++c.replies_sent);  // seq_cst: publishes, and orders the flag load below
  // After publishing: send_large writes to the socket at once, and a client that finds a frame there before the
  // announcement in the slot would take it for a broken protocol. (send_frame only buffers.)
  if (bytes.empty()) {
    send_written(c);
  } else if (!fits && !send_large(c, bytes)) {
    send_frame(c, bytes);
  }
  if (shared.client_sleeping.exchange(0) != 0) append_frame(c.out, {});  // one doorbell per sleep
}

MP_DECL bool server::channel_request_pending() const {
  return std::any_of(connections_.begin(), connections_.end(),
                     [](const auto& entry) { return channel_has_request(entry.second); });
}

// Raises or lowers server_sleeping in every channel; false if there is none (nothing to announce).
MP_DECL bool server::set_server_sleeping(std::uint32_t value) {
  bool any = false;
  for (auto& [id, c] : connections_) {
    if (c.channel) c.channel->server_sleeping.store(value), any = true;  // seq_cst
  }
  return any || value == 0;
}

// Whether c's peer hung up (its process died): its socket reports it at once, its channel never does.
MP_DECL bool server::hung_up(const connection& c) {
  pollfd fd{c.fd.get(), POLLRDHUP, 0};
  return sys_try("poll", [&] { return ::poll(&fd, 1, 0); }) > 0 && (fd.revents & (POLLHUP | POLLERR | POLLRDHUP));
}

// Takes at most one request from every channel (so every client gets its turn) and applies it; the count taken.
// A request that parks (a blocking call) is followed by a look at its socket: a client killed right after it
// published the request is forgotten before a later request (of this round) can hand it an item or a lock.
MP_DECL std::size_t server::take_channel_requests(time_point now) {
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
    if (size > channel_capacity) {
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
MP_DECL void server::reap_parked_hangups() {
  hangup_fds_.clear(), hangup_ids_.clear();
  for (auto& [id, c] : connections_) {
    if (c.parked && !c.dead) hangup_fds_.push_back({c.fd.get(), POLLRDHUP, 0}), hangup_ids_.push_back(id);
  }
  if (hangup_fds_.empty() || sys_try("poll", [&] { return ::poll(hangup_fds_.data(), hangup_fds_.size(), 0); }) <= 0) {
    return;
  }
  for (std::size_t i = 0; i < hangup_fds_.size(); ++i) {
    if (!(hangup_fds_[i].revents & (POLLHUP | POLLERR | POLLRDHUP))) continue;
    auto found = connections_.find(hangup_ids_[i]);
    if (found != connections_.end()) found->second.dead = true;
  }
  reap();
}

// Serves the channels while requests keep coming: returns server_spin after the last one, or after
// socket_poll_period so that the sockets (and the store's deadlines) are looked at too.
MP_DECL void server::serve_channels() {
  auto now = store::clock::now();
  const auto slice_end = now + socket_poll_period;
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
    now = store::clock::now();
    if (now - last_channel_request_ >= server_spin || now >= slice_end) return;
    if (last_client_cpu_ == current_cpu()) {
      ::sched_yield();  // the client we answered last may be waiting for this very CPU (see adaptive_spin_until)
    } else {
      for (int i = 0; i < 32; ++i) cpu_relax();
    }
  }
}

MP_DECL void server::handshake(connection& c, std::string_view message) {
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
    c.session = session_key(authkey_, c.challenge, message);  // binds what follows to this handshake (auth.hpp)
    c.at = stage::ready;
  }
  flush(c);
}

// Routes store replies to their connections; a reply to a parked connection unparks it, so its buffered
// frames are handled now.
MP_DECL void server::deliver() {
  for (bool again = true; again;) {
    while (!replies_.empty()) {
      batch_.clear();
      batch_.swap(replies_);  // swap, not move: both keep their capacity, so a request allocates no vector
      unparked_.clear();
      for (auto& r : batch_) {
        auto found = connections_.find(r.client);
        if (found == connections_.end() || found->second.dead) continue;
        auto& c = found->second;
        if (r.bytes.size() > max_reply) r.bytes = oversized_reply(r.bytes.size());
        if (c.channel) {
          post(c, r.bytes);  // an empty reply: the one take_tail wrote into c's segment
        } else if (r.bytes.empty()) {
          send_written(c);
        } else if (r.bytes.size() < protocol::large_bytes || !send_large(c, r.bytes)) {
          send_frame(c, r.bytes);
        }
        store::recycle_reply(std::move(r.bytes));  // a big reply's buffer serves the next one (store.hpp)
        if (c.parked) c.parked = false, unparked_.push_back(r.client);
      }
      if (unparked_.empty()) continue;
      auto now = store::clock::now();
      for (auto id : unparked_) {
        auto found = connections_.find(id);
        if (found != connections_.end()) process(found->second, now);
      }
    }
    for (auto& [id, c] : connections_) {
      if (c.out_at < c.out.size() && !c.dead) flush(c);
    }
    // Throttled connections whose replies drained at once (their client reads): their waiting frames are handled now
    // (one whose replies still wait is resumed by the POLLOUT that drains them).
    again = false;
    for (auto& [id, c] : connections_) {
      if (c.throttled && !c.dead && !backlogged(c)) {
        process(c, store::clock::now());
        again = true;
      }
    }
  }
}

MP_DECL std::string server::oversized_reply(std::size_t size) {
  std::string reply;
  protocol::writer w(reply);
  w.u8(static_cast<std::uint8_t>(protocol::status::error));
  w.u8(static_cast<std::uint8_t>(protocol::error_kind::error));
  w.blob("the manager server's reply of " + std::to_string(size) + " bytes exceeds the " +
         std::to_string(max_reply) + " bytes one frame can carry: ask for it in parts (slices, single keys)");
  return reply;
}

MP_DECL void server::flush(connection& c) {
  while (c.out_at < c.out.size()) {
    auto sent = sys_try("send", [&] {
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
MP_DECL void server::reap() {
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

}  // namespace mp::detail::manager
