// completion: definitions (see completion.hpp).
#pragma once

#include <unistd.h>

#include <string>

#include <mp/detail/type_name.hpp>

#include <mp/detail/pool/completion.hpp>

namespace mp::detail::pool {

MP_DECL callback_runner::~callback_runner() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  if (!thread_.joinable()) return;
  // The last owner may be a callback itself (it dropped the last AsyncResult of its pool): not join itself.
  if (thread_.get_id() == std::this_thread::get_id()) {
    thread_.detach();
  } else {
    thread_.join();
  }
}

MP_DECL void callback_runner::post(std::function<void()> fn) {
  std::lock_guard lock(mutex_);
  if (stopping_) {  // cannot happen while a pool lives; run it rather than lose it
    run_reporting(fn);
    return;
  }
  queue_.push_back(std::move(fn));
  if (!thread_.joinable()) thread_ = std::thread([this] { loop(); });
  changed_.notify_all();
}

MP_DECL void callback_runner::drain() {
  std::unique_lock lock(mutex_);
  if (thread_.joinable() && thread_.get_id() == std::this_thread::get_id()) return;
  changed_.wait(lock, [&] { return queue_.empty() && !busy_; });
}

MP_DECL void callback_runner::run_reporting(const std::function<void()>& fn) noexcept {
  try {
    fn();
  } catch (...) {
    try {
      const std::string text = "mp: an AsyncResult done callback threw " + describe_current_exception().to_string() +
                               " (ignored; the pool goes on)\n";
      [[maybe_unused]] auto n = ::write(STDERR_FILENO, text.data(), text.size());
    } catch (...) {
    }
  }
}

MP_DECL void callback_runner::loop() {
  std::unique_lock lock(mutex_);
  for (;;) {
    changed_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and nothing left
    std::function<void()> fn = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    lock.unlock();
    run_reporting(fn);
    fn = nullptr;  // its captures (an AsyncResult) go before the next one runs
    lock.lock();
    busy_ = false;
    changed_.notify_all();
  }
}

/// Numbers results in the order they finish, across pools (as_completed sorts results done before it looked).
inline std::atomic<std::uint64_t>& completion_counter() noexcept {
  static std::atomic<std::uint64_t> counter{0};
  return counter;
}

MP_DECL void completion::complete(pool::event& event, bool failed) {
  std::vector<std::function<void()>> callbacks;
  std::vector<std::pair<std::shared_ptr<watcher>, std::size_t>> watchers;
  {
    std::lock_guard lock(mutex_);
    sequence = completion_counter().fetch_add(1) + 1;
    failed_ = failed;
    done.store(true, std::memory_order_release);
    callbacks.swap(callbacks_);
    watchers.swap(watchers_);
  }
  event.notify();
  for (auto& [w, index] : watchers) {
    {
      std::lock_guard lock(w->mutex);
      w->finished.push_back(index);
      if (failed) ++w->failed;
    }
    w->event.notify();
  }
  for (auto& fn : callbacks) {
    if (runner) runner->post(std::move(fn));
    else callback_runner::run_reporting(fn);
  }
}

MP_DECL void completion::add_callback(std::function<void()> fn) {
  {
    std::lock_guard lock(mutex_);
    if (!done.load(std::memory_order_acquire)) {
      callbacks_.push_back(std::move(fn));
      return;
    }
  }
  callback_runner::run_reporting(fn);
}

MP_DECL void completion::watch(const std::shared_ptr<watcher>& w, std::size_t index) {
  bool failed = false;
  {
    std::lock_guard lock(mutex_);
    if (!done.load(std::memory_order_acquire)) {
      watchers_.emplace_back(w, index);
      return;
    }
    failed = failed_;
  }
  std::lock_guard lock(w->mutex);
  w->finished.push_back(index);
  if (failed) ++w->failed;
}

}  // namespace mp::detail::pool
