// client: the client side of a manager — one connection (framed request/reply over the socket or the shared-memory
// channel, and the authentication handshake), the per-process and per-thread connections of one manager, one
// request being built and its reply, and what every proxy holds.
//
// Why a connection per process and per thread: processes never share a socket (a forked child closes its copies
// of the parent's connections at once, so the server sees the parent hang up when it dies, even while children
// live), and threads never interleave frames on one. The typed parts of a request (a value's bytes, a reply
// decoded into a T) are defined in <mp/manager.hpp>, with mp::serialize: this file carries bytes only.
#pragma once

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include <mp/detail/archive.hpp>
#include <mp/detail/clock.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/manager/auth.hpp>
#include <mp/detail/manager/channel.hpp>
#include <mp/detail/manager/large.hpp>
#include <mp/detail/manager/net.hpp>
#include <mp/detail/manager/protocol.hpp>
#include <mp/detail/manager/refs.hpp>
#include <mp/detail/segment_pool.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail::manager {

/// How long connecting and the handshake may take unless the user says otherwise (Python's CONNECTION_TIMEOUT).
inline constexpr std::chrono::milliseconds default_connect_timeout{20'000};

/// One client connection to a manager server: blocking, used by one thread at a time.
class connection {
 public:
  /// Connects and runs the handshake; AuthenticationError if the keys differ, mp::Error if nothing listens,
  /// TimeoutError if connecting and the handshake take longer than `timeout` (a peer that never speaks).
  MP_DECL connection(const endpoint& where, const std::string& authkey,
                     std::chrono::milliseconds timeout = default_connect_timeout);

  /// Sends one request frame (its first 4 bytes are reserved for the length) and returns the reply payload,
  /// valid until the next call.
  MP_DECL std::string_view call(std::vector<std::byte>& frame);

  /// For a request being built with a large value: a segment to encode the request straight into (large.hpp),
  /// with room for `size` payload bytes; nullptr where the request goes in its frame instead (TCP, another request
  /// of this connection holds the segment, a size beyond the frame limit, no memfd now). Until the request is sent
  /// with call_in_segment or the segment given back with return_request_segment, no other request gets it.
  MP_DECL pooled_segment* request_segment(std::size_t size);
  /// Sends the request whose `size` payload bytes fill the segment from request_segment, and returns the reply as
  /// call() does.
  MP_DECL std::string_view call_in_segment(std::size_t size);
  /// Gives back the segment from request_segment unsent.
  MP_DECL void return_request_segment() noexcept;

  /// True once requests and replies travel through shared memory (see channel.hpp).
  bool has_channel() const noexcept { return static_cast<bool>(channel_); }
  /// Test seam: the channel's shared memory (nullptr without a channel).
  channel_shared* channel_memory() const noexcept { return channel_ ? &*channel_ : nullptr; }

  int fd() const noexcept { return fd_.get(); }
  /// Closes the descriptor only (a forked child's copy of its parent's connection); the object must not be used.
  void abandon() noexcept {
    fd_.reset();
    request_segments_.clear();  // the parent's segment: not kept open in a child that may never call
  }

 private:
  MP_DECL void handshake(const std::string& authkey);
  MP_DECL void send_message(std::string_view message);
  MP_DECL void attach_channel();
  MP_DECL void ring_doorbell();
  MP_DECL std::string_view await_reply();
  [[noreturn]] MP_DECL void protocol_broken() const;
  [[noreturn]] MP_DECL void server_gone(int err) const;
  MP_DECL void send_all(const std::byte* data, std::size_t size);
  // A request of protocol::large_bytes or more on a Unix socket: copied into the connection's recycled segment,
  // whose descriptor goes beside a small large_request frame (large.hpp); false if no segment can be had (then the
  // request streams through the socket).
  MP_DECL bool send_large(const std::vector<std::byte>& frame);
  // Sends the small large_request frame for the lent segment's first `size` bytes, with its descriptor.
  MP_DECL void send_segment_note(std::size_t size);
  // A reply as received; an in_segment one is mapped from its descriptor (reply_segment_) first.
  MP_DECL std::string_view unwrap(std::string_view reply);
  MP_DECL void fill(std::size_t wanted);
  // The next frame's payload; a frame announcing more than `limit` bytes (before authentication: an
  // unauthenticated peer must not make us allocate) is refused before its body is read.
  MP_DECL std::string_view receive(std::size_t limit = std::size_t(-1));
  MP_DECL void connect_socket(const endpoint& where);
  // Appends the MAC (with a session key) to a frame whose first 4 bytes are reserved, and writes its length.
  MP_DECL void seal(std::vector<std::byte>& frame);
  [[noreturn]] MP_DECL void integrity_failed();
  [[noreturn]] MP_DECL void setup_timed_out() const;

  endpoint endpoint_;
  std::chrono::milliseconds timeout_;
  deadline setup_deadline_;  // while connecting and authenticating: reads wait at most until then
  unique_fd fd_;
  std::string buffer_ = std::string(64 * 1024, '\0');
  std::size_t start_ = 0, end_ = 0;
  std::vector<unique_fd> fds_;    // descriptors that came with the server's frames (an in_segment reply's)
  segment_pool request_segments_{true};  // large requests: one kept segment (large.hpp)
  segment_view_cache reply_views_{1, protocol::kept_bytes, protocol::kept_bytes};  // the server's reply segment
  segment_reader reply_segment_;  // the last large reply, mapped until the next call (after reply_views_: freed first)
  pooled_segment* lent_segment_ = nullptr;  // request_segments_' one, while a request is built in it
  channel channel_;  // empty: everything goes over the socket
  std::optional<hmac_digest> session_;         // with an authkey: every later socket frame carries a MAC (auth.hpp)
  std::uint64_t frames_sent_ = 0, frames_received_ = 0;  // their sequence numbers
  std::uint32_t requests_ = 0, replies_ = 0;  // published through channel_, and awaited
  std::uint32_t doorbells_owed_ = 0;          // sent by the server for a sleep that ended without reading them
  std::uint32_t colocated_yields_ = 0;        // hand-overs to a server on this CPU in a row (adaptive_spin_until)
};

/// In a forked child: closes the descriptors of every connection the parent's clients had open.
MP_DECL void close_inherited_connections() noexcept;

/// Counts forks in this process's history: a child sees a different value than its parent had, which is how a
/// proxy notices it runs in a new process (cheaper than a getpid() system call on every call). In the child, the
/// inherited copies of the parent's connections are closed at once, so the server sees the parent hang up when it
/// dies even while children live (its locks are released then).
inline std::uint64_t fork_generation() {
  static std::atomic<std::uint64_t> generation{0};
  static std::once_flag registered;
  std::call_once(registered, [] {
    ::pthread_atfork(nullptr, nullptr, [] {
      generation.fetch_add(1);
      close_inherited_connections();
    });
  });
  return generation.load(std::memory_order_relaxed);
}

/// The client side of one manager, shared by a Manager and its proxies: one connection per process and thread,
/// opened on first use, re-opened after fork so processes never share a socket.
class client {
 public:
  MP_DECL client(manager::endpoint where, std::string authkey,
                 std::chrono::milliseconds connect_timeout = default_connect_timeout);
  MP_DECL ~client();
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  /// In a forked child: closes the descriptors of the parent's connections (the objects go on the next call).
  MP_DECL void abandon_connections() noexcept;

  /// This thread's connection, connecting (and authenticating) if needed.
  manager::connection& connection() {
    // The last connection this thread used, valid while the client and the process are the same.
    struct cached {
      std::uint64_t client = 0, generation = 0;
      manager::connection* connection = nullptr;
    };
    thread_local cached last;
    auto generation = fork_generation();
    if (last.client == serial_ && last.generation == generation && last.connection) return *last.connection;
    auto& found = lookup(generation);
    last = {serial_, generation, &found};
    return found;
  }

  const manager::endpoint& endpoint() const { return endpoint_; }
  const std::string& authkey() const { return authkey_; }
  /// This process's references to the server's objects (refs.hpp).
  ref_table& refs() noexcept { return refs_; }
  std::chrono::milliseconds connect_timeout() const { return connect_timeout_; }

 private:
  MP_DECL static std::uint64_t next_serial();
  MP_DECL manager::connection& lookup(std::uint64_t generation);

  const std::uint64_t serial_ = next_serial();  // tells this client from one later allocated at the same address
  manager::endpoint endpoint_;
  std::string authkey_;
  std::chrono::milliseconds connect_timeout_;
  std::mutex mutex_;
  std::uint64_t generation_;  // guarded by mutex_
  std::unordered_map<std::thread::id, std::unique_ptr<manager::connection>> connections_;  // guarded by mutex_
  ref_table refs_{*this};
};

/// One request being built in place (the frame's length is patched in by connection::call), and the reply it
/// gets: the status is checked and error replies become the matching mp exception.
class request {
 public:
  request(client& to, protocol::op code, std::uint64_t id)
      : target_(to), connection_(to.connection()), borrowed_(!buffer_busy()), frame_(borrowed_ ? shared_buffer() : own_),
        out_(frame_) {
    if (borrowed_) buffer_busy() = true;
    frame_.assign(4, std::byte{0});
    out_.u8(static_cast<std::uint8_t>(code));
    out_.u64(id);
  }
  request(const request&) = delete;
  request& operator=(const request&) = delete;
  ~request() {
    if (segment_) connection_.return_request_segment();
    if (borrowed_) buffer_busy() = false;
  }

  request& u8(std::uint8_t v) { return out_.u8(v), *this; }
  request& u32(std::uint32_t v) { return out_.u32(v), *this; }
  request& u64(std::uint64_t v) { return out_.u64(v), *this; }
  request& i64(std::int64_t v) { return out_.i64(v), *this; }
  request& text(std::string_view s) { return out_.blob(s), *this; }
  /// Writes a u32 count to fill in later with patch_count, for bulk requests counted while they are written.
  std::size_t count_placeholder() {
    out_.u32(0);
    return frame_.size() - 4;
  }
  void patch_count(std::size_t at, std::uint32_t n) {
    for (std::size_t i = 0; i < 4; ++i) frame_[at + i] = static_cast<std::byte>(n >> (8 * i));
    if (segment_ && at < frame_mark_) {  // already copied into the segment with the fields before the big value
      std::memcpy(segment_->item(frame_mark_ - 4).data() + (at - 4), frame_.data() + at, 4);
    }
  }
  /// Appends `v` as a blob of mp::serialize bytes (defined in <mp/manager.hpp>, which has mp::serialize).
  template <class T>
  request& value(const T& v);
  /// Appends `v`'s mp::serialize bytes as a blob, without a value's tag (a custom method's arguments).
  template <class T>
  request& serialized(const T& v);

  /// Sends the request and returns a reader over the reply's results; throws the error the server replied.
  MP_DECL protocol::reader send();

 private:
  // One request buffer per thread, reused: a call allocates nothing once it has grown. A call built while another
  // is being built on the same thread (extend() over a range whose elements come from another proxy) gets its own.
  static std::vector<std::byte>& shared_buffer() {
    thread_local std::vector<std::byte> frame;
    return frame;
  }
  static bool& buffer_busy() {
    thread_local bool busy = false;
    return busy;
  }
  // A large value (protocol::large_bytes or more with the fields before it) is encoded straight into the
  // connection's request segment, after a copy of the fields before it: the request's payload is then the
  // segment's first segment_end_ bytes followed by frame_'s bytes from frame_mark_ (fields after the value, and
  // any further values), which send() appends to it. `tagged`: as value() encodes it (else as serialized()).
  template <class T>
  bool value_in_segment(const T& v, bool tagged);
  // The whole payload back in frame_ (the fields after the value do not fit the segment): the segment is returned.
  MP_DECL void spill_segment();

  client& target_;  // whose server: nested proxies in a value must belong to it
  manager::connection& connection_;
  pooled_segment* segment_ = nullptr;
  std::size_t segment_end_ = 0, frame_mark_ = 0;
  bool borrowed_;
  std::vector<std::byte> own_;
  std::vector<std::byte>& frame_;
  protocol::writer<std::vector<std::byte>> out_;
};

}  // namespace mp::detail::manager

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/manager/client.ipp>
#include <mp/detail/manager/refs.ipp>
#endif
