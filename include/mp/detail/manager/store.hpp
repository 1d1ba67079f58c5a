// store: the manager server's state (every shared object as serialized bytes) and the request handler, a pure
// function of (store, client id, request bytes, now) to replies, so it can be fuzzed without sockets.
//
// Blocking calls (queue get/put, lock and semaphore acquire, event, condition and barrier waits) never block the
// server: the request "parks" its client as a waiter on the object, and the reply is produced later by the request
// that releases it, by expire() when its deadline passes, or never if disconnect() drops the client first. Every
// request is parsed completely before it changes anything, so a malformed or interrupted request applies nothing.
// Locks (Lock, RLock, a Condition's lock) record the client holding them; disconnect() releases them, so a client
// process that dies holding a lock does not wedge the others.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include <mp/detail/config.hpp>
#include <mp/detail/fresh_pages.hpp>
#include <mp/detail/manager/protocol.hpp>
#include <mp/detail/manager/registered.hpp>

namespace mp::detail::manager {

class store {
 public:
  using clock = std::chrono::steady_clock;
  /// Reply bytes (a frame payload) for one client.
  struct reply {
    std::uint64_t client;
    std::string bytes;
    /// Only with allow_reply_tails: the reply goes on with these bytes after `bytes`, a view of a big value the
    /// store holds (a get of a dict entry, list item or Value), has just taken out (a pop, a queue get: kept until
    /// then) or a custom method just returned, valid until the store's next handle(). Its caller copies it out at
    /// once (the server: straight into the client's reply segment, large.hpp).
    std::string_view tail{};
  };

  /// Lets big get replies view the value they carry (reply::tail) instead of copying it into `bytes`.
  void allow_reply_tails(bool allow) noexcept { reply_tails_ = allow; }

  /// Applies one request of `client` and appends the replies it causes to `out`: the client's own (unless the
  /// request parks it) and those of waiters it releases. Returns false if the request is malformed: the caller
  /// closes that connection (then calls disconnect()); nothing was applied.
  MP_DECL bool handle(std::uint64_t client, std::string_view request, clock::time_point now, std::vector<reply>& out);

  /// Answers every parked request whose deadline has passed (a timed-out acquire, get, wait, ...).
  MP_DECL void expire(clock::time_point now, std::vector<reply>& out);

  /// The earliest deadline of a parked request, if any.
  MP_DECL std::optional<clock::time_point> next_deadline() const;

  /// Forgets a client whose connection closed: drops its parked request and releases the locks it holds.
  MP_DECL void disconnect(std::uint64_t client, std::vector<reply>& out);

  /// True once a shutdown request was handled.
  bool shutdown_requested() const { return shutdown_; }
  std::size_t object_count() const { return objects_.size(); }

 private:
  static constexpr clock::time_point never = clock::time_point::max();

  struct waiter {
    std::uint64_t client = 0;
    clock::time_point deadline = never;
    std::string item;         // queue put: the item to add
    std::uint32_t count = 1;  // lock: recursion count to restore (a condition wait re-acquiring)
    bool notified = false;    // condition: the reply once the lock is re-acquired
    bool condition = false;   // lock waiter that is a condition wait re-acquiring its lock
  };
  static waiter entry(std::uint64_t client, clock::time_point deadline, std::string item = {}) {
    waiter w;
    w.client = client, w.deadline = deadline, w.item = std::move(item);
    return w;
  }
  struct dict_state {
    std::list<std::pair<std::string, std::string>> entries;  // insertion order, as a Python dict
    std::unordered_map<std::string_view, decltype(entries)::iterator> index;  // views into entries' keys
  };
  struct list_state {
    std::vector<std::string> items;
    std::uint64_t version = 0;  // bumped by every change of items: sort() applies its order only to what it read
    bool fixed = false;         // an array: its length never changes
  };
  struct value_state {
    std::string bytes;
  };
  struct queue_state {
    std::deque<std::string> items;
    std::uint64_t maxsize = 0;
    std::deque<waiter> getters, putters;
    std::uint64_t unfinished = 0;  // joinable: items put and not yet task_done()
    std::deque<waiter> joiners;    // joinable: join() callers, answered when unfinished reaches 0
  };
  struct lock_state {  // Lock, RLock and a Condition's (re-entrant) lock
    bool reentrant = false;
    std::uint64_t owner = 0;  // the client holding it, while held (any id, 0 included, is a valid client)
    std::uint32_t count = 0;
    std::deque<waiter> waiters, cond_waiters;
    bool held = false;
  };
  struct semaphore_state {
    std::int64_t value = 0;
    std::deque<waiter> waiters;
    std::int64_t bound = -1;  // a bounded semaphore: release() above it is a ValueError
  };
  struct event_state {
    bool flag = false;
    std::deque<waiter> waiters;
  };
  struct barrier_state {
    std::uint32_t parties = 1;
    bool broken = false;
    std::deque<waiter> waiters;  // arrival order of the current cycle
  };
  struct namespace_state {
    std::map<std::string, std::pair<std::string, std::string>, std::less<>> attributes;  // name -> (type, bytes)
  };
  struct object_state {  // a custom type's instance (registered.hpp)
    std::shared_ptr<void> instance;
    const registered_type* type = nullptr;
  };
  struct object {
    protocol::kind kind;
    std::string type;
    std::uint64_t refs = 0;  // sessions' references + values holding it + its name + lent holds (refs.hpp)
    std::variant<dict_state, list_state, value_state, queue_state, lock_state, semaphore_state, event_state,
                 barrier_state, namespace_state, object_state>
        state;
  };
  struct parked_request {
    std::uint64_t object;
    clock::time_point deadline;
  };

  // ---- replies -------------------------------------------------------------------------------------------------
  static std::string ok() { return std::string(1, '\0'); }
  MP_DECL static std::string error(const std::string& message,
                                   protocol::error_kind kind = protocol::error_kind::error);
  template <class F>
  static std::string ok_with(F&& fill) {
    std::string bytes = ok();
    protocol::writer w(bytes);
    fill(w);
    return bytes;
  }
  static std::string ok_flag(bool flag) {
    return ok_with([&](auto& w) { w.u8(flag ? 1 : 0); });
  }
  static std::string ok_blob(std::string_view blob) {
    return big_reply(blob.size(), [&](auto& w) { w.blob(blob); });
  }
  /// The reply to a get of `held`, a value the store keeps (and does not change before the reply is delivered):
  /// ok, a found flag if `flagged`, the blob — a big one as reply::tail when allowed.
  void push_held(std::uint64_t client, std::string_view held, bool flagged, std::vector<reply>& out) const {
    if (!reply_tails_ || held.size() < protocol::large_bytes) {
      out.push_back({client, big_reply(held.size(), [&](auto& w) {
                       if (flagged) w.u8(1);
                       w.blob(held);
                     })});
      return;
    }
    out.push_back({client, ok_with([&](auto& w) {
                     if (flagged) w.u8(1);
                     w.u32(static_cast<std::uint32_t>(held.size()));
                   }),
                   held});
  }
  /// The reply to a request that takes `value` out of the store (a pop, a queue get): ok, the fields `before(w)`
  /// writes, the blob — a big one, in handle(), as reply::tail viewing the value, kept in released_ until then.
  template <class Before>
  void push_released(std::uint64_t client, std::string&& value, std::vector<reply>& out, Before&& before) {
    if (!reply_tails_ || !handling_ || value.size() < protocol::large_bytes) {
      out.push_back({client, big_reply(value.size(), [&](auto& w) {
                       before(w);
                       w.blob(value);
                     })});
      return;
    }
    const std::string& kept = released_.emplace_back(std::move(value));
    out.push_back({client, ok_with([&](auto& w) {
                     before(w);
                     w.u32(static_cast<std::uint32_t>(kept.size()));
                   }),
                   kept});
  }
  /// A reply carrying one value of `size` bytes: a big one is written into recycled memory (spare_reply) rather
  /// than a fresh allocation, whose pages cost more to fault in than the copy itself (docs/design.md).
  template <class F>
  static std::string big_reply(std::size_t size, F&& fill) {
    if (size < protocol::large_bytes) return ok_with(std::forward<F>(fill));
    std::string bytes = std::move(spare_reply());
    bytes.assign(1, '\0');
    protocol::writer w(bytes);
    fill(w);
    return bytes;
  }

 public:
  /// One big reply's buffer kept for the next (the server gives each back once it has sent it); only one, and only
  /// up to protocol::kept_bytes, so the server's memory stays bounded.
  static std::string& spare_reply() {
    thread_local std::string spare;
    return spare;
  }
  static void recycle_reply(std::string&& bytes) {
    if (bytes.capacity() >= protocol::large_bytes && bytes.capacity() <= protocol::kept_bytes &&
        bytes.capacity() > spare_reply().capacity()) {
      spare_reply() = std::move(bytes);
    }
  }

 private:

  MP_DECL static clock::time_point deadline_of(std::int64_t timeout_ns, clock::time_point now);

  void park(std::uint64_t client, std::uint64_t id, clock::time_point deadline) { parked_[client] = {id, deadline}; }
  void unpark(std::uint64_t client) { parked_.erase(client); }

  // ---- create / attach -----------------------------------------------------------------------------------------
  MP_DECL void create(std::uint64_t client, protocol::reader& in, std::vector<reply>& out);

  // ---- dispatch ------------------------------------------------------------------------------------------------
  MP_DECL void dispatch(std::uint64_t client, protocol::op code, std::uint64_t id, object& obj,
                        protocol::reader& in, clock::time_point now, std::vector<reply>& out);

  // ---- stored values ---------------------------------------------------------------------------------------------
  /// A request's value stored in `into` (a queue item, a list item, a dict entry, replaced or new). A big one that
  /// needs new memory gets its pages at once, in huge pages where possible: faulted in 4 KiB at a time they cost
  /// more than the copy (assign_on_fresh_pages; a 64 MiB queue item ran at ~600 MB/s before).
  static void store_into(std::string& into, std::string_view bytes) {
    assign_on_fresh_pages(into, bytes.data(), bytes.size());
  }
  static std::string stored(std::string_view bytes) {
    std::string copy;
    store_into(copy, bytes);
    return copy;
  }

  // ---- dict ----------------------------------------------------------------------------------------------------
  MP_DECL void dict_set(dict_state& d, std::string_view key, std::string_view value);
  template <class F>
  static std::string list_reply(std::size_t count, F&& each) {
    return ok_with([&](auto& w) {
                   w.u32(static_cast<std::uint32_t>(count));
                   each(w);
                   });
  }

  MP_DECL void dict_op(std::uint64_t client, protocol::op code, dict_state& d, protocol::reader& in,
                       std::vector<reply>& out);

  // ---- list ----------------------------------------------------------------------------------------------------
  MP_DECL static std::optional<std::size_t> resolve(std::int64_t index, std::size_t size);
  MP_DECL static std::string index_error(const char* what, std::int64_t index, std::size_t size);

  MP_DECL void list_op(std::uint64_t client, protocol::op code, list_state& l, protocol::reader& in,
                       std::vector<reply>& out);
  MP_DECL void list_more_op(std::uint64_t client, protocol::op code, list_state& l, protocol::reader& in,
                            std::vector<reply>& out);

  // ---- value ---------------------------------------------------------------------------------------------------
  MP_DECL void value_op(std::uint64_t client, protocol::op code, value_state& v, protocol::reader& in,
                        std::vector<reply>& out);

  // ---- queue ---------------------------------------------------------------------------------------------------
  MP_DECL void pump_queue(std::uint64_t /*id*/, queue_state& q, std::vector<reply>& out);

  MP_DECL void queue_op(std::uint64_t client, protocol::op code, std::uint64_t id, queue_state& q,
                        protocol::reader& in, clock::time_point now, std::vector<reply>& out);

  // ---- Lock, RLock, Condition ----------------------------------------------------------------------------------
  MP_DECL void take(std::uint64_t client, std::uint64_t id, lock_state& l, std::uint32_t count);
  MP_DECL void drop_hold(std::uint64_t client, std::uint64_t id);
  MP_DECL void pump_lock(std::uint64_t id, lock_state& l, std::vector<reply>& out);

  MP_DECL void lock_op(std::uint64_t client, protocol::op code, std::uint64_t id, lock_state& l,
                       protocol::reader& in, clock::time_point now, std::vector<reply>& out);

  // ---- Semaphore -----------------------------------------------------------------------------------------------
  MP_DECL void pump_semaphore(semaphore_state& s, std::vector<reply>& out);
  MP_DECL void semaphore_op(std::uint64_t client, protocol::op code, std::uint64_t id, semaphore_state& s,
                            protocol::reader& in, clock::time_point now, std::vector<reply>& out);

  // ---- Event ---------------------------------------------------------------------------------------------------
  MP_DECL void event_op(std::uint64_t client, protocol::op code, std::uint64_t id, event_state& e,
                        protocol::reader& in, clock::time_point now, std::vector<reply>& out);

  // ---- Barrier -------------------------------------------------------------------------------------------------
  MP_DECL void break_barrier(std::uint64_t /*id*/, barrier_state& b, std::vector<reply>& out, bool stay_broken = true);
  MP_DECL void barrier_op(std::uint64_t client, protocol::op code, std::uint64_t id, barrier_state& b,
                          protocol::reader& in, clock::time_point now, std::vector<reply>& out);

  // ---- custom types ----------------------------------------------------------------------------------------------
  /// Makes the instance of a custom type; an error reply (and false) if it cannot.
  MP_DECL bool construct(std::uint64_t client, const std::string& type, std::string_view initial, object_state& made,
                         std::vector<reply>& out);
  MP_DECL void object_op(std::uint64_t client, object_state& o, protocol::reader& in, std::vector<reply>& out);

  // ---- Namespace -----------------------------------------------------------------------------------------------
  MP_DECL void namespace_op(std::uint64_t client, protocol::op code, namespace_state& ns,
                            protocol::reader& in, std::vector<reply>& out);

  // ---- references (refs.hpp) ----------------------------------------------------------------------------------
  struct session {
    std::unordered_map<std::uint64_t, std::uint64_t> refs;  // object id -> references handed to this session
    std::uint32_t connections = 0;
  };
  struct lent_hold {
    std::vector<std::uint64_t> ids;
    clock::time_point expiry;
  };
  MP_DECL void refs_op(std::uint64_t client, protocol::op code, std::uint64_t id, protocol::reader& in,
                       clock::time_point now, std::vector<reply>& out);
  MP_DECL session* session_of(std::uint64_t client);
  /// One more reference to `id`, if it exists; true if it does.
  MP_DECL bool add_ref(std::uint64_t id);
  /// n fewer references to `id`; at zero the object is doomed (destroyed by destroy_doomed).
  MP_DECL void release(std::uint64_t id, std::uint64_t n = 1);
  /// Destroys the doomed objects, releasing what their values referred to (iteratively: no recursion).
  MP_DECL void destroy_doomed(std::vector<reply>& out);
  /// A value (tag 1, see manager_templates.ipp) entering or leaving a container: its proxies' objects gain or
  /// lose a reference.
  MP_DECL void hold_refs(std::string_view blob);
  MP_DECL void drop_refs(std::string_view blob);
  /// A value sent to `client`: its session now holds a reference to each object the value refers to.
  MP_DECL void handoff(std::uint64_t client, std::string_view blob);
  template <class F>
  static void for_each_ref(std::string_view blob, F&& each) {
    if (blob.size() < 5 || blob[0] != 1) return;
    protocol::reader in(blob.substr(1));
    auto n = in.u32();
    if (std::size_t{n} * 8 > blob.size() - 5) return;  // not a value mp wrote: no references, consistently
    for (std::uint32_t i = 0; i < n; ++i) each(in.u64());
  }

  // ---- timeouts ------------------------------------------------------------------------------------------------
  MP_DECL void time_out(std::uint64_t client, std::vector<reply>& out);

  std::unordered_map<std::uint64_t, object> objects_;
  std::unordered_map<std::string, std::uint64_t> names_;
  std::unordered_map<std::uint64_t, parked_request> parked_;          // client -> its one blocked request
  std::unordered_map<std::uint64_t, std::set<std::uint64_t>> held_;  // client -> locks it holds
  std::unordered_map<std::uint64_t, session> sessions_;       // session token -> its references
  std::unordered_map<std::uint64_t, std::uint64_t> bound_;    // client (connection) -> session token
  std::unordered_map<std::uint64_t, lent_hold> lent_;         // lend token -> hold for a child
  std::vector<std::uint64_t> doomed_;
  std::uint64_t next_id_ = 1;
  std::uint64_t next_lend_ = 1;
  bool shutdown_ = false;
  std::vector<std::byte> call_result_;  // a custom method's serialized result (object_op), reused between calls
  std::deque<std::string> released_;    // values taken out by the last handle() that its replies' tails view
  bool reply_tails_ = false;
  bool handling_ = false;  // in handle(): tails are taken right after it (expire's and disconnect's replies have none)
};

}  // namespace mp::detail::manager

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/manager/store.ipp>
#endif
