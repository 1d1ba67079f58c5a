// Tests of mp/sync.hpp and detail/robust_mutex.hpp across real processes.
#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <new>

#include <mp/detail/robust_mutex.hpp>
#include <mp/detail/shm_segment.hpp>
#include <mp/detail/unique_fd.hpp>

namespace {

using namespace std::chrono_literals;

// Runs f in a forked child that ends with _exit: 0 if f returned, 99 if it threw.
template <class F>
pid_t fork_child(F f) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int code = 0;
    try {
      f();
    } catch (...) {
      code = 99;
    }
    ::_exit(code);
  }
  return pid;
}

// Reaps pid: its exit code, or -N if signal N killed it.
int reap(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
  }
  return WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
}

// A pipe for "I got here" notes between processes (no sleeps).
struct signal_pipe {
  signal_pipe() {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    read_end = mp::detail::unique_fd(fds[0]);
    write_end = mp::detail::unique_fd(fds[1]);
  }
  void notify() const {
    char c = 1;
    (void)!::write(write_end.get(), &c, 1);
  }
  bool wait() const {
    char c = 0;
    return ::read(read_end.get(), &c, 1) == 1;
  }
  mp::detail::unique_fd read_end, write_end;
};

// A robust_mutex and a counter in a fresh shared segment.
struct shared_mutex_block {
  struct layout {
    mp::detail::robust_mutex mutex;
    std::int64_t counter = 0;
  };
  shared_mutex_block() : segment(mp::detail::shm_segment::create(sizeof(layout), "robust_mutex_test")) {
    block = new (segment.data()) layout();
  }
  mp::detail::shm_segment segment;
  layout* block;
};

}  // namespace

TEST_CASE("robust_mutex gives exactly 400000 for 4 processes x 100000 increments", "[robust_mutex]") {
  shared_mutex_block shared;
  auto* block = shared.block;
  pid_t children[4];
  for (auto& child : children) {
    child = fork_child([block] {
      for (int i = 0; i < 100'000; ++i) {
        block->mutex.lock();
        block->counter = block->counter + 1;
        block->mutex.unlock();
      }
    });
  }
  for (auto child : children) CHECK(reap(child) == 0);
  CHECK(block->counter == 400'000);
}

TEST_CASE("robust_mutex try_lock and try_lock_until fail while another process holds it", "[robust_mutex]") {
  shared_mutex_block shared;
  auto* block = shared.block;
  signal_pipe locked, release;
  const pid_t holder = fork_child([&] {
    block->mutex.lock();
    locked.notify();
    release.wait();
    block->mutex.unlock();
  });
  REQUIRE(locked.wait());
  CHECK_FALSE(block->mutex.try_lock());
  const auto start = std::chrono::steady_clock::now();
  CHECK_FALSE(block->mutex.try_lock_until(mp::detail::deadline_after(50ms)));
  CHECK(std::chrono::steady_clock::now() - start >= 50ms);
  release.notify();
  CHECK(reap(holder) == 0);
  CHECK(block->mutex.try_lock());
  CHECK_FALSE(block->mutex.previous_owner_died());
  block->mutex.unlock();
}

TEST_CASE("robust_mutex passes to a waiter within 1 s when its holder is SIGKILLed", "[robust_mutex]") {
  shared_mutex_block shared;
  auto* block = shared.block;
  signal_pipe locked;
  const pid_t holder = fork_child([&] {
    block->mutex.lock();
    block->counter = -1;  // "half-updated" state the next holder must repair
    locked.notify();
    for (;;) ::pause();
  });
  REQUIRE(locked.wait());

  SECTION("a waiter blocked in lock() in another process") {
    signal_pipe result;
    const pid_t waiter = fork_child([&] {
      locked.notify();
      const bool got = block->mutex.try_lock_until(mp::detail::deadline_after(5s));
      if (!got || !block->mutex.previous_owner_died()) ::_exit(1);
      block->counter = 0;
      block->mutex.unlock();
      if (block->mutex.previous_owner_died()) ::_exit(2);
    });
    REQUIRE(locked.wait());
    const auto killed_at = std::chrono::steady_clock::now();
    ::kill(holder, SIGKILL);
    CHECK(reap(holder) == -SIGKILL);
    CHECK(reap(waiter) == 0);
    CHECK(std::chrono::steady_clock::now() - killed_at < 1s);
    CHECK(block->counter == 0);
  }
  SECTION("the next lock() after the death") {
    ::kill(holder, SIGKILL);
    CHECK(reap(holder) == -SIGKILL);
    REQUIRE(block->mutex.try_lock_until(mp::detail::deadline_after(1s)));
    CHECK(block->mutex.previous_owner_died());
    CHECK(block->counter == -1);
    block->counter = 0;
    block->mutex.unlock();
    block->mutex.lock();
    CHECK_FALSE(block->mutex.previous_owner_died());
    block->mutex.unlock();
  }
}

TEST_CASE("robust_mutex refuses a release by a process that does not hold it", "[robust_mutex]") {
  shared_mutex_block shared;
  auto* block = shared.block;
  CHECK_THROWS_WITH(block->mutex.unlock(), Catch::Contains("does not hold"));
  signal_pipe locked, release;
  const pid_t holder = fork_child([&] {
    block->mutex.lock();
    locked.notify();
    release.wait();
    block->mutex.unlock();
  });
  REQUIRE(locked.wait());
  CHECK_THROWS_AS(block->mutex.unlock(), mp::Error);
  release.notify();
  CHECK(reap(holder) == 0);
}

TEST_CASE("robust_mutex relocked by its holder throws instead of deadlocking", "[robust_mutex]") {
  shared_mutex_block shared;
  auto* block = shared.block;
  block->mutex.lock();
  CHECK_FALSE(block->mutex.try_lock());
  CHECK_THROWS_WITH(block->mutex.lock(), Catch::Contains("already holds"));
  CHECK_FALSE(block->mutex.try_lock_until(mp::detail::deadline_after(10ms)));
  block->mutex.unlock();
}
