// refs: definitions (see refs.hpp).
#pragma once

#include <pthread.h>
#include <sys/random.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include <mp/detail/manager/refs.hpp>
#include <mp/detail/manager/client.hpp>
#include <mp/errors.hpp>

namespace mp::detail::manager {

/// Every ref_table of this process, for the fork prepare handler.
struct live_tables {
  std::mutex mutex;
  std::vector<ref_table*> tables;  // guarded by mutex
};

MP_DECL live_tables& the_live_tables() {
  static auto* live = new live_tables;  // never destroyed: used by atfork handlers during exit
  return *live;
}

// Before a fork: lend the server a hold on every object this process references, for the child to adopt (the
// parent may drop its proxies as soon as fork returns: Process drops its arguments after start()).
MP_DECL void lend_before_fork() {
  auto& live = the_live_tables();
  std::lock_guard guard(live.mutex);
  for (auto* table : live.tables) {
    table->fork_lend = 0;
    auto ids = table->live_ids();
    if (ids.empty()) continue;
    table->fork_lend = lend(table->owner(), ids);
  }
}

MP_DECL void forget_lend_after_fork() {
  auto& live = the_live_tables();
  if (!live.mutex.try_lock()) return;
  for (auto* table : live.tables) table->fork_lend = 0;
  live.mutex.unlock();
}

MP_DECL ref_table::ref_table(client& owner) : owner_(owner) {
  static std::once_flag registered;
  std::call_once(registered, [] { ::pthread_atfork(lend_before_fork, forget_lend_after_fork, nullptr); });
  auto& live = the_live_tables();
  std::lock_guard guard(live.mutex);
  live.tables.push_back(this);
}

MP_DECL ref_table::~ref_table() {
  auto& live = the_live_tables();
  std::lock_guard guard(live.mutex);
  std::erase(live.tables, this);
}

MP_DECL std::shared_ptr<object_ref> ref_table::acquire(const std::shared_ptr<client>& owner, std::uint64_t id,
                                                      std::uint64_t handed) {
  std::lock_guard guard(mutex_);
  auto& slot = refs_[id];
  auto ref = slot.lock();
  if (!ref) {
    ref = std::make_shared<object_ref>(owner, id);
    slot = ref;
  }
  ref->count_ += handed;
  return ref;
}

MP_DECL std::uint64_t ref_table::forget(object_ref& ref) noexcept {
  std::lock_guard guard(mutex_);
  if (auto found = refs_.find(ref.id_); found != refs_.end() && found->second.expired()) refs_.erase(found);
  // In a forked child that never connected, the counts are the parent's: its hold lent at fork covers them.
  if (generation_ != fork_generation()) return 0;
  return std::exchange(ref.count_, 0);
}

MP_DECL std::uint64_t ref_table::session_locked() {
  auto generation = fork_generation();
  if (token_ == 0 || generation != generation_) {
    // A new process (a forked child): a session of its own, and no reference of the parent's is ours yet.
    std::uint64_t token = 0;
    while (token == 0) {
      if (::getrandom(&token, sizeof token, 0) != static_cast<ssize_t>(sizeof token)) {
        token = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
                (static_cast<std::uint64_t>(::getpid()) << 40);
      }
    }
    if (token_ != 0) {
      for (auto& [id, weak] : refs_) {
        if (auto ref = weak.lock()) ref->count_ = 0;
      }
      if (fork_lend != 0) lends_.push_back(std::exchange(fork_lend, 0));
    }
    token_ = token;
    generation_ = generation;
  }
  return token_;
}

MP_DECL void ref_table::bind(connection& fresh) {
  std::vector<std::byte> frame(4);
  protocol::writer out(frame);
  std::vector<std::uint64_t> lends;
  {
    std::lock_guard guard(mutex_);
    auto token = session_locked();
    lends.swap(lends_);
    out.u8(static_cast<std::uint8_t>(protocol::op::hello));
    out.u64(0);
    out.u64(token);
    out.u32(static_cast<std::uint32_t>(lends.size()));
    for (auto lent : lends) out.u64(lent);
  }
  auto reply = fresh.call(frame);
  try {
    protocol::reader in(reply);
    if (static_cast<protocol::status>(in.u8()) != protocol::status::ok) return;  // an older server: no counting
    auto n = in.count(8);
    std::lock_guard guard(mutex_);
    for (std::uint32_t i = 0; i < n; ++i) {
      auto id = in.u64();
      if (auto found = refs_.find(id); found != refs_.end()) {
        if (auto ref = found->second.lock()) ++ref->count_;
      }
    }
  } catch (const protocol::malformed&) {
    throw Error("the manager server sent a malformed reply to hello: it runs another version of mp");
  }
}

MP_DECL void ref_table::adopt_later(std::uint64_t lend_token) {
  std::lock_guard guard(mutex_);
  if (lend_token != 0) lends_.push_back(lend_token);
}

MP_DECL std::vector<std::uint64_t> ref_table::live_ids() {
  std::lock_guard guard(mutex_);
  std::vector<std::uint64_t> ids;
  for (auto& [id, weak] : refs_) {
    if (!weak.expired()) ids.push_back(id);
  }
  return ids;
}

MP_DECL std::uint64_t lend(client& to, const std::vector<std::uint64_t>& ids) noexcept {
  try {
    request lend_request(to, protocol::op::lend, 0);
    lend_request.u32(static_cast<std::uint32_t>(ids.size()));
    for (auto id : ids) lend_request.u64(id);
    return lend_request.send().u64();
  } catch (...) {
    return 0;  // the server is gone or unreachable: nothing to hold
  }
}

MP_DECL object_ref::~object_ref() {
  auto count = owner_->refs().forget(*this);
  if (count == 0) return;
  try {
    request(*owner_, protocol::op::decref, id_).u64(count).send();
  } catch (...) {
    // The server is gone (or this process is exiting): it has nothing left to release, or releases it all when
    // this process's connections close.
  }
}

}  // namespace mp::detail::manager
