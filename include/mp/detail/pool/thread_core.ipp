// thread_core: definitions (see thread_core.hpp).
#pragma once

#include <unistd.h>

#include <string>

#include <mp/detail/type_name.hpp>

#include <mp/detail/pool/thread_core.hpp>

namespace mp::detail::pool {

MP_DECL thread_core::thread_core(std::size_t threads, std::function<void()> initializer) {
  threads_.reserve(threads);
  try {
    for (std::size_t i = 0; i < threads; ++i) threads_.emplace_back([this, initializer] { loop(initializer); });
  } catch (...) {
    terminate();
    join();
    throw;
  }
}

MP_DECL thread_core::~thread_core() {
  terminate();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
}

MP_DECL void thread_core::post(work_item work, const char* caller) {
  {
    std::lock_guard lock(mutex_);
    if (state_ != state::running)
      throw Error(std::string(caller) + ": the pool is " + (state_ == state::terminated ? "terminated" : "closed") +
                  " and accepts no new work; create a new ThreadPool");
    queue_.push_back(std::move(work));
  }
  changed_.notify_one();
}

MP_DECL void thread_core::close() {
  std::lock_guard lock(mutex_);
  if (state_ == state::running) state_ = state::closed;
  changed_.notify_all();
}

MP_DECL void thread_core::terminate() {
  std::deque<work_item> dropped;
  {
    std::lock_guard lock(mutex_);
    state_ = state::terminated;
    dropped.swap(queue_);
  }
  changed_.notify_all();
  for (auto& work : dropped)
    work.fail(std::make_exception_ptr(
        Error("ThreadPool::terminate() dropped this task before it started; its result will never come")));
}

MP_DECL void thread_core::join() {
  {
    std::lock_guard lock(mutex_);
    if (state_ == state::running)
      throw Error("ThreadPool::join: the pool is still running; call close() or terminate() first");
  }
  for (auto& t : threads_) {
    if (t.get_id() == std::this_thread::get_id())
      throw Error("ThreadPool::join: called from one of the pool's own threads (a task); it would wait for itself");
    if (t.joinable()) t.join();
  }
}

MP_DECL void thread_core::loop(const std::function<void()>& initializer) {
  if (initializer) {
    try {
      initializer();
    } catch (...) {
      // Reported; the thread still serves its tasks.
      const std::string text = "mp: a ThreadPool initializer threw " + describe_current_exception().to_string() + "\n";
      [[maybe_unused]] auto n = ::write(STDERR_FILENO, text.data(), text.size());
    }
  }
  for (;;) {
    work_item work;
    {
      std::unique_lock lock(mutex_);
      changed_.wait(lock, [&] { return !queue_.empty() || state_ != state::running; });
      if (queue_.empty()) return;  // closed and drained, or terminated
      work = std::move(queue_.front());
      queue_.pop_front();
    }
    work.run();
  }
}

}  // namespace mp::detail::pool
