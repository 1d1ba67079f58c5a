// start_method: the StartMethod vocabulary in a leaf header, so that detail code (spawn, the pool's factory, the
// manager's launch) can name it without including a public header; <mp/context.hpp> is its public home.
#pragma once

#include <atomic>
#include <optional>
#include <string_view>

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

}  // namespace mp

namespace mp::detail {

// An atomic, not a mutex: a mutex held by another thread at fork() would stay locked forever in the child, and a
// child that starts its own children reads this. -1: not set yet.
inline std::atomic<int>& the_start_method() noexcept {
  static std::atomic<int> method{-1};
  return method;
}

/// The start method set in this process, if any (without fixing the default as get_start_method() does): what a
/// fresh child inherits, as Python passes its context to a spawned child.
inline std::optional<StartMethod> start_method_setting() noexcept {
  const int value = the_start_method().load();
  if (value < 0) return std::nullopt;
  return static_cast<StartMethod>(value);
}

/// Makes `setting` this process's (a fresh child adopting its parent's).
inline void adopt_start_method_setting(std::optional<StartMethod> setting) noexcept {
  the_start_method().store(setting ? static_cast<int>(*setting) : -1);
}

}  // namespace mp::detail
