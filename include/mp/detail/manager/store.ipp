// store: definitions (see store.hpp).
#pragma once

#include <algorithm>
#include <iterator>
#include <limits>
#include <type_traits>

#include <mp/detail/manager/store.hpp>
#include <mp/detail/code_address.hpp>
#include <mp/detail/manager/refs.hpp>
#include <mp/detail/type_name.hpp>
#include <mp/errors.hpp>

namespace mp::detail::manager {

MP_DECL bool store::handle(std::uint64_t client, std::string_view request, clock::time_point now, std::vector<reply>& out) {
  namespace p = protocol;
  p::reader in(request);
  if (parked_.contains(client)) return false;  // one request at a time: a parked client must wait for its reply
  // The tails of the last request's replies were copied out (server::take_tail): their memory goes now.
  released_.clear();
  if (call_result_.capacity() > (1u << 20)) call_result_ = {};
  handling_ = true;
  struct end_of_handle {
    bool& handling;
    ~end_of_handle() { handling = false; }
  } ending{handling_};
  try {
    auto code = static_cast<p::op>(in.u8());
    auto id = in.u64();
    if (code == p::op::create) return create(client, in, out), destroy_doomed(out), true;
    if (code == p::op::type_info) {
      auto* registered = find_registered(in.blob());
      in.expect_end();
      out.push_back({client, ok_with([&](auto& w) { w.u8(registered ? 1 : 0), w.u64(registered ? registered->signature : 0); })});
      return true;
    }
    if (code == p::op::hello || code == p::op::decref || code == p::op::lend || code == p::op::erase_name) {
      return refs_op(client, code, id, in, now, out), destroy_doomed(out), true;
    }
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
    destroy_doomed(out);
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
  for (auto it = lent_.begin(); it != lent_.end();) {
    if (it->second.expiry > now) {
      ++it;
      continue;
    }
    for (auto id : it->second.ids) release(id);  // no child adopted it
    it = lent_.erase(it);
  }
  destroy_doomed(out);
}

MP_DECL std::optional<store::clock::time_point> store::next_deadline() const {
  std::optional<clock::time_point> earliest;
  for (const auto& [client, parked] : parked_) {
    if (parked.deadline != never && (!earliest || parked.deadline < *earliest)) earliest = parked.deadline;
  }
  for (const auto& [token, hold] : lent_) {
    if (!earliest || hold.expiry < *earliest) earliest = hold.expiry;
  }
  return earliest;
}

MP_DECL void store::disconnect(std::uint64_t client, std::vector<reply>& out) {
  if (auto parked = parked_.find(client); parked != parked_.end()) {
    auto id = parked->second.object;
    parked_.erase(parked);
    auto& object = objects_.at(id);  // a doomed object answers its parked clients when destroyed: still here
    auto drop = [&](std::deque<waiter>& waiters) {
      std::erase_if(waiters, [&](const waiter& w) { return w.client == client; });
    };
    std::visit(
               [&](auto& state) {
               using S = std::decay_t<decltype(state)>;
               if constexpr (std::is_same_v<S, queue_state>) {
               for (const auto& w : state.putters) {
                 if (w.client == client) drop_refs(w.item);
               }
               drop(state.getters), drop(state.putters), drop(state.joiners);
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
      auto object = objects_.find(id);
      if (object == objects_.end()) continue;
      auto& lock = std::get<lock_state>(object->second.state);
      if (lock.held && lock.owner == client) {
        lock.held = false, lock.owner = 0, lock.count = 0;
        pump_lock(id, lock, out);
      }
    }
  }
  // The process's last connection closed: everything its session referred to is released.
  if (auto bound = bound_.find(client); bound != bound_.end()) {
    auto token = bound->second;
    bound_.erase(bound);
    auto found = sessions_.find(token);
    if (found != sessions_.end() && --found->second.connections == 0) {
      auto refs = std::move(found->second.refs);
      sessions_.erase(found);
      for (auto [id, count] : refs) release(id, count);
    }
  }
  destroy_doomed(out);
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
  std::string initial = stored(in.blob());
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
      if (auto* s = session_of(client)) ++s->refs[id], add_ref(id);
      out.push_back({client, ok_with([&](auto& w) { w.u64(id); })});
      return;
    }
  }
  object made{requested, type, 0, {}};
  switch (requested) {
    case p::kind::dict: made.state = dict_state{}; break;
    case p::kind::list: made.state = list_state{}; break;
    case p::kind::value:
      hold_refs(initial);
      made.state = value_state{std::move(initial)};
      break;
    case p::kind::queue:
    case p::kind::joinable_queue: made.state = queue_state{{}, number, {}, {}, 0, {}}; break;
    case p::kind::array: {
      // n copies of the initial item; bounded so that a hostile count cannot exhaust the server's memory.
      if (number > (std::uint64_t{1} << 30) / std::max<std::size_t>(1, initial.size() + sizeof(std::string))) {
        out.push_back({client, error("a manager array of " + std::to_string(number) + " items is too large")});
        return;
      }
      list_state l;
      l.items.assign(static_cast<std::size_t>(number), initial);
      for (const auto& item : l.items) hold_refs(item);
      l.fixed = true;
      made.state = std::move(l);
      break;
    }
    case p::kind::lock: made.state = lock_state{}; break;
    case p::kind::rlock:
    case p::kind::condition: made.state = lock_state{true, 0, 0, {}, {}}; break;
    case p::kind::semaphore:
    case p::kind::bounded_semaphore:
      if (number > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) throw p::malformed{};
      made.state = semaphore_state{static_cast<std::int64_t>(number), {},
                                   requested == p::kind::bounded_semaphore ? static_cast<std::int64_t>(number) : -1};
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
    case p::kind::object: {
      object_state o;
      if (!construct(client, type, initial, o, out)) return;
      made.state = std::move(o);
      break;
    }
  }
  auto id = next_id_++;
  made.refs = name.empty() ? 0 : 1;  // a name is a reference of its own
  objects_.emplace(id, std::move(made));
  if (!name.empty()) names_.emplace(std::move(name), id);
  if (auto* s = session_of(client)) ++s->refs[id], add_ref(id);
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
  auto in_range = [&](int begin, int end) { return code_value >= begin && code_value < end; };
  const bool list_code = in_range(30, 45) || in_range(100, 110);
  // An array's length is fixed: it has a list's reads and item assignment only.
  const bool array_code = code == p::op::list_get || code == p::op::list_set || code == p::op::list_size ||
                          code == p::op::list_copy || code == p::op::list_slice || code == p::op::list_index ||
                          code == p::op::list_count || code == p::op::list_snapshot;
  switch (obj.kind) {
    case p::kind::dict: return in_range(10, 30) || in_range(110, 120) ? dict_op(client, code, std::get<dict_state>(obj.state), in, out) : wrong_kind();
    case p::kind::list: return list_code ? list_op(client, code, std::get<list_state>(obj.state), in, out) : wrong_kind();
    case p::kind::array: return array_code ? list_op(client, code, std::get<list_state>(obj.state), in, out) : wrong_kind();
    case p::kind::value: return in_range(45, 50) ? value_op(client, code, std::get<value_state>(obj.state), in, out) : wrong_kind();
    case p::kind::queue: return in_range(50, 53) ? queue_op(client, code, id, std::get<queue_state>(obj.state), in, now, out) : wrong_kind();
    case p::kind::joinable_queue: return in_range(50, 60) ? queue_op(client, code, id, std::get<queue_state>(obj.state), in, now, out) : wrong_kind();
    case p::kind::lock:
    case p::kind::rlock: return in_range(60, 65) ? lock_op(client, code, id, std::get<lock_state>(obj.state), in, now, out) : wrong_kind();
    case p::kind::condition: return in_range(60, 65) || in_range(75, 80) ? lock_op(client, code, id, std::get<lock_state>(obj.state), in, now, out) : wrong_kind();
    case p::kind::semaphore:
    case p::kind::bounded_semaphore: return in_range(65, 70) ? semaphore_op(client, code, id, std::get<semaphore_state>(obj.state), in, now, out) : wrong_kind();
    case p::kind::event: return in_range(70, 75) ? event_op(client, code, id, std::get<event_state>(obj.state), in, now, out) : wrong_kind();
    case p::kind::barrier: return in_range(80, 90) ? barrier_op(client, code, id, std::get<barrier_state>(obj.state), in, now, out) : wrong_kind();
    case p::kind::namespace_: return in_range(90, 100) ? namespace_op(client, code, std::get<namespace_state>(obj.state), in, out) : wrong_kind();
    case p::kind::object: return code == p::op::object_call ? object_op(client, std::get<object_state>(obj.state), in, out) : wrong_kind();
  }
}

MP_DECL void store::dict_set(dict_state& d, std::string_view key, std::string_view value) {
  hold_refs(value);
  if (auto found = d.index.find(key); found != d.index.end()) {
    drop_refs(found->second->second);
    store_into(found->second->second, value);
    return;
  }
  d.entries.emplace_back(std::string(key), stored(value));
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
        drop_refs(entry->second);
        d.index.erase(found);
        d.entries.erase(entry);
        return out.push_back({client, ok_flag(true)});
      }
      auto entry = found->second;
      handoff(client, entry->second);
      if (code == p::dict_get) return push_held(client, entry->second, true, out);
      drop_refs(entry->second);
      push_released(client, std::move(entry->second), out, [](auto& w) { w.u8(1); });
      d.index.erase(found), d.entries.erase(entry);
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
      if (auto found = d.index.find(key); found == d.index.end()) dict_set(d, key, value);
      const std::string& held = d.index.find(key)->second->second;
      handoff(client, held);
      return push_held(client, held, false, out);
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
      for (const auto& entry : d.entries) drop_refs(entry.second);
      d.index.clear(), d.entries.clear();
      return out.push_back({client, ok()});
    case p::dict_popitem: {
      in.expect_end();
      if (d.entries.empty()) return out.push_back({client, ok_flag(false)});
      auto last = std::prev(d.entries.end());  // LIFO, as Python's dict.popitem()
      handoff(client, last->second);
      drop_refs(last->second);
      push_released(client, std::move(last->second), out, [&](auto& w) { w.u8(1), w.blob(last->first); });
      d.index.erase(last->first);
      d.entries.erase(last);
      return;
    }
    case p::dict_keys: case p::dict_values: case p::dict_items:
      in.expect_end();
      if (code != p::dict_keys) {
        for (const auto& entry : d.entries) handoff(client, entry.second);
      }
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
                   std::to_string(size) + " items (IndexError)",
               protocol::error_kind::index);
}

MP_DECL void store::list_op(std::uint64_t client, protocol::op code, list_state& l, protocol::reader& in,
                            std::vector<reply>& out) {
  using p = protocol::op;
  // Any change of the items (or an attempt: the count only has to move when they may have changed).
  if (code != p::list_get && code != p::list_size && code != p::list_copy && code != p::list_index &&
      code != p::list_count && code != p::list_slice && code != p::list_snapshot) {
    ++l.version;
  }
  if (static_cast<int>(code) >= 100) return list_more_op(client, code, l, in, out);
  switch (code) {
    case p::list_append: {
      auto item = in.blob();
      in.expect_end();
      hold_refs(item);
      l.items.push_back(stored(item));
      return out.push_back({client, ok()});
    }
    case p::list_extend: {
      auto n = in.count(4);
      std::vector<std::string_view> items;
      items.reserve(n);
      for (std::uint32_t i = 0; i < n; ++i) items.push_back(in.blob());
      in.expect_end();
      std::vector<std::string> copies;  // made before the list changes: out of memory leaves it as it was
      copies.reserve(items.size());
      for (auto item : items) copies.push_back(stored(item));
      l.items.reserve(l.items.size() + copies.size());
      for (auto item : items) hold_refs(item);
      std::move(copies.begin(), copies.end(), std::back_inserter(l.items));
      return out.push_back({client, ok()});
    }
    case p::list_get: case p::list_pop: {
      auto index = in.i64();
      in.expect_end();
      if (l.items.empty() && code == p::list_pop) return out.push_back({client, error("pop from empty list (IndexError): the manager list is empty", protocol::error_kind::index)});
      auto at = resolve(index, l.items.size());
      if (!at) return out.push_back({client, index_error(code == p::list_get ? "list get" : "list pop", index, l.items.size())});
      handoff(client, l.items[*at]);
      if (code == p::list_get) return push_held(client, l.items[*at], false, out);
      drop_refs(l.items[*at]);
      push_released(client, std::move(l.items[*at]), out, [](auto&) {});
      l.items.erase(l.items.begin() + static_cast<std::ptrdiff_t>(*at));
      return;
    }
    case p::list_set: {
      auto index = in.i64();
      auto item = in.blob();
      in.expect_end();
      auto at = resolve(index, l.items.size());
      if (!at) return out.push_back({client, index_error("list assignment", index, l.items.size())});
      hold_refs(item);
      drop_refs(l.items[*at]);
      store_into(l.items[*at], item);
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
      hold_refs(item);
      l.items.insert(l.items.begin() + index, stored(item));
      return out.push_back({client, ok()});
    }
    case p::list_size:
      in.expect_end();
      return out.push_back({client, ok_with([&](auto& w) { w.u64(l.items.size()); })});
    case p::list_clear:
      in.expect_end();
      for (const auto& item : l.items) drop_refs(item);
      l.items.clear();
      return out.push_back({client, ok()});
    case p::list_copy:
      in.expect_end();
      for (const auto& item : l.items) handoff(client, item);
      return out.push_back({client, list_reply(l.items.size(), [&](auto& w) {
                              for (const auto& item : l.items) w.blob(item);
                            })});
    default: throw protocol::malformed{};
  }
}

// Python's slice bounds: negative counts from the end, then clamped to [0, size].
MP_DECL std::size_t slice_bound(std::int64_t index, std::size_t size) {
  auto n = static_cast<std::int64_t>(size);
  if (index < 0) index = std::max<std::int64_t>(0, index + n);
  return static_cast<std::size_t>(std::min(index, n));
}

MP_DECL void store::list_more_op(std::uint64_t client, protocol::op code, list_state& l, protocol::reader& in,
                                 std::vector<reply>& out) {
  using p = protocol::op;
  namespace mpp = protocol;
  auto items_reply = [&](std::size_t begin, std::size_t end, auto&& before) {
    for (auto i = begin; i < end; ++i) handoff(client, l.items[i]);
    return ok_with([&](auto& w) {
      before(w);
      w.u32(static_cast<std::uint32_t>(end - begin));
      for (auto i = begin; i < end; ++i) w.blob(l.items[i]);
    });
  };
  switch (code) {
    case p::list_remove: {
      auto item = in.blob();
      in.expect_end();
      auto found = std::find(l.items.begin(), l.items.end(), item);
      if (found == l.items.end()) {
        return out.push_back({client, error("list.remove(x): x not in the manager list (ValueError)", mpp::error_kind::value)});
      }
      drop_refs(*found);
      l.items.erase(found);
      return out.push_back({client, ok()});
    }
    case p::list_index: {
      auto item = in.blob();
      auto begin = slice_bound(in.i64(), l.items.size());
      auto end = slice_bound(in.i64(), l.items.size());
      in.expect_end();
      for (auto i = begin; i < end; ++i) {
        if (l.items[i] == item) return out.push_back({client, ok_with([&](auto& w) { w.u64(i); })});
      }
      return out.push_back({client, error("list.index(x): x is not in the manager list (ValueError)", mpp::error_kind::value)});
    }
    case p::list_count: {
      auto item = in.blob();
      in.expect_end();
      auto n = static_cast<std::uint64_t>(std::count(l.items.begin(), l.items.end(), item));
      return out.push_back({client, ok_with([&](auto& w) { w.u64(n); })});
    }
    case p::list_reverse:
      in.expect_end();
      std::reverse(l.items.begin(), l.items.end());
      return out.push_back({client, ok()});
    case p::list_slice: {
      auto begin = slice_bound(in.i64(), l.items.size());
      auto end = slice_bound(in.i64(), l.items.size());
      in.expect_end();
      end = std::max(begin, end);
      return out.push_back({client, items_reply(begin, end, [](auto&) {})});
    }
    case p::list_snapshot:
      in.expect_end();
      return out.push_back({client, items_reply(0, l.items.size(), [&](auto& w) { w.u64(l.version); })});
    case p::list_permute: {
      auto version = in.u64();
      auto n = in.count(4);
      std::vector<std::uint32_t> order(n);
      for (auto& i : order) i = in.u32();
      in.expect_end();
      // The version moved when permute was counted as a change: compare with the one before it.
      if (version + 1 != l.version || n != l.items.size()) return out.push_back({client, ok_flag(false)});
      std::vector<bool> seen(n);
      for (auto i : order) {
        if (i >= n || seen[i]) return out.push_back({client, error("list sort: the order sent is not a permutation")});
        seen[i] = true;
      }
      std::vector<std::string> sorted;
      sorted.reserve(n);
      for (auto i : order) sorted.push_back(std::move(l.items[i]));
      l.items = std::move(sorted);
      return out.push_back({client, ok_flag(true)});
    }
    default: throw mpp::malformed{};
  }
}

MP_DECL void store::value_op(std::uint64_t client, protocol::op code, value_state& v, protocol::reader& in,
                             std::vector<reply>& out) {
  using p = protocol::op;
  if (code == p::value_get) {
    in.expect_end();
    handoff(client, v.bytes);
    return push_held(client, v.bytes, false, out);
  }
  if (code != p::value_set) throw protocol::malformed{};
  auto bytes = in.blob();
  in.expect_end();
  hold_refs(bytes);
  drop_refs(v.bytes);
  store_into(v.bytes, bytes);
  out.push_back({client, ok()});
}

MP_DECL void store::pump_queue(std::uint64_t /*id*/, queue_state& q, std::vector<reply>& out) {
  for (bool progress = true; progress;) {
    progress = false;
    while (!q.items.empty() && !q.getters.empty()) {
      auto w = std::move(q.getters.front());
      q.getters.pop_front();
      unpark(w.client);
      handoff(w.client, q.items.front());
      drop_refs(q.items.front());
      push_released(w.client, std::move(q.items.front()), out, [](auto&) {});
      q.items.pop_front();
      progress = true;
    }
    while (!q.putters.empty() && (q.maxsize == 0 || q.items.size() < q.maxsize)) {
      auto w = std::move(q.putters.front());
      q.putters.pop_front();
      unpark(w.client);
      q.items.push_back(std::move(w.item));
      ++q.unfinished;
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
  if (code == p::queue_task_done) {
    in.expect_end();
    if (q.unfinished == 0) {
      return out.push_back({client, error("task_done() called more times than there were items put in the manager "
                                          "JoinableQueue (ValueError)", mpp::error_kind::value)});
    }
    out.push_back({client, ok()});
    if (--q.unfinished == 0) {
      for (auto& w : q.joiners) unpark(w.client), out.push_back({w.client, ok()});
      q.joiners.clear();
    }
    return;
  }
  if (code == p::queue_join) {
    in.expect_end();
    if (q.unfinished == 0) return out.push_back({client, ok()});
    q.joiners.push_back(entry(client, never));
    return park(client, id, never);
  }
  auto timeout = in.i64();
  if (code == p::queue_put) {
    auto item = in.blob();
    in.expect_end();
    // Stored now, or held by a waiting putter: either way the item's proxies stay alive.
    if ((q.putters.empty() && (q.maxsize == 0 || q.items.size() < q.maxsize)) || timeout != 0) hold_refs(item);
    if (q.putters.empty() && (q.maxsize == 0 || q.items.size() < q.maxsize)) {
      q.items.push_back(stored(item));
      ++q.unfinished;
      out.push_back({client, ok()});
      return pump_queue(id, q, out);
    }
    if (timeout == 0) return out.push_back({client, error("the manager queue is full", mpp::error_kind::full)});
    auto deadline = deadline_of(timeout, now);
    q.putters.push_back(entry(client, deadline, stored(item)));
    return park(client, id, deadline);
  }
  if (code != p::queue_get) throw mpp::malformed{};
  in.expect_end();
  if (!q.items.empty() && q.getters.empty()) {
    handoff(client, q.items.front());
    drop_refs(q.items.front());
    push_released(client, std::move(q.items.front()), out, [](auto&) {});
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
      if (s.bound >= 0 && s.value + n > s.bound) {
        return out.push_back({client, error("manager BoundedSemaphore released too many times (ValueError): its "
                                            "value would exceed its initial value " + std::to_string(s.bound),
                                            protocol::error_kind::value)});
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
      handoff(client, found->second.second);
      return out.push_back({client, ok_with([&](auto& w) { w.u8(1), w.blob(found->second.second); })});
    }
    case p::ns_set: {
      auto name = in.blob();
      auto type = in.blob();
      auto bytes = in.blob();
      in.expect_end();
      hold_refs(bytes);
      if (auto old = ns.attributes.find(name); old != ns.attributes.end()) drop_refs(old->second.second);
      ns.attributes.insert_or_assign(std::string(name), std::pair{std::string(type), stored(bytes)});
      return out.push_back({client, ok()});
    }
    case p::ns_contains: case p::ns_erase: {
      auto name = in.blob();
      in.expect_end();
      auto found = ns.attributes.find(name);
      bool present = found != ns.attributes.end();
      if (present && code == p::ns_erase) drop_refs(found->second.second), ns.attributes.erase(found);
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

MP_DECL bool store::construct(std::uint64_t client, const std::string& type, std::string_view initial,
                              object_state& made, std::vector<reply>& out) {
  const registered_type* registered = find_registered(type);
  if (!registered) {
    out.push_back({client, error("the manager server has no type registered as '" + type +
                                 "': register it before the Manager starts (mp::register_type), or at namespace "
                                 "scope with MP_REGISTER_TYPE for servers started by spawn or forkserver")});
    return false;
  }
  protocol::reader in(initial);
  code_address entry, marker;
  entry.module = std::string(in.blob());
  entry.offset = in.u64();
  marker.module = std::string(in.blob());
  marker.offset = in.u64();
  auto args = in.blob();
  in.expect_end();
  try {
    if (resolve_code(marker) != reinterpret_cast<std::uintptr_t>(&image_marker)) throw ProcessError("");
  } catch (const Error&) {
    out.push_back({client, error("the manager server runs another program than the client: it cannot construct a '" +
                                 type + "' with the client's constructor; use make in a program built from the same "
                                 "sources, or a named object made by the server's program")});
    return false;
  }
  try {
    auto make = reinterpret_cast<construct_entry>(resolve_code(entry));
    std::type_index made_type = typeid(void);
    made.instance = make(args, made_type);
    if (made_type != registered->type) {
      out.push_back({client, error("'" + type + "' is registered for another C++ type in the manager server")});
      return false;
    }
  } catch (...) {
    auto what = describe_current_exception();
    std::string bytes = error(what.type, protocol::error_kind::remote);
    protocol::writer(bytes).blob(what.message);
    out.push_back({client, std::move(bytes)});
    return false;
  }
  made.type = registered;
  return true;
}

MP_DECL void store::object_op(std::uint64_t client, object_state& o, protocol::reader& in, std::vector<reply>& out) {
  auto method = in.u32();
  auto args = in.blob();
  in.expect_end();
  if (method >= o.type->methods.size()) {
    return out.push_back({client, error("'" + o.type->name + "' has no registered method number " +
                                        std::to_string(method) + " in the manager server (it registered " +
                                        std::to_string(o.type->methods.size()) + ")")});
  }
  std::string result = ok();
  try {
    // The server runs one request at a time: calls on one object never overlap. The result is serialized into a
    // scratch buffer the server reuses (one of a big result is let go at the next request); a big one goes on as
    // the reply's tail, copied from there straight into the client's reply segment.
    call_result_.clear();
    o.type->methods[method](o.instance.get(), args, call_result_);
    const std::string_view bytes(reinterpret_cast<const char*>(call_result_.data()), call_result_.size());
    if (reply_tails_ && bytes.size() >= protocol::large_bytes) {
      protocol::writer(result).u32(static_cast<std::uint32_t>(bytes.size()));
      return out.push_back({client, std::move(result), bytes});
    }
    protocol::writer(result).blob(bytes);
  } catch (...) {
    auto what = describe_current_exception();
    result = error(what.type, protocol::error_kind::remote);
    protocol::writer(result).blob(what.message);
  }
  out.push_back({client, std::move(result)});
}

MP_DECL void store::refs_op(std::uint64_t client, protocol::op code, std::uint64_t id, protocol::reader& in,
                            clock::time_point now, std::vector<reply>& out) {
  namespace p = protocol;
  switch (code) {
    case p::op::hello: {
      auto token = in.u64();
      auto n = in.count(8);
      std::vector<std::uint64_t> lends(n);
      for (auto& lent : lends) lent = in.u64();
      in.expect_end();
      if (bound_.contains(client)) throw p::malformed{};  // one hello per connection
      auto& s = sessions_[token];
      ++s.connections;
      bound_.emplace(client, token);
      std::vector<std::uint64_t> adopted;
      for (auto lent : lends) {
        auto found = lent_.find(lent);
        if (found == lent_.end()) continue;  // expired, or adopted already
        for (auto object : found->second.ids) {
          if (!objects_.contains(object)) continue;
          ++s.refs[object];  // the hold's reference moves to the session
          adopted.push_back(object);
        }
        lent_.erase(found);
      }
      return out.push_back({client, list_reply(adopted.size(), [&](auto& w) {
                              for (auto object : adopted) w.u64(object);
                            })});
    }
    case p::op::decref: {
      auto n = in.u64();
      in.expect_end();
      if (auto* s = session_of(client)) {
        if (auto found = s->refs.find(id); found != s->refs.end()) {
          auto k = std::min(n, found->second);  // a session releases only what it holds
          if ((found->second -= k) == 0) s->refs.erase(found);
          release(id, k);
        }
      }
      return out.push_back({client, ok()});
    }
    case p::op::lend: {
      auto n = in.count(8);
      lent_hold hold;
      for (std::uint32_t i = 0; i < n; ++i) {
        auto object = in.u64();
        if (add_ref(object)) hold.ids.push_back(object);
      }
      in.expect_end();
      hold.expiry = now + lend_lease;
      auto token = next_lend_++;
      lent_.emplace(token, std::move(hold));
      return out.push_back({client, ok_with([&](auto& w) { w.u64(token); })});
    }
    case p::op::erase_name: {
      std::string name(in.blob());
      in.expect_end();
      auto found = names_.find(name);
      if (found == names_.end()) return out.push_back({client, ok_flag(false)});
      auto object = found->second;
      names_.erase(found);
      release(object);  // the name's own reference
      return out.push_back({client, ok_flag(true)});
    }
    default: throw p::malformed{};
  }
}

MP_DECL store::session* store::session_of(std::uint64_t client) {
  auto bound = bound_.find(client);
  if (bound == bound_.end()) return nullptr;
  auto found = sessions_.find(bound->second);
  return found == sessions_.end() ? nullptr : &found->second;
}

MP_DECL bool store::add_ref(std::uint64_t id) {
  auto found = objects_.find(id);
  if (found == objects_.end()) return false;
  ++found->second.refs;
  return true;
}

MP_DECL void store::release(std::uint64_t id, std::uint64_t n) {
  auto found = objects_.find(id);
  if (found == objects_.end() || n == 0 || found->second.refs == 0) return;
  found->second.refs -= std::min(n, found->second.refs);
  if (found->second.refs == 0) doomed_.push_back(id);
}

MP_DECL void store::hold_refs(std::string_view blob) {
  for_each_ref(blob, [&](std::uint64_t id) { add_ref(id); });
}

MP_DECL void store::drop_refs(std::string_view blob) {
  for_each_ref(blob, [&](std::uint64_t id) { release(id); });
}

MP_DECL void store::handoff(std::uint64_t client, std::string_view blob) {
  if (blob.size() < 5 || blob[0] != 1) return;
  auto* s = session_of(client);
  if (!s) return;
  for_each_ref(blob, [&](std::uint64_t id) {
    if (add_ref(id)) ++s->refs[id];
  });
}

MP_DECL void store::destroy_doomed(std::vector<reply>& out) {
  while (!doomed_.empty()) {
    auto id = doomed_.back();
    doomed_.pop_back();
    auto found = objects_.find(id);
    if (found == objects_.end() || found->second.refs != 0) continue;  // gone already, or referred to again
    auto node = objects_.extract(found);
    auto& state = node.mapped().state;
    // What its values referred to loses a reference (may doom more: handled by this loop, not by recursion).
    std::visit(
        [&](auto& st) {
          using S = std::decay_t<decltype(st)>;
          if constexpr (std::is_same_v<S, dict_state>) {
            for (const auto& entry : st.entries) drop_refs(entry.second);
          } else if constexpr (std::is_same_v<S, list_state>) {
            for (const auto& item : st.items) drop_refs(item);
          } else if constexpr (std::is_same_v<S, value_state>) {
            drop_refs(st.bytes);
          } else if constexpr (std::is_same_v<S, queue_state>) {
            for (const auto& item : st.items) drop_refs(item);
            for (const auto& w : st.putters) drop_refs(w.item);
          } else if constexpr (std::is_same_v<S, namespace_state>) {
            for (const auto& attribute : st.attributes) drop_refs(attribute.second.second);
          }
        },
        state);
    // Clients parked on it (possible only for a client without a reference: a raw protocol user).
    for (auto it = parked_.begin(); it != parked_.end();) {
      if (it->second.object != id) {
        ++it;
        continue;
      }
      out.push_back({it->first, error("manager object " + std::to_string(id) +
                                      " was freed: no proxy or value refers to it any more")});
      it = parked_.erase(it);
    }
    for (auto it = held_.begin(); it != held_.end();) {
      it->second.erase(id);
      it = it->second.empty() ? held_.erase(it) : std::next(it);
    }
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
             } else if (auto w = take_out(state.putters)) {
             drop_refs(w->item);
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
