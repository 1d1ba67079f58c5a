// Start methods and mp::init: how mp creates child processes (Python's multiprocessing.context:
// set_start_method, get_start_method, get_all_start_methods, and `if __name__ == '__main__':`).
// fork copies this process; spawn starts the program anew (posix_spawn of /proc/self/exe) and mp::init runs the
// child's target there; forkserver asks a single-threaded server, spawned at first use, to fork the child.
// Process safety: the start method is per process (a child inherits its parent's); set it from one thread
// before starting processes. All functions here are thread-safe.
#pragma once

#include <string_view>
#include <vector>

#include <mp/detail/config.hpp>
#include <mp/detail/forkserver.hpp>
#include <mp/detail/spawn.hpp>
#include <mp/detail/start_method.hpp>
#include <mp/errors.hpp>

namespace mp {

// enum class StartMethod { fork, spawn, forkserver };
//   How a child process is created: fork (a copy of this process), spawn (the program anew), forkserver (a fork
//   of a clean, single-threaded server process). Enumerators as Python spells the methods.
// std::string_view to_string(StartMethod);
//   "fork", "spawn" or "forkserver".
// Both are defined in <mp/detail/start_method.hpp>, a leaf header that detail code can include too.

/// Sets the default start method of this process. Setting a different method after one was set (or read by
/// get_start_method()) throws ProcessError unless force is true, as Python's "context has already been set";
/// setting the same one again is harmless.
MP_DECL void set_start_method(StartMethod method, bool force = false);

/// The default start method; fixes it to fork (Linux's default before Python 3.14) if none was set, as Python does
/// — or to the method named by the environment variable MP_START_METHOD.
MP_DECL StartMethod get_start_method();

/// The start methods that work in this build: {fork, spawn, forkserver}, the default first.
MP_DECL std::vector<StartMethod> get_all_start_methods();

/// Required first line of main(): `mp::init(argc, argv);` — the C++ `if __name__ == '__main__':`.
/// In a child started by spawn or forkserver it runs the child's target and never returns; in the fork server it
/// serves and never returns; otherwise it records that the program is ready to spawn and returns at once.
MP_DECL void init(int argc, char** argv);

namespace detail {

/// Throws Error unless mp::init ran in this process (spawn and forkserver need it: see missing_init_message).
MP_DECL void require_init(StartMethod method, std::string_view where);

/// The default start method named by MP_START_METHOD ("fork", "spawn", "forkserver"), or fork. It lets a whole
/// test suite or program run under another method without a code change; a bad value is an error, not ignored.
MP_DECL StartMethod default_start_method();

}  // namespace detail

}  // namespace mp

#if MP_INCLUDE_DEFINITIONS
#include <mp/impl/context.ipp>
#endif
