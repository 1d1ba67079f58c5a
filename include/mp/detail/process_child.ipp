// process_child: definitions (see process_child.hpp).
#pragma once

#include <map>
#include <mutex>

#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/process_child.hpp>

namespace mp::detail {

MP_DECL void spawned_task::operator()() {
  auto entry = reinterpret_cast<void (*)(std::span<const std::byte>)>(resolve_code(target.entry));
  fd_inbox_scope scope(*fds);
  entry(target.bytes);
}

// The registered subclasses. Leaked: a subclass may be registered by a static initializer and started from a
// static destructor.
struct process_type_table {
  std::mutex mutex;
  std::map<std::type_index, process_type_codec> codecs;  // guarded by mutex
};

MP_DECL process_type_table& the_process_type_table() {
  static process_type_table* table = new process_type_table;
  return *table;
}

MP_DECL void register_process_type(std::type_index type, process_type_codec codec) {
  process_type_table& table = the_process_type_table();
  std::lock_guard lock(table.mutex);
  table.codecs.insert_or_assign(type, codec);
}

MP_DECL std::optional<process_type_codec> find_process_type(std::type_index type) {
  process_type_table& table = the_process_type_table();
  std::lock_guard lock(table.mutex);
  auto found = table.codecs.find(type);
  if (found == table.codecs.end()) return std::nullopt;
  return found->second;
}

}  // namespace mp::detail
