// mp::Manager: shared containers and synchronization objects that live in a server process and are used through
// proxies — Python's multiprocessing.Manager() / managers.BaseManager, locally or over TCP.
// A Manager forks a server (a Unix socket in a private directory by default, or TCP with an authkey);
// Manager::connect attaches another program to a running server; serve_forever makes a process the server.
// Proxies (DictProxy, ListProxy, ValueProxy, QueueProxy, LockProxy, ...) forward every call to the server.
// Process safety: proxies are copyable handles; copies passed to child processes refer to the same object, and each
// process (and each thread) opens its own connection on first use, so no socket is ever shared. Every call is one
// atomic operation in the server; blocking calls (queue get, lock acquire, waits) never block other clients.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <mp/context.hpp>
#include <mp/detail/code_address.hpp>
#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/manager_protocol.hpp>
#include <mp/detail/manager_server.hpp>
#include <mp/detail/manager_socket.hpp>
#include <mp/detail/registry.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/detail/unique_fd.hpp>
#include <mp/errors.hpp>
#include <mp/process.hpp>
#include <mp/serialize.hpp>

namespace mp {

/// Where a manager server listens: a Unix socket path or a TCP host and port.
class Address {
 public:
  Address() = default;
  /// A TCP address; port 0 asks the kernel for a free port when a server binds it (address() tells which).
  static Address tcp(std::string host, std::uint16_t port) {
    Address a;
    a.endpoint_ = {true, std::move(host), port, {}};
    return a;
  }
  /// A Unix socket at `path` (named unix_socket because `unix` is a macro under gnu++ modes).
  static Address unix_socket(std::string path) {
    Address a;
    a.endpoint_ = {false, {}, 0, std::move(path)};
    return a;
  }
  std::string host() const { return endpoint_.host; }
  std::uint16_t port() const { return endpoint_.port; }
  std::string path() const { return endpoint_.path; }
  /// True for a TCP address.
  bool is_tcp() const { return endpoint_.tcp; }
  /// True for a default-constructed Address: a Manager picks a private Unix socket.
  bool empty() const { return !endpoint_.tcp && endpoint_.path.empty(); }
  /// "tcp://host:port" or "unix:/path".
  std::string to_string() const { return endpoint_.to_string(); }

 private:
  friend class Manager;
  detail::manager_endpoint endpoint_;
};

/// How a Manager serves: `.address` (default: a private Unix socket), `.authkey` (required for TCP) and
/// `.start_method` of its server process (empty: get_start_method(); spawn and forkserver need mp::init).
struct ManagerOptions {
  Address address = {};
  std::string authkey = {};
  std::optional<StartMethod> start_method = {};
};

namespace detail {

class manager_client;

/// Every manager_client alive in this process, so that a forked child can close its copies of their connections.
struct live_manager_clients {
  std::mutex mutex;
  std::vector<manager_client*> clients;  // guarded by mutex
};
inline live_manager_clients& the_live_manager_clients() {
  static auto* live = new live_manager_clients;  // never destroyed: usable from atfork handlers during exit
  return *live;
}

inline void close_inherited_connections() noexcept;

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
class manager_client {
 public:
  manager_client(manager_endpoint endpoint, std::string authkey)
      : endpoint_(std::move(endpoint)), authkey_(std::move(authkey)), generation_(fork_generation()) {
    auto& live = the_live_manager_clients();
    std::lock_guard guard(live.mutex);
    live.clients.push_back(this);
  }
  ~manager_client() {
    auto& live = the_live_manager_clients();
    std::lock_guard guard(live.mutex);
    std::erase(live.clients, this);
  }
  manager_client(const manager_client&) = delete;
  manager_client& operator=(const manager_client&) = delete;

  /// In a forked child: closes the descriptors of the parent's connections (the objects go on the next call).
  /// try_lock: a mutex held by a parent thread at fork time stays locked forever in the child; then the
  /// connections are left to the next call's check.
  void abandon_connections() noexcept {
    if (!mutex_.try_lock()) return;
    for (auto& [thread, connection] : connections_) {
      if (connection) connection->abandon();
    }
    mutex_.unlock();
  }

  /// This thread's connection, connecting (and authenticating) if needed.
  manager_connection& connection() {
    // The last connection this thread used, valid while the client and the process are the same.
    struct cached {
      std::uint64_t client = 0, generation = 0;
      manager_connection* connection = nullptr;
    };
    thread_local cached last;
    auto generation = fork_generation();
    if (last.client == serial_ && last.generation == generation && last.connection) return *last.connection;
    auto& found = lookup(generation);
    last = {serial_, generation, &found};
    return found;
  }

  const manager_endpoint& endpoint() const { return endpoint_; }
  const std::string& authkey() const { return authkey_; }

 private:
  static std::uint64_t next_serial() {
    static std::atomic<std::uint64_t> serial{0};
    return ++serial;
  }

  manager_connection& lookup(std::uint64_t generation) {
    std::unique_lock guard(mutex_);
    if (generation != generation_) {
      // A forked child: the inherited connections belong to the parent; close our copies of them.
      connections_.clear();
      generation_ = generation;
    }
    auto& slot = connections_[std::this_thread::get_id()];
    if (slot) return *slot;
    guard.unlock();  // connecting takes round trips: don't hold up other threads
    auto made = std::make_unique<manager_connection>(endpoint_, authkey_);
    guard.lock();
    auto& again = connections_[std::this_thread::get_id()];
    again = std::move(made);
    return *again;
  }

  const std::uint64_t serial_ = next_serial();  // tells this client from one later allocated at the same address
  manager_endpoint endpoint_;
  std::string authkey_;
  std::mutex mutex_;
  std::uint64_t generation_;  // guarded by mutex_
  std::unordered_map<std::thread::id, std::unique_ptr<manager_connection>> connections_;  // guarded by mutex_
};

inline void close_inherited_connections() noexcept {
  auto& live = the_live_manager_clients();
  if (!live.mutex.try_lock()) return;
  for (auto* client : live.clients) client->abandon_connections();
  live.mutex.unlock();
}

/// A readable, stable spelling of T for type checks between programs ("std::string" rather than its expansion).
template <class T>
std::string manager_type_name() {
  std::string name = type_name<T>();
  static const std::string long_string = "std::__cxx11::basic_string<char, std::char_traits<char>, std::allocator<char> >";
  for (auto at = name.find(long_string); at != std::string::npos; at = name.find(long_string, at)) {
    name.replace(at, long_string.size(), "std::string");
  }
  return name;
}

inline std::int64_t timeout_ns(std::chrono::nanoseconds timeout) { return timeout.count() < 0 ? 0 : timeout.count(); }

/// One request being built in place (the frame's length is patched in by manager_connection::call), and the
/// reply it gets: the status is checked and error replies become the matching mp exception.
class manager_call {
 public:
  manager_call(manager_client& client, manager_protocol::op code, std::uint64_t id)
      : connection_(client.connection()), borrowed_(!buffer_busy()), frame_(borrowed_ ? shared_buffer() : own_),
        out_(frame_) {
    if (borrowed_) buffer_busy() = true;
    frame_.assign(4, std::byte{0});
    out_.u8(static_cast<std::uint8_t>(code));
    out_.u64(id);
  }
  manager_call& u8(std::uint8_t v) { return out_.u8(v), *this; }
  manager_call& u32(std::uint32_t v) { return out_.u32(v), *this; }
  manager_call& u64(std::uint64_t v) { return out_.u64(v), *this; }
  manager_call& i64(std::int64_t v) { return out_.i64(v), *this; }
  manager_call& text(std::string_view s) { return out_.blob(s), *this; }
  /// Writes a u32 count to fill in later with patch_count, for bulk requests counted while they are written.
  std::size_t count_placeholder() {
    out_.u32(0);
    return frame_.size() - 4;
  }
  void patch_count(std::size_t at, std::uint32_t n) {
    for (std::size_t i = 0; i < 4; ++i) frame_[at + i] = static_cast<std::byte>(n >> (8 * i));
  }
  template <class T>
  manager_call& value(const T& v) {
    auto mark = out_.start_blob();
    serialize_into(frame_, v);
    out_.finish_blob(mark);
    return *this;
  }

  manager_call(const manager_call&) = delete;
  manager_call& operator=(const manager_call&) = delete;
  ~manager_call() {
    if (borrowed_) buffer_busy() = false;
  }

  /// Sends the request and returns a reader over the reply's results; throws the error the server replied.
  manager_protocol::reader send() {
    namespace p = manager_protocol;
    auto reply = connection_.call(frame_);
    try {
      p::reader in(reply);
      if (static_cast<p::status>(in.u8()) == p::status::ok) return in;
      auto kind = static_cast<p::error_kind>(in.u8());
      std::string message(in.blob());
      switch (kind) {
        case p::error_kind::empty: throw Empty(message);
        case p::error_kind::full: throw Full(message);
        case p::error_kind::broken_barrier: throw BrokenBarrierError(message);
        default: throw Error(message);
      }
    } catch (const p::malformed&) {
      throw Error("the manager server sent a malformed reply: it runs another version of mp, or the connection is corrupt");
    }
  }

  template <class T>
  static T decode(manager_protocol::reader& in) {
    auto bytes = in.blob();
    return deserialize<T>(std::as_bytes(std::span(bytes.data(), bytes.size())));
  }
  static bool flag(manager_protocol::reader in) { return in.u8() != 0; }

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
  manager_connection& connection_;
  bool borrowed_;
  std::vector<std::byte> own_;
  std::vector<std::byte>& frame_;
  manager_protocol::writer<std::vector<std::byte>> out_;
};

/// What every proxy holds: the shared client and the object's id in the server.
class proxy_base {
 public:
  proxy_base() = default;
  proxy_base(std::shared_ptr<manager_client> client, std::uint64_t id) : client_(std::move(client)), id_(id) {}
  /// The object's id in its server.
  std::uint64_t id() const noexcept { return id_; }

  /// How a proxy crosses to a Process started by spawn or forkserver: the server's address, the authkey and the
  /// object's id (the child connects on first use). Only as a Process argument: a proxy in a Queue item or
  /// plain bytes would carry the authkey where it was not meant to go, so that throws SerializationError.
  void save(output_archive& ar) const {
    if (current_fd_outbox() == nullptr) {
      throw SerializationError(
          "mp::serialize: a manager proxy crosses only as an argument of a Process started by spawn or forkserver "
          "(it carries the manager's authkey); pass the values it holds, or the proxy as a Process argument");
    }
    if (!client_) throw SerializationError("mp::serialize: this manager proxy is empty (default-constructed)");
    const manager_endpoint& endpoint = client_->endpoint();
    ar(endpoint.tcp, endpoint.host, endpoint.port, endpoint.path, client_->authkey(), id_);
  }
  /// In a spawned child: a proxy of the same object, with its own connection to the server.
  void load(input_archive& ar) {
    manager_endpoint endpoint;
    std::string authkey;
    ar(endpoint.tcp, endpoint.host, endpoint.port, endpoint.path, authkey, id_);
    client_ = std::make_shared<manager_client>(std::move(endpoint), std::move(authkey));
  }

 protected:
  manager_call call(manager_protocol::op code) const {
    if (!client_) throw Error("this manager proxy is empty (default-constructed): get one from a Manager");
    return manager_call(*client_, code, id_);
  }
  std::shared_ptr<manager_client> client_;
  std::uint64_t id_ = 0;
};

}  // namespace detail

template <class K, class V>
class DictProxy;

/// d[k]: converts to V (mp::Error if k is missing), assignable from V.
template <class K, class V>
class DictItem {
 public:
  operator V() const { return dict_.at(key_); }
  DictItem& operator=(const V& value) {
    dict_.set(key_, value);
    return *this;
  }

 private:
  friend class DictProxy<K, V>;
  DictItem(const DictProxy<K, V>& dict, K key) : dict_(dict), key_(std::move(key)) {}
  DictProxy<K, V> dict_;  // a copy (a handle): the item stays usable after the proxy it came from is gone
  K key_;
};

/// A dict in the manager server: insertion-ordered as a Python dict; keys compare by their serialized bytes.
template <class K, class V>
class DictProxy : public detail::proxy_base {
  using op = detail::manager_protocol::op;

 public:
  using proxy_base::proxy_base;
  /// The value for k, or nullopt.
  std::optional<V> get(const K& k) const {
    auto in = call(op::dict_get).value(k).send();
    if (!in.u8()) return std::nullopt;
    return detail::manager_call::decode<V>(in);
  }
  /// The value for k, or `otherwise` (Python's d.get(k, default)).
  V get(const K& k, V otherwise) const {
    auto found = get(k);
    return found ? std::move(*found) : std::move(otherwise);
  }
  /// The value for k; mp::Error (Python's KeyError) if missing.
  V at(const K& k) const {
    auto found = get(k);
    if (!found) throw Error("manager dict has no such key (KeyError): use get(k) or get(k, default) for optional keys");
    return std::move(*found);
  }
  /// d[k] = v.
  void set(const K& k, const V& v) const { call(op::dict_set).value(k).value(v).send(); }
  /// d[k]: read (converts to V) or assign.
  DictItem<K, V> operator[](K k) const { return DictItem<K, V>(*this, std::move(k)); }
  bool contains(const K& k) const { return detail::manager_call::flag(call(op::dict_contains).value(k).send()); }
  /// Removes k; false if it was missing (Python's del would raise KeyError).
  bool erase(const K& k) const { return detail::manager_call::flag(call(op::dict_erase).value(k).send()); }
  std::size_t size() const { return call(op::dict_size).send().u64(); }
  bool empty() const { return size() == 0; }
  std::vector<K> keys() const { return collect<K>(op::dict_keys); }
  std::vector<V> values() const { return collect<V>(op::dict_values); }
  /// Every (key, value), in insertion order.
  std::vector<std::pair<K, V>> items() const {
    auto in = call(op::dict_items).send();
    std::vector<std::pair<K, V>> out;
    auto n = in.count(8);
    out.reserve(n);
    for (std::uint32_t i = 0; i < n; ++i) {
      auto k = detail::manager_call::decode<K>(in);
      out.emplace_back(std::move(k), detail::manager_call::decode<V>(in));
    }
    return out;
  }
  void clear() const { call(op::dict_clear).send(); }
  /// Sets every (key, value) of `pairs` in one round trip, all or nothing.
  template <std::ranges::input_range R>
  void update(R&& pairs) const {
    auto request = call(op::dict_update);
    auto at = request.count_placeholder();
    std::uint32_t n = 0;
    for (const auto& [k, v] : pairs) request.value(k).value(v), ++n;
    request.patch_count(at, n);
    request.send();
  }
  void update(std::initializer_list<std::pair<K, V>> pairs) const { update(std::span(pairs.begin(), pairs.size())); }
  /// The value for k, setting it to v first if k is missing.
  V setdefault(const K& k, const V& v) const {
    auto in = call(op::dict_setdefault).value(k).value(v).send();
    return detail::manager_call::decode<V>(in);
  }
  /// Removes k and returns its value, or nullopt if it was missing.
  std::optional<V> pop(const K& k) const {
    auto in = call(op::dict_pop).value(k).send();
    if (!in.u8()) return std::nullopt;
    return detail::manager_call::decode<V>(in);
  }
  /// Removes k and returns its value, or `otherwise` if it was missing (Python's d.pop(k, default)).
  V pop(const K& k, V otherwise) const {
    auto found = pop(k);
    return found ? std::move(*found) : std::move(otherwise);
  }
  /// A local copy (Python's dict(d)): std::map by default; any container constructible from pair iterators.
  template <class Map = std::map<K, V>>
  Map copy() const {
    auto all = items();
    return Map(std::make_move_iterator(all.begin()), std::make_move_iterator(all.end()));
  }

 private:
  template <class T>
  std::vector<T> collect(op code) const {
    auto in = call(code).send();
    std::vector<T> out;
    auto n = in.count(4);
    out.reserve(n);
    for (std::uint32_t i = 0; i < n; ++i) out.push_back(detail::manager_call::decode<T>(in));
    return out;
  }
};


template <class T>
class ListProxy;

/// l[i]: converts to T, assignable from T; negative i counts from the end (as Python).
template <class T>
class ListItem {
 public:
  operator T() const { return list_.get(index_); }
  ListItem& operator=(const T& value) {
    list_.set(index_, value);
    return *this;
  }

 private:
  friend class ListProxy<T>;
  ListItem(const ListProxy<T>& list, std::int64_t index) : list_(list), index_(index) {}
  ListProxy<T> list_;  // a copy (a handle), as DictItem
  std::int64_t index_;
};

/// A list in the manager server. Indexes follow Python: negative counts from the end; out of range is mp::Error.
template <class T>
class ListProxy : public detail::proxy_base {
  using op = detail::manager_protocol::op;

 public:
  using proxy_base::proxy_base;
  void append(const T& item) const { call(op::list_append).value(item).send(); }
  /// Appends every item of `items` in one round trip, all or nothing.
  template <std::ranges::input_range R>
  void extend(R&& items) const {
    auto request = call(op::list_extend);
    auto at = request.count_placeholder();
    std::uint32_t n = 0;
    for (const auto& item : items) request.value(item), ++n;
    request.patch_count(at, n);
    request.send();
  }
  void extend(std::initializer_list<T> items) const { extend(std::span(items.begin(), items.size())); }
  T get(std::int64_t index) const {
    auto in = call(op::list_get).i64(index).send();
    return detail::manager_call::decode<T>(in);
  }
  void set(std::int64_t index, const T& item) const { call(op::list_set).i64(index).value(item).send(); }
  /// l[i]: read (converts to T) or assign.
  ListItem<T> operator[](std::int64_t index) const { return ListItem<T>(*this, index); }
  /// Inserts before `index` (clamped to the list, as Python).
  void insert(std::int64_t index, const T& item) const { call(op::list_insert).i64(index).value(item).send(); }
  /// Removes and returns the item at `index` (the last by default); mp::Error if the list is empty.
  T pop(std::int64_t index = -1) const {
    auto in = call(op::list_pop).i64(index).send();
    return detail::manager_call::decode<T>(in);
  }
  std::size_t size() const { return call(op::list_size).send().u64(); }
  bool empty() const { return size() == 0; }
  void clear() const { call(op::list_clear).send(); }
  /// A local copy of every item (Python's list(l)).
  std::vector<T> copy() const {
    auto in = call(op::list_copy).send();
    std::vector<T> out;
    auto n = in.count(4);
    out.reserve(n);
    for (std::uint32_t i = 0; i < n; ++i) out.push_back(detail::manager_call::decode<T>(in));
    return out;
  }
};

/// One value in the manager server (Python's manager.Value): get() and set() are its .value.
template <class T>
class ValueProxy : public detail::proxy_base {
  using op = detail::manager_protocol::op;

 public:
  using proxy_base::proxy_base;
  T get() const {
    auto in = call(op::value_get).send();
    return detail::manager_call::decode<T>(in);
  }
  void set(const T& v) const { call(op::value_set).value(v).send(); }
  /// Python's v.value, read.
  T value() const { return get(); }
  /// Python's v.value = x.
  void value(const T& v) const { set(v); }
};

/// A FIFO queue in the manager server (Python's manager.Queue): blocking calls wait in the server.
template <class T>
class QueueProxy : public detail::proxy_base {
  using op = detail::manager_protocol::op;

 public:
  using proxy_base::proxy_base;
  /// Waits while the queue is full.
  void put(const T& item) const { call(op::queue_put).i64(-1).value(item).send(); }
  /// mp::Full if still full after `timeout`.
  template <class R, class P>
  void put(const T& item, std::chrono::duration<R, P> timeout) const {
    call(op::queue_put).i64(detail::timeout_ns(timeout)).value(item).send();
  }
  /// mp::Full at once if the queue is full.
  void put_nowait(const T& item) const { call(op::queue_put).i64(0).value(item).send(); }
  /// false instead of mp::Full.
  bool try_put(const T& item) const {
    try {
      put_nowait(item);
      return true;
    } catch (const Full&) {
      return false;
    }
  }
  /// Waits for an item.
  T get() const { return take(-1); }
  /// mp::Empty if no item arrives within `timeout`.
  template <class R, class P>
  T get(std::chrono::duration<R, P> timeout) const {
    return take(detail::timeout_ns(timeout));
  }
  /// mp::Empty at once if the queue is empty.
  T get_nowait() const { return take(0); }
  /// nullopt instead of mp::Empty.
  std::optional<T> try_get() const {
    try {
      return take(0);
    } catch (const Empty&) {
      return std::nullopt;
    }
  }
  std::size_t qsize() const { return call(op::queue_state).send().u64(); }
  bool empty() const { return qsize() == 0; }
  bool full() const {
    auto in = call(op::queue_state).send();
    auto size = in.u64();
    auto maxsize = in.u64();
    return maxsize != 0 && size >= maxsize;
  }

 private:
  T take(std::int64_t timeout) const {
    auto in = call(op::queue_get).i64(timeout).send();
    return detail::manager_call::decode<T>(in);
  }
};

namespace detail {
/// acquire/release and the std lock trio, shared by the lock-like proxies.
template <class Derived>
class lockable_proxy : public proxy_base {
 protected:
  using op = manager_protocol::op;
  static constexpr op acquire_op = op::lock_acquire;

 public:
  using proxy_base::proxy_base;
  /// Waits until acquired.
  void acquire() const { acquire_for(-1); }
  /// true if acquired within `timeout`.
  template <class R, class P>
  bool acquire(std::chrono::duration<R, P> timeout) const {
    return acquire_for(timeout_ns(timeout));
  }
  bool try_acquire() const { return acquire_for(0); }
  void lock() const { acquire(); }
  bool try_lock() const { return try_acquire(); }
  void unlock() const { static_cast<const Derived&>(*this).release(); }

 protected:
  bool acquire_for(std::int64_t timeout) const {
    return manager_call::flag(call(Derived::acquire_op).i64(timeout).send());
  }
};
}  // namespace detail

/// A lock in the manager server (Python's manager.Lock). Any holder may release it; a client whose connection
/// closes (its process died) releases the locks it holds.
class LockProxy : public detail::lockable_proxy<LockProxy> {
 public:
  using lockable_proxy::lockable_proxy;
  /// mp::Error if the lock is not held.
  void release() const { call(op::lock_release).send(); }
};

/// A re-entrant lock in the manager server (Python's manager.RLock), owned by the acquiring process and thread.
class RLockProxy : public detail::lockable_proxy<RLockProxy> {
 public:
  using lockable_proxy::lockable_proxy;
  /// mp::Error if this process and thread do not hold it.
  void release() const { call(op::lock_release).send(); }
};

/// A counting semaphore in the manager server (Python's manager.Semaphore).
class SemaphoreProxy : public detail::lockable_proxy<SemaphoreProxy> {
  friend class detail::lockable_proxy<SemaphoreProxy>;
  static constexpr op acquire_op = op::semaphore_acquire;

 public:
  using lockable_proxy::lockable_proxy;
  /// Adds n to the value, waking up to n waiters.
  void release(std::uint32_t n = 1) const { call(op::semaphore_release).u32(n).send(); }
  int get_value() const { return static_cast<int>(call(op::semaphore_value).send().i64()); }
};

/// An event in the manager server (Python's manager.Event).
class EventProxy : public detail::proxy_base {
  using op = detail::manager_protocol::op;

 public:
  using proxy_base::proxy_base;
  void set() const { call(op::event_set).send(); }
  void clear() const { call(op::event_clear).send(); }
  bool is_set() const { return detail::manager_call::flag(call(op::event_is_set).send()); }
  /// Waits until the flag is set.
  void wait() const { call(op::event_wait).i64(-1).send(); }
  /// true if the flag is set within `timeout`.
  template <class R, class P>
  bool wait(std::chrono::duration<R, P> timeout) const {
    return detail::manager_call::flag(call(op::event_wait).i64(detail::timeout_ns(timeout)).send());
  }
};

/// A condition variable with its own re-entrant lock in the manager server (Python's manager.Condition()).
class ConditionProxy : public detail::lockable_proxy<ConditionProxy> {
 public:
  using lockable_proxy::lockable_proxy;
  void release() const { call(op::lock_release).send(); }
  /// Releases the lock, waits for a notify, re-acquires the lock. mp::Error if the lock is not held.
  void wait() const { call(op::condition_wait).i64(-1).send(); }
  /// false if `timeout` passed without a notify (the lock is re-acquired either way).
  template <class R, class P>
  bool wait(std::chrono::duration<R, P> timeout) const {
    return detail::manager_call::flag(call(op::condition_wait).i64(detail::timeout_ns(timeout)).send());
  }
  /// Waits until pred() is true (checked with the lock held, as Python's wait_for).
  template <class Pred>
  void wait_for(Pred pred) const {
    while (!pred()) wait();
  }
  /// pred()'s last value: false if `timeout` passed first.
  template <class Pred, class R, class P>
  bool wait_for(Pred pred, std::chrono::duration<R, P> timeout) const {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    bool result = pred();
    while (!result) {
      auto left = deadline - std::chrono::steady_clock::now();
      if (left <= decltype(left)::zero()) break;
      wait(left);
      result = pred();
    }
    return result;
  }
  /// Wakes up to n waiters. mp::Error if the lock is not held.
  void notify(std::uint32_t n = 1) const { call(op::condition_notify).u32(n).send(); }
  void notify_all() const { notify(UINT32_MAX); }
};

/// A barrier in the manager server (Python's manager.Barrier).
class BarrierProxy : public detail::proxy_base {
  using op = detail::manager_protocol::op;

 public:
  using proxy_base::proxy_base;
  /// Waits for all parties; returns this party's arrival index (0 .. parties-1). BrokenBarrierError if broken.
  int wait() const { return static_cast<int>(call(op::barrier_wait).i64(-1).send().u32()); }
  /// BrokenBarrierError (and the barrier breaks) if the parties do not all arrive within `timeout`.
  template <class R, class P>
  int wait(std::chrono::duration<R, P> timeout) const {
    return static_cast<int>(call(op::barrier_wait).i64(detail::timeout_ns(timeout)).send().u32());
  }
  /// Back to the initial state; current waiters get BrokenBarrierError.
  void reset() const { call(op::barrier_reset).send(); }
  /// Breaks the barrier: current and future waits throw BrokenBarrierError until reset().
  void abort() const { call(op::barrier_abort).send(); }
  int parties() const { return static_cast<int>(call(op::barrier_state).send().u32()); }
  int n_waiting() const {
    auto in = call(op::barrier_state).send();
    in.u32();
    return static_cast<int>(in.u32());
  }
  bool broken() const {
    auto in = call(op::barrier_state).send();
    in.u32(), in.u32();
    return in.u8() != 0;
  }
};

/// Named attributes of any serializable types (Python's manager.Namespace(): ns.x = 1 is ns.set("x", 1)).
class NamespaceProxy : public detail::proxy_base {
  using op = detail::manager_protocol::op;

 public:
  using proxy_base::proxy_base;
  template <class T>
  void set(std::string_view name, const T& v) const {
    call(op::ns_set).text(name).text(detail::manager_type_name<T>()).value(v).send();
  }
  /// The attribute as a T; mp::Error if it is missing (Python's AttributeError) or holds another type.
  template <class T>
  T get(std::string_view name) const {
    auto found = try_get<T>(name);
    if (!found) throw Error("manager namespace has no attribute '" + std::string(name) + "' (AttributeError)");
    return std::move(*found);
  }
  /// The attribute as a T, or nullopt if missing; mp::Error if it holds another type.
  template <class T>
  std::optional<T> try_get(std::string_view name) const {
    auto in = call(op::ns_get).text(name).text(detail::manager_type_name<T>()).send();
    if (!in.u8()) return std::nullopt;
    return detail::manager_call::decode<T>(in);
  }
  bool contains(std::string_view name) const { return detail::manager_call::flag(call(op::ns_contains).text(name).send()); }
  /// Removes the attribute; false if it was missing.
  bool erase(std::string_view name) const { return detail::manager_call::flag(call(op::ns_erase).text(name).send()); }
  /// Every attribute name, sorted.
  std::vector<std::string> names() const {
    auto in = call(op::ns_names).send();
    std::vector<std::string> out;
    auto n = in.count(4);
    for (std::uint32_t i = 0; i < n; ++i) out.emplace_back(in.blob());
    return out;
  }
};

/// Starts (or connects to) a manager server and creates shared objects in it.
class Manager {
 public:
  /// Starts a server (by get_start_method()) on a private Unix socket; it exits when this Manager is destroyed or
  /// this process dies.
  Manager() : Manager(ManagerOptions{}) {}
  /// Starts a server on `options.address` (TCP needs an authkey) by `options.start_method`; mp::Error if the
  /// address cannot be bound or the server cannot start.
  explicit Manager(ManagerOptions options);
  Manager(Manager&& other) noexcept = default;
  Manager& operator=(Manager&& other) noexcept {
    if (this != &other) {
      shutdown_noexcept();
      owner_ = std::move(other.owner_);
      client_ = std::move(other.client_);
    }
    return *this;
  }
  /// Shuts the server down if this Manager started it (in this process).
  ~Manager() { shutdown_noexcept(); }

  /// Attaches to a running server; AuthenticationError if `authkey` is wrong, mp::Error if nothing listens.
  static Manager connect(Address address, std::string authkey);
  /// Runs the server in this process until SIGTERM/SIGINT or a client's shutdown request (no fork).
  static void serve_forever(ManagerOptions options);
  /// Serves (the server started by this Manager) until this process gets SIGTERM/SIGINT, then shuts it down.
  void serve_forever();

  /// A dict; named: finds the object of that name or creates it (separate programs share it).
  template <class K, class V>
  DictProxy<K, V> dict(std::string name = {}) {
    return {client(), create(kind::dict, "dict<" + tn<K>() + ", " + tn<V>() + ">", name)};
  }
  template <class T>
  ListProxy<T> list(std::string name = {}) {
    return {client(), create(kind::list, "list<" + tn<T>() + ">", name)};
  }
  /// A value starting at `initial` (an existing named value keeps its own).
  template <class T>
  ValueProxy<T> value(T initial = T{}, std::string name = {}) {
    auto bytes = mp::serialize(initial);
    return {client(), create(kind::value, "value<" + tn<T>() + ">", name, 0,
                             {reinterpret_cast<const char*>(bytes.data()), bytes.size()})};
  }
  /// A queue; maxsize 0 means unbounded.
  template <class T>
  QueueProxy<T> queue(std::size_t maxsize = 0, std::string name = {}) {
    return {client(), create(kind::queue, "queue<" + tn<T>() + ">", name, maxsize)};
  }
  /// A named queue: mgr.queue<int>("jobs") (maxsize applies only when it is created).
  template <class T>
  QueueProxy<T> queue(std::string name, std::size_t maxsize = 0) {
    return queue<T>(maxsize, std::move(name));
  }
  LockProxy lock(std::string name = {}) { return {client(), create(kind::lock, "lock", name)}; }
  RLockProxy rlock(std::string name = {}) { return {client(), create(kind::rlock, "rlock", name)}; }
  SemaphoreProxy semaphore(int value = 1, std::string name = {}) {
    if (value < 0) throw Error("Manager::semaphore: initial value " + std::to_string(value) + " must be >= 0");
    return {client(), create(kind::semaphore, "semaphore", name, static_cast<std::uint64_t>(value))};
  }
  EventProxy event(std::string name = {}) { return {client(), create(kind::event, "event", name)}; }
  ConditionProxy condition(std::string name = {}) { return {client(), create(kind::condition, "condition", name)}; }
  BarrierProxy barrier(int parties, std::string name = {}) {
    if (parties < 1) throw Error("Manager::barrier: parties is " + std::to_string(parties) + "; it must be >= 1");
    return {client(), create(kind::barrier, "barrier", name, static_cast<std::uint64_t>(parties))};
  }
  NamespaceProxy namespace_(std::string name = {}) { return {client(), create(kind::namespace_, "namespace", name)}; }

  /// Where the server listens (the actual port for TCP port 0).
  Address address() const {
    Address a;
    if (client_) a.endpoint_ = client_->endpoint();
    return a;
  }
  /// Stops the server if this Manager started it (its proxies then fail with mp::Error); a connected Manager
  /// only lets go of the server (proxies already made keep working). Idempotent.
  void shutdown();

 private:
  using kind = detail::manager_protocol::kind;
  // The server process this Manager started, and what to clean up after it.
  struct server_process {
    pid_t pid = 0;
    pid_t owner = 0;          // the process that started it: only that process stops it
    detail::unique_fd pidfd;  // for waiting with a deadline
    bool via_server = false;  // started by the fork server: its child, not ours (waitpid cannot reap it)
    detail::unique_fd status; // via_server: readable once the fork server reaped it (it writes the wait status)
    std::string socket_path;  // removed after it stops (Unix sockets)
    std::string directory;    // the private directory holding a default socket
  };

  Manager(std::shared_ptr<detail::manager_client> client, std::unique_ptr<server_process> owner)
      : owner_(std::move(owner)), client_(std::move(client)) {}

  template <class T>
  static std::string tn() {
    return detail::manager_type_name<T>();
  }
  const std::shared_ptr<detail::manager_client>& client() const {
    if (!client_) throw Error("this Manager was moved from or shut down: create a new Manager");
    return client_;
  }
  std::uint64_t create(kind k, const std::string& type, const std::string& name, std::uint64_t number = 0,
                       std::string_view initial = {}) {
    detail::manager_call request(*client(), detail::manager_protocol::op::create, 0);
    request.u8(static_cast<std::uint8_t>(k)).text(type).text(name).u64(number).text(initial);
    return request.send().u64();
  }
  void shutdown_noexcept() noexcept {
    try {
      shutdown();
    } catch (...) {
    }
  }
  static int reap_server(server_process& server);
  [[noreturn]] static void run_fresh_server(std::span<const std::byte> bytes);
  static void start_fresh_server(server_process& owner, const detail::unique_fd& listener, const std::string& authkey,
                                 StartMethod method, std::vector<unsigned> identity);
  static void run_server(detail::unique_fd listener, std::string authkey, int owner_pidfd, int stop_fd,
                         std::vector<std::string> remove) {
    detail::manager_server server(std::move(listener), std::move(authkey), owner_pidfd, stop_fd, std::move(remove));
    server.run();
  }

  std::unique_ptr<server_process> owner_;
  std::shared_ptr<detail::manager_client> client_;
};

namespace detail {
// The signals that stop a server, read through a signalfd by its poll loop.
inline sigset_t manager_stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}

// A server process's signals (forked or fresh): SIGINT from the terminal goes to the whole process group, so, as
// Python's manager, the server ignores it and stops when its owner does; SIGPIPE is ignored (a client may vanish
// mid-reply); SIGTERM is blocked and read through the returned signalfd, so it stops the server cleanly.
inline unique_fd manager_server_signals() {
  ::signal(SIGINT, SIG_IGN);
  ::signal(SIGPIPE, SIG_IGN);
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  ::sigprocmask(SIG_BLOCK, &stop, nullptr);
  return unique_fd(sys("signalfd", "manager server", [&] { return ::signalfd(-1, &stop, SFD_CLOEXEC | SFD_NONBLOCK); }));
}

// What a server removes when it stops, in order: its Unix socket, then the private directory holding it.
inline std::vector<std::string> manager_server_files(const std::string& socket_path, const std::string& directory) {
  std::vector<std::string> files;
  if (!socket_path.empty()) files.push_back(socket_path);
  if (!directory.empty()) files.push_back(directory);
  return files;
}

// Removes them (the owner does too, when the server could not or did not).
inline void remove_manager_server_files(const std::string& socket_path, const std::string& directory) noexcept {
  if (!socket_path.empty()) ::unlink(socket_path.c_str());
  if (!directory.empty()) ::rmdir(directory.c_str());
}

// A private directory (mode 0700) for the default Unix socket: other users cannot reach the socket, and the
// directory is removed when the server stops.
inline std::string make_private_directory() {
  const char* base = std::getenv("TMPDIR");
  std::string root = base && *base && std::string_view(base).size() < 60 ? base : "/tmp";
  std::string pattern = root + "/mp-manager-" + std::to_string(::getpid()) + "-XXXXXX";
  if (!::mkdtemp(pattern.data())) throw_errno("mkdtemp", pattern);
  return pattern;
}

// Closes every inherited descriptor except stdio and `keep`: the server must not hold the owner's pipes,
// sockets or pidfds open (a pipe's reader would never see end of file).
inline void close_inherited_fds(std::vector<int> keep) {
  keep.push_back(2);
  std::sort(keep.begin(), keep.end());
  unsigned int from = 3;
  for (int fd : keep) {
    if (fd < 3) continue;
    if (static_cast<unsigned int>(fd) > from) ::syscall(SYS_close_range, from, static_cast<unsigned int>(fd) - 1, 0U);
    from = static_cast<unsigned int>(fd) + 1;
  }
  ::syscall(SYS_close_range, from, ~0U, 0U);
}

// A server started by spawn or forkserver is a fresh copy of the program: nothing of the owner's memory, only
// what it is sent. It starts as any mp child (run_spawned_child, which mp::init runs) whose target is
// Manager::run_fresh_server, located by code address; the server is type-agnostic (manager_store), so it needs no
// user code. It gets what a forked server inherits: the bound listener, the authkey, the paths to remove, and a
// pidfd of the owner to watch — opened by the owner on itself and sent with SCM_RIGHTS, so no reused pid can be
// mistaken for it, and not getppid(): under forkserver the server's OS parent is the fork server.

/// The bytes a fresh server gets. Its descriptors travel beside them: #0 the listener, #1 the write end of the
/// ready pipe (one byte once it serves), #2 a pidfd of the owner if owner_pidfd (Linux >= 5.3).
struct manager_server_start {
  std::string authkey;
  std::string socket_path;  // removed when it stops (Unix sockets), then...
  std::string directory;    // ...the private directory holding a default socket
  bool owner_pidfd = false;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(authkey, socket_path, directory, owner_pidfd);
  }
};

}  // namespace detail

/// The target of a server started by spawn or forkserver: serves, cleans up and _exits.
inline void Manager::run_fresh_server(std::span<const std::byte> bytes) {
  using namespace detail;
  manager_server_start start = mp::deserialize<manager_server_start>(bytes);
  fd_inbox* box = current_fd_inbox();
  const std::size_t expected = start.owner_pidfd ? 3 : 2;
  if (box == nullptr || box->fds.size() != expected) {
    throw Error("manager server: its owner sent " + std::to_string(box ? box->fds.size() : 0) + " descriptors, not " +
                std::to_string(expected));
  }
  // Taken, not dup'ed (import_fd): the inbox is never destroyed in this process, and a copy of the ready pipe's
  // write end left there would hide this server's death from the owner.
  unique_fd listener = std::move(box->fds[0]);
  unique_fd ready = std::move(box->fds[1]);
  unique_fd owner_pidfd;
  if (start.owner_pidfd) owner_pidfd = std::move(box->fds[2]);
  int code = 0;
  try {
    unique_fd stop_fd = manager_server_signals();
    bool owner_alive = true;
    if (owner_pidfd) {
      // The death signal run_in_child armed (SIGTERM, now read through stop_fd) would fire when the owner's
      // *thread* that started the server ends (spawn), or with the fork server: the pidfd watches the owner.
      ::prctl(PR_SET_PDEATHSIG, 0);
      pollfd gone{owner_pidfd.get(), POLLIN, 0};
      owner_alive = ::poll(&gone, 1, 0) == 0;  // killed while it waited for the ready byte
    }
    // Without a pidfd the death signal stays: under spawn the owner is the OS parent; under forkserver the fork
    // server sends SIGTERM to its children when the owner (its client) ends.
    (void)!::write(ready.get(), "1", 1);
    ready.reset();
    if (owner_alive) {
      close_inherited_fds({listener.get(), stop_fd.get(), owner_pidfd.get()});
      run_server(std::move(listener), std::move(start.authkey), owner_pidfd.get(), stop_fd.get(),
                 manager_server_files(start.socket_path, start.directory));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mp::Manager server (pid %d) stopped: %s\n", static_cast<int>(::getpid()), e.what());
    code = 1;
  } catch (...) {
    code = 1;
  }
  remove_manager_server_files(start.socket_path, start.directory);
  ::_exit(code);
}

inline void Manager::start_fresh_server(server_process& owner, const detail::unique_fd& listener,
                                        const std::string& authkey, StartMethod method,
                                        std::vector<unsigned> identity) {
  detail::manager_server_start start{authkey, owner.socket_path, owner.directory, false};
  detail::unique_fd self(detail::pidfd_open(owner.owner));
  start.owner_pidfd = static_cast<bool>(self);
  detail::spawn_request request;
  request.name = "SyncManager-" + detail::identity_string(identity);
  request.identity = std::move(identity);
  request.parent_name = current_process().name();
  request.parent_pid = owner.owner;
  request.start_method = detail::start_method_setting();
  request.target = detail::spawn_target{
      detail::locate_code(reinterpret_cast<std::uintptr_t>(&run_fresh_server)), mp::serialize(start)};

  detail::unique_fd ready;
  detail::fresh_child child;
  {
    std::lock_guard lock(detail::the_registry().mutex);  // see start_fresh_child: held until our ends are closed
    int pipe_ends[2];
    detail::sys("pipe2", "manager server", [&] { return ::pipe2(pipe_ends, O_CLOEXEC); });
    ready.reset(pipe_ends[0]);
    detail::unique_fd ready_write(pipe_ends[1]);
    std::vector<int> fds{listener.get(), ready_write.get()};
    if (self) fds.push_back(self.get());
    child = detail::start_fresh_child(method, request, fds);  // not a daemon: SIGTERM (a clean stop) if we die
    owner.pid = child.pid;
    owner.via_server = method == StartMethod::forkserver;
    owner.status = std::move(child.status);
    // The server cannot end before it answers below unless killed from outside; the pidfd is opened now, while
    // its pid surely names it.
    owner.pidfd.reset(detail::pidfd_open(child.pid));
  }
  // One byte when its Process is armed (it must be read: the server writes it), then one when it serves; end of
  // file if it died first.
  (void)detail::wait_until_ready(child);
  char byte = 0;
  if (detail::retry_on_eintr([&] { return ::read(ready.get(), &byte, 1); }) == 1) return;
  const int status = reap_server(owner);
  throw Error("Manager: its server (pid " + std::to_string(owner.pid) + ", start method " +
              std::string(to_string(method)) + ") ended before serving (" + detail::describe_wait_status(status) +
              "); its reason, if it gave one, is on stderr");
}

inline Manager::Manager(ManagerOptions options) {
  const StartMethod method = options.start_method ? *options.start_method : get_start_method();
  if (method != StartMethod::fork && method != StartMethod::spawn && method != StartMethod::forkserver) {
    throw Error("Manager: ManagerOptions::start_method is " + std::to_string(static_cast<int>(method)) +
                ", not a start method; use StartMethod::fork, StartMethod::spawn or StartMethod::forkserver (or "
                "leave it empty for get_start_method())");
  }
  detail::require_init(method, "Manager");
  detail::manager_endpoint endpoint = options.address.endpoint_;
  auto owner = std::make_unique<server_process>();
  if (endpoint.tcp && options.authkey.empty()) {
    throw Error("Manager on " + endpoint.to_string() +
                ": a TCP manager needs an authkey (ManagerOptions{.authkey = ...}); without one anyone who can reach "
                "the port could use it");
  }
  if (!options.authkey.empty()) detail::libcrypto::get();  // fail here, not in the server, if libcrypto is missing
  if (endpoint.empty_address()) {
    owner->directory = detail::make_private_directory();
    endpoint.path = owner->directory + "/socket";
  }
  detail::unique_fd listener;
  try {
    listener = detail::listen_on(endpoint);
  } catch (...) {
    if (!owner->directory.empty()) ::rmdir(owner->directory.c_str());
    throw;
  }
  if (!endpoint.tcp) owner->socket_path = endpoint.path;
  owner->owner = ::getpid();
  // Python's manager server is a Process and takes a name ("SyncManager-1"); so does this one, so that the
  // processes started after it are named as in Python.
  std::vector<unsigned> identity = detail::next_identity();
  if (method != StartMethod::fork) {
    try {
      start_fresh_server(*owner, listener, options.authkey, method, std::move(identity));
    } catch (...) {
      // start_fresh_server reaped the server if it started one: nothing uses the socket any more.
      detail::remove_manager_server_files(owner->socket_path, owner->directory);
      throw;
    }
    listener.reset();
    owner_ = std::move(owner);
    client_ = std::make_shared<detail::manager_client>(std::move(endpoint), std::move(options.authkey));
    return;
  }
  pid_t child = ::fork();
  if (child == -1) {
    int err = detail::last_errno();
    detail::remove_manager_server_files(owner->socket_path, owner->directory);
    detail::throw_errno("fork", "manager server", err);
  }
  if (child == 0) {
    int code = 0;
    try {
      detail::unique_fd stop_fd = detail::manager_server_signals();
      int owner_pidfd = detail::pidfd_open(owner->owner);
      if (owner_pidfd < 0) {
        // No pidfd (Linux < 5.3): the parent-death signal instead. It is SIGTERM, blocked and read through the
        // signalfd, so the server still stops cleanly; it fires when the creating *thread* ends (see above).
        ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      }
      if (::getppid() != owner->owner) ::_exit(0);  // the owner died before we could watch it
      detail::close_inherited_fds({listener.get(), stop_fd.get(), owner_pidfd});
      run_server(std::move(listener), std::move(options.authkey), owner_pidfd, stop_fd.get(),
                 detail::manager_server_files(owner->socket_path, owner->directory));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "mp::Manager server (pid %d) stopped: %s\n", static_cast<int>(::getpid()), e.what());
      code = 1;
    } catch (...) {
      code = 1;
    }
    detail::remove_manager_server_files(owner->socket_path, owner->directory);
    ::_exit(code);
  }
  listener.reset();
  owner->pid = child;
  owner->pidfd = detail::unique_fd(detail::pidfd_open(child));
  owner_ = std::move(owner);
  client_ = std::make_shared<detail::manager_client>(std::move(endpoint), std::move(options.authkey));
}

inline Manager Manager::connect(Address address, std::string authkey) {
  if (address.empty()) throw Error("Manager::connect: the address is empty; pass the server's Manager::address()");
  auto client = std::make_shared<detail::manager_client>(address.endpoint_, std::move(authkey));
  client->connection();  // connect and authenticate now: a wrong key fails here
  return Manager(std::move(client), nullptr);
}

inline void Manager::serve_forever(ManagerOptions options) {
  detail::manager_endpoint endpoint = options.address.endpoint_;
  if (endpoint.empty_address()) throw Error("Manager::serve_forever: give an address to serve on (Address::tcp or Address::unix_socket)");
  if (endpoint.tcp && options.authkey.empty()) {
    throw Error("Manager::serve_forever on " + endpoint.to_string() + ": a TCP manager needs an authkey");
  }
  if (!options.authkey.empty()) detail::libcrypto::get();
  auto listener = detail::listen_on(endpoint);
  auto stop = detail::manager_stop_signals();
  sigset_t previous;
  ::pthread_sigmask(SIG_BLOCK, &stop, &previous);
  detail::unique_fd stop_fd(::signalfd(-1, &stop, SFD_CLOEXEC | SFD_NONBLOCK));
  struct cleanup {
    sigset_t previous;
    std::string path;
    ~cleanup() {
      if (!path.empty()) ::unlink(path.c_str());  // when run_server threw before removing it
      ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
    }
  } restore{previous, endpoint.tcp ? std::string() : endpoint.path};
  std::vector<std::string> remove;
  if (!endpoint.tcp) remove.push_back(endpoint.path);
  run_server(std::move(listener), std::move(options.authkey), -1, stop_fd.get(), std::move(remove));
}

inline void Manager::serve_forever() {
  if (!owner_ || owner_->owner != ::getpid()) {
    throw Error("Manager::serve_forever(): this Manager did not start a server in this process; use the static "
                "Manager::serve_forever(ManagerOptions) to serve here");
  }
  // Wait for the server to stop, or for SIGTERM/SIGINT (Ctrl-C) to this process: then stop it cleanly. The
  // signals are blocked in this thread and read through a signalfd, then the previous mask is restored.
  auto stop = detail::manager_stop_signals();
  sigset_t previous;
  ::pthread_sigmask(SIG_BLOCK, &stop, &previous);
  detail::unique_fd stop_fd(::signalfd(-1, &stop, SFD_CLOEXEC | SFD_NONBLOCK));
  pollfd waits[2] = {{owner_->pidfd.get(), POLLIN, 0}, {stop_fd.get(), POLLIN, 0}};
  detail::retry_on_eintr([&] { return ::poll(waits, 2, -1); });
  signalfd_siginfo consumed;  // read it, or it would be delivered (and kill us) once the mask is restored
  while (stop_fd && ::read(stop_fd.get(), &consumed, sizeof consumed) == static_cast<ssize_t>(sizeof consumed)) {
  }
  ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  shutdown();
}

inline void Manager::shutdown() {
  if (owner_ && owner_->owner == ::getpid()) {
    auto owner = std::move(owner_);
    if (client_) {
      try {
        detail::manager_call(*client_, detail::manager_protocol::op::shutdown, 0).send();
      } catch (const Error&) {
        // Already gone (or unreachable): the wait below and SIGKILL cover it.
      }
    }
    (void)reap_server(*owner);
    detail::remove_manager_server_files(owner->socket_path, owner->directory);
  }
  client_.reset();
}

// Waits for a server that was asked to stop, kills it if it has not within 5 s, and reaps it: its wait status.
inline int Manager::reap_server(server_process& server) {
  // Without a pidfd (Linux < 5.3): the fork server's status pipe, or else SIGTERM (the server stops cleanly on it).
  const int sentinel = server.pidfd ? server.pidfd.get() : server.status.get();
  if (sentinel >= 0) {
    pollfd wait{sentinel, POLLIN, 0};
    if (detail::retry_on_eintr([&] { return ::poll(&wait, 1, 5000); }) <= 0) {
      if (!server.pidfd || ::syscall(SYS_pidfd_send_signal, server.pidfd.get(), SIGKILL, nullptr, 0U) == -1) {
        ::kill(server.pid, SIGKILL);
      }
    }
  } else {
    ::kill(server.pid, SIGTERM);
  }
  int status = 0;
  if (server.via_server) {
    // The fork server's child, not ours: it reaps it and writes the wait status (end of file if it died itself).
    if (detail::retry_on_eintr([&] { return ::read(server.status.get(), &status, sizeof status); }) != sizeof status) {
      status = 0;
    }
  } else {
    detail::retry_on_eintr([&] { return ::waitpid(server.pid, &status, 0); });
  }
  return status;
}

}  // namespace mp
