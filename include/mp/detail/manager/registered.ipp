// registered: definitions (see registered.hpp).
#pragma once

#include <atomic>
#include <deque>
#include <mutex>
#include <utility>

#include <mp/detail/manager/registered.hpp>
#include <mp/errors.hpp>

namespace mp::detail::manager {

struct type_table {
  std::mutex mutex;
  std::atomic<std::uint64_t> epoch{1};
  std::deque<registered_type> entries;  // a deque: pointers to entries stay valid as it grows
};

MP_DECL type_table& the_type_table() {
  static auto* table = new type_table;  // never destroyed: a server may look types up during exit
  return *table;
}

MP_DECL void register_type_entry(registered_type entry) {
  auto& table = the_type_table();
  std::lock_guard guard(table.mutex);
  for (auto& existing : table.entries) {
    if (existing.name != entry.name) continue;
    if (existing.type != entry.type) {
      throw Error("mp::register_type: the name '" + entry.name + "' is registered for another type already");
    }
    existing = std::move(entry);  // the same type again: the newer method list wins
    table.epoch.fetch_add(1);
    return;
  }
  table.entries.push_back(std::move(entry));
  table.epoch.fetch_add(1);
}

MP_DECL const registered_type* find_registered(std::string_view name) {
  auto& table = the_type_table();
  std::lock_guard guard(table.mutex);
  for (auto& entry : table.entries) {
    if (entry.name == name) return &entry;
  }
  return nullptr;
}

MP_DECL const registered_type* find_registered(std::type_index type) {
  auto& table = the_type_table();
  std::lock_guard guard(table.mutex);
  for (auto& entry : table.entries) {
    if (entry.type == type) return &entry;
  }
  return nullptr;
}

MP_DECL std::uint64_t registration_epoch() noexcept { return the_type_table().epoch.load(std::memory_order_acquire); }

MP_DECL void image_marker() {}

}  // namespace mp::detail::manager
