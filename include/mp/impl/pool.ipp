// Pool: definitions (see pool.hpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>

#include <mp/pool.hpp>

namespace mp {

MP_DECL Pool::Pool(PoolOptions options) {
  const StartMethod method = options.start_method.value_or(get_start_method());
  detail::pool::config config;
  config.start_method = method;
  config.parent_name = current_process().name();
  // The initializer's handles stay open in `options` until the factory has its own descriptors.
  detail::fd_outbox initializer_box;
  if (method != StartMethod::fork) {
    detail::require_init(method, "Pool");
    if (options.initializer) {
      if (options.initializer.trampoline_ == nullptr)
        throw ProcessError("Pool: under start method " + std::string(to_string(method)) + " the initializer must "
                           "cross to a fresh process, but it is a " + options.initializer.type_ + ", whose state "
                           "cannot; pass a function (`.initializer = init`), mp::task(init, args...) with the data "
                           "as arguments, a lambda without captures, or use StartMethod::fork");
      {
        detail::fd_outbox_scope scope(initializer_box);
        options.initializer.encode_(config.initializer_state);
      }
      config.initializer_fds.assign(initializer_box.fds.begin(), initializer_box.fds.end());
      config.initializer_address = detail::pool::trampoline_address(options.initializer.trampoline_);
      (void)detail::locate_code(config.initializer_address);  // ProcessError now if it is not code in a module
    }
  }
  config.processes = options.processes != 0 ? options.processes : std::max<std::size_t>(1, cpu_count());
  if (config.processes > 4096)
    throw Error("Pool: processes = " + std::to_string(config.processes) + " is not a sensible number of workers; use "
                "at most a few per CPU (cpu_count() = " + std::to_string(cpu_count()) + ")");
  config.initializer = options.initializer.run_;
  config.maxtasksperchild = options.maxtasksperchild;
  if (options.task_timeout) {
    if (options.task_timeout->count() <= 0)
      throw Error("Pool: task_timeout must be positive, got " + detail::describe_timeout(*options.task_timeout) +
                  "; leave it unset for no timeout");
    config.task_timeout_ns = static_cast<std::uint64_t>(std::chrono::nanoseconds(*options.task_timeout).count());
  }
  core_ = std::make_shared<detail::pool::core>(std::move(config));
}

MP_DECL Pool::~Pool() {
  if (!core_ || !core_->owned_here()) return;  // moved from, or a copy inherited by a forked child
  try {
    core_->close();
    core_->join();
  } catch (...) {
  }
  runner_->drain();  // the done callbacks of the last results run before the Pool is gone
}

MP_DECL detail::pool::core& Pool::moved_from() {
  throw Error("Pool: this Pool was moved from; use the Pool it was moved to");
}

}  // namespace mp
