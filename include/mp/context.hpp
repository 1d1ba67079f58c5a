// Start methods and mp::init: how mp creates child processes (Python's multiprocessing.context:
// set_start_method, get_start_method, get_all_start_methods, and `if __name__ == '__main__':`).
// fork copies this process; spawn starts the program anew (posix_spawn of /proc/self/exe) and mp::init runs the
// child's target there; forkserver asks a single-threaded server, spawned at first use, to fork the child.
// Process safety: the start method is per process (a child inherits its parent's); set it from one thread
// before starting processes. All functions here are thread-safe.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <mp/detail/spawn.hpp>
#include <mp/detail/start_method.hpp>
#include <mp/errors.hpp>

namespace mp {

// enum class StartMethod { fork, spawn, forkserver };  and  std::string_view to_string(StartMethod)
// are defined in <mp/detail/start_method.hpp>, a leaf header that detail code can include.

namespace detail {

/// Throws Error unless mp::init ran in this process (spawn and forkserver need it: see missing_init_message).
inline void require_init(StartMethod method, std::string_view where) {
  if (method == StartMethod::fork) return;
  if (the_init_state().load() == static_cast<int>(init_state::called)) return;
  throw Error(missing_init_message(where, to_string(method)));
}

/// The default start method named by MP_START_METHOD ("fork", "spawn", "forkserver"), or fork. It lets a whole
/// test suite or program run under another method without a code change; a bad value is an error, not ignored.
inline StartMethod default_start_method() {
  const char* value = std::getenv("MP_START_METHOD");
  if (value == nullptr || *value == '\0') return StartMethod::fork;
  const std::string_view text(value);
  for (StartMethod method : {StartMethod::fork, StartMethod::spawn, StartMethod::forkserver}) {
    if (text == to_string(method)) return method;
  }
  throw ProcessError("MP_START_METHOD=" + std::string(text) +
                     " in the environment is not a start method: use fork, spawn or forkserver");
}

}  // namespace detail

/// Sets the default start method of this process. Setting a different method after one was set (or read by
/// get_start_method()) throws ProcessError unless force is true, as Python's "context has already been set";
/// setting the same one again is harmless.
inline void set_start_method(StartMethod method, bool force = false) {
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

/// The default start method; fixes it to fork (Linux's default before Python 3.14) if none was set, as Python does
/// — or to the method named by the environment variable MP_START_METHOD.
inline StartMethod get_start_method() {
  std::atomic<int>& setting = detail::the_start_method();
  if (setting.load() != -1) return static_cast<StartMethod>(setting.load());
  int expected = -1;
  setting.compare_exchange_strong(expected, static_cast<int>(detail::default_start_method()));
  return static_cast<StartMethod>(setting.load());
}

/// The start methods that work in this build: {fork, spawn, forkserver}, the default first.
inline std::vector<StartMethod> get_all_start_methods() {
  return {StartMethod::fork, StartMethod::spawn, StartMethod::forkserver};
}

/// Required first line of main(): `mp::init(argc, argv);` — the C++ `if __name__ == '__main__':`.
/// In a child started by spawn or forkserver it runs the child's target and never returns; in the fork server it
/// serves and never returns; otherwise it records that the program is ready to spawn and returns at once.
inline void init(int argc, char** argv) {
  if (int socket = detail::take_marker(detail::spawned_child_env); socket >= 0) {
    detail::the_init_state().store(static_cast<int>(detail::init_state::called));
    detail::run_spawned_child(socket, ::getppid(), false);  // never returns
  }
  if (int control = detail::take_marker(detail::forkserver_env); control >= 0) {
    detail::the_init_state().store(static_cast<int>(detail::init_state::called));
    detail::run_forkserver(control, &detail::run_spawned_child);  // never returns
  }
  if (argc > 0 && argv != nullptr && argv[0] != nullptr) detail::program_name() = argv[0];
  detail::the_init_state().store(static_cast<int>(detail::init_state::called));
}

}  // namespace mp

// mp::init runs a spawned child's Process (detail::run_spawned_child), which is defined with mp::Process.
#include <mp/process.hpp>
