// Start methods and mp::init: how mp creates child processes (Python's multiprocessing.context:
// set_start_method, get_start_method, get_all_start_methods, and `if __name__ == '__main__':`).
// This round implements StartMethod::fork only; spawn and forkserver throw mp::ProcessError where they are asked for.
// Process safety: the start method is per process (a forked child inherits its parent's); set it from one thread
// before starting processes. All functions here are thread-safe.
#pragma once

#include <atomic>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <mp/errors.hpp>

namespace mp {

/// How a child process is created: fork (copy of this process), spawn (fresh program), forkserver.
enum class StartMethod { fork, spawn, forkserver };

/// "fork", "spawn" or "forkserver", as Python spells them.
inline std::string_view to_string(StartMethod method) noexcept {
  switch (method) {
    case StartMethod::fork: return "fork";
    case StartMethod::spawn: return "spawn";
    case StartMethod::forkserver: return "forkserver";
  }
  return "unknown";
}

namespace detail {

// An atomic, not a mutex: a mutex held by another thread at fork() would stay locked forever in the child, and a
// child that starts its own children reads this. -1: not set yet.
inline std::atomic<int>& the_start_method() {
  static std::atomic<int> method{-1};
  return method;
}

/// Throws ProcessError unless mp can start processes with `method` in this build.
inline void require_implemented(StartMethod method, std::string_view where) {
  if (method == StartMethod::fork) return;
  throw ProcessError(std::string(where) + ": start method " + std::string(to_string(method)) +
                     " is not implemented yet; use StartMethod::fork");
}

}  // namespace detail

/// Sets the default start method of this process. Setting a different method after one was set (or read by
/// get_start_method()) throws ProcessError unless force is true, as Python's "context has already been set";
/// setting the same one again is harmless.
inline void set_start_method(StartMethod method, bool force = false) {
  detail::require_implemented(method, "set_start_method");
  std::atomic<int>& setting = detail::the_start_method();
  int expected = -1;
  const int wanted = static_cast<int>(method);
  if (setting.compare_exchange_strong(expected, wanted) || expected == wanted) return;
  if (!force) {
    throw ProcessError("set_start_method(" + std::string(to_string(method)) + "): the start method is already " +
                       std::string(to_string(static_cast<StartMethod>(expected))) + "; pass force = true to change it");
  }
  setting.store(wanted);
}

/// The default start method; fixes it to fork (Linux's default) if none was set, as Python does.
inline StartMethod get_start_method() {
  std::atomic<int>& setting = detail::the_start_method();
  int expected = -1;
  setting.compare_exchange_strong(expected, static_cast<int>(StartMethod::fork));
  return static_cast<StartMethod>(setting.load());
}

/// The start methods that work in this build: {fork}.
inline std::vector<StartMethod> get_all_start_methods() { return {StartMethod::fork}; }

/// Required first line of main(): `mp::init(argc, argv);` — the C++ `if __name__ == '__main__':`.
/// In a spawned child it will run the child's target and never return; in the parent (and with fork) it returns at once.
inline void init(int /*argc*/, char** /*argv*/) {}

}  // namespace mp
