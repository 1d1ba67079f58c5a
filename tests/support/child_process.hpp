// What the cross-process tests share: starting a child, collecting its verdict, pipe notes between processes, and
// the /dev/shm names they leave.
#pragma once

#include <unistd.h>

#include <catch2/catch.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <future>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <mp/detail/handle_transfer.hpp>
#include <mp/context.hpp>
#include <mp/detail/unique_fd.hpp>
#include <mp/process.hpp>

namespace mp_test {

#if defined(__SANITIZE_ADDRESS__)
/// AddressSanitizer: its quarantine and shadow memory count in RSS, and every byte moved costs several times more.
inline constexpr bool under_address_sanitizer = true;
#else
inline constexpr bool under_address_sanitizer = false;
#endif
/// The largest item the big-data tests move: 256 MiB under fork; 64 MiB under ASan, where every byte moved costs
/// several times more, and under spawn and forkserver. The start method decides how a child starts and how handles
/// cross, not how an item moves, so items bigger than what the transports keep (128 MiB) are checked once, under
/// fork, and CI does not pay for them three times.
inline std::size_t largest_item() {
  const bool fork = mp::get_start_method() == mp::StartMethod::fork;
  return (under_address_sanitizer || !fork ? std::size_t{64} : std::size_t{256}) << 20;
}

/// Starts target(args...) in a child process.
template <class F, class... Args>
mp::Process start(F&& target, Args&&... args) {
  mp::Process process(std::forward<F>(target), std::forward<Args>(args)...);
  process.start();
  return process;
}

/// Starts target(args...) in a child made by fork whatever the default start method (MP_START_METHOD): for the
/// tests tagged [fork], about what only fork does (the child is a copy of the parent), which ctest runs once.
template <class F, class... Args>
mp::Process start_forked(F&& target, Args&&... args) {
  mp::Process process({.start_method = mp::StartMethod::fork}, std::forward<F>(target), std::forward<Args>(args)...);
  process.start();
  return process;
}

/// Joins and returns the exit code (0: the child's checks passed; 1: it threw; -9: SIGKILL).
inline int finish(mp::Process& process) {
  process.join();
  return *process.exitcode();
}

/// A check inside a child: throwing there ends the child with exit code 1, which the parent asserts on.
inline void child_check(bool condition, const char* what = "") {
  if (!condition) throw std::runtime_error(std::string("child check failed: ") + what);
}

/// Holds `mutex` on another thread for its own lifetime: the lock that fork copies into a child as held forever, by
/// a thread that does not exist there (the reason for spawn and forkserver).
class lock_held_by_another_thread {
 public:
  explicit lock_held_by_another_thread(std::mutex& mutex)
      : holder_([this, &mutex] {
          std::lock_guard lock(mutex);
          locked_.set_value();
          unlock_.get_future().wait();
        }) {
    locked_.get_future().wait();
  }
  ~lock_held_by_another_thread() {
    unlock_.set_value();
    holder_.join();
  }
  lock_held_by_another_thread(const lock_held_by_another_thread&) = delete;
  lock_held_by_another_thread& operator=(const lock_held_by_another_thread&) = delete;

 private:
  std::promise<void> locked_;
  std::promise<void> unlock_;
  std::thread holder_;  // declared last: it starts once the promises exist
};

/// Waits (busy, bounded by time, not by a count of tries) until `done` holds; false if it did not within `limit`.
template <class F>
bool poll_until(F done, std::chrono::seconds limit = std::chrono::seconds(20)) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::yield();
  }
  return true;
}

/// The names in /dev/shm of named shared memory made by these processes ("/mp-<pid>-<n>", shared.hpp). Only theirs,
/// by the exact prefix: the other tests that ctest runs at the same time make and remove their own meanwhile, and
/// their pids or counters may contain ours.
inline std::set<std::string> shm_entries_of(const std::vector<pid_t>& pids) {
  std::set<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm")) {
    std::string name = entry.path().filename().string();
    for (pid_t pid : pids)
      if (name.starts_with("mp-" + std::to_string(pid) + "-")) {
        names.insert(std::move(name));
        break;
      }
  }
  return names;
}

/// Blocks until killed: a child that must be SIGKILLed at a known point.
[[noreturn]] inline void hang() {
  for (;;) ::pause();
}

/// A descriptor as a Process argument: fork copies it, spawn and forkserver send it (the save/load protocol of
/// every mp handle, detail/handle_transfer.hpp). The sender keeps owning its descriptor; the child's copy lives
/// until the child ends. The tests' pipe ends and shared segments derive from it.
struct fd_argument {
  int fd = -1;

  template <class Archive>
  void save(Archive& ar) const {
    ar(mp::detail::export_fd(fd, "test descriptor"));
  }
  template <class Archive>
  void load(Archive& ar) {
    std::uint32_t index = 0;
    ar(index);
    fd = mp::detail::import_fd(index, "test descriptor").release();
  }
};

/// One end of a note_pipe as a Process argument. The note_pipe keeps owning the descriptor.
struct note_end : fd_argument {
  /// Posts one note (usable in a child: no Catch2 macro).
  void post() const {
    const char c = 1;
    (void)!::write(fd, &c, 1);
  }
  /// Blocks until a note arrives; false when every writer is gone without posting.
  bool wait() const {
    char c = 0;
    return ::read(fd, &c, 1) == 1;
  }
};

/// A pipe for "I got here" notes between processes. Pass reader() / writer() to a child as Process arguments.
struct note_pipe {
  note_pipe() {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    read_end = mp::detail::unique_fd(fds[0]);
    write_end = mp::detail::unique_fd(fds[1]);
  }
  void post() const {
    const char c = 1;
    (void)!::write(write_end.get(), &c, 1);
  }
  /// Blocks until a note arrives; false when every writer is gone without posting.
  bool wait() const {
    char c = 0;
    return ::read(read_end.get(), &c, 1) == 1;
  }
  note_end reader() const { return {read_end.get()}; }
  note_end writer() const { return {write_end.get()}; }
  mp::detail::unique_fd read_end, write_end;
};

}  // namespace mp_test
