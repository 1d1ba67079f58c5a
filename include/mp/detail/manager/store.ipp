// store: definitions (see store.hpp).
#pragma once

#include <algorithm>
#include <iterator>
#include <limits>
#include <type_traits>

#include <mp/detail/manager/store.hpp>

namespace mp::detail::manager {

MP_DECL bool store::handle(std::uint64_t client, std::string_view request, clock::time_point now, std::vector<reply>& out) {
  namespace p = protocol;
  p::reader in(request);
  if (parked_.contains(client)) return false;  // one request at a time: a parked client must wait for its reply
  try {
    auto code = static_cast<p::op>(in.u8());
    auto id = in.u64();
    if (code == p::op::create) return create(client, in, out), true;
    if (code == p::op::shutdown || code == p::op::ping) {
      in.expect_end();
      if (code == p::op::shutdown) shutdown_ = true;
      out.push_back({client, ok()});
      return true;
    }
    auto found = objects_.find(id);
    if (found == objects_.end()) {
      out.push_back({client, error("no manager object with id " + std::to_string(id) +
                                   ": it belongs to another manager server, or the request is corrupt")});
      return true;
    }
    dispatch(client, code, id, found->second, in, now, out);
    return true;
  } catch (const p::malformed&) {
    return false;
  }
}

MP_DECL void store::expire(clock::time_point now, std::vector<reply>& out) {
  std::vector<std::uint64_t> due;
  for (const auto& [client, parked] : parked_) {
    if (parked.deadline <= now) due.push_back(client);
  }
  // Skip a client an earlier time_out already answered: a barrier that breaks replies to (and unparks) every
  // party, so two parties due at once would otherwise be timed out twice (parked_.at threw out_of_range).
  for (auto client : due) {
    if (parked_.contains(client)) time_out(client, out);
  }
}

MP_DECL std::optional<store::clock::time_point> store::next_deadline() const {
  std::optional<clock::time_point> earliest;
  for (const auto& [client, parked] : parked_) {
    if (parked.deadline != never && (!earliest || parked.deadline < *earliest)) earliest = parked.deadline;
  }
  return earliest;
}

MP_DECL void store::disconnect(std::uint64_t client, std::vector<reply>& out) {
  if (auto parked = parked_.find(client); parked != parked_.end()) {
    auto id = parked->second.object;
    parked_.erase(parked);
    auto& object = objects_.at(id);
    auto drop = [&](std::deque<waiter>& waiters) {
      std::erase_if(waiters, [&](const waiter& w) { return w.client == client; });
    };
    std::visit(
               [&](auto& state) {
               using S = std::decay_t<decltype(state)>;
               if constexpr (std::is_same_v<S, queue_state>) {
               drop(state.getters), drop(state.putters);
               pump_queue(id, state, out);  // a dropped putter may have been ahead of others
               } else if constexpr (std::is_same_v<S, lock_state>) {
               drop(state.waiters), drop(state.cond_waiters);
               } else if constexpr (std::is_same_v<S, semaphore_state> || std::is_same_v<S, event_state>) {
               drop(state.waiters);
               } else if constexpr (std::is_same_v<S, barrier_state>) {
               // A party that vanished can never arrive: break the barrier rather than leave the others hanging.
               drop(state.waiters);
               break_barrier(id, state, out);
               }
               },
               object.state);
  }
  if (auto held = held_.find(client); held != held_.end()) {
    auto ids = std::move(held->second);
    held_.erase(held);
    for (auto id : ids) {
      auto& lock = std::get<lock_state>(objects_.at(id).state);
      if (lock.held && lock.owner == client) {
        lock.held = false, lock.owner = 0, lock.count = 0;
        pump_lock(id, lock, out);
      }
    }
  }
}

MP_DECL std::string store::error(const std::string& message,
                                 protocol::error_kind kind) {
  std::string bytes;
  protocol::writer w(bytes);
  w.u8(static_cast<std::uint8_t>(protocol::status::error));
  w.u8(static_cast<std::uint8_t>(kind));
  w.blob(message);
  return bytes;
}

MP_DECL store::clock::time_point store::deadline_of(std::int64_t timeout_ns, clock::time_point now) {
  if (timeout_ns < 0) return never;
  auto limit = std::chrono::duration_cast<std::chrono::nanoseconds>(never - now).count();
  return timeout_ns >= limit ? never : now + std::chrono::nanoseconds(timeout_ns);
}

MP_DECL void store::create(std::uint64_t client, protocol::reader& in, std::vector<reply>& out) {
  namespace p = protocol;
  auto k = in.u8();
  std::string type(in.blob());
  std::string name(in.blob());
  auto number = in.u64();
  std::string initial(in.blob());
  in.expect_end();
  if (k == 0 || k > p::last_kind) throw p::malformed{};
  auto requested = static_cast<p::kind>(k);
  if (!name.empty()) {
    if (auto found = names_.find(name); found != names_.end()) {
      const auto& existing = objects_.at(found->second);
      if (existing.kind != requested || existing.type != type) {
        out.push_back({client, error("the manager object named '" + name + "' is a " + existing.type +
                                     "; it cannot be attached as a " + type +
                                     ": use the same kind and element types, or another name")});
        return;
      }
      auto id = found->second;
      out.push_back({client, ok_with([&](auto& w) { w.u64(id); })});
      return;
    }
  }
  object made{requested, type, {}};
  switch (requested) {
    case p::kind::dict: made.state = dict_state{}; break;
    case p::kind::list: made.state = list_state{}; break;
    case p::kind::value: made.state = value_state{std::move(initial)}; break;
    case p::kind::queue: made.state = queue_state{{}, number, {}, {}}; break;
    case p::kind::lock: made.state = lock_state{}; break;
    case p::kind::rlock:
    case p::kind::condition: made.state = lock_state{true, 0, 0, {}, {}}; break;
    case p::kind::semaphore:
      if (number > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) throw p::malformed{};
      made.state = semaphore_state{static_cast<std::int64_t>(number), {}};
      break;
    case p::kind::event: made.state = event_state{}; break;
    case p::kind::barrier:
      if (number == 0 || number > std::numeric_limits<std::uint32_t>::max()) {
        out.push_back({client, error("a manager barrier needs at least one party, got " + std::to_string(number))});
        return;
      }
      made.state = barrier_state{static_cast<std::uint32_t>(number), false, {}};
      break;
    case p::kind::namespace_: made.state = namespace_state{}; break;
  }
  auto id = next_id_++;
  objects_.emplace(id, std::move(made));
  if (!name.empty()) names_.emplace(std::move(name), id);
  out.push_back({client, ok_with([&](auto& w) { w.u64(id); })});
}

MP_DECL void store::dispatch(std::uint64_t client, protocol::op code, std::uint64_t id, object& obj,
                             protocol::reader& in, clock::time_point now, std::vector<reply>& out) {
  namespace p = protocol;
  auto code_value = static_cast<int>(code);
  auto wrong_kind = [&] {
    out.push_back({client, error(std::string("manager object ") + std::to_string(id) + " is a " + obj.type +
                                 ", which has no operation " + std::to_string(code_value))});
  };
  switch (obj.kind) {
    case p::kind::dict: return code_value >= 10 && code_value < 30 ? dict_op(client, code, std::get<dict_state>(obj.state), in, out) : wrong_kind();
    case p::kind::list: return code_value >= 30 && code_value < 45 ? list_op(client, code, std::get<list_state>(obj.state), in, out) : wrong_kind();
    case p::kind::value: return code_value >= 45 && code_value < 50 ? value_op(client, code, std::get<value_state>(obj.state), in, out) : wrong_kind();
    case p::kind::queue: return code_value >= 50 && code_value < 60 ? queue_op(client, code, id, std::get<queue_state>(obj.state), in, now, out) : wrong_kind();
    case p::kind::lock:
    case p::kind::rlock: return code_value >= 60 && code_value < 65 ? lock_op(client, code, id, std::get<lock_state>(obj.state), in, now, out) : wrong_kind();
    case p::kind::condition: return (code_value >= 60 && code_value < 65) || (code_value >= 75 && code_value < 80) ? lock_op(client, code, id, std::get<lock_state>(obj.state), in, now, out) : wrong_kind();
    case p::kind::semaphore: return code_value >= 65 && code_value < 70 ? semaphore_op(client, code, id, std::get<semaphore_state>(obj.state), in, now, out) : wrong_kind();
    case p::kind::event: return code_value >= 70 && code_value < 75 ? event_op(client, code, id, std::get<event_state>(obj.state), in, now, out) : wrong_kind();
    case p::kind::barrier: return code_value >= 80 && code_value < 90 ? barrier_op(client, code, id, std::get<barrier_state>(obj.state), in, now, out) : wrong_kind();
    case p::kind::namespace_: return code_value >= 90 && code_value < 100 ? namespace_op(client, code, std::get<namespace_state>(obj.state), in, out) : wrong_kind();
  }
}

MP_DECL void store::dict_set(dict_state& d, std::string_view key, std::string_view value) {
  if (auto found = d.index.find(key); found != d.index.end()) {
    found->second->second.assign(value);
    return;
  }
  d.entries.emplace_back(std::string(key), std::string(value));
  auto last = std::prev(d.entries.end());
  d.index.emplace(last->first, last);
}

MP_DECL void store::dict_op(std::uint64_t client, protocol::op code, dict_state& d, protocol::reader& in,
                            std::vector<reply>& out) {
  using p = protocol::op;
  switch (code) {
    case p::dict_get: case p::dict_contains: case p::dict_erase: case p::dict_pop: {
      auto key = in.blob();
      in.expect_end();
      auto found = d.index.find(key);
      if (code == p::dict_contains) return out.push_back({client, ok_flag(found != d.index.end())});
      if (found == d.index.end()) return out.push_back({client, ok_flag(false)});
      if (code == p::dict_erase) {
        auto entry = found->second;
        d.index.erase(found);
        d.entries.erase(entry);
        return out.push_back({client, ok_flag(true)});
      }
      auto entry = found->second;
      out.push_back({client, ok_with([&](auto& w) { w.u8(1), w.blob(entry->second); })});
      if (code == p::dict_pop) d.index.erase(found), d.entries.erase(entry);
      return;
    }
    case p::dict_set: {
      auto key = in.blob();
      auto value = in.blob();
      in.expect_end();
      dict_set(d, key, value);
      return out.push_back({client, ok()});
    }
    case p::dict_setdefault: {
      auto key = in.blob();
      auto value = in.blob();
      in.expect_end();
      if (auto found = d.index.find(key); found != d.index.end()) {
        return out.push_back({client, ok_blob(found->second->second)});
      }
      dict_set(d, key, value);
      return out.push_back({client, ok_blob(value)});
    }
    case p::dict_update: {
      auto n = in.count(8);
      std::vector<std::pair<std::string_view, std::string_view>> pairs;
      pairs.reserve(n);
      for (std::uint32_t i = 0; i < n; ++i) {
        auto key = in.blob();
        pairs.emplace_back(key, in.blob());
      }
      in.expect_end();  // parsed in full before the first change: no half-applied update
      for (auto [key, value] : pairs) dict_set(d, key, value);
      return out.push_back({client, ok()});
    }
    case p::dict_size:
      in.expect_end();
      return out.push_back({client, ok_with([&](auto& w) { w.u64(d.entries.size()); })});
    case p::dict_clear:
      in.expect_end();
      d.index.clear(), d.entries.clear();
      return out.push_back({client, ok()});
    case p::dict_keys: case p::dict_values: case p::dict_items:
      in.expect_end();
      return out.push_back({client, list_reply(d.entries.size(), [&](auto& w) {
                              for (const auto& [key, value] : d.entries) {
                                if (code != p::dict_values) w.blob(key);
                                if (code != p::dict_keys) w.blob(value);
                              }
                            })});
    default: throw protocol::malformed{};
  }
}

// Python's index rules: negative counts from the end; out of range is an IndexError.
MP_DECL std::optional<std::size_t> store::resolve(std::int64_t index, std::size_t size) {
  auto n = static_cast<std::int64_t>(size);
  if (index < 0) index += n;
  if (index < 0 || index >= n) return std::nullopt;
  return static_cast<std::size_t>(index);
}

MP_DECL std::string store::index_error(const char* what, std::int64_t index, std::size_t size) {
  return error(std::string(what) + ": index " + std::to_string(index) + " is out of range for a list of " +
               std::to_string(size) + " items");
}

MP_DECL void store::list_op(std::uint64_t client, protocol::op code, list_state& l, protocol::reader& in,
                            std::vector<reply>& out) {
  using p = protocol::op;
  switch (code) {
    case p::list_append: {
      auto item = in.blob();
      in.expect_end();
      l.items.emplace_back(item);
      return out.push_back({client, ok()});
    }
    case p::list_extend: {
      auto n = in.count(4);
      std::vector<std::string_view> items;
      items.reserve(n);
      for (std::uint32_t i = 0; i < n; ++i) items.push_back(in.blob());
      in.expect_end();
      l.items.insert(l.items.end(), items.begin(), items.end());
      return out.push_back({client, ok()});
    }
    case p::list_get: case p::list_pop: {
      auto index = in.i64();
      in.expect_end();
      if (l.items.empty() && code == p::list_pop) return out.push_back({client, error("pop from an empty list")});
      auto at = resolve(index, l.items.size());
      if (!at) return out.push_back({client, index_error(code == p::list_get ? "list get" : "list pop", index, l.items.size())});
      out.push_back({client, ok_blob(l.items[*at])});
      if (code == p::list_pop) l.items.erase(l.items.begin() + static_cast<std::ptrdiff_t>(*at));
      return;
    }
    case p::list_set: {
      auto index = in.i64();
      auto item = in.blob();
      in.expect_end();
      auto at = resolve(index, l.items.size());
      if (!at) return out.push_back({client, index_error("list assignment", index, l.items.size())});
      l.items[*at].assign(item);
      return out.push_back({client, ok()});
    }
    case p::list_insert: {
      auto index = in.i64();
      auto item = in.blob();
      in.expect_end();
      // Python's insert clamps: before 0 inserts at the front, past the end appends.
      auto n = static_cast<std::int64_t>(l.items.size());
      if (index < 0) index = std::max<std::int64_t>(0, index + n);
      index = std::min(index, n);
      l.items.insert(l.items.begin() + index, std::string(item));
      return out.push_back({client, ok()});
    }
    case p::list_size:
      in.expect_end();
      return out.push_back({client, ok_with([&](auto& w) { w.u64(l.items.size()); })});
    case p::list_clear:
      in.expect_end();
      l.items.clear();
      return out.push_back({client, ok()});
    case p::list_copy:
      in.expect_end();
      return out.push_back({client, list_reply(l.items.size(), [&](auto& w) {
                              for (const auto& item : l.items) w.blob(item);
                            })});
    default: throw protocol::malformed{};
  }
}

MP_DECL void store::value_op(std::uint64_t client, protocol::op code, value_state& v, protocol::reader& in,
                             std::vector<reply>& out) {
  using p = protocol::op;
  if (code == p::value_get) {
    in.expect_end();
    return out.push_back({client, ok_blob(v.bytes)});
  }
  if (code != p::value_set) throw protocol::malformed{};
  auto bytes = in.blob();
  in.expect_end();
  v.bytes.assign(bytes);
  out.push_back({client, ok()});
}

MP_DECL void store::pump_queue(std::uint64_t /*id*/, queue_state& q, std::vector<reply>& out) {
  for (bool progress = true; progress;) {
    progress = false;
    while (!q.items.empty() && !q.getters.empty()) {
      auto w = std::move(q.getters.front());
      q.getters.pop_front();
      unpark(w.client);
      out.push_back({w.client, ok_blob(q.items.front())});
      q.items.pop_front();
      progress = true;
    }
    while (!q.putters.empty() && (q.maxsize == 0 || q.items.size() < q.maxsize)) {
      auto w = std::move(q.putters.front());
      q.putters.pop_front();
      unpark(w.client);
      q.items.push_back(std::move(w.item));
      out.push_back({w.client, ok()});
      progress = true;
    }
  }
}

MP_DECL void store::queue_op(std::uint64_t client, protocol::op code, std::uint64_t id, queue_state& q,
                             protocol::reader& in, clock::time_point now, std::vector<reply>& out) {
  using p = protocol::op;
  namespace mpp = protocol;
  if (code == p::queue_state) {
    in.expect_end();
    return out.push_back({client, ok_with([&](auto& w) { w.u64(q.items.size()), w.u64(q.maxsize); })});
  }
  auto timeout = in.i64();
  if (code == p::queue_put) {
    auto item = in.blob();
    in.expect_end();
    if (q.putters.empty() && (q.maxsize == 0 || q.items.size() < q.maxsize)) {
      q.items.emplace_back(item);
      out.push_back({client, ok()});
      return pump_queue(id, q, out);
    }
    if (timeout == 0) return out.push_back({client, error("the manager queue is full", mpp::error_kind::full)});
    auto deadline = deadline_of(timeout, now);
    q.putters.push_back(entry(client, deadline, std::string(item)));
    return park(client, id, deadline);
  }
  if (code != p::queue_get) throw mpp::malformed{};
  in.expect_end();
  if (!q.items.empty() && q.getters.empty()) {
    out.push_back({client, ok_blob(q.items.front())});
    q.items.pop_front();
    return pump_queue(id, q, out);
  }
  if (timeout == 0) return out.push_back({client, error("the manager queue is empty", mpp::error_kind::empty)});
  auto deadline = deadline_of(timeout, now);
  q.getters.push_back(entry(client, deadline));
  park(client, id, deadline);
}

MP_DECL void store::take(std::uint64_t client, std::uint64_t id, lock_state& l, std::uint32_t count) {
  l.held = true, l.owner = client, l.count = count;
  held_[client].insert(id);
}

MP_DECL void store::drop_hold(std::uint64_t client, std::uint64_t id) {
  if (auto held = held_.find(client); held != held_.end()) {
    held->second.erase(id);
    if (held->second.empty()) held_.erase(held);
  }
}

MP_DECL void store::pump_lock(std::uint64_t id, lock_state& l, std::vector<reply>& out) {
  if (l.held || l.waiters.empty()) return;
  auto w = std::move(l.waiters.front());
  l.waiters.pop_front();
  unpark(w.client);
  take(w.client, id, l, w.count);
  out.push_back({w.client, ok_flag(w.condition ? w.notified : true)});
}

MP_DECL void store::lock_op(std::uint64_t client, protocol::op code, std::uint64_t id, lock_state& l,
                            protocol::reader& in, clock::time_point now, std::vector<reply>& out) {
  using p = protocol::op;
  switch (code) {
    case p::lock_acquire: {
      auto timeout = in.i64();
      in.expect_end();
      if (!l.held && l.waiters.empty()) {
        take(client, id, l, 1);
        return out.push_back({client, ok_flag(true)});
      }
      if (l.reentrant && l.held && l.owner == client) {
        ++l.count;
        return out.push_back({client, ok_flag(true)});
      }
      if (timeout == 0) return out.push_back({client, ok_flag(false)});
      auto deadline = deadline_of(timeout, now);
      l.waiters.push_back(entry(client, deadline));
      return park(client, id, deadline);
    }
    case p::lock_release: {
      in.expect_end();
      if (!l.held) return out.push_back({client, error("release of an unlocked manager lock")});
      if (l.reentrant && l.owner != client) {
        return out.push_back({client, error("cannot release a manager RLock or Condition held by another process or thread")});
      }
      if (l.reentrant && --l.count > 0) return out.push_back({client, ok()});
      drop_hold(l.owner, id);
      l.held = false, l.owner = 0, l.count = 0;
      out.push_back({client, ok()});
      return pump_lock(id, l, out);
    }
    case p::condition_wait: {
      auto timeout = in.i64();
      in.expect_end();
      if (!l.held || l.owner != client) return out.push_back({client, error("cannot wait on a manager Condition without holding its lock")});
      auto deadline = deadline_of(timeout, now);
      auto w = entry(client, deadline);
      w.count = l.count, w.condition = true;
      l.cond_waiters.push_back(std::move(w));
      drop_hold(client, id);
      l.held = false, l.owner = 0, l.count = 0;
      park(client, id, deadline);
      return pump_lock(id, l, out);
    }
    case p::condition_notify: {
      auto n = in.u32();
      in.expect_end();
      if (!l.held || l.owner != client) return out.push_back({client, error("cannot notify a manager Condition without holding its lock")});
      for (std::uint32_t i = 0; i < n && !l.cond_waiters.empty(); ++i) {
        auto w = std::move(l.cond_waiters.front());
        l.cond_waiters.pop_front();
        w.notified = true, w.deadline = never;
        parked_[w.client].deadline = never;  // re-acquiring the lock has no deadline, as in Python
        l.waiters.push_back(std::move(w));
      }
      return out.push_back({client, ok()});
    }
    default: throw protocol::malformed{};
  }
}

MP_DECL void store::pump_semaphore(semaphore_state& s, std::vector<reply>& out) {
  while (s.value > 0 && !s.waiters.empty()) {
    auto w = std::move(s.waiters.front());
    s.waiters.pop_front();
    unpark(w.client);
    --s.value;
    out.push_back({w.client, ok_flag(true)});
  }
}

MP_DECL void store::semaphore_op(std::uint64_t client, protocol::op code, std::uint64_t id, semaphore_state& s,
                                 protocol::reader& in, clock::time_point now, std::vector<reply>& out) {
  using p = protocol::op;
  switch (code) {
    case p::semaphore_acquire: {
      auto timeout = in.i64();
      in.expect_end();
      if (s.value > 0 && s.waiters.empty()) {
        --s.value;
        return out.push_back({client, ok_flag(true)});
      }
      if (timeout == 0) return out.push_back({client, ok_flag(false)});
      auto deadline = deadline_of(timeout, now);
      s.waiters.push_back(entry(client, deadline));
      return park(client, id, deadline);
    }
    case p::semaphore_release: {
      auto n = in.u32();
      in.expect_end();
      if (s.value > std::numeric_limits<std::int64_t>::max() - n) {
        return out.push_back({client, error("manager semaphore value would overflow")});
      }
      s.value += n;
      out.push_back({client, ok()});
      return pump_semaphore(s, out);
    }
    case p::semaphore_value:
      in.expect_end();
      return out.push_back({client, ok_with([&](auto& w) { w.i64(s.value); })});
    default: throw protocol::malformed{};
  }
}

MP_DECL void store::event_op(std::uint64_t client, protocol::op code, std::uint64_t id, event_state& e,
                             protocol::reader& in, clock::time_point now, std::vector<reply>& out) {
  using p = protocol::op;
  switch (code) {
    case p::event_set:
      in.expect_end();
      e.flag = true;
      out.push_back({client, ok()});
      for (auto& w : e.waiters) unpark(w.client), out.push_back({w.client, ok_flag(true)});
      e.waiters.clear();
      return;
    case p::event_clear:
      in.expect_end();
      e.flag = false;
      return out.push_back({client, ok()});
    case p::event_is_set:
      in.expect_end();
      return out.push_back({client, ok_flag(e.flag)});
    case p::event_wait: {
      auto timeout = in.i64();
      in.expect_end();
      if (e.flag || timeout == 0) return out.push_back({client, ok_flag(e.flag)});
      auto deadline = deadline_of(timeout, now);
      e.waiters.push_back(entry(client, deadline));
      return park(client, id, deadline);
    }
    default: throw protocol::malformed{};
  }
}

MP_DECL void store::break_barrier(std::uint64_t /*id*/, barrier_state& b, std::vector<reply>& out, bool stay_broken) {
  b.broken = stay_broken;
  for (auto& w : b.waiters) {
    unpark(w.client);
    out.push_back({w.client, error("the manager barrier is broken: a party timed out, left, or it was reset or aborted",
                                   protocol::error_kind::broken_barrier)});
  }
  b.waiters.clear();
}

MP_DECL void store::barrier_op(std::uint64_t client, protocol::op code, std::uint64_t id, barrier_state& b,
                               protocol::reader& in, clock::time_point now, std::vector<reply>& out) {
  using p = protocol::op;
  namespace mpp = protocol;
  switch (code) {
    case p::barrier_wait: {
      auto timeout = in.i64();
      in.expect_end();
      if (b.broken) return out.push_back({client, error("the manager barrier is broken", mpp::error_kind::broken_barrier)});
      auto deadline = deadline_of(timeout, now);
      b.waiters.push_back(entry(client, deadline));
      if (b.waiters.size() < b.parties) {
        if (timeout == 0) {
          b.waiters.pop_back();
          out.push_back({client, error("the manager barrier wait timed out", mpp::error_kind::broken_barrier)});
          return break_barrier(id, b, out);
        }
        return park(client, id, deadline);
      }
      // The last party arrived: everyone leaves, each with its arrival index (0 for the first, as Python).
      std::uint32_t index = 0;
      for (auto& w : b.waiters) {
        unpark(w.client);
        out.push_back({w.client, ok_with([&](auto& wr) { wr.u32(index); })});
        ++index;
      }
      b.waiters.clear();
      return;
    }
    case p::barrier_reset:
      in.expect_end();
      out.push_back({client, ok()});
      return break_barrier(id, b, out, false);
    case p::barrier_abort:
      in.expect_end();
      out.push_back({client, ok()});
      return break_barrier(id, b, out);
    case p::barrier_state:
      in.expect_end();
      return out.push_back({client, ok_with([&](auto& w) {
                              w.u32(b.parties), w.u32(static_cast<std::uint32_t>(b.waiters.size())),
                                  w.u8(b.broken ? 1 : 0);
                            })});
    default: throw mpp::malformed{};
  }
}

MP_DECL void store::namespace_op(std::uint64_t client, protocol::op code, namespace_state& ns,
                                 protocol::reader& in, std::vector<reply>& out) {
  using p = protocol::op;
  switch (code) {
    case p::ns_get: {
      auto name = in.blob();
      auto type = in.blob();
      in.expect_end();
      auto found = ns.attributes.find(name);
      if (found == ns.attributes.end()) return out.push_back({client, ok_flag(false)});
      if (found->second.first != type) {
        return out.push_back({client, error("namespace attribute '" + std::string(name) + "' holds a " +
                                            found->second.first + ", not a " + std::string(type))});
      }
      return out.push_back({client, ok_with([&](auto& w) { w.u8(1), w.blob(found->second.second); })});
    }
    case p::ns_set: {
      auto name = in.blob();
      auto type = in.blob();
      auto bytes = in.blob();
      in.expect_end();
      ns.attributes.insert_or_assign(std::string(name), std::pair{std::string(type), std::string(bytes)});
      return out.push_back({client, ok()});
    }
    case p::ns_contains: case p::ns_erase: {
      auto name = in.blob();
      in.expect_end();
      auto found = ns.attributes.find(name);
      bool present = found != ns.attributes.end();
      if (present && code == p::ns_erase) ns.attributes.erase(found);
      return out.push_back({client, ok_flag(present)});
    }
    case p::ns_names:
      in.expect_end();
      return out.push_back({client, list_reply(ns.attributes.size(), [&](auto& w) {
                              for (const auto& attribute : ns.attributes) w.blob(attribute.first);
                            })});
    default: throw protocol::malformed{};
  }
}

MP_DECL void store::time_out(std::uint64_t client, std::vector<reply>& out) {
  namespace mpp = protocol;
  auto id = parked_.at(client).object;
  auto& obj = objects_.at(id);
  auto take_out = [&](std::deque<waiter>& waiters) -> std::optional<waiter> {
    auto found = std::find_if(waiters.begin(), waiters.end(), [&](const waiter& w) { return w.client == client; });
    if (found == waiters.end()) return std::nullopt;
    auto w = std::move(*found);
    waiters.erase(found);
    return w;
  };
  std::visit(
             [&](auto& state) {
             using S = std::decay_t<decltype(state)>;
             if constexpr (std::is_same_v<S, queue_state>) {
             unpark(client);
             if (take_out(state.getters)) {
             out.push_back({client, error("the manager queue stayed empty until the timeout", mpp::error_kind::empty)});
             } else if (take_out(state.putters)) {
             out.push_back({client, error("the manager queue stayed full until the timeout", mpp::error_kind::full)});
             }
             } else if constexpr (std::is_same_v<S, lock_state>) {
             if (take_out(state.waiters)) {
             unpark(client);
             out.push_back({client, ok_flag(false)});
             } else if (auto w = take_out(state.cond_waiters)) {
             // A condition wait that timed out still re-acquires its lock before returning false.
             w->deadline = never;
             parked_[client].deadline = never;
             state.waiters.push_back(std::move(*w));
             pump_lock(id, state, out);
             }
             } else if constexpr (std::is_same_v<S, semaphore_state> || std::is_same_v<S, event_state>) {
             unpark(client);
             if (take_out(state.waiters)) out.push_back({client, ok_flag(false)});
             } else if constexpr (std::is_same_v<S, barrier_state>) {
             break_barrier(id, state, out);  // replies to every waiter, the one timing out included
             } else {
             unpark(client);
             }
             },
             obj.state);
}

}  // namespace mp::detail::manager
