// server: the manager server — one thread, one poll() loop over the listening socket, every client connection, and
// the wake-ups that end it (the owner process exiting, SIGTERM/SIGINT through a signalfd).
//
// Why an event loop rather than a thread per client: blocking calls park in the store and are answered when
// another request releases them, so no client can block the server, the store needs no locking, and a client
// that hangs up while parked is noticed at once (its waiter is dropped; nothing is consumed on its behalf).
// Why the owner is watched through a pidfd rather than PR_SET_PDEATHSIG: the death signal fires when the parent
// *thread* exits, which would kill a manager created on a short-lived thread.
// Connections go through stages: greeting sent -> (answer checked -> our challenge answered) -> ready. Before
// ready a frame may be at most max_handshake bytes and no payload is handed to the store; any framing or protocol
// violation closes that connection only.
#pragma once

#include <poll.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <mp/detail/config.hpp>
#include <mp/detail/manager/auth.hpp>
#include <mp/detail/manager/channel.hpp>
#include <mp/detail/manager/large.hpp>
#include <mp/detail/manager/store.hpp>
#include <mp/detail/segment_pool.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail::manager {

/// The largest reply payload a frame can carry: its length field is a u32, and a longer reply (a copy of a list of
/// more than 4 GiB) would wrap it and desynchronise the stream. Such a reply is replaced by an error reply naming
/// its size. Every length inside a reply is no longer than the reply, so this one check covers them too.
/// A variable only so that a test can lower it (a 4 GiB reply is impractical in a test); set it before the server
/// starts (it is read in the server's process).
inline std::uint64_t max_reply = std::numeric_limits<std::uint32_t>::max();

/// How long the connection reading past the server's request budget (see server::in_allowance) may send nothing while
/// others wait for the budget before it is closed. A variable only so that a test can lower it (set it before the
/// server starts).
inline std::chrono::milliseconds stalled_request_timeout{10'000};
/// The request bytes beyond each connection's allowance that all connections share (see server::in_allowance).
/// A variable only so that a test can lower it (set it before the server starts).
inline std::size_t request_budget = std::size_t{64} << 20;

class server {
 public:
  /// Serves on `listener` until a shutdown request, a readable `stop_fd` (a signalfd) or the exit of the process
  /// behind `owner_pidfd` (either may be -1). `remove` lists paths (a socket, then its directory) removed when it
  /// stops, before the connections close, so a client that sees its connection end never finds them.
  /// `same_user_only`: on a Unix socket, a peer whose uid (SO_PEERCRED) is neither ours nor root's is closed at
  /// once, whatever the socket file's mode says.
  MP_DECL server(unique_fd listener, std::string authkey, int owner_pidfd, int stop_fd,
                 std::vector<std::string> remove = {}, bool same_user_only = true);

  /// Runs the poll loop until the server stops (see the constructor); then removes the files and flushes replies.
  MP_DECL void run();

 private:
  enum class stage { await_answer, await_challenge, ready };
  /// One client as the server sees it.
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
    store::clock::time_point handshake_deadline{};  // while not ready: closed if still not ready then
    std::vector<unique_fd> fds;  // descriptors received (SCM_RIGHTS), for attach_channel
    manager::channel channel;    // the client's shared-memory channel, once attached
    std::uint32_t requests_seen = 0, replies_sent = 0;  // channel sequence numbers (ours, not the client's words)
    std::string peer;  // who connected, for the per-peer cap: a TCP peer's IP address, a Unix peer's pid
    bool throttled = false;  // process() left frames unhandled: its replies reached max_unsent (see deliver)
    std::optional<hmac_digest> session;  // with an authkey, once ready: every non-empty frame carries a MAC
    std::uint64_t frames_sent = 0, frames_received = 0;  // their sequence numbers
    store::clock::time_point last_in{};  // when bytes last came in (for stalled_request_timeout)
    bool unix_socket = false;       // descriptors can cross: large replies go as segments (large.hpp)
    segment_pool reply_segments{true};  // its large replies: one segment kept between them (large.hpp)
    pooled_segment* reply_written = nullptr;  // a reply take_tail wrote into reply_segments, to send next
    std::size_t reply_written_size = 0;
  };
  using time_point = store::clock::time_point;

  /// How long a new connection may take to authenticate: an idle peer cannot hold a descriptor forever.
  static constexpr std::chrono::seconds handshake_timeout{10};
  /// Connections still authenticating, in all and per peer: past either cap the oldest of them (of that peer) is
  /// closed, so a flood of silent connections can neither exhaust the descriptors nor lock out a new client.
  static constexpr std::size_t max_unauthenticated = 64;
  static constexpr std::size_t max_unauthenticated_per_peer = 16;
  /// Reply bytes a client may leave unread: past this the server stops reading and handling its requests until it
  /// reads (replies are never dropped), so a client that pipelines requests without reading cannot grow the
  /// server's memory without bound or hold the loop copying replies while others wait.
  static constexpr std::size_t max_unsent = std::size_t{16} << 20;
  static bool backlogged(const connection& c) { return c.out.size() - c.out_at > max_unsent; }
  /// Request bytes the server buffers (partial frames, mostly) across all connections. Each connection may always
  /// hold in_allowance (a whole small request: a client is never starved by others' large ones); beyond that, all
  /// share request_budget; past the budget one connection at a time — the lane — goes on reading up to a whole
  /// max_request frame while the others are not read from (their bytes wait in the kernel, their senders block)
  /// until it has its frame. So clients sending large requests at once make the server hold at most
  /// request_budget + one max_request + in_allowance per connection, not max_request each. A lane holder that sends
  /// nothing for stalled_request_timeout while others wait is closed (logged on stderr).
  static constexpr std::size_t in_allowance = std::size_t{1} << 20;
  MP_DECL bool may_read(connection& c);
  MP_DECL std::optional<time_point> stalled_lane_deadline() const;
  MP_DECL void drop_stalled_lane(time_point now);

  MP_DECL std::optional<time_point> earliest_handshake_deadline() const;
  MP_DECL void drop_slow_handshakes(time_point now);
  MP_DECL static void append_frame(std::string& out, std::string_view payload);
  MP_DECL static std::string oversized_reply(std::size_t size);
  // Appends a reply frame for c: with its MAC when c has a session key.
  MP_DECL static void send_frame(connection& c, std::string_view payload);
  MP_DECL void accept_all(time_point now);
  MP_DECL bool peer_allowed(int fd) const;
  MP_DECL static std::string peer_of(int fd);
  MP_DECL void cap_unauthenticated(const std::string& peer);
  MP_DECL void receive(connection& c, time_point now);
  MP_DECL void process(connection& c, time_point now);
  MP_DECL void handle(connection& c, std::string_view payload, time_point now);
  MP_DECL void attach(connection& c);
  // A large_request frame: the request read from the descriptor beside it (large.hpp), then handled.
  MP_DECL void handle_large(connection& c, std::string_view payload, time_point now);
  // Sends a large reply to c as a segment; false (nothing sent) if it cannot go that way now (then it is framed).
  MP_DECL bool send_large(connection& c, std::string_view bytes);
  // Sends c the reply of `size` bytes in `segment` (one of c.reply_segments): the small in_segment frame with the
  // descriptor beside it; false (nothing sent, the segment free again) if it cannot go that way now.
  MP_DECL bool send_segment(connection& c, pooled_segment& segment, std::size_t size);
  // A reply just made whose value the store only viewed (store::reply::tail): copied out before the store can
  // change it — straight into its client's reply segment when that can carry it (c.reply_written; the reply's
  // bytes are left empty, which no other reply is), else appended to its bytes.
  MP_DECL void take_tail(store::reply& r);
  // Sends c the reply take_tail wrote into its segment (framed from there if it cannot go as a segment now).
  MP_DECL void send_written(connection& c);
  MP_DECL void post(connection& c, std::string_view bytes);
  // The request c published in its channel and the server has not taken yet, if any (not while parked: a
  // well-behaved client sends nothing then, and a misbehaving one must not keep the server awake).
  static bool channel_has_request(const connection& c) {
    return c.channel && !c.parked && !c.dead && !backlogged(c) && c.channel->request_seq.load() != c.requests_seen;
  }
  MP_DECL bool channel_request_pending() const;
  MP_DECL bool set_server_sleeping(std::uint32_t value);
  MP_DECL static bool hung_up(const connection& c);
  MP_DECL std::size_t take_channel_requests(time_point now);
  MP_DECL void reap_parked_hangups();
  MP_DECL void serve_channels();
  MP_DECL void handshake(connection& c, std::string_view message);
  MP_DECL void deliver();
  MP_DECL void flush(connection& c);
  MP_DECL void reap();

  unique_fd listener_;
  std::string authkey_;
  int owner_pidfd_;
  int stop_fd_;
  std::vector<std::string> remove_;
  store store_;
  std::unordered_map<std::uint64_t, connection> connections_;
  std::vector<store::reply> replies_, batch_;
  std::vector<std::uint64_t> unparked_;
  std::string request_;                             // a request copied out of a channel
  // Mappings of clients' large-request segments, kept for their next request (large.hpp): at most 8, and
  // 2 x protocol::kept_bytes in all, so a crowd of clients (or a hostile one) cannot grow them without bound.
  segment_view_cache request_views_{8, protocol::kept_bytes, 2 * protocol::kept_bytes};
  std::vector<pollfd> hangup_fds_;                  // reap_parked_hangups' scratch
  std::vector<std::uint64_t> hangup_ids_;
  std::vector<std::uint64_t> pending_ids_;          // take_channel_requests' scratch
  time_point last_channel_request_{};
  int last_client_cpu_ = -1;  // where the client of the last channel request ran
  std::uint64_t next_client_ = 1;
  bool stop_ = false;
  bool accept_paused_ = false;
  bool check_peer_uid_ = false;  // a Unix listener serving only its own user (see the constructor)
  std::size_t buffered_in_ = 0;   // the sum of every c.in.size(): recounted each loop, kept up to date by receive
  std::uint64_t in_lane_ = 0;     // the connection reading past request_budget (0: none)
  bool budget_waiters_ = false;   // some connection is not read from for want of budget
  bool unix_listener_ = false;
};

}  // namespace mp::detail::manager

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/manager/server.ipp>
#endif
