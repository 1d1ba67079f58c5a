// mp::Manager: shared containers and synchronization objects that live in a server process and are used through
// proxies — Python's multiprocessing.Manager() / managers.BaseManager, locally or over TCP.
// A Manager forks a server (a Unix socket in a private directory by default, or TCP with an authkey);
// Manager::connect attaches another program to a running server; serve_forever makes a process the server.
// Proxies (DictProxy, ListProxy, ValueProxy, QueueProxy, LockProxy, ...) forward every call to the server.
// Process safety: proxies are copyable handles; copies passed to child processes refer to the same object, and each
// process (and each thread) opens its own connection on first use, so no socket is ever shared. Every call is one
// atomic operation in the server; blocking calls (queue get, lock acquire, waits) never block other clients.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <mp/context.hpp>
#include <mp/detail/clock.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/manager/client.hpp>
#include <mp/detail/manager/launch.hpp>
#include <mp/detail/manager/proxy.hpp>
#include <mp/detail/manager/snapshot.hpp>
#include <mp/detail/type_name.hpp>
#include <mp/errors.hpp>
#include <mp/process.hpp>
#include <mp/serialize.hpp>

namespace mp {

template <class K, class V> class DictProxy;
template <class T> class ListProxy;
template <class T> class ValueProxy;
template <class T> class QueueProxy;
class LockProxy;
class RLockProxy;
class SemaphoreProxy;
class EventProxy;
class ConditionProxy;
class BarrierProxy;
class NamespaceProxy;
template <class T> class JoinableQueueProxy;
template <class T> class ArrayProxy;
class BoundedSemaphoreProxy;
template <class T> class ObjectProxy;

/// The name of a named custom object: mgr.make<Counter>(mp::ObjectName{"hits"}, 0) finds or creates it.
struct ObjectName {
  std::string value;
};

/// Registers T as a custom shared type under `name` with the member functions a proxy may call (Python's
/// BaseManager.register). Process-wide: a server sees it if it was registered before the Manager started it (fork),
/// or at static initialization (MP_REGISTER_TYPE, for every start method). Methods' arguments and results, and
/// make()'s constructor arguments, cross by mp::serialize. Returns true.
template <class T, class... Methods>
bool register_type(std::string name, Methods... methods);

/// Where a manager server listens: a Unix socket path or a TCP host and port.
class Address {
 public:
  Address() = default;
  /// A TCP address; port 0 asks the kernel for a free port when a server binds it (address() tells which).
  static Address tcp(std::string host, std::uint16_t port) { return Address({true, std::move(host), port, {}}); }
  /// A Unix socket at `path` (named unix_socket because `unix` is a macro under gnu++ modes).
  static Address unix_socket(std::string path) { return Address({false, {}, 0, std::move(path)}); }
  std::string host() const { return endpoint_.host; }
  std::uint16_t port() const { return endpoint_.port; }
  std::string path() const { return endpoint_.path; }
  /// True for a TCP address.
  bool is_tcp() const { return endpoint_.tcp; }
  /// True for a default-constructed Address: a Manager picks a private Unix socket.
  bool empty() const { return endpoint_.empty_address(); }
  /// "tcp://host:port" or "unix:/path".
  std::string to_string() const { return endpoint_.to_string(); }

 private:
  friend class Manager;
  explicit Address(detail::manager::endpoint where) : endpoint_(std::move(where)) {}
  detail::manager::endpoint endpoint_;
};

/// How a Manager serves: `.address` (default: a private Unix socket), `.authkey` (required for TCP) and
/// `.start_method` of its server process (empty: get_start_method(); spawn and forkserver need mp::init).
/// `.connect_timeout` bounds connecting and authenticating each connection (TimeoutError past it).
/// A Unix socket is created 0600 and serves only processes of the same user (or root) unless
/// `.allow_other_users` (then the umask sets its mode; protect it with an authkey).
struct ManagerOptions {
  Address address = {};
  std::string authkey = {};
  std::optional<StartMethod> start_method = {};
  std::chrono::milliseconds connect_timeout = detail::manager::default_connect_timeout;
  bool allow_other_users = false;
};

/// Starts (or connects to) a manager server and creates shared objects in it.
class Manager {
 public:
  /// Starts a server (by get_start_method()) on a private Unix socket; it exits when this Manager is destroyed or
  /// this process dies.
  Manager() : Manager(ManagerOptions{}) {}
  /// Starts a server on `options.address` (TCP needs an authkey) by `options.start_method`; mp::Error if the
  /// address cannot be bound or the server cannot start.
  MP_DECL explicit Manager(ManagerOptions options);
  Manager(Manager&& other) noexcept = default;
  /// Shuts down the server this Manager started, if any, and takes over other's.
  MP_DECL Manager& operator=(Manager&& other) noexcept;
  /// Shuts the server down if this Manager started it (in this process).
  ~Manager() { shutdown_noexcept(); }

  /// Attaches to a running server; AuthenticationError if `authkey` is wrong, mp::Error if nothing listens,
  /// TimeoutError if connecting and the handshake take longer than `timeout` (20 s by default).
  MP_DECL static Manager connect(Address address, std::string authkey,
                                 std::chrono::milliseconds timeout = detail::manager::default_connect_timeout);
  /// Runs the server in this process until SIGTERM/SIGINT or a client's shutdown request (no fork).
  MP_DECL static void serve_forever(ManagerOptions options);
  /// Serves (the server started by this Manager) until this process gets SIGTERM/SIGINT, then shuts it down.
  MP_DECL void serve_forever();

  /// A dict; named: finds the object of that name or creates it (separate programs share it).
  template <class K, class V>
  DictProxy<K, V> dict(std::string name = {});
  /// A list; named: as dict.
  template <class T>
  ListProxy<T> list(std::string name = {});
  /// A value starting at `initial` (an existing named value keeps its own).
  template <class T>
  ValueProxy<T> value(T initial = T{}, std::string name = {});
  /// A queue; maxsize 0 means unbounded.
  template <class T>
  QueueProxy<T> queue(std::size_t maxsize = 0, std::string name = {});
  /// A named queue: mgr.queue<int>("jobs") (maxsize applies only when it is created).
  template <class T>
  QueueProxy<T> queue(std::string name, std::size_t maxsize = 0) { return queue<T>(maxsize, std::move(name)); }
  MP_DECL LockProxy lock(std::string name = {});
  MP_DECL RLockProxy rlock(std::string name = {});
  /// A semaphore starting at `value` (mp::Error if negative).
  MP_DECL SemaphoreProxy semaphore(int value = 1, std::string name = {});
  MP_DECL EventProxy event(std::string name = {});
  MP_DECL ConditionProxy condition(std::string name = {});
  /// A barrier for `parties` processes or threads (mp::Error if fewer than 1).
  MP_DECL BarrierProxy barrier(int parties, std::string name = {});
  MP_DECL NamespaceProxy namespace_(std::string name = {});
  /// A queue whose join() waits until task_done() was called once per item put (Python's manager.JoinableQueue).
  template <class T>
  JoinableQueueProxy<T> joinable_queue(std::size_t maxsize = 0, std::string name = {});
  /// n items, each T{} (Python's manager.Array): a fixed length; read, assign, slice and iterate.
  template <class T>
  ArrayProxy<T> array(std::size_t n, std::string name = {});
  /// A semaphore whose release() above its initial `value` throws ValueError (Python's manager.BoundedSemaphore).
  MP_DECL BoundedSemaphoreProxy bounded_semaphore(int value = 1, std::string name = {});

  /// Removes the name of a named object (false if no object has it): the object then lives while proxies or values
  /// refer to it, as an unnamed one. Unnamed objects are freed when the last proxy to them, in any process, is gone.
  MP_DECL bool erase(std::string_view name);

  /// Custom shared types (Python's BaseManager.register): registers T as mp::register_type does, then checks that
  /// this Manager's server serves it the same way; mp::Error saying how to register it otherwise.
  template <class T, class... Methods>
  void register_type(std::string name, Methods... methods);
  /// A new T in the server, made from `args` (serialized, then T(args...) runs there).
  template <class T, class... A>
  ObjectProxy<T> make(A&&... args);
  /// The T named `name`, made from `args` if no object has that name yet.
  template <class T, class... A>
  ObjectProxy<T> make(ObjectName name, A&&... args);

  /// Where the server listens (the actual port for TCP port 0).
  MP_DECL Address address() const;
  /// The server process this Manager started (Python's manager._process.pid); 0 for a connected Manager.
  MP_DECL pid_t server_pid() const;
  /// Stops the server if this Manager started it (its proxies then fail with mp::Error); a connected Manager
  /// only lets go of the server (proxies already made keep working). Idempotent.
  MP_DECL void shutdown();

 private:
  using kind = detail::manager::protocol::kind;
  MP_DECL Manager(std::shared_ptr<detail::manager::client> client,
                  std::unique_ptr<detail::manager::server_process> owner);
  MP_DECL const std::shared_ptr<detail::manager::client>& client() const;
  MP_DECL std::uint64_t create(kind k, const std::string& type, const std::string& name, std::uint64_t number = 0,
                               std::string_view initial = {});
  MP_DECL void shutdown_noexcept() noexcept;
  template <class T>
  std::string value_bytes(const T& v) const;

  std::unique_ptr<detail::manager::server_process> owner_;  // the server this Manager started, if it did
  std::shared_ptr<detail::manager::client> client_;
};

/// d[k]: converts to V (mp::Error if k is missing), assignable from V.
template <class K, class V>
class DictItem {
 public:
  operator V() const { return dict_.at(key_); }
  DictItem& operator=(const V& value) { dict_.set(key_, value); return *this; }

 private:
  friend class DictProxy<K, V>;
  DictItem(const DictProxy<K, V>& dict, K key) : dict_(dict), key_(std::move(key)) {}
  DictProxy<K, V> dict_;  // a copy (a handle): the item stays usable after the proxy it came from is gone
  K key_;
};

/// A dict in the manager server: insertion-ordered as a Python dict; keys compare by their serialized bytes.
template <class K, class V>
class DictProxy : public detail::manager::proxy_base {
  using op = detail::manager::protocol::op;

 public:
  using proxy_base::proxy_base;
  /// The value for k, or nullopt.
  std::optional<V> get(const K& k) const { return reply_optional<V>(call(op::dict_get).value(k).send()); }
  /// The value for k, or `otherwise` (Python's d.get(k, default)).
  V get(const K& k, V otherwise) const { return get(k).value_or(std::move(otherwise)); }
  /// The value for k; mp::KeyError if missing.
  V at(const K& k) const;
  /// d[k] = v.
  void set(const K& k, const V& v) const { call(op::dict_set).value(k).value(v).send(); }
  /// d[k]: read (converts to V) or assign.
  DictItem<K, V> operator[](K k) const { return DictItem<K, V>(*this, std::move(k)); }
  bool contains(const K& k) const { return reply_flag(call(op::dict_contains).value(k).send()); }
  /// Removes k; false if it was missing (Python's del would raise KeyError).
  bool erase(const K& k) const { return reply_flag(call(op::dict_erase).value(k).send()); }
  std::size_t size() const { return call(op::dict_size).send().u64(); }
  bool empty() const { return size() == 0; }
  std::vector<K> keys() const { return reply_list<K>(call(op::dict_keys).send()); }
  std::vector<V> values() const { return reply_list<V>(call(op::dict_values).send()); }
  /// Every (key, value), in insertion order.
  std::vector<std::pair<K, V>> items() const;
  void clear() const { call(op::dict_clear).send(); }
  /// Sets every (key, value) of `pairs` in one round trip, all or nothing.
  template <std::ranges::input_range R>
  void update(R&& pairs) const;
  void update(std::initializer_list<std::pair<K, V>> pairs) const { update(std::span(pairs.begin(), pairs.size())); }
  /// The value for k, setting it to v first if k is missing.
  V setdefault(const K& k, const V& v) const {
    return reply_value<V>(call(op::dict_setdefault).value(k).value(v).send());
  }
  /// Removes k and returns its value, or nullopt if it was missing.
  std::optional<V> pop(const K& k) const { return reply_optional<V>(call(op::dict_pop).value(k).send()); }
  /// Removes k and returns its value, or `otherwise` if it was missing (Python's d.pop(k, default)).
  V pop(const K& k, V otherwise) const { return pop(k).value_or(std::move(otherwise)); }
  /// A local copy (Python's dict(d)): std::map by default; any container constructible from pair iterators.
  template <class Map = std::map<K, V>>
  Map copy() const;
  /// Removes and returns the last inserted (key, value) (Python's popitem, LIFO); nullopt if the dict is empty.
  std::optional<std::pair<K, V>> popitem() const;
  /// for (const auto& [k, v] : d): over a snapshot of items() taken in one round trip, in insertion order.
  detail::manager::snapshot_iterator<std::pair<K, V>> begin() const { return detail::manager::snapshot_iterator(items()); }
  std::default_sentinel_t end() const { return {}; }
};

/// l[i] of a ListProxy or ArrayProxy: converts to T, assignable from T; negative i counts from the end (as Python).
template <class T, class Proxy = ListProxy<T>>
class ListItem {
 public:
  operator T() const { return list_.get(index_); }
  ListItem& operator=(const T& value) { list_.set(index_, value); return *this; }

 private:
  friend Proxy;
  ListItem(const Proxy& list, std::int64_t index) : list_(list), index_(index) {}
  Proxy list_;  // a copy (a handle), as DictItem
  std::int64_t index_;
};

/// A list in the manager server. Indexes follow Python: negative counts from the end; out of range is mp::Error.
template <class T>
class ListProxy : public detail::manager::proxy_base {
  using op = detail::manager::protocol::op;

 public:
  using proxy_base::proxy_base;
  void append(const T& item) const { call(op::list_append).value(item).send(); }
  /// Appends every item of `items` in one round trip, all or nothing.
  template <std::ranges::input_range R>
  void extend(R&& items) const;
  void extend(std::initializer_list<T> items) const { extend(std::span(items.begin(), items.size())); }
  T get(std::int64_t index) const { return reply_value<T>(call(op::list_get).i64(index).send()); }
  void set(std::int64_t index, const T& item) const { call(op::list_set).i64(index).value(item).send(); }
  /// l[i]: read (converts to T) or assign.
  ListItem<T> operator[](std::int64_t index) const { return ListItem<T>(*this, index); }
  /// Inserts before `index` (clamped to the list, as Python).
  void insert(std::int64_t index, const T& item) const { call(op::list_insert).i64(index).value(item).send(); }
  /// Removes and returns the item at `index` (the last by default); mp::Error if the list is empty.
  T pop(std::int64_t index = -1) const { return reply_value<T>(call(op::list_pop).i64(index).send()); }
  std::size_t size() const { return call(op::list_size).send().u64(); }
  bool empty() const { return size() == 0; }
  void clear() const { call(op::list_clear).send(); }
  /// A local copy of every item (Python's list(l)).
  std::vector<T> copy() const { return reply_list<T>(call(op::list_copy).send()); }
  /// Removes the first item equal to `item` (items compare by their serialized bytes); ValueError if none is.
  void remove(const T& item) const { call(op::list_remove).value(item).send(); }
  /// The position of the first item equal to `item` in [start, stop) (Python's bounds); ValueError if none is.
  std::size_t index(const T& item, std::int64_t start = 0, std::int64_t stop = INT64_MAX) const {
    return call(op::list_index).value(item).i64(start).i64(stop).send().u64();
  }
  /// How many items equal `item`.
  std::size_t count(const T& item) const { return call(op::list_count).value(item).send().u64(); }
  /// Reverses the list in place.
  void reverse() const { call(op::list_reverse).send(); }
  /// Sorts the list in place, stably, by `comp` on T (run here: the server does not know T). Atomic: the order is
  /// applied only if nobody changed the list meanwhile, else it is read and sorted again.
  template <class Compare = std::ranges::less>
  void sort(Compare comp = {}) const;
  /// The items l[begin:end] (Python's slice bounds: negative from the end, clamped).
  std::vector<T> slice(std::int64_t begin, std::int64_t end = INT64_MAX) const {
    return reply_list<T>(call(op::list_slice).i64(begin).i64(end).send());
  }
  /// for (const T& x : l): over a snapshot taken in one round trip.
  detail::manager::snapshot_iterator<T> begin() const { return detail::manager::snapshot_iterator(copy()); }
  std::default_sentinel_t end() const { return {}; }
};

/// A fixed-length array in the manager server (Python's manager.Array); indexes as ListProxy.
template <class T>
class ArrayProxy : public detail::manager::proxy_base {
  using op = detail::manager::protocol::op;

 public:
  using proxy_base::proxy_base;
  T get(std::int64_t index) const { return reply_value<T>(call(op::list_get).i64(index).send()); }
  void set(std::int64_t index, const T& item) const { call(op::list_set).i64(index).value(item).send(); }
  ListItem<T, ArrayProxy> operator[](std::int64_t index) const { return ListItem<T, ArrayProxy>(*this, index); }
  std::size_t size() const { return call(op::list_size).send().u64(); }
  std::vector<T> copy() const { return reply_list<T>(call(op::list_copy).send()); }
  std::vector<T> slice(std::int64_t begin, std::int64_t end = INT64_MAX) const {
    return reply_list<T>(call(op::list_slice).i64(begin).i64(end).send());
  }
  detail::manager::snapshot_iterator<T> begin() const { return detail::manager::snapshot_iterator(copy()); }
  std::default_sentinel_t end() const { return {}; }
};

/// One value in the manager server (Python's manager.Value): get() and set() are its .value.
template <class T>
class ValueProxy : public detail::manager::proxy_base {
  using op = detail::manager::protocol::op;

 public:
  using proxy_base::proxy_base;
  T get() const { return reply_value<T>(call(op::value_get).send()); }
  void set(const T& v) const { call(op::value_set).value(v).send(); }
  /// Python's v.value, read.
  T value() const { return get(); }
  /// Python's v.value = x.
  void value(const T& v) const { set(v); }
};

/// A FIFO queue in the manager server (Python's manager.Queue): blocking calls wait in the server.
template <class T>
class QueueProxy : public detail::manager::proxy_base {
  using op = detail::manager::protocol::op;

 public:
  using proxy_base::proxy_base;
  /// Waits while the queue is full.
  void put(const T& item) const { call(op::queue_put).i64(-1).value(item).send(); }
  /// mp::Full if still full after `timeout`.
  template <class R, class P>
  void put(const T& item, std::chrono::duration<R, P> timeout) const {
    call(op::queue_put).i64(timeout_ns(timeout)).value(item).send();
  }
  /// mp::Full at once if the queue is full.
  void put_nowait(const T& item) const { call(op::queue_put).i64(0).value(item).send(); }
  /// false instead of mp::Full.
  bool try_put(const T& item) const;
  /// Waits for an item.
  T get() const { return take(-1); }
  /// mp::Empty if no item arrives within `timeout`.
  template <class R, class P>
  T get(std::chrono::duration<R, P> timeout) const { return take(timeout_ns(timeout)); }
  /// mp::Empty at once if the queue is empty.
  T get_nowait() const { return take(0); }
  /// nullopt instead of mp::Empty.
  std::optional<T> try_get() const;
  std::size_t qsize() const { return call(op::queue_state).send().u64(); }
  bool empty() const { return qsize() == 0; }
  bool full() const;

 private:
  T take(std::int64_t timeout) const { return reply_value<T>(call(op::queue_get).i64(timeout).send()); }
};

/// A manager queue with task_done() and join() (Python's manager.JoinableQueue()).
template <class T>
class JoinableQueueProxy : public QueueProxy<T> {
  using op = detail::manager::protocol::op;

 public:
  using QueueProxy<T>::QueueProxy;
  /// Marks one item got earlier as processed; ValueError if called more times than items were put.
  void task_done() const { this->call(op::queue_task_done).send(); }
  /// Waits until every item put has been marked task_done().
  void join() const { this->call(op::queue_join).send(); }
};

namespace detail::manager {
/// acquire/release and the std lock trio, shared by the lock-like proxies.
template <class Derived>
class lockable_proxy : public proxy_base {
 protected:
  using op = protocol::op;
  static constexpr op acquire_op = op::lock_acquire;

 public:
  using proxy_base::proxy_base;
  /// Waits until acquired.
  void acquire() const { acquire_for(-1); }
  /// true if acquired within `timeout`.
  template <class R, class P>
  bool acquire(std::chrono::duration<R, P> timeout) const { return acquire_for(timeout_ns(timeout)); }
  bool try_acquire() const { return acquire_for(0); }
  void lock() const { acquire(); }
  bool try_lock() const { return try_acquire(); }
  void unlock() const { static_cast<const Derived&>(*this).release(); }

 protected:
  bool acquire_for(std::int64_t timeout) const { return reply_flag(call(Derived::acquire_op).i64(timeout).send()); }
};
}  // namespace detail::manager

/// A lock in the manager server (Python's manager.Lock). Any holder may release it; a client whose connection
/// closes (its process died) releases the locks it holds.
class LockProxy : public detail::manager::lockable_proxy<LockProxy> {
 public:
  using lockable_proxy::lockable_proxy;
  /// mp::Error if the lock is not held.
  void release() const { call(op::lock_release).send(); }
};

/// A re-entrant lock in the manager server (Python's manager.RLock), owned by the acquiring process and thread.
class RLockProxy : public detail::manager::lockable_proxy<RLockProxy> {
 public:
  using lockable_proxy::lockable_proxy;
  /// mp::Error if this process and thread do not hold it.
  void release() const { call(op::lock_release).send(); }
};

/// A counting semaphore in the manager server (Python's manager.Semaphore).
class SemaphoreProxy : public detail::manager::lockable_proxy<SemaphoreProxy> {
  friend class detail::manager::lockable_proxy<SemaphoreProxy>;
  static constexpr op acquire_op = op::semaphore_acquire;

 public:
  using lockable_proxy::lockable_proxy;
  /// Adds n to the value, waking up to n waiters.
  void release(std::uint32_t n = 1) const { call(op::semaphore_release).u32(n).send(); }
  int get_value() const { return static_cast<int>(call(op::semaphore_value).send().i64()); }
};

/// A semaphore whose value may not exceed its initial value (Python's manager.BoundedSemaphore()).
class BoundedSemaphoreProxy : public SemaphoreProxy {
 public:
  using SemaphoreProxy::SemaphoreProxy;
  // release(n): ValueError if the value would exceed the initial value (nothing is released then).
};

/// An event in the manager server (Python's manager.Event).
class EventProxy : public detail::manager::proxy_base {
  using op = detail::manager::protocol::op;

 public:
  using proxy_base::proxy_base;
  void set() const { call(op::event_set).send(); }
  void clear() const { call(op::event_clear).send(); }
  bool is_set() const { return reply_flag(call(op::event_is_set).send()); }
  /// Waits until the flag is set.
  void wait() const { call(op::event_wait).i64(-1).send(); }
  /// true if the flag is set within `timeout`.
  template <class R, class P>
  bool wait(std::chrono::duration<R, P> timeout) const {
    return reply_flag(call(op::event_wait).i64(timeout_ns(timeout)).send());
  }
};

/// A condition variable with its own re-entrant lock in the manager server (Python's manager.Condition()).
class ConditionProxy : public detail::manager::lockable_proxy<ConditionProxy> {
 public:
  using lockable_proxy::lockable_proxy;
  void release() const { call(op::lock_release).send(); }
  /// Releases the lock, waits for a notify, re-acquires the lock. mp::Error if the lock is not held.
  void wait() const { call(op::condition_wait).i64(-1).send(); }
  /// false if `timeout` passed without a notify (the lock is re-acquired either way).
  template <class R, class P>
  bool wait(std::chrono::duration<R, P> timeout) const {
    return reply_flag(call(op::condition_wait).i64(timeout_ns(timeout)).send());
  }
  /// Waits until pred() is true (checked with the lock held, as Python's wait_for).
  template <class Pred>
  void wait_for(Pred pred) const { while (!pred()) wait(); }
  /// pred()'s last value: false if `timeout` passed first.
  template <class Pred, class R, class P>
  bool wait_for(Pred pred, std::chrono::duration<R, P> timeout) const;
  /// Wakes up to n waiters. mp::Error if the lock is not held.
  void notify(std::uint32_t n = 1) const { call(op::condition_notify).u32(n).send(); }
  void notify_all() const { notify(UINT32_MAX); }
};

/// A barrier in the manager server (Python's manager.Barrier).
class BarrierProxy : public detail::manager::proxy_base {
  using op = detail::manager::protocol::op;

 public:
  using proxy_base::proxy_base;
  /// Waits for all parties; returns this party's arrival index (0 .. parties-1). BrokenBarrierError if broken.
  int wait() const { return static_cast<int>(call(op::barrier_wait).i64(-1).send().u32()); }
  /// BrokenBarrierError (and the barrier breaks) if the parties do not all arrive within `timeout`.
  template <class R, class P>
  int wait(std::chrono::duration<R, P> timeout) const {
    return static_cast<int>(call(op::barrier_wait).i64(timeout_ns(timeout)).send().u32());
  }
  /// Back to the initial state; current waiters get BrokenBarrierError.
  void reset() const { call(op::barrier_reset).send(); }
  /// Breaks the barrier: current and future waits throw BrokenBarrierError until reset().
  void abort() const { call(op::barrier_abort).send(); }
  int parties() const { return static_cast<int>(call(op::barrier_state).send().u32()); }
  MP_DECL int n_waiting() const;
  MP_DECL bool broken() const;
};

/// A custom type's object in the manager server: call(&T::method, args...) runs the method there, one call at a
/// time per object, and returns its result; an exception it throws reaches the caller as mp::RemoteError.
template <class T>
class ObjectProxy : public detail::manager::proxy_base {
 public:
  using proxy_base::proxy_base;
  /// Runs `method` (registered for T) with `args` converted to its parameter types; mp::Error if not registered.
  template <class Method, class... A>
  auto call(Method method, A&&... args) const;
};

/// Named attributes of any serializable types (Python's manager.Namespace(): ns.x = 1 is ns.set("x", 1)).
class NamespaceProxy : public detail::manager::proxy_base {
  using op = detail::manager::protocol::op;

 public:
  using proxy_base::proxy_base;
  template <class T>
  void set(std::string_view name, const T& v) const {
    call(op::ns_set).text(name).text(detail::type_name<T>()).value(v).send();
  }
  /// The attribute as a T; mp::Error if it is missing (Python's AttributeError) or holds another type.
  template <class T>
  T get(std::string_view name) const;
  /// The attribute as a T, or nullopt if missing; mp::Error if it holds another type.
  template <class T>
  std::optional<T> try_get(std::string_view name) const {
    return reply_optional<T>(call(op::ns_get).text(name).text(detail::type_name<T>()).send());
  }
  bool contains(std::string_view name) const { return reply_flag(call(op::ns_contains).text(name).send()); }
  /// Removes the attribute; false if it was missing.
  bool erase(std::string_view name) const { return reply_flag(call(op::ns_erase).text(name).send()); }
  /// Every attribute name, sorted.
  MP_DECL std::vector<std::string> names() const;
};

}  // namespace mp

#include <mp/impl/manager_templates.ipp>

/// At namespace scope: registers T as a custom shared type under `name` with the given member functions, in every
/// process of the program (servers started by spawn and forkserver included). See mp::register_type.
#define MP_REGISTER_TYPE(T, name, ...) \
  [[maybe_unused]] static const bool MP_DETAIL_CONCAT(mp_type_registered_, __COUNTER__) = \
      ::mp::register_type<T>(name, __VA_ARGS__)

#if MP_INCLUDE_DEFINITIONS
#include <mp/impl/manager.ipp>
#endif
