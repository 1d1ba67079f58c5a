// client: definitions (see client.hpp).
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include <mp/detail/manager/client.hpp>
#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/manager/auth.hpp>
#include <mp/detail/manager/remote.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/errors.hpp>

namespace mp::detail::manager {

// ---- connection ------------------------------------------------------------------------------------------------

MP_DECL connection::connection(const endpoint& where, const std::string& authkey, std::chrono::milliseconds timeout)
    : endpoint_(where), timeout_(timeout), setup_deadline_(deadline_or_forever(timeout)) {
  connect_socket(where);
  handshake(authkey);
  if (!where.tcp && channels_enabled) attach_channel();
  setup_deadline_.reset();  // from now on a call may wait as long as its operation blocks (a queue get, a lock)
}

// Connects with the setup deadline: SO_SNDTIMEO bounds a blocking connect(2) (TCP: the SYN handshake; Unix: a
// listener whose backlog is full), and is cleared once connected, so that later requests may block as long as the
// server takes to read them.
MP_DECL void connection::connect_socket(const endpoint& where) {
  bool timed_out = false;
  const auto bounded_connect = [this, &timed_out](int s, const sockaddr* a, socklen_t n) {
    const int left = poll_timeout_ms(setup_deadline_);
    if (left == 0) {
      timed_out = true;
      return false;
    }
    if (left > 0) {
      timeval limit{left / 1000, (left % 1000) * 1000};
      (void)sys_try("setsockopt", [&] { return ::setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit); });
    }
    if (sys_try("connect", [&] { return ::connect(s, a, n); }) != 0) {
      // A timed-out connect says EINPROGRESS (TCP) or EAGAIN (Unix).
      const int err = last_errno();
      if (err == EINPROGRESS || err == EAGAIN) timed_out = true;
      return false;
    }
    timeval forever{0, 0};
    (void)sys_try("setsockopt", [&] { return ::setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &forever, sizeof forever); });
    return true;
  };
  if (where.tcp) {
    try {
      fd_ = with_tcp_address(where, "connect", bounded_connect);
    } catch (const Error&) {
      if (timed_out) setup_timed_out();
      throw;
    }
    set_nodelay(fd_.get());
  } else {
    auto address = unix_address(where.path);
    fd_ = unique_fd(sys("socket", where.path, [] { return ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0); }));
    if (!bounded_connect(fd_.get(), reinterpret_cast<sockaddr*>(&address), sizeof address)) {
      if (timed_out) setup_timed_out();
      const int err = last_errno();
      if (err == EACCES) {
        throw_errno("connect", where.path + ": the socket belongs to another user (a manager's socket is 0600 unless "
                               "its owner sets ManagerOptions::allow_other_users)", err);
      }
      throw_errno("connect", where.path + ": no manager server listens there (it has shut down, or the address is wrong)",
                  err);
    }
  }
}

MP_DECL void connection::setup_timed_out() const {
  throw TimeoutError("Manager: connecting to " + endpoint_.to_string() + " and authenticating took longer than " +
                     describe_timeout(timeout_) +
                     ": nothing answers there as an mp manager would (a server that never speaks, or one too busy); "
                     "check the address, or allow more time (ManagerOptions::connect_timeout, or the timeout of "
                     "Manager::connect)");
}

MP_DECL void connection::seal(std::vector<std::byte>& frame) {
  if (session_) {
    const std::string_view payload(reinterpret_cast<const char*>(frame.data()) + 4, frame.size() - 4);
    const auto mac = frame_mac(*session_, direction::to_server, frames_sent_++, payload);
    const auto* first = reinterpret_cast<const std::byte*>(mac.data());
    frame.insert(frame.end(), first, first + mac.size());
  }
  const std::size_t size = frame.size() - 4;
  for (std::size_t i = 0; i < 4; ++i) frame[i] = static_cast<std::byte>(size >> (8 * i));
}

MP_DECL void connection::integrity_failed() {
  fd_.reset();
  throw Error("the manager connection to " + endpoint_.to_string() +
              " failed its integrity check: a frame was altered or injected on the way (it was not sent by the "
              "server that authenticated); the connection is closed");
}

MP_DECL std::string_view connection::call(std::vector<std::byte>& frame) {
  auto payload = frame.size() - 4;
  if (payload > protocol::max_request) {
    throw Error("a manager request of " + std::to_string(payload) + " bytes exceeds the server's frame limit of " +
                std::to_string(protocol::max_request) + " bytes: send the data in smaller parts");
  }
  reply_segment_.reset();  // the last large reply is consumed: the server may reuse its segment
  if (channel_ && payload <= channel_capacity) {
    auto& shared = *channel_;
    std::memcpy(shared.request, frame.data() + 4, payload);
    shared.request_size.store(static_cast<std::uint32_t>(payload), std::memory_order_relaxed);
    shared.client_cpu.store(current_cpu(), std::memory_order_relaxed);
    shared.request_seq.store(++requests_);  // seq_cst: publishes the bytes, and orders the flag load below
    if (shared.server_sleeping.load() != 0) ring_doorbell();
    return unwrap(await_reply());
  }
  if (endpoint_.tcp || payload < protocol::large_bytes || !send_large(frame)) {
    seal(frame);
    send_all(frame.data(), frame.size());
  }
  return unwrap(channel_ ? await_reply() : receive());
}

MP_DECL pooled_segment* connection::request_segment(std::size_t size) {
  if (endpoint_.tcp || lent_segment_ != nullptr || size > std::size_t{protocol::max_request} + 4096) return nullptr;
  try {
    lent_segment_ = &request_segments_.acquire(size, protocol::kept_bytes, "mp-manager-request", false, 1);
  } catch (const Error&) {
    return nullptr;  // no memfd or memory for it now: the request goes in its frame, and streams
  }
  return lent_segment_;
}

MP_DECL void connection::return_request_segment() noexcept {
  if (lent_segment_ != nullptr) lent_segment_->header().consumed.store(1, std::memory_order_release);
  lent_segment_ = nullptr;
}

MP_DECL std::string_view connection::call_in_segment(std::size_t size) {
  if (size > protocol::max_request) {
    return_request_segment();
    throw Error("a manager request of " + std::to_string(size) + " bytes exceeds the server's frame limit of " +
                std::to_string(protocol::max_request) + " bytes: send the data in smaller parts");
  }
  reply_segment_.reset();  // the last large reply is consumed: the server may reuse its segment
  send_segment_note(size);
  return unwrap(channel_ ? await_reply() : receive());
}

MP_DECL bool connection::send_large(const std::vector<std::byte>& frame) {
  const std::size_t payload = frame.size() - 4;
  pooled_segment* segment = request_segment(payload);
  if (segment == nullptr) return false;
  std::memcpy(segment->item(payload).data(), frame.data() + 4, payload);
  send_segment_note(payload);
  return true;
}

MP_DECL void connection::send_segment_note(std::size_t size) {
  pooled_segment* segment = std::exchange(lent_segment_, nullptr);  // the server marks it consumed once read
  std::vector<std::byte> note;
  protocol::writer out(note);
  out.u32(0);  // the length: seal() writes it
  out.u8(static_cast<std::uint8_t>(protocol::op::large_request));
  out.u64(0);
  out.u64(size);
  seal(note);
  if (!send_with_fd(fd_.get(), note.data(), note.size(), segment->fd.get())) {
    int err = last_errno();
    if (err == EPIPE || err == ECONNRESET) server_gone(err);
    throw_errno("sendmsg", endpoint_.to_string(), err);
  }
  // A segment beyond the kept size goes now (the server's descriptor keeps it alive until it has read it).
  if (segment->capacity > protocol::kept_bytes) request_segments_.clear();
}

MP_DECL std::string_view connection::unwrap(std::string_view reply) {
  if (reply.empty() || reply[0] != static_cast<char>(protocol::status::in_segment)) {
    fds_.clear();  // nothing is expected beside other replies
    return reply;
  }
  std::string_view bytes;
  try {
    protocol::reader in(reply.substr(1));
    const auto size = in.u64();
    in.expect_end();
    if (fds_.size() == 1 && size <= std::uint64_t{1} << 40) {
      reply_segment_ = segment_reader(std::move(fds_.front()), static_cast<std::size_t>(size), "Manager reply",
                                      &reply_views_, segment_trust::sealed_required);
      bytes = {reinterpret_cast<const char*>(reply_segment_.bytes().data()), reply_segment_.bytes().size()};
    }
  } catch (const protocol::malformed&) {
  } catch (const SerializationError&) {  // not a size-sealed segment holding the reply
  }
  fds_.clear();
  if (bytes.empty() || bytes[0] == static_cast<char>(protocol::status::in_segment)) protocol_broken();
  return bytes;
}

MP_DECL void connection::handshake(const std::string& authkey) {
  // Every frame before the handshake completes comes from a peer not yet authenticated: at most max_handshake.
  const std::size_t limit = protocol::max_handshake;
  auto greeting = std::string(receive(limit));
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
  if (receive(limit) != welcome_tag) {
    throw AuthenticationError("the manager server at " + endpoint_.to_string() +
                              " rejected the authkey (digest mismatch): use the key the server was started with");
  }
  // Now make the server prove it knows the key too, so a client never talks to an impostor.
  auto challenge = make_challenge();
  send_message(challenge);
  if (!check_answer(authkey, challenge, receive(limit))) {
    throw AuthenticationError("the manager server at " + endpoint_.to_string() +
                              " failed to prove it knows the authkey: it is not the server you meant");
  }
  // Both proved they know the key; what follows is bound to this handshake (see auth.hpp).
  session_ = session_key(authkey, greeting, challenge);
}

MP_DECL void connection::send_message(std::string_view message) {
  std::vector<std::byte> frame(4 + message.size());
  std::memcpy(frame.data() + 4, message.data(), message.size());
  for (std::size_t i = 0; i < 4; ++i) frame[i] = static_cast<std::byte>(message.size() >> (8 * i));
  send_all(frame.data(), frame.size());
}

// Offers the server a shared-memory channel; on any failure (no memfd, an old server) the socket carries on.
MP_DECL void connection::attach_channel() {
  auto [made, fd] = channel::create();
  if (!made) return;
  std::vector<std::byte> frame;
  protocol::writer out(frame);
  out.u32(0);  // the length: seal() writes it
  out.u8(static_cast<std::uint8_t>(protocol::op::attach_channel));
  out.u64(0);
  seal(frame);
  if (!send_with_fd(fd_.get(), frame.data(), frame.size(), fd.get())) {
    int err = last_errno();
    if (err == EPIPE || err == ECONNRESET) server_gone(err);
    throw_errno("sendmsg", endpoint_.to_string(), err);
  }
  fd.reset();  // the server has its own descriptor now; the mapping keeps the memory
  auto reply = receive();
  if (!reply.empty() && reply[0] == static_cast<char>(protocol::status::ok)) channel_ = std::move(made);
}

// A doorbell: an empty frame (no request or reply is empty) that wakes the server's poll().
MP_DECL void connection::ring_doorbell() {
  const std::byte empty[4] = {};
  send_all(empty, sizeof empty);
}

// Waits for the reply to the request just sent: spins on reply_seq, then sleeps in read() on the socket until
// the server's doorbell (or the reply itself, when it is too big for the slot, or EOF if the server died).
// The reply stays valid until the next call: the server writes the slot again only for the next request.
MP_DECL std::string_view connection::await_reply() {
  auto& shared = *channel_;
  const std::uint32_t expected = ++replies_;
  auto ready = [&] { return shared.reply_seq.load(std::memory_order_acquire) == expected; };
  std::string_view on_socket;
  if (!adaptive_spin_until(ready, shared.server_cpu, colocated_yields_, client_spin)) {
    // Doorbells owed from earlier sleeps come first (they are on their way: the server took the flag).
    for (; doorbells_owed_ > 0; --doorbells_owed_) {
      if (!receive().empty()) protocol_broken();
    }
    for (;;) {
      shared.client_sleeping.store(1);  // seq_cst, then re-check: see the argument in channel.hpp
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
  if (!published || (size > channel_capacity && size != reply_on_socket) ||
      (!on_socket.empty() && size != reply_on_socket)) {
    protocol_broken();
  }
  if (size != reply_on_socket) return {reinterpret_cast<const char*>(shared.reply), size};
  while (on_socket.empty()) {
    on_socket = receive();
    if (on_socket.empty() && doorbells_owed_ > 0) --doorbells_owed_;  // an owed doorbell came before it
  }
  return on_socket;
}

MP_DECL void connection::protocol_broken() const {
  throw Error("the manager server at " + endpoint_.to_string() +
              " broke the shared-memory channel protocol: it runs another version of mp, or memory is corrupt");
}

MP_DECL void connection::server_gone(int err) const {
  throw Error("the manager server at " + endpoint_.to_string() + " closed the connection (" +
              (err ? std::string(std::strerror(err)) : std::string("end of file")) +
              "): it has shut down or died; create a new Manager or connect to a running server");
}

MP_DECL void connection::send_all(const std::byte* data, std::size_t size) {
  while (size > 0) {
    auto sent = sys_try("send", [&] { return ::send(fd_.get(), data, size, MSG_NOSIGNAL); });
    if (sent < 0) {
      int err = last_errno();
      if (err == EPIPE || err == ECONNRESET) server_gone(err);
      throw_errno("send", endpoint_.to_string(), err);
    }
    data += sent, size -= static_cast<std::size_t>(sent);
  }
}

// Reads until buffer_ holds `wanted` unread bytes. buffer_'s size is its capacity (bytes [start_, end_) are
// unread), so a read never pays for zero-filling a fresh buffer. Past trusted_growth the buffer doubles as bytes
// arrive instead of taking the announced length at once: a frame's length is not authenticated until its bytes
// and MAC are in, so a hostile or corrupt length (0xFFFFFFFF) costs what was received, not 4 GiB.
MP_DECL void connection::fill(std::size_t wanted) {
  constexpr std::size_t trusted_growth = std::size_t{64} << 20;
  if (end_ - start_ >= wanted) return;
  if (start_ + wanted > buffer_.size()) {  // compact, then grow if still too small
    std::memmove(buffer_.data(), buffer_.data() + start_, end_ - start_);
    end_ -= start_, start_ = 0;
    if (wanted > buffer_.size()) {
      buffer_.resize(std::min(std::max(wanted, 2 * buffer_.size()), std::max(2 * buffer_.size(), trusted_growth)));
    }
  }
  while (end_ - start_ < wanted) {
    if (setup_deadline_) {
      pollfd ready{fd_.get(), POLLIN, 0};
      if (sys_try("poll", [&] { return ::poll(&ready, 1, poll_timeout_ms(setup_deadline_)); }) == 0) setup_timed_out();
    }
    // recvmsg rather than read: a large reply's descriptor comes with its frame (large.hpp).
    auto got = endpoint_.tcp
                   ? sys_try("read", [&] { return ::read(fd_.get(), buffer_.data() + end_, buffer_.size() - end_); })
                   : receive_with_fds(fd_.get(), buffer_.data() + end_, buffer_.size() - end_, fds_);
    if (got == 0) server_gone(0);
    if (got < 0) {
      int err = last_errno();
      if (err == ECONNRESET) server_gone(err);
      throw_errno("read", endpoint_.to_string(), err);
    }
    end_ += static_cast<std::size_t>(got);
    if (end_ == buffer_.size() && end_ - start_ < wanted) buffer_.resize(std::min(start_ + wanted, 2 * buffer_.size()));
  }
}

MP_DECL std::string_view connection::receive(std::size_t limit) {
  if (start_ == end_) start_ = end_ = 0;
  fill(4);
  std::uint32_t size = 0;
  for (std::size_t i = 0; i < 4; ++i) size |= std::uint32_t{static_cast<unsigned char>(buffer_[start_ + i])} << (8 * i);
  if (size > limit) {
    throw AuthenticationError("the server at " + endpoint_.to_string() + " announced a " + std::to_string(size) +
                              "-byte frame before authenticating (at most " + std::to_string(limit) +
                              " bytes then): it is not an mp manager; the frame was not read");
  }
  fill(4 + std::size_t{size});
  std::string_view payload(buffer_.data() + start_ + 4, size);
  start_ += 4 + size;
  if (session_ && size > 0) {  // empty frames are doorbells: they carry nothing to authenticate
    if (size < hmac_size) integrity_failed();
    const auto body = payload.substr(0, size - hmac_size);
    if (!frame_mac_matches(*session_, direction::to_client, frames_received_++, body, payload.substr(body.size()))) {
      integrity_failed();
    }
    return body;
  }
  return payload;
}

// ---- client ----------------------------------------------------------------------------------------------------

/// Every client alive in this process, so that a forked child can close its copies of their connections.
struct live_clients {
  std::mutex mutex;
  std::vector<client*> clients;  // guarded by mutex
};
MP_DECL live_clients& the_live_clients() {
  static auto* live = new live_clients;  // never destroyed: usable from atfork handlers during exit
  return *live;
}

MP_DECL void close_inherited_connections() noexcept {
  auto& live = the_live_clients();
  if (!live.mutex.try_lock()) return;
  for (auto* c : live.clients) c->abandon_connections();
  live.mutex.unlock();
}

MP_DECL client::client(manager::endpoint where, std::string authkey, std::chrono::milliseconds connect_timeout)
    : endpoint_(std::move(where)), authkey_(std::move(authkey)), connect_timeout_(connect_timeout),
      generation_(fork_generation()) {
  auto& live = the_live_clients();
  std::lock_guard guard(live.mutex);
  live.clients.push_back(this);
}

MP_DECL client::~client() {
  auto& live = the_live_clients();
  std::lock_guard guard(live.mutex);
  std::erase(live.clients, this);
}

// try_lock: a mutex held by a parent thread at fork time stays locked forever in the child; then the connections
// are left to the next call's check.
MP_DECL void client::abandon_connections() noexcept {
  if (!mutex_.try_lock()) return;
  for (auto& [thread, open] : connections_) {
    if (open) open->abandon();
  }
  mutex_.unlock();
}

MP_DECL std::uint64_t client::next_serial() {
  static std::atomic<std::uint64_t> serial{0};
  return ++serial;
}

MP_DECL manager::connection& client::lookup(std::uint64_t generation) {
  std::unique_lock guard(mutex_);
  if (generation != generation_) {
    // A forked child: the inherited connections belong to the parent; close our copies of them.
    connections_.clear();
    generation_ = generation;
  }
  auto& slot = connections_[std::this_thread::get_id()];
  if (slot) return *slot;
  guard.unlock();  // connecting takes round trips: don't hold up other threads
  auto made = std::make_unique<manager::connection>(endpoint_, authkey_, connect_timeout_);
  refs_.bind(*made);  // this process's session, for reference counting (refs.hpp)
  guard.lock();
  auto& again = connections_[std::this_thread::get_id()];
  again = std::move(made);
  return *again;
}

// ---- request ---------------------------------------------------------------------------------------------------

MP_DECL void request::spill_segment() {
  const auto* first = segment_->item(segment_end_).data();
  frame_.insert(frame_.begin() + static_cast<std::ptrdiff_t>(frame_mark_), first + (frame_mark_ - 4),
                first + segment_end_);
  segment_ = nullptr;
  connection_.return_request_segment();
}

MP_DECL protocol::reader request::send() {
  namespace p = protocol;
  std::string_view reply;
  if (segment_ != nullptr) {
    const std::size_t after = frame_.size() - frame_mark_;  // the fields after the big value
    if (segment_end_ + after <= segment_->capacity) {
      std::memcpy(segment_->item(segment_end_ + after).data() + segment_end_, frame_.data() + frame_mark_, after);
      segment_ = nullptr;  // lent to the connection until the server has read it
      reply = connection_.call_in_segment(segment_end_ + after);
    } else {
      spill_segment();
      reply = connection_.call(frame_);
    }
  } else {
    reply = connection_.call(frame_);
  }
  try {
    p::reader in(reply);
    if (static_cast<p::status>(in.u8()) == p::status::ok) return in;
    auto kind = static_cast<p::error_kind>(in.u8());
    std::string message(in.blob());
    switch (kind) {
      case p::error_kind::empty: throw Empty(message);
      case p::error_kind::full: throw Full(message);
      case p::error_kind::broken_barrier: throw BrokenBarrierError(message);
      case p::error_kind::key: throw KeyError(message);
      case p::error_kind::index: throw IndexError(message);
      case p::error_kind::value: throw ValueError(message);
      case p::error_kind::remote: throw_remote(std::move(message), std::string(in.blob()));
      default: throw Error(message);
    }
  } catch (const p::malformed&) {
    throw Error("the manager server sent a malformed reply: it runs another version of mp, or the connection is corrupt");
  }
}

}  // namespace mp::detail::manager
