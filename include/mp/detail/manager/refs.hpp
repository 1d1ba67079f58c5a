// refs: reference counting of manager objects across processes (Python's BaseProxy incref/decref), client side.
//
// Every process that holds proxies to a server's objects is one *session* of that server (a random 64-bit token per
// client and fork generation, announced by a `hello` request on each of its connections). The server counts, per
// session and object, how many times it handed the object's id to that session: the reply to a create, a value
// holding a proxy (a nested proxy) read from a container, a proxy adopted from a parent. In the process, all
// proxies of one object share one object_ref (a shared_ptr), which remembers that count; when the last proxy of
// the object in this process goes, the object_ref sends `decref(count)`. The server frees an unnamed object when
// no session, no container value and no lent hold refers to it any more, and releases everything a session held
// when its last connection closes (its process died or let go of the manager), as it releases its locks.
// A name holds a reference of its own: a named object lives until Manager::erase(name) or the server stops.
//
// Crossing to a child: under fork, every fork lends the server a hold on each object this process references
// (one round trip per fork, in a pthread_atfork prepare handler) and the child adopts it on its first connection;
// under spawn and forkserver, a proxy passed as a Process argument lends a hold on its object, adopted by the child
// when it loads the argument. A hold no child adopts expires after lend_lease, so children that never use the
// manager leak nothing. Cycles (a list holding a proxy of itself) are never freed, as without Python's collector.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include <mp/detail/config.hpp>

namespace mp::detail::manager {

class client;
class connection;

/// How long the server keeps a hold lent for a child (fork, or a spawn argument) that the child did not adopt.
inline constexpr std::chrono::seconds lend_lease{120};

/// This process's reference to one object of one server, shared by all its proxies here.
class object_ref {
 public:
  object_ref(std::shared_ptr<client> owner, std::uint64_t id) : owner_(std::move(owner)), id_(id) {}
  object_ref(const object_ref&) = delete;
  object_ref& operator=(const object_ref&) = delete;
  /// Sends decref(count) to the server (best effort: a server that is gone has nothing to release).
  MP_DECL ~object_ref();

 private:
  friend class ref_table;
  std::shared_ptr<client> owner_;
  std::uint64_t id_;
  std::uint64_t count_ = 0;  // references the server recorded for this session; guarded by the table's mutex
};

/// A client's object_refs in this process, and its session.
class ref_table {
 public:
  MP_DECL explicit ref_table(client& owner);
  MP_DECL ~ref_table();
  ref_table(const ref_table&) = delete;
  ref_table& operator=(const ref_table&) = delete;

  /// The object_ref of `id`, made if no proxy of it lives here; `handed` more references are now recorded by the
  /// server for this session (1 for a create reply or a nested proxy read, 0 for a proxy that will be adopted).
  MP_DECL std::shared_ptr<object_ref> acquire(const std::shared_ptr<client>& owner, std::uint64_t id,
                                              std::uint64_t handed);
  /// Called by ~object_ref: how many references to release in the server (0: none, or not this process's).
  MP_DECL std::uint64_t forget(object_ref& ref) noexcept;

  /// Sends `hello` on a new connection: this session's token and the holds lent for it to adopt.
  MP_DECL void bind(connection& fresh);
  /// A hold lent to this process (a spawn argument), adopted by the next hello.
  MP_DECL void adopt_later(std::uint64_t lend_token);
  client& owner() const noexcept { return owner_; }
  /// Ids with a live object_ref here.
  MP_DECL std::vector<std::uint64_t> live_ids();
  /// The fork prepare handler's lend, for the child; 0 in the parent after the fork.
  std::uint64_t fork_lend = 0;

 private:
  MP_DECL std::uint64_t session_locked();

  client& owner_;
  std::mutex mutex_;
  std::unordered_map<std::uint64_t, std::weak_ptr<object_ref>> refs_;  // guarded by mutex_
  std::uint64_t generation_ = 0;                                      // the fork generation of token_
  std::uint64_t token_ = 0;
  std::vector<std::uint64_t> lends_;  // to adopt at the next hello
};

/// Lends the server a hold on `ids` for a child to adopt; its token (0 if the server could not be reached).
MP_DECL std::uint64_t lend(client& to, const std::vector<std::uint64_t>& ids) noexcept;

/// While a value is encoded for a request of `target`: the proxies met record their ids here (nested proxies).
struct encoding_context {
  const client* target;
  std::vector<std::uint64_t> ids;
};
/// While a reply's value is decoded: the proxies met belong to `from`.
struct decoding_context {
  const std::shared_ptr<client>* from;
};
inline encoding_context*& current_encoding() {
  thread_local encoding_context* context = nullptr;
  return context;
}
inline decoding_context*& current_decoding() {
  thread_local decoding_context* context = nullptr;
  return context;
}

}  // namespace mp::detail::manager

// refs.ipp is included by client.hpp (its definitions need the client).
