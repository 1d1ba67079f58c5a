// Tests for mp/pool.hpp: Pool, AsyncResult, IMapIterator. Everything runs in real worker processes; tests
// synchronize with named pipes (a task reports its pid, waits for a byte), never with sleeps. The suite runs under
// every start method (MP_START_METHOD); tests tagged [fork] are about what only fork gives (a worker is a copy of
// the parent) and are skipped under the others. Tasks are functions or lambdas without captures, their data
// passed as arguments, so that they cross to fresh workers too.
#include <catch2/catch.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <numeric>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <mp/pool.hpp>
#include <mp/process.hpp>

#include "support/child_process.hpp"
#include "support/pool_checks.hpp"

using namespace std::chrono_literals;

namespace {

using mp_test::children;
using mp_test::count_fds;
using mp_test::describe_children;
using mp_test::leak_check;
using mp_test::test_fifo;

// Task side (support/pool_checks.hpp): report(path, value) for the test's read_int(), wait_for_int(path) until
// its write_int().
void report(const std::string& path, int value) { mp_test::fifo_write(path, value); }
int wait_for_int(const std::string& path) { return mp_test::fifo_read(path); }
// Reports the worker's pid, then blocks until killed.
int report_and_hang(std::string path) {
  report(path, ::getpid());
  for (;;) ::pause();
}

// Waits (at most 20 s) until process `pid` has ended; true if it did. It need not be our child.
bool ended_within_20s(pid_t pid) {
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) return errno == ESRCH;  // already gone and reaped
  pollfd p{pidfd, POLLIN, 0};
  const bool ended = ::poll(&p, 1, 20'000) == 1;
  ::close(pidfd);
  return ended;
}

// Reaps the processes re-parented to this test (the runner is a subreaper) once their parent died: until none is
// left but this process's own fork server. Repeats, because reaping one (a dying fork server) may hand us its
// children; a process re-parented to us is always listed before its old parent can be reaped.
void reap_orphans() {
  const pid_t server = mp::detail::forkserver_pid();
  for (;;) {
    std::vector<pid_t> orphans = children();
    std::erase(orphans, server);
    if (orphans.empty()) return;
    for (pid_t orphan : orphans) ::waitpid(orphan, nullptr, 0);
  }
}

const char* method_name(mp::StartMethod method) {
  return method == mp::StartMethod::fork ? "fork" : method == mp::StartMethod::spawn ? "spawn" : "forkserver";
}

// Test inputs as plain ranges (clang 14 cannot compile libstdc++ 12's std::views).
std::vector<int> numbers(int first, int last) {
  std::vector<int> v(static_cast<std::size_t>(last - first));
  std::iota(v.begin(), v.end(), first);
  return v;
}

// An input range that can be read once and does not know its size (a generator, a socket).
struct single_pass {
  const std::vector<int>* items;
  struct iterator {
    using value_type = int;
    using difference_type = std::ptrdiff_t;
    const std::vector<int>* items;
    std::size_t i;
    int operator*() const { return (*items)[i]; }
    iterator& operator++() {
      ++i;
      return *this;
    }
    void operator++(int) { ++i; }
    friend bool operator==(const iterator& it, std::default_sentinel_t) { return it.i == it.items->size(); }
  };
  iterator begin() const { return {items, 0}; }
  std::default_sentinel_t end() const { return {}; }
};

// 0, 1, 2, ... forever, counting how many values were pulled.
struct endless_counter {
  long* pulled;
  struct iterator {
    using value_type = long;
    using difference_type = std::ptrdiff_t;
    long* pulled;
    long value;
    long operator*() const { return value; }
    iterator& operator++() {
      ++value;
      ++*pulled;
      return *this;
    }
    void operator++(int) { ++*this; }
  };
  iterator begin() const { return {pulled, 0}; }
  std::unreachable_sentinel_t end() const { return {}; }
};

int square(int x) { return x * x; }
std::string describe(int x) { return "item " + std::to_string(x); }
long add3(int a, long b, short c) { return a + b + c; }

int g_initialized_in = 0;  // the pid whose initializer ran, in each worker
void remember_initialization() { g_initialized_in = ::getpid(); }
void failing_initializer() { throw std::runtime_error("no database"); }

int g_set_in_parent = 0;  // set by a test in the parent before it creates a Pool

struct scaled {  // a function object with a std::string member: crosses through its serialize member
  std::string prefix;
  int factor = 1;
  std::string operator()(int x) const { return prefix + std::to_string(x * factor); }
  template <class Archive>
  void serialize(Archive& ar) {
    ar(prefix, factor);
  }
};

// The "library" whose lock another thread of the parent holds forever (a logger, an allocator arena).
std::mutex& library_mutex() {
  static std::mutex mutex;
  return mutex;
}
int library_call(int x) {
  std::lock_guard lock(library_mutex());
  return x + 42;
}

}  // namespace

TEST_CASE("Pool::map, imap and starmap equal the serial results on 10k items for every chunk size", "[pool]") {
  leak_check leaks;
  std::vector<int> input(10'000);
  std::iota(input.begin(), input.end(), -5000);
  std::vector<int> squares;
  std::vector<std::string> names;
  for (int x : input) {
    squares.push_back(square(x));
    names.push_back(describe(x));
  }
  const std::size_t chunksize = GENERATE(0, 1, 7, 333, 10'000, 20'000);
  mp::Pool pool(3);
  SECTION("map with a function pointer, a trivially copyable result") {
    CHECK(pool.map(square, input, chunksize) == squares);
  }
  SECTION("map with a std::string result") { CHECK(pool.map(describe, input, chunksize) == names); }
  SECTION("map over a single-pass, unsized input range") {
    std::vector<int> expected;
    for (int x : input) expected.push_back(square(x));
    CHECK(pool.map(square, single_pass{&input}, chunksize) == expected);
  }
  SECTION("imap keeps input order") {
    std::vector<std::string> got;
    for (const std::string& s : pool.imap(describe, input, std::max<std::size_t>(1, chunksize))) got.push_back(s);
    CHECK(got == names);
  }
  SECTION("imap_unordered yields every result exactly once") {
    std::vector<int> got;
    for (int s : pool.imap_unordered(square, input, std::max<std::size_t>(1, chunksize))) got.push_back(s);
    std::vector<int> expected = squares;
    std::sort(got.begin(), got.end());
    std::sort(expected.begin(), expected.end());
    CHECK(got == expected);
  }
  SECTION("starmap unpacks tuples") {
    std::vector<std::tuple<int, long, short>> triples;
    std::vector<long> expected;
    for (int x : input) {
      triples.emplace_back(x, 2L * x, static_cast<short>(x % 100));
      expected.push_back(add3(x, 2L * x, static_cast<short>(x % 100)));
    }
    CHECK(pool.starmap(add3, triples, chunksize) == expected);
    CHECK(pool.starmap_async(add3, triples, chunksize).get() == expected);
  }
}

TEST_CASE("Pool::apply runs functions, lambdas without captures and serializable function objects", "[pool]") {
  leak_check leaks;
  mp::Pool pool(2);
  CHECK(pool.apply([] { return ::getpid(); }) != ::getpid());
  CHECK(pool.apply(square, 12) == 144);
  CHECK(pool.apply(scaled{"x=", 3}, 14) == "x=42");
  CHECK(pool.apply([](const std::string& s, std::vector<int> v) { return s + std::to_string(v.size()); }, "n", std::vector<int>(5)) == "n5");
  CHECK(pool.map(square, {1, 2, 3}) == std::vector<int>{1, 4, 9});  // a braced list, as Python's [1, 2, 3]
  std::vector<int> from_list;
  for (int x : pool.imap(square, {4, 5})) from_list.push_back(x);
  CHECK(from_list == std::vector<int>{16, 25});
  pool.apply([](int) {}, 1);  // void
  pool.map([](int) {}, numbers(0, 100), 7);
  pool.map_async([](int) {}, numbers(0, 100)).get();
  auto done = pool.apply_async([](int) {}, 1);
  done.get();
  CHECK(done.successful());
}

// Fork only: a fresh worker (spawn, forkserver) cannot tell such captures from references, so they are refused
// there (tested below).
TEST_CASE("Under fork a lambda's trivially copyable captures cross to the worker", "[pool][fork]") {
  leak_check leaks;
  mp::Pool pool({.processes = 2, .start_method = mp::StartMethod::fork});
  int offset = 1000;
  double ratio = 0.5;
  CHECK(pool.apply([offset, ratio](int x) { return (x + offset) * ratio; }, 10) == 505.0);
  CHECK(pool.map([offset](int x) { return x + offset; }, numbers(0, 3)) == std::vector<int>{1000, 1001, 1002});
}

// Fork only: the worker is a copy of the parent as it was when the Pool was created, its memory included.
TEST_CASE("Under fork a lambda capturing by reference sees the worker's copy of the parent's memory", "[pool][fork]") {
  leak_check leaks;
  int value = 5;
  mp::Pool pool({.processes = 1, .start_method = mp::StartMethod::fork});
  value = 6;  // after the fork of the factory: the workers still see 5
  CHECK(pool.apply([&value] { return value; }) == 5);
}

TEST_CASE("An exception in a task reaches the caller with its standard type and the pool stays usable", "[pool]") {
  leak_check leaks;
  mp::Pool pool(2);
  SECTION("apply / get") {
    auto result = pool.apply_async([](int x) -> int { throw std::invalid_argument("bad x = " + std::to_string(x)); }, 7);
    CHECK_THROWS_MATCHES(result.get(), std::invalid_argument, Catch::Matchers::Message("bad x = 7"));
    CHECK(result.ready());
    CHECK_FALSE(result.successful());
    try {
      (void)result.get();
    } catch (const mp::RemoteInfo& e) {
      CHECK(e.remote_type() == "std::invalid_argument");
    }
  }
  SECTION("map raises the first failed item's error") {
    auto f = [](int x) {
      if (x == 5000 || x == 7000) throw std::runtime_error("item " + std::to_string(x));
      return x;
    };
    const std::size_t chunksize = GENERATE(0, 1, 64);
    CHECK_THROWS_MATCHES(pool.map(f, numbers(0, 10'000), chunksize), std::runtime_error,
                         Catch::Matchers::Message("item 5000"));
  }
  SECTION("imap raises at the failing position and goes on after it") {
    auto f = [](int x) {
      if (x == 3) throw std::out_of_range("three");
      return x;
    };
    const std::size_t chunksize = GENERATE(1, 2, 10);
    auto results = pool.imap(f, numbers(0, 6), chunksize);
    auto it = results.begin();
    std::vector<int> before;
    for (int i = 0; i < 3; ++i, ++it) before.push_back(*it);
    CHECK(before == std::vector<int>{0, 1, 2});
    CHECK_THROWS_MATCHES(*it, std::out_of_range, Catch::Matchers::Message("three"));
    ++it;
    // Python's imap goes on after the failed item; with chunks, the rest of the failed chunk never ran.
    std::vector<int> after;
    for (; it != results.end(); ++it) after.push_back(*it);
    if (chunksize == 1) CHECK(after == std::vector<int>{4, 5});
    if (chunksize == 10) CHECK(after.empty());
  }
  CHECK(pool.map(square, std::vector<int>{1, 2, 3}) == std::vector<int>{1, 4, 9});
}

namespace {

/// SIGKILLs the worker running a hanging task while `others` more tasks wait, and checks that only that task fails
/// (WorkerLost, -SIGKILL, naming the worker), the others finish, and later tasks run on a replacement.
void kill_a_worker_mid_task(mp::Pool& pool, int others) {
  test_fifo started;
  auto victim = pool.apply_async(report_and_hang, started.path);
  std::vector<mp::AsyncResult<int>> waiting;
  for (int i = 0; i < others; ++i) waiting.push_back(pool.apply_async(square, i));
  const pid_t worker = started.read_int();
  REQUIRE(::kill(worker, SIGKILL) == 0);
  try {
    (void)victim.get();
    FAIL("the killed task returned a value");
  } catch (const mp::WorkerLost& e) {
    CHECK(e.exitcode() == -SIGKILL);
    CHECK(std::string(e.what()).find(std::to_string(worker)) != std::string::npos);
  }
  for (int i = 0; i < others; ++i) CHECK(waiting[i].get() == i * i);
  std::set<int> pids;
  for (int pid : pool.map([](int) { return ::getpid(); }, std::vector<int>(200), 1)) pids.insert(pid);
  CHECK(pids.count(worker) == 0);
  CHECK_FALSE(pids.empty());
}

}  // namespace

TEST_CASE("A worker SIGKILLed mid-task fails only its task with WorkerLost - the others finish", "[pool]") {
  leak_check leaks;
  mp::Pool pool(2);
  kill_a_worker_mid_task(pool, 50);
  // The pool replaced the worker and keeps serving on both.
  CHECK(pool.map(square, numbers(0, 100), 1).size() == 100);
}

TEST_CASE("A task that crashes its worker (segfault, abort, _exit) fails with WorkerLost carrying the exit code", "[pool]") {
  leak_check leaks;
  mp::Pool pool(2);
  struct crash {
    int how = 0;
    int operator()(int x) const {
      if (x != 13) return x;
      // Catch2's crash handlers are inherited through fork: restore the default action, a real crash.
      ::signal(SIGSEGV, SIG_DFL);
      ::signal(SIGABRT, SIG_DFL);
      if (how == 0) ::raise(SIGSEGV);
      if (how == 1) std::abort();
      ::_exit(3);
    }
  };
  const int how = GENERATE(0, 1, 2);
  const int expected = how == 0 ? -SIGSEGV : how == 1 ? -SIGABRT : 3;
  try {
    (void)pool.map(crash{how}, numbers(0, 40), 1);
    FAIL("map returned despite a crashed item");
  } catch (const mp::WorkerLost& e) {
    CHECK(e.exitcode() == expected);
  }
  // Only item 13 failed: the others completed.
  auto results = pool.map_async(crash{how}, numbers(14, 60), 1);
  CHECK(results.get().size() == 46);
}

TEST_CASE("maxtasksperchild replaces each worker after that many tasks, and the initializer runs in replacements", "[pool]") {
  leak_check leaks;
  mp::Pool pool({.processes = 2, .initializer = remember_initialization, .maxtasksperchild = 3});
  auto report_pid = [](int) { return std::pair<int, bool>(::getpid(), g_initialized_in == ::getpid()); };
  const auto results = pool.map(report_pid, std::vector<int>(30), 1);
  std::map<int, int> tasks_per_pid;
  for (const auto& [pid, initialized] : results) {
    CHECK(initialized);
    ++tasks_per_pid[pid];
  }
  CHECK(tasks_per_pid.size() >= 10);  // 30 tasks, at most 3 per worker
  for (const auto& [pid, tasks] : tasks_per_pid) CHECK(tasks <= 3);
}

TEST_CASE("The initializer runs in a replacement for a killed worker", "[pool]") {
  leak_check leaks;
  mp::Pool pool({.processes = 1, .initializer = +[] { g_initialized_in = ::getpid(); }});
  const int first = pool.apply([] { return g_initialized_in; });
  auto dead = pool.apply_async([] { return ::raise(SIGKILL); });
  CHECK_THROWS_AS(dead.get(), mp::WorkerLost);
  const auto [pid, init_pid] = pool.apply([] { return std::pair<int, int>(::getpid(), g_initialized_in); });
  CHECK(pid != first);
  CHECK(init_pid == pid);
}

TEST_CASE("AsyncResult::get(timeout) throws TimeoutError and a later get() still returns the value", "[pool]") {
  leak_check leaks;
  test_fifo go;
  mp::Pool pool(1);
  auto result = pool.apply_async([](const std::string& path) { return wait_for_int(path) * 2; }, go.path);
  CHECK_THROWS_AS(result.get(30ms), mp::TimeoutError);
  CHECK_FALSE(result.wait(10ms));
  CHECK_FALSE(result.ready());
  CHECK_THROWS_AS(result.successful(), mp::Error);
  go.write_int(21);
  CHECK(result.get(20s) == 42);
  CHECK(result.get() == 42);
  CHECK(result.successful());
}

TEST_CASE("A task over its task_timeout is killed and fails alone while the others finish", "[pool]") {
  leak_check leaks;
  test_fifo never;  // nobody writes: the task blocks until killed
  auto stuck = [](const std::string& path, int x) { return wait_for_int(path) + x; };
  SECTION("PoolOptions::task_timeout") {
    // Generous: the quick tasks share it, and a worker preempted for a while on a loaded machine must not be killed.
    // The stuck task costs it once.
    mp::Pool pool({.processes = 2, .task_timeout = 3s});
    auto late = pool.apply_async(stuck, never.path, 1);
    std::vector<mp::AsyncResult<int>> others;
    for (int i = 0; i < 20; ++i) others.push_back(pool.apply_async(square, i));
    CHECK_THROWS_AS(late.get(), mp::TimeoutError);
    for (int i = 0; i < 20; ++i) CHECK(others[i].get() == i * i);
    CHECK(pool.apply(square, 12) == 144);
  }
  SECTION("TaskOptions::timeout on one apply_async") {
    mp::Pool pool(2);
    auto late = pool.apply_async(mp::TaskOptions{.timeout = 100ms}, stuck, never.path, 1);
    auto fine = pool.apply_async(square, 5);
    try {
      (void)late.get();
      FAIL("the stuck task returned");
    } catch (const mp::TimeoutError& e) {
      CHECK(std::string(e.what()).find("100 ms") != std::string::npos);
    }
    CHECK(fine.get() == 25);
  }
}

TEST_CASE("Pool::terminate stops the workers at once and pending results fail instead of hanging", "[pool]") {
  leak_check leaks;
  test_fifo never;
  mp::Pool pool(2);
  std::vector<mp::AsyncResult<int>> results;
  for (int i = 0; i < 20; ++i)
    results.push_back(pool.apply_async([](const std::string& path, int x) { return wait_for_int(path) + x; }, never.path, i));
  auto mapped = pool.map_async(square, numbers(0, 1000), 1);
  pool.terminate();
  for (auto& r : results) CHECK_THROWS_WITH(r.get(), Catch::Matchers::Contains("terminate"));
  CHECK_THROWS_AS(mapped.get(), mp::Error);
  CHECK_THROWS_WITH(pool.apply_async(square, 1), Catch::Matchers::Contains("terminated"));
  pool.join();
}

TEST_CASE("close() refuses new work, join() waits for submitted work, ~Pool never drops it", "[pool]") {
  leak_check leaks;
  test_fifo go;
  std::optional<mp::AsyncResult<int>> result;
  {
    mp::Pool pool(2);
    CHECK_THROWS_WITH(pool.join(), Catch::Matchers::Contains("close()"));
    result = pool.apply_async(wait_for_int, go.path);
    pool.close();
    CHECK_THROWS_WITH(pool.apply_async(square, 2), Catch::Matchers::Contains("closed"));
    go.write_int(7);
  }  // ~Pool waits for the task
  CHECK(result->ready());
  CHECK(result->get() == 7);
}

TEST_CASE("imap over an endless input keeps a bounded number of items in flight", "[pool]") {
  leak_check leaks;
  mp::Pool pool(2);
  long pulled = 0;
  const endless_counter endless{&pulled};
  const std::size_t chunksize = GENERATE(1, 16);
  std::size_t consumed = 0;
  std::size_t worst = 0;
  for (long x : pool.imap([](long v) { return v * 3; }, endless, chunksize)) {
    CHECK(x == static_cast<long>(consumed) * 3);
    ++consumed;
    worst = std::max(worst, static_cast<std::size_t>(pulled) - consumed);
    if (consumed == 20'000) break;
  }
  // At most 4 chunks per worker + 2 ahead of the consumer, plus the chunk being read.
  CHECK(worst <= (4 * pool.processes() + 3) * chunksize);
}

TEST_CASE("Pool rejects nonsense options with a clear error", "[pool]") {
  leak_check leaks;
  CHECK_THROWS_WITH(mp::Pool({.processes = 1, .task_timeout = 0ms}), Catch::Matchers::Contains("task_timeout"));
  CHECK_THROWS_WITH(mp::Pool(100'000), Catch::Matchers::Contains("100000"));
}

TEST_CASE("A Pool can be used from several threads at once", "[pool]") {
  leak_check leaks;
  mp::Pool pool(2);
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i)
        if (pool.apply(square, t * 1000 + i) != square(t * 1000 + i)) ++wrong;
      auto v = pool.map(square, numbers(0, 500), 3);
      for (int i = 0; i < 500; ++i)
        if (v[i] != i * i) ++wrong;
    });
  }
  for (auto& th : threads) th.join();
  CHECK(wrong == 0);
}

TEST_CASE("Large arguments and results stream through the channels", "[pool]") {
  leak_check leaks;
  mp::Pool pool(2);
  std::vector<double> big(3'000'000, 1.5);  // 24 MB each way, channels hold 1 MiB
  auto doubled = pool.apply([](std::vector<double> v) {
    for (double& x : v) x *= 2;
    return v;
  }, big);
  REQUIRE(doubled.size() == big.size());
  CHECK(doubled.front() == 3.0);
  CHECK(doubled.back() == 3.0);
  std::string text(5'000'000, 'x');
  CHECK(pool.map([](const std::string& s) { return s.size(); }, std::vector<std::string>(3, text)) ==
        std::vector<std::size_t>(3, text.size()));
}

TEST_CASE("An initializer that always throws breaks the pool with its message instead of respawning forever", "[pool]") {
  leak_check leaks;
  mp::Pool pool({.processes = 2, .initializer = failing_initializer});
  auto result = pool.apply_async([] { return 1; });
  CHECK_THROWS_WITH(result.get(), Catch::Matchers::Contains("initializer failed") &&
                                      Catch::Matchers::Contains("std::runtime_error: no database"));
  CHECK_THROWS_WITH(pool.apply_async([] { return 2; }), Catch::Matchers::Contains("broken"));
}

TEST_CASE("If the worker factory is killed, pending results fail with a clear error and nothing hangs", "[pool]") {
  leak_check leaks;
  test_fifo started;
  std::optional<mp::AsyncResult<int>> blocked;
  pid_t worker = 0;
  {
    mp::Pool pool(2);
    blocked = pool.apply_async([](std::string path) {
      report(path, ::getppid());  // the factory: workers are its children, not ours
      return report_and_hang(path);
    }, started.path);
    const pid_t factory = started.read_int();
    worker = started.read_int();
    INFO("factory " << factory << ", worker " << worker);
    CHECK(factory != ::getpid());
    REQUIRE(::kill(factory, SIGKILL) == 0);
    CHECK_THROWS_WITH(blocked->get(), Catch::Matchers::Contains("factory"));
    CHECK_THROWS_WITH(pool.apply_async(square, 1), Catch::Matchers::Contains("broken"));
  }
  // The workers die with the factory (PR_SET_PDEATHSIG). The test runner is a subreaper, so they were re-parented
  // to this process: the pool reaps the ones it knew; one the factory was forking at the instant it died (its pid
  // never reported) exits by itself (PR_SET_PDEATHSIG, or its parent check) and is ours to reap.
  CHECK(ended_within_20s(worker));
  reap_orphans();
}

TEST_CASE("A Pool's copy in a forked child refuses to be used instead of hanging", "[pool]") {
  leak_check leaks;
  mp::Pool pool(1);
  // Only fork copies a Pool into a child, whatever start method the Pool's own workers use.
  mp::Process child({.start_method = mp::StartMethod::fork}, [&pool] {
    try {
      (void)pool.apply(square, 3);
    } catch (const mp::Error& e) {
      if (std::string(e.what()).find("works only in the process that created it") != std::string::npos) return;
    }
    std::exit(3);
  });
  child.start();
  child.join();
  CHECK(child.exitcode() == 0);
  CHECK(pool.apply(square, 3) == 9);  // the owner's pool is untouched
}

TEST_CASE("terminate() from another thread ends a join() that waits for a stuck task", "[pool]") {
  leak_check leaks;
  test_fifo started;
  test_fifo never;
  mp::Pool pool(1);
  auto stuck = pool.apply_async([](const std::string& report_to, const std::string& wait_on) {
    report(report_to, ::getpid());
    return wait_for_int(wait_on);
  }, started.path, never.path);
  (void)started.read_int();
  pool.close();
  std::thread joiner([&] { pool.join(); });
  pool.terminate();
  joiner.join();
  CHECK_THROWS_WITH(stuck.get(), Catch::Matchers::Contains("terminate"));
}

// ---- start methods ----

TEST_CASE("Every start method runs functions, lambdas without captures and serializable function objects", "[pool]") {
  leak_check leaks;
  const mp::StartMethod method = GENERATE(mp::StartMethod::fork, mp::StartMethod::spawn, mp::StartMethod::forkserver);
  INFO("start method " << method_name(method));
  mp::Pool pool({.processes = 2, .initializer = remember_initialization, .start_method = method});
  CHECK(pool.map(square, numbers(0, 1000), 7) == [] {
    std::vector<int> v;
    for (int x : numbers(0, 1000)) v.push_back(square(x));
    return v;
  }());
  CHECK(pool.apply(describe, 3) == "item 3");
  CHECK(pool.apply([](int x) { return x * 2 + 1; }, 20) == 41);
  CHECK(pool.apply(scaled{"x=", 3}, 14) == "x=42");
  CHECK(pool.starmap(add3, std::vector<std::tuple<int, long, short>>{{1, 2, 3}}) == std::vector<long>{6});
  std::vector<int> lazy;
  for (int x : pool.imap(square, numbers(0, 5))) lazy.push_back(x);
  CHECK(lazy == std::vector<int>{0, 1, 4, 9, 16});
  const auto [pid, initialized_in] = pool.apply([] { return std::pair<int, int>(::getpid(), g_initialized_in); });
  CHECK(pid != ::getpid());
  CHECK(initialized_in == pid);
  CHECK_THROWS_MATCHES(pool.apply([](int x) -> int { throw std::invalid_argument("bad " + std::to_string(x)); }, 7),
                       std::invalid_argument, Catch::Matchers::Message("bad 7"));
}

TEST_CASE("Workers of a spawn or forkserver Pool are fresh: a lock another parent thread holds forever does not "
          "deadlock them, and the parent's globals are not copied", "[pool]") {
  leak_check leaks;
  const mp::StartMethod method = GENERATE(mp::StartMethod::spawn, mp::StartMethod::forkserver, mp::StartMethod::fork);
  INFO("start method " << method_name(method));
  g_set_in_parent = 7;
  mp_test::lock_held_by_another_thread held(library_mutex());
  {
    // The pool-wide timeout only turns a deadlocked fresh worker into a failure rather than a hang: generous, as the
    // quick tasks must meet it too. The task meant to hang has its own.
    mp::Pool pool({.processes = 2, .start_method = method, .task_timeout = 5s});
    if (method == mp::StartMethod::fork) {
      // The factory's copy of the mutex is held by a thread that does not exist there: the task can never get it.
      CHECK_THROWS_AS(pool.apply_async(mp::TaskOptions{.timeout = 300ms}, library_call, 1).get(), mp::TimeoutError);
      CHECK(pool.apply([] { return g_set_in_parent; }) == 7);
    } else {
      CHECK(pool.map(library_call, numbers(0, 20), 1) == [] {
        std::vector<int> v;
        for (int x : numbers(0, 20)) v.push_back(x + 42);
        return v;
      }());
      CHECK(pool.apply([] { return g_set_in_parent; }) == 0);
    }
  }
  g_set_in_parent = 0;
}

TEST_CASE("Under spawn a lambda with captures is refused at submission with a clear ProcessError", "[pool]") {
  leak_check leaks;
  mp::Pool pool({.processes = 1, .start_method = mp::StartMethod::spawn});
  int offset = 1;
  auto capturing = [offset](int x) { return x + offset; };
  // Each refusal names the call, says why, and says what to do.
  auto refusal = [](auto&& submit) -> std::string {
    try {
      submit();
    } catch (const mp::ProcessError& e) {
      return e.what();
    }
    return "(nothing thrown)";
  };
  const std::string why = "cannot cross to the workers of a Pool started by spawn or forkserver";
  const std::string fix = "pass captured values as arguments";
  for (const auto& [what, call] : std::vector<std::pair<std::string, std::string>>{
           {refusal([&] { (void)pool.apply_async(capturing, 1); }), "Pool::apply_async"},
           {refusal([&] { (void)pool.apply(capturing, 1); }), "Pool::apply_async"},
           {refusal([&] { (void)pool.map(capturing, numbers(0, 3)); }), "Pool::map"},
           {refusal([&] { (void)pool.map_async(capturing, numbers(0, 3)); }), "Pool::map_async"},
           {refusal([&] { (void)pool.imap(capturing, numbers(0, 3)); }), "Pool::imap"},
           {refusal([&] { (void)pool.starmap([offset](int a, int b) { return a + b + offset; },
                                              std::vector<std::pair<int, int>>{{1, 2}}); }),
            "Pool::starmap"}}) {
    CHECK_THAT(what, Catch::Matchers::StartsWith(call + ": the function, of type "));
    CHECK_THAT(what, Catch::Matchers::Contains(why));
    CHECK_THAT(what, Catch::Matchers::Contains(fix));
  }
  // The value passed as an argument instead works, and the pool is unharmed.
  CHECK(pool.apply([](int x, int add) { return x + add; }, 1, offset) == 2);
}

TEST_CASE("Under spawn an initializer must cross: a lambda with captures is refused, one without works", "[pool]") {
  leak_check leaks;
  const mp::StartMethod method = GENERATE(mp::StartMethod::spawn, mp::StartMethod::forkserver);
  INFO("start method " << method_name(method));
  int value = 3;
  try {
    mp::Pool pool({.processes = 1, .initializer = [value] { g_initialized_in = value; }, .start_method = method});
    FAIL("a Pool was created with a capturing initializer");
  } catch (const mp::ProcessError& e) {
    const std::string what = e.what();
    CHECK_THAT(what, Catch::Matchers::Contains(std::string("under start method ") + method_name(method) +
                                               " the initializer must cross to a fresh process"));
    CHECK_THAT(what, Catch::Matchers::Contains("mp::task(init, args...)"));
  }
  // A lambda without captures crosses (it is an mp::Task, not an opaque std::function).
  mp::Pool pool({.processes = 1, .initializer = [] { g_initialized_in = 42; }, .start_method = method});
  CHECK(pool.apply([] { return g_initialized_in; }) == 42);
}

TEST_CASE("Under spawn an initializer sets a global that the worker's tasks read", "[pool]") {
  leak_check leaks;
  mp::Pool pool({.processes = 2, .initializer = +[] { g_initialized_in = ::getpid(); }, .maxtasksperchild = 2,
                 .start_method = mp::StartMethod::spawn});
  const auto results = pool.map([](int) { return std::pair<int, int>(::getpid(), g_initialized_in); },
                                std::vector<int>(12), 1);
  std::set<int> workers;
  for (const auto& [pid, initialized_in] : results) {
    CHECK(initialized_in == pid);  // replacements (maxtasksperchild) ran it too
    workers.insert(pid);
  }
  CHECK(workers.size() >= 6);
}

TEST_CASE("Under spawn and forkserver a SIGKILLed worker fails its task with WorkerLost and is replaced", "[pool]") {
  leak_check leaks;
  const mp::StartMethod method = GENERATE(mp::StartMethod::forkserver, mp::StartMethod::spawn);
  INFO("start method " << method_name(method));
  mp::Pool pool({.processes = 2, .start_method = method});
  kill_a_worker_mid_task(pool, 20);
  // task_timeout and terminate work the same way.
  test_fifo started;
  auto late = pool.apply_async(mp::TaskOptions{.timeout = 100ms}, report_and_hang, started.path);
  (void)started.read_int();
  CHECK_THROWS_AS(late.get(), mp::TimeoutError);
  CHECK(pool.apply(square, 9) == 81);
  auto stuck = pool.apply_async(report_and_hang, started.path);
  (void)started.read_int();
  pool.terminate();
  CHECK_THROWS_WITH(stuck.get(), Catch::Matchers::Contains("terminate"));
}

TEST_CASE("When the Pool's process is killed, its factory and workers die too, under every start method", "[pool]") {
  leak_check leaks;
  const mp::StartMethod method = GENERATE(mp::StartMethod::fork, mp::StartMethod::spawn, mp::StartMethod::forkserver);
  INFO("start method " << method_name(method));
  test_fifo reports;
  // The Pool's owner is a forked child of this test (which is the subreaper of everything below it).
  mp::Process owner({.start_method = mp::StartMethod::fork}, [method](std::string path) {
    mp::Pool pool({.processes = 2, .start_method = method});
    auto hanging = pool.map_async([](const std::string& to) {
      report(to, ::getppid());
      return report_and_hang(to);
    }, std::vector<std::string>(2, path), 1);
    for (;;) ::pause();
  }, reports.path);
  owner.start();
  std::vector<pid_t> pool_processes;
  for (int i = 0; i < 4; ++i) pool_processes.push_back(reports.read_int());  // factory, worker, factory, worker
  owner.kill();
  owner.join();
  CHECK(owner.exitcode() == -SIGKILL);
  for (pid_t pid : pool_processes) {
    INFO("pid " << pid);
    CHECK(ended_within_20s(pid));
  }
  // Re-parented to this process (subreaper): reap them, and the owner's own fork server (forkserver), which may
  // exit before it reaped the factory.
  reap_orphans();
}

int nested_sum(int method) {
  // Runs in a worker of a spawn Pool, whose own code addresses are translated: the inner Pool's workers must not
  // translate again (under fork they share the worker's addresses; a fresh inner factory gets this worker's table).
  mp::Pool inner({.processes = 2, .start_method = static_cast<mp::StartMethod>(method)});
  const std::vector<int> squares = inner.map(square, numbers(0, 10), 3);
  return std::accumulate(squares.begin(), squares.end(), 0) + inner.apply([](int x) { return x; }, 1000);
}

TEST_CASE("A task of a spawn Pool can create a Pool of its own under every start method", "[pool]") {
  leak_check leaks;
  {
    mp::Pool pool({.processes = 1, .start_method = mp::StartMethod::spawn});
    for (mp::StartMethod method : {mp::StartMethod::fork, mp::StartMethod::spawn, mp::StartMethod::forkserver}) {
      INFO("inner start method " << method_name(method));
      CHECK(pool.apply(nested_sum, static_cast<int>(method)) == 285 + 1000);
    }
  }
  // The worker's own fork server ends when the worker does (end of file), re-parented to this subreaper.
  reap_orphans();
}
