// ThreadPool: definitions (see thread_pool.hpp).
#pragma once

#include <algorithm>
#include <utility>

#include <mp/process.hpp>
#include <mp/thread_pool.hpp>

namespace mp {

MP_DECL ThreadPool::ThreadPool(PoolOptions options) {
  if (options.task_timeout)
    throw Error("ThreadPool: task_timeout cannot be enforced on threads (a thread cannot be killed); use a Pool");
  const std::size_t n = options.processes != 0 ? options.processes : std::max<std::size_t>(1, cpu_count());
  core_ = std::make_unique<detail::pool::thread_core>(n, std::move(options.initializer));
}

MP_DECL ThreadPool::~ThreadPool() {
  if (!core_) return;
  try {
    core_->close();
    core_->join();
  } catch (...) {
  }
  runner_->drain();
}

}  // namespace mp
