// What the pool tests share: the per-test leak check (no child process, no new descriptor) and named pipes that
// tasks of any start method open by path (an inherited descriptor would reach only forked workers).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <mp/detail/forkserver.hpp>

#include "support/child_process.hpp"

namespace mp_test {

/// The children of every thread of this process.
inline std::vector<pid_t> children() {
  std::vector<pid_t> pids;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream in(task.path() / "children");
    for (pid_t pid = 0; in >> pid;) pids.push_back(pid);
  }
  return pids;
}

/// Named shared memory in /dev/shm made by this process or its live children (shm_entries_of).
inline std::size_t own_shm_entries() {
  std::vector<pid_t> ours = children();
  ours.push_back(::getpid());
  return shm_entries_of(ours).size();
}

/// "<pid> (<comm>) <state>" of each child, for a failure message.
inline std::string describe_children() {
  std::string text;
  for (pid_t pid : children()) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    std::getline(stat, line);
    text += line.substr(0, line.find(')') + 3) + "; ";
  }
  return text;
}

inline std::size_t count_fds() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

/// Declared first in a test: at its end no child process is left and no descriptor was added.
struct leak_check {
  std::size_t fds = count_fds();
  ~leak_check() {
    // The fork server (start method forkserver) is this process's child and holds a descriptor while it runs:
    // stopping it here also shows that no Pool still needed it.
    mp::detail::stop_forkserver();
    INFO("children left: " << describe_children());
    CHECK(children().empty());
    CHECK(count_fds() == fds);
  }
};

/// A named pipe the test holds open read-write, so neither side's open() blocks: a task reads from it (blocking
/// until the test writes) or writes to it (the test reads).
struct test_fifo {
  std::string path;
  int fd = -1;
  test_fifo() {
    static int counter = 0;
    path = "/tmp/mp-test-fifo-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
    ::unlink(path.c_str());
    REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
    fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    REQUIRE(fd >= 0);
  }
  ~test_fifo() {
    ::close(fd);
    ::unlink(path.c_str());
  }
  test_fifo(const test_fifo&) = delete;
  test_fifo& operator=(const test_fifo&) = delete;
  /// Reads one int a task wrote, failing the test rather than hanging after 20 s.
  int read_int() const {
    pollfd p{fd, POLLIN, 0};
    REQUIRE(::poll(&p, 1, 20'000) == 1);
    int value = 0;
    REQUIRE(::read(fd, &value, sizeof value) == static_cast<ssize_t>(sizeof value));
    return value;
  }
  /// Lets one task blocked in fifo_read() go on.
  void write_int(int value) const { REQUIRE(::write(fd, &value, sizeof value) == sizeof value); }
};

/// Task side: writes an int for the test's read_int() (exit code 98 if it cannot).
inline void fifo_write(const std::string& path, int value) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0 || ::write(fd, &value, sizeof value) != sizeof value) std::_Exit(98);
  ::close(fd);
}

/// Task side: blocks until the test's write_int(), returns the value (exit code 99 if it cannot).
inline int fifo_read(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  int value = 0;
  if (fd < 0 || ::read(fd, &value, sizeof value) != sizeof value) std::_Exit(99);
  ::close(fd);
  return value;
}

}  // namespace mp_test
