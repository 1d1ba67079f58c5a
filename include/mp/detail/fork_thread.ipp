// fork_thread: definitions (see fork_thread.hpp).
#pragma once

#include <pthread.h>
#include <signal.h>

#include <new>
#include <thread>
#include <utility>

#include <mp/detail/fork_thread.hpp>

namespace mp::detail {

MP_DECL fork_thread_state& the_fork_thread() {
  // Leaked: a Process may be started from a static destructor, and a running thread's state must outlive it.
  static fork_thread_state* state = [] {
    auto* created = new fork_thread_state;
    // In a forked child the thread does not exist, and the child's copies of the mutexes may be held by a thread
    // that does not exist either: the child starts from scratch (a fresh thread at its first use).
    ::pthread_atfork(nullptr, nullptr, [] {
      fork_thread_state& self = the_fork_thread();
      new (&self.callers) std::mutex;
      new (&self.mutex) std::mutex;
      new (&self.changed) std::condition_variable;
      self.job = nullptr;
      self.error = nullptr;
      self.done = false;
      self.running = false;
    });
    return created;
  }();
  return *state;
}

MP_DECL void serve_fork_jobs(fork_thread_state& state) {
  std::unique_lock lock(state.mutex);
  for (;;) {
    state.changed.wait(lock, [&] { return state.job != nullptr && !state.done; });
    const std::function<void()>* job = state.job;
    lock.unlock();
    std::exception_ptr error;
    try {
      (*job)();  // in a child it forks, the job ends with _exit: it never comes back here
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    state.error = error;
    state.done = true;
    state.changed.notify_all();
  }
}

MP_DECL void run_on_fork_thread(const std::function<void()>& job) {
  fork_thread_state& state = the_fork_thread();
  std::lock_guard one_at_a_time(state.callers);
  std::unique_lock lock(state.mutex);
  if (!state.running) {
    // Started with every signal blocked, so that no signal meant for the program is handled on this thread.
    sigset_t all;
    sigset_t previous;
    sigfillset(&all);
    ::pthread_sigmask(SIG_SETMASK, &all, &previous);
    try {
      std::thread([&state] { serve_fork_jobs(state); }).detach();
    } catch (...) {
      ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
      throw;
    }
    ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
    state.running = true;
  }
  state.job = &job;
  state.done = false;
  state.changed.notify_all();
  state.changed.wait(lock, [&] { return state.done; });
  state.job = nullptr;
  state.done = false;
  if (state.error) std::rethrow_exception(std::exchange(state.error, nullptr));
}

}  // namespace mp::detail
