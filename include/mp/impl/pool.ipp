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
  if (method != StartMethod::fork) {
    detail::require_init(method, "Pool");
    config.parent_name = current_process().name();
    if (options.initializer) {
      // A std::function's state is opaque: only a plain function pointer inside it can be named in a fresh process.
      auto* function = options.initializer.target<void (*)()>();
      if (function == nullptr || *function == nullptr)
        throw ProcessError("Pool: under start method " + std::string(to_string(method)) + " the initializer must be "
                           "a plain function, but the std::function holds a " +
                           detail::type_name(options.initializer.target_type()) + ", which cannot cross to a fresh "
                           "process; pass a function (`.initializer = init`), a lambda without captures converted "
                           "with + (`.initializer = +[] { ... }`), or use StartMethod::fork");
      config.initializer_address = reinterpret_cast<std::uintptr_t>(*function);
      (void)detail::locate_code(config.initializer_address);  // ProcessError now if it is not code in a module
    }
  }
  config.processes = options.processes != 0 ? options.processes : std::max<std::size_t>(1, cpu_count());
  if (config.processes > 4096)
    throw Error("Pool: processes = " + std::to_string(config.processes) + " is not a sensible number of workers; use "
                "at most a few per CPU (cpu_count() = " + std::to_string(cpu_count()) + ")");
  config.initializer = std::move(options.initializer);
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
