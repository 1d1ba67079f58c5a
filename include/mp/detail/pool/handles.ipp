// handles: definitions (see handles.hpp).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <string>

#include <mp/detail/syscall.hpp>
#include <mp/errors.hpp>

#include <mp/detail/pool/handles.hpp>

namespace mp::detail::pool {

MP_DECL handle_key key_of(int fd) {
  struct stat st {};
  if (sys_try("fstat", [&] { return ::fstat(fd, &st); }) != 0)
    throw SerializationError("Pool: fstat of a handle's descriptor " + std::to_string(fd) + " failed: " +
                             std::strerror(last_errno()) + "; was the handle closed while being sent?");
  return {static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino)};
}

MP_DECL handle_table::entry& handle_table::acquire(const handle_key& key, int fd) {
  for (auto& [known, found] : recent_) {
    if (found != nullptr && known == key) {
      ++found->refs;
      return *found;
    }
  }
  entry& e = entries_[key];
  if (!e.fd) {
    const int copy = sys_try("fcntl", [&] { return ::fcntl(fd, F_DUPFD_CLOEXEC, 0); });
    if (copy < 0) {
      const int err = last_errno();
      entries_.erase(key);
      throw_errno("fcntl(F_DUPFD_CLOEXEC)", "Pool: keeping a handle's descriptor", err);
    }
    e.fd.reset(copy);
  }
  ++e.refs;
  recent_[recent_next_++ % recent_.size()] = {key, &e};
  return e;
}

MP_DECL void handle_table::erase(const handle_key& key) noexcept {
  for (auto& [known, found] : recent_)
    if (found != nullptr && known == key) found = nullptr;
  entries_.erase(key);
}

MP_DECL void handle_table::release(const handle_key& key) noexcept {
  auto it = entries_.find(key);
  if (it != entries_.end() && --it->second.refs == 0) erase(key);
}

MP_DECL void handle_table::release(const handle_key& key, entry& held) noexcept {
  if (--held.refs == 0) erase(key);
}

MP_DECL int handle_table::fd(const handle_key& key) const noexcept {
  auto it = entries_.find(key);
  return it == entries_.end() ? -1 : it->second.fd.get();
}

MP_DECL submission_handles::~submission_handles() {
  if (table_ != nullptr)
    for (const object& o : objects_) table_->release(o.key, *o.held);
}

MP_DECL void submission_handles::add_object(const handle_key& key, int fd) {
  if (objects_.size() < linear_search_limit) {
    for (const object& o : objects_)
      if (o.key == key) return;
    objects_.push_back({key, fd, nullptr});
    if (objects_.size() == linear_search_limit)
      for (std::size_t i = 0; i < objects_.size(); ++i) maps().index.emplace(objects_[i].key, i);
    return;
  }
  if (maps().index.try_emplace(key, objects_.size()).second) objects_.push_back({key, fd, nullptr});
}

MP_DECL void submission_handles::add_chunk(const fd_outbox& box, const char* caller) {
  if (box.fds.size() > max_fds_per_frame)
    throw Error(std::string(caller) + ": one task carries " + std::to_string(box.fds.size()) +
                " shared objects' descriptors, more than the " + std::to_string(max_fds_per_frame) +
                " a worker can receive with one task; use a smaller chunksize, or group the objects (one Queue, one "
                "Array, one Manager)");
  for (std::size_t i = 0; i < box.fds.size(); ++i) {
    const int fd = box.fds[i];
    // The handle's own record of its open file (every mp handle keeps one): no fstat per task. Else one fstat per
    // descriptor and submission.
    const fd_identity id = i < box.ids.size() ? box.ids[i] : fd_identity{};
    handle_key key{id.dev, id.ino};
    if (!id.known()) {
      auto& unknown = maps().unknown;
      auto found = unknown.find(fd);
      if (found == unknown.end()) found = unknown.emplace(fd, key_of(fd)).first;
      key = found->second;
    }
    add_object(key, fd);
    keys_.push_back(key);
  }
  offsets_.push_back(static_cast<std::uint32_t>(keys_.size()));
}

MP_DECL void submission_handles::attach(handle_table& table) {
  if (maps_) maps_->unknown.clear();
  std::size_t taken = 0;
  try {
    for (; taken < objects_.size(); ++taken) objects_[taken].held = &table.acquire(objects_[taken].key, objects_[taken].fd);
  } catch (...) {
    for (std::size_t i = 0; i < taken; ++i) table.release(objects_[i].key, *objects_[i].held);
    throw;
  }
  for (object& o : objects_) o.fd = -1;  // borrowed descriptors are not ours to use after this
  table_ = &table;
}

MP_DECL handle_plan worker_view::plan(std::span<const handle_key> keys, handle_table& table) {
  handle_plan plan;
  const std::uint64_t now = ++messages_;
  plan.table = keys;
  if (!keys.empty() && keys.size() == last_keys_.size() &&
      std::memcmp(keys.data(), last_keys_.data(), keys.size() * sizeof(handle_key)) == 0) {
    for (std::uint64_t* last : last_uses_) *last = now;  // the same handles as the previous message: all kept
    plan.same_table = true;
  } else {
    last_keys_.clear();
    last_uses_.clear();
    for (const handle_key& key : keys) {
      auto [it, added] = kept_.try_emplace(key, now);
      it->second = now;
      if (added) {
        table.acquire(key, table.fd(key));  // the submission holds a reference, so the table has a descriptor
        plan.send.push_back(key);
      }
      last_keys_.push_back(key);
      last_uses_.push_back(&it->second);
    }
  }
  if (kept_.empty()) return plan;
  // Forget what no message used for a while (checked now and then: a scan costs one pass over at most
  // worker_keeps + max_fds_per_frame entries), and the least recently used beyond worker_keeps.
  if (now % 64 == 0) {
    for (auto it = kept_.begin(); it != kept_.end();) {
      if (now - it->second > worker_forgets_after) {
        plan.drop.push_back(it->first);
        table.release(it->first);
        it = kept_.erase(it);
      } else {
        ++it;
      }
    }
  }
  if (kept_.size() > worker_keeps) {
    std::vector<std::pair<std::uint64_t, handle_key>> by_age;
    for (const auto& [key, last] : kept_)
      if (last != now) by_age.emplace_back(last, key);
    std::sort(by_age.begin(), by_age.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    const std::size_t excess = kept_.size() - worker_keeps;
    for (std::size_t i = 0; i < excess && i < by_age.size(); ++i) {
      plan.drop.push_back(by_age[i].second);
      table.release(by_age[i].second);
      kept_.erase(by_age[i].second);
    }
  }
  return plan;
}

MP_DECL void worker_view::forget(handle_table& table) noexcept {
  for (const auto& [key, last] : kept_) table.release(key);
  kept_.clear();
  messages_ = 0;
  last_keys_.clear();
  last_uses_.clear();
}

namespace {
struct section_counts {
  std::uint16_t table = 0;  // at most max_fds_per_frame
  std::uint16_t drop = 0;   // at most worker_keeps + max_fds_per_frame
  std::uint8_t frames = 0;  // fd frames to read from the socket first (0 or 1)
  std::uint8_t blob = 0;    // 1: the frame's last descriptor is the payload's blob segment
  std::uint8_t unused[2] = {};
};
static_assert(sizeof(section_counts) == 8);
static_assert(max_fds_per_frame + worker_keeps < 65536);
}  // namespace

MP_DECL void encode_handle_section(handle_section& out, const handle_plan& plan) {
  const section_counts counts{static_cast<std::uint16_t>(plan.table.size()), static_cast<std::uint16_t>(plan.drop.size()),
                              static_cast<std::uint8_t>(plan.send.empty() && plan.blob < 0 ? 0 : 1),
                              static_cast<std::uint8_t>(plan.blob < 0 ? 0 : 1)};
  auto append = [&out](const void* data, std::size_t size) { out.append(static_cast<const std::byte*>(data), size); };
  append(&counts, sizeof counts);
  append(plan.table.data(), plan.table.size() * sizeof(handle_key));
  append(plan.drop.data(), plan.drop.size() * sizeof(handle_key));
}

MP_DECL bool send_handles(int socket, const handle_plan& plan, const handle_table& table) noexcept {
  if (plan.send.empty() && plan.blob < 0) return true;
  try {
    std::vector<int> fds;
    fds.reserve(plan.send.size() + 1);
    for (const handle_key& key : plan.send) fds.push_back(table.fd(key));
    if (plan.blob >= 0) fds.push_back(plan.blob);
    send_fd_frame(socket, std::as_bytes(std::span(plan.send)), fds, "Pool: sending handles to a worker");
    return true;
  } catch (...) {
    return false;
  }
}

MP_DECL unique_fd worker_handles::apply_section(std::span<const std::byte> section, int socket) {
  unique_fd blob;
  // Emptied first: if this section fails half-way, a later task reusing "the previous handles" finds none (a clear
  // error), never the list before this one.
  current_.clear();
  section_counts counts;
  if (section.size() < sizeof counts) throw SerializationError("Pool worker: a truncated handle section");
  std::memcpy(&counts, section.data(), sizeof counts);
  const std::size_t keys = std::size_t{counts.table} + counts.drop;
  if (counts.frames > 1 || counts.blob > counts.frames ||
      section.size() != sizeof counts + keys * sizeof(handle_key))
    throw SerializationError("Pool worker: a malformed handle section (" + std::to_string(section.size()) + " bytes)");
  auto key_at = [&](std::size_t i) {
    handle_key key;
    std::memcpy(&key, section.data() + sizeof counts + i * sizeof(handle_key), sizeof key);
    return key;
  };
  if (counts.frames == 1) {
    fd_frame frame = receive_fd_frame(socket, "Pool worker: receiving handles", max_fds_per_frame * sizeof(handle_key));
    if (counts.blob == 1 && !frame.fds.fds.empty()) {
      blob = std::move(frame.fds.fds.back());
      frame.fds.fds.pop_back();
    }
    if (!blob && counts.blob == 1) throw ProcessError("Pool worker: a task's blob segment did not arrive");
    if (frame.bytes.size() != frame.fds.fds.size() * sizeof(handle_key))
      throw ProcessError("Pool worker: " + std::to_string(frame.fds.fds.size()) + " descriptors arrived for " +
                         std::to_string(frame.bytes.size() / sizeof(handle_key)) + " handles");
    for (std::size_t i = 0; i < frame.fds.fds.size(); ++i) {
      handle_key key;
      std::memcpy(&key, frame.bytes.data() + i * sizeof key, sizeof key);
      entry& e = entries_[key];
      e.fd = std::move(frame.fds.fds[i]);
      e.attached.clear();
    }
  }
  for (std::size_t i = counts.table; i < keys; ++i) entries_.erase(key_at(i));
  for (std::size_t i = 0; i < counts.table; ++i) {
    auto it = entries_.find(key_at(i));
    current_.push_back(it == entries_.end() ? nullptr : &it->second);
  }
  return blob;
}

MP_DECL std::shared_ptr<void>* worker_handles::attachment(std::uint32_t index, std::type_index type) {
  if (index >= current_.size() || current_[index] == nullptr) return nullptr;
  auto& attached = current_[index]->attached;
  for (auto& [kind, object] : attached)
    if (kind == type) return &object;
  attached.emplace_back(type, nullptr);
  return &attached.back().second;
}

}  // namespace mp::detail::pool
