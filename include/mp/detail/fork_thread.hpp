// fork_thread: the thread that creates the child of a Process started from any thread but main.
// Why: PR_SET_PDEATHSIG, which makes a child die with its parent, fires when the *thread* that created the child
// ends, not the process. A Process started from a short-lived thread (a thread-pool task, a std::async call) would
// be killed as soon as that thread returns, where Python's child outlives the thread that started it. This thread
// lives as long as the process (it is never joined), so a child's death signal means that its parent process died.
// The main thread ends only with its process: it creates its children itself.
#pragma once

#include <unistd.h>

#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>

#include <mp/detail/config.hpp>

namespace mp::detail {

struct fork_thread_state {
  std::mutex callers;  // one job at a time
  std::mutex mutex;    // guards the members below
  std::condition_variable changed;
  const std::function<void()>* job = nullptr;
  std::exception_ptr error;
  bool done = false;
  bool running = false;  // the thread exists in this process
};

/// This process's fork thread (started at first use by run_on_fork_thread; a forked child starts from scratch).
MP_DECL fork_thread_state& the_fork_thread();

/// The fork thread's loop: runs each job it is given and reports its end (and what it threw).
MP_DECL void serve_fork_jobs(fork_thread_state& state);

/// Runs job on the fork thread (started at first use) and waits for it; rethrows what it threw. A child that job
/// forks is a copy of the fork thread: it has all signals blocked (restore the caller's mask in the child) and the
/// fork thread's thread_local variables.
MP_DECL void run_on_fork_thread(const std::function<void()>& job);

/// True on the thread whose end is the process's end (its tid is the pid).
inline bool on_main_thread() noexcept { return ::gettid() == ::getpid(); }

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/fork_thread.ipp>
#endif
