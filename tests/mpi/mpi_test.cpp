// mp::mpi::Pool across real MPI ranks: run by ctest under `mpirun -n 3` (ranks 1 and 2 serve) and alone (the pools
// spawn their workers). Results carry the worker's rank and pid, so each test sees where its work ran.
#include <catch2/catch.hpp>

#include <mp/mp.hpp>
#include <mp/mpi.hpp>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <iterator>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "mpi/support.hpp"

using namespace std::chrono_literals;

namespace {

struct where {
  int rank;
  int pid;
};

where whoami() { return {mp::mpi::rank(), static_cast<int>(::getpid())}; }
int square(int x) { return x * x; }
std::pair<int, int> rank_of_item(int x) { return {x, mp::mpi::rank()}; }
int add(int a, int b) { return a + b; }
int fail_on_7(int x) {
  if (x == 7) throw std::invalid_argument("item 7 is bad");
  return x;
}
int throw_runtime() { throw std::runtime_error("boom on a worker"); }
struct custom_error : std::exception {
  const char* what() const noexcept override { return "a custom failure"; }
};
int throw_custom() { throw custom_error(); }
int sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}
int crash() { std::abort(); }
int pid_after_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return static_cast<int>(::getpid());
}
std::vector<std::byte> reverse_bytes(std::vector<std::byte> data) {
  std::reverse(data.begin(), data.end());
  return data;
}

std::vector<double> ramp(std::size_t n, double step) {
  std::vector<double> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<double>(i) * step;
  return v;
}
std::string text_of(std::size_t n, char first) {
  std::string s(n, ' ');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>(first + static_cast<char>(i % 23));
  return s;
}
std::vector<int> big_or_throw(std::size_t n) {
  if (n == 0) throw std::invalid_argument("no big result this time");
  return std::vector<int>(n, static_cast<int>(n));
}

int configured = 0;  // set by the initializer on each worker rank
void configure(int value, std::string text) { configured = value + static_cast<int>(text.size()); }
int read_configured() { return configured; }

/// A value whose copies rank 0 counts: arguments must be serialized from the caller's object, never copied first.
int copies = 0;
struct counted {
  std::vector<int> values;
  counted() = default;
  explicit counted(std::vector<int> v) : values(std::move(v)) {}
  counted(const counted& other) : values(other.values) { ++copies; }
  counted(counted&&) noexcept = default;
  counted& operator=(const counted& other) {
    values = other.values;
    ++copies;
    return *this;
  }
  counted& operator=(counted&&) noexcept = default;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(values);
  }
};
int sum_counted(const counted& c) { return std::accumulate(c.values.begin(), c.values.end(), 0); }
int sum_two_counted(counted a, const counted& b) { return sum_counted(a) + sum_counted(b); }
void configure_counted(counted c) { configured = sum_counted(c); }

/// The worker count the tests expect: every other rank under mpirun, cpu_count() spawned workers alone.
std::size_t expected_workers() {
  return mp_test_expected_ranks > 1 ? static_cast<std::size_t>(mp_test_expected_ranks - 1) : mp::cpu_count();
}

}  // namespace

TEST_CASE("mp::mpi::init leaves rank 0 in main, and the launch is the one ctest asked for", "[mpi]") {
  CHECK(mp::mpi::rank() == 0);
  if (mp_test_expected_ranks > 1) CHECK(mp::mpi::size() == mp_test_expected_ranks);
}

TEST_CASE("apply runs the call on another rank, in another process", "[mpi]") {
  mp::mpi::Pool pool;
  CHECK(pool.processes() == expected_workers());
  const where w = pool.apply(whoami);
  CHECK(w.rank >= 1);
  CHECK(w.rank < mp::mpi::size());
  CHECK(w.pid != ::getpid());
  CHECK(pool.apply(add, 2, 40) == 42);
  CHECK(pool.apply([](std::string s) { return s + "!"; }, "hello") == "hello!");
}

TEST_CASE("map returns every result in order, computed on more than one rank", "[mpi]") {
  mp::mpi::Pool pool;
  std::vector<int> items(200);
  std::iota(items.begin(), items.end(), 0);
  const auto results = pool.map(rank_of_item, items, 10);
  REQUIRE(results.size() == items.size());
  std::set<int> ranks;
  for (std::size_t i = 0; i < items.size(); ++i) {
    CHECK(results[i].first == items[i]);
    ranks.insert(results[i].second);
  }
  CHECK(ranks.size() == std::min<std::size_t>(pool.processes(), 20));
  CHECK(ranks.count(0) == 0);
  CHECK(pool.map(square, std::vector<int>{1, 2, 3}) == std::vector<int>{1, 4, 9});
  CHECK(pool.map(square, std::vector<int>{}).empty());
}

TEST_CASE("starmap unpacks tuples, and a braced list works as in Python", "[mpi]") {
  mp::mpi::Pool pool;
  const std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}, {5, 6}};
  CHECK(pool.starmap(add, pairs) == std::vector<int>{3, 7, 11});
  CHECK(pool.map(square, {4, 5}) == std::vector<int>{16, 25});
}

TEST_CASE("a task's exception reaches rank 0 with its type and message, and the pool goes on", "[mpi]") {
  mp::mpi::Pool pool;
  SECTION("a standard exception") {
    try {
      (void)pool.apply(throw_runtime);
      FAIL("no exception");
    } catch (const std::runtime_error& e) {
      CHECK(std::string(e.what()).find("boom on a worker") != std::string::npos);
    }
  }
  SECTION("any other type, as RemoteError naming it") {
    try {
      (void)pool.apply(throw_custom);
      FAIL("no exception");
    } catch (const mp::RemoteError& e) {
      CHECK(e.remote_type().find("custom_error") != std::string::npos);
      CHECK(std::string(e.what()).find("a custom failure") != std::string::npos);
    }
  }
  SECTION("map throws the first failed item's error") {
    std::vector<int> items(20);
    std::iota(items.begin(), items.end(), 0);
    CHECK_THROWS_WITH(pool.map(fail_on_7, items, 3), Catch::Contains("item 7 is bad"));
    auto result = pool.map_async(fail_on_7, items, 3);
    result.wait();
    CHECK(result.ready());
    CHECK_FALSE(result.successful());
  }
  CHECK(pool.apply(square, 9) == 81);
}

TEST_CASE("AsyncResult has the futures surface: wait, ready, callbacks, exception, cancel", "[mpi]") {
  mp::mpi::Pool pool;
  auto quick = pool.submit(square, 12);
  CHECK(quick.get() == 144);
  CHECK(quick.done());
  CHECK(quick.successful());
  CHECK(quick.exception() == nullptr);

  int called = 0;
  auto later = pool.apply_async(sleep_ms, 50);
  later.add_done_callback([&](mp::mpi::AsyncResult<int>& r) { called = r.get(); });
  CHECK(later.get() == 50);
  CHECK(called == 50);
  int at_once = 0;
  later.add_done_callback([&](mp::mpi::AsyncResult<int>&) { at_once = 1; });
  CHECK(at_once == 1);

  auto failing = pool.apply_async(throw_runtime);
  CHECK(failing.exception() != nullptr);

  // Every rank holds at most two chunks: with 2 * processes sleepers ahead, the next task is still queued.
  std::vector<mp::mpi::AsyncResult<int>> busy;
  for (std::size_t i = 0; i < 2 * pool.processes(); ++i) busy.push_back(pool.apply_async(sleep_ms, 200));
  auto queued = pool.apply_async(square, 3);
  CHECK(queued.cancel());
  CHECK(queued.cancelled());
  CHECK(queued.ready());
  CHECK_THROWS_AS(queued.get(), mp::Error);
  CHECK_FALSE(busy.front().cancel());
  auto timed = pool.apply_async(sleep_ms, 300);
  CHECK_THROWS_AS(timed.get(10ms), mp::TimeoutError);
  CHECK_FALSE(timed.wait(1ms));
  for (auto& r : busy) CHECK(r.get() == 200);
  CHECK(timed.get() == 300);
}

namespace {
/// An endless input range that counts how many items were pulled from it.
struct counting_input {
  struct iterator {
    using value_type = int;
    using difference_type = std::ptrdiff_t;
    counting_input* owner = nullptr;
    int operator*() const { return owner->next; }
    iterator& operator++() {
      ++owner->next;
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator&, std::unreachable_sentinel_t) { return false; }
  };
  int next = 0;
  iterator begin() { return iterator{this}; }
  std::unreachable_sentinel_t end() const { return {}; }
};
}  // namespace

TEST_CASE("imap and imap_unordered are lazy over an endless input, with a bounded number in flight", "[mpi]") {
  mp::mpi::Pool pool;
  counting_input input;
  std::vector<int> got;
  for (int x : pool.imap(square, input)) {
    got.push_back(x);
    if (got.size() == 30) break;
  }
  for (int i = 0; i < 30; ++i) CHECK(got[static_cast<std::size_t>(i)] == i * i);
  CHECK(input.next <= 30 + static_cast<int>(4 * pool.processes() + 2));

  std::vector<int> items(100);
  std::iota(items.begin(), items.end(), 0);
  std::multiset<int> unordered;
  for (int x : pool.imap_unordered(square, items, 7)) unordered.insert(x);
  std::multiset<int> expected;
  for (int i : items) expected.insert(i * i);
  CHECK(unordered == expected);

  std::vector<int> seen;
  auto with_error = pool.imap(fail_on_7, items, 2);
  auto it = with_error.begin();
  for (int i = 0; i < 7; ++it, ++i) seen.push_back(*it);
  CHECK_THROWS_WITH(*it, Catch::Contains("item 7 is bad"));
  CHECK(seen == std::vector<int>{0, 1, 2, 3, 4, 5, 6});
}

TEST_CASE("the initializer runs on every worker rank with its arguments", "[mpi]") {
  mp::mpi::Pool pool({.initializer = mp::mpi::task(configure, 40, std::string("ab"))});
  std::vector<int> items(40, 0);
  for (int value : pool.map([](int) { return read_configured(); }, items, 1)) CHECK(value == 42);
}

TEST_CASE("apply, apply_async, submit and task serialize an lvalue argument from the caller's object, never a copy",
          "[mpi]") {
  const counted one(std::vector<int>{1, 2, 3, 4});
  counted two(std::vector<int>(1000, 1));
  copies = 0;
  mp::mpi::Pool pool({.initializer = mp::mpi::task(configure_counted, one)});
  CHECK(copies == 0);
  CHECK(pool.apply(sum_counted, one) == 10);
  CHECK(pool.apply(sum_two_counted, one, two) == 1010);
  auto a = pool.apply_async(sum_counted, two);
  auto b = pool.submit(sum_two_counted, two, one);
  auto c = pool.apply_async(sum_counted, std::as_const(two));
  CHECK(copies == 0);
  two.values.assign(5, 100);  // the caller may change its object at once: the tasks have their own bytes
  CHECK(a.get() == 1000);
  CHECK(b.get() == 1010);
  CHECK(c.get() == 1000);
  CHECK(pool.apply(sum_counted, two) == 500);
  CHECK(pool.map([](int) { return read_configured(); }, std::vector<int>(8, 0), 1) == std::vector<int>(8, 10));
  CHECK(copies == 0);
}

TEST_CASE("a 16 MiB argument and result cross intact", "[mpi]") {
  mp::mpi::Pool pool;
  std::vector<std::byte> data(16u << 20);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::byte>(i * 7 + i / 4096);
  const auto back = pool.apply(reverse_bytes, data);
  REQUIRE(back.size() == data.size());
  CHECK(std::equal(back.begin(), back.end(), data.rbegin()));
}

TEST_CASE("big results in flight together each land intact in their own result, beside small ones", "[mpi]") {
  // Results of 64 KiB and more come apart from their message and are received in place: many at once, of several
  // element types, sizes around the limit, mixed with small results and failures, must each reach their own get().
  mp::mpi::Pool pool;
  std::vector<std::size_t> sizes = {65536 / 8 - 4, 65536 / 8, 65536 / 8 + 1, 1u << 20, 3u << 20, 100, 1, 2u << 20};
  std::vector<mp::mpi::AsyncResult<std::vector<double>>> ramps;
  std::vector<mp::mpi::AsyncResult<std::string>> texts;
  std::vector<mp::mpi::AsyncResult<std::vector<int>>> mixed;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    ramps.push_back(pool.apply_async(ramp, sizes[i], 0.5 + static_cast<double>(i)));
    texts.push_back(pool.apply_async(text_of, sizes[i] * 8 + i, static_cast<char>('A' + i)));
    mixed.push_back(pool.apply_async(big_or_throw, sizes[i] == 100 ? std::size_t{0} : sizes[i]));
  }
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    CHECK(ramps[i].get() == ramp(sizes[i], 0.5 + static_cast<double>(i)));
    CHECK(texts[i].get() == text_of(sizes[i] * 8 + i, static_cast<char>('A' + i)));
    if (sizes[i] == 100) {
      CHECK_THROWS_AS(mixed[i].get(), mp::Remote<std::invalid_argument>);
    } else {
      CHECK(mixed[i].get() == std::vector<int>(sizes[i], static_cast<int>(sizes[i])));
    }
  }
}

TEST_CASE("a big result crosses from a timed task's child process", "[mpi]") {
  mp::mpi::Pool timed({.task_timeout = 30s});
  CHECK(timed.apply(ramp, std::size_t{1} << 20, 0.25) == ramp(std::size_t{1} << 20, 0.25));
}

TEST_CASE("task_timeout fails a task at its deadline, and its rank goes on serving", "[mpi]") {
  // Generous: under a loaded machine a fork, or a crash's core handling, can take hundreds of milliseconds.
  mp::mpi::Pool pool({.task_timeout = 3s});
  const auto started = std::chrono::steady_clock::now();
  auto slow = pool.apply_async(sleep_ms, 20'000);
  CHECK_THROWS_AS(slow.get(), mp::TimeoutError);
  CHECK(std::chrono::steady_clock::now() - started < 15s);
  SECTION("a task that crashes its process fails with WorkerLost") {
    try {
      (void)pool.apply(crash);
      FAIL("no exception");
    } catch (const mp::WorkerLost& e) {
      CHECK(e.exitcode() == -6);
    }
  }
  std::vector<int> items(10);
  std::iota(items.begin(), items.end(), 0);
  std::set<int> ranks;
  for (const auto& [x, r] : pool.map(rank_of_item, items, 1)) ranks.insert(r);
  CHECK(ranks.size() == pool.processes());
}

TEST_CASE("terminate fails queued work at once; close and join wait for the rest", "[mpi]") {
  mp::mpi::Pool pool;
  std::vector<mp::mpi::AsyncResult<int>> results;
  for (int i = 0; i < 12; ++i) results.push_back(pool.apply_async(sleep_ms, 50));
  pool.terminate();
  CHECK_THROWS_AS(results.back().get(), mp::Error);
  pool.join();
  CHECK_THROWS_AS(pool.apply(square, 2), mp::Error);

  mp::mpi::Pool second;
  auto r = second.apply_async(sleep_ms, 20);
  second.close();
  CHECK_THROWS_AS(second.apply_async(square, 1), mp::Error);
  second.join();
  CHECK(r.get() == 20);
}

TEST_CASE("misuse gives a clear mp::Error", "[mpi]") {
  mp::mpi::Pool pool;
  CHECK_THROWS_WITH(mp::mpi::Pool(), Catch::Contains("another mp::mpi::Pool"));
  if (mp_test_expected_ranks > 1) {
    pool.close();
    pool.join();
    CHECK_THROWS_WITH(mp::mpi::Pool(static_cast<std::size_t>(mp_test_expected_ranks)), Catch::Contains("mpirun -n"));
  }
}

TEST_CASE("launched alone, killing a spawned worker fails its task with WorkerLost, never a hang", "[mpi]") {
  // Under mpirun a dead rank aborts the whole job (mpirun's choice, see docs/mpi.md): alone only. Open MPI aborts
  // the rest of a spawned group when one of it dies, so the sibling's task may fail too; the next Pool spawns anew.
  if (mp_test_expected_ranks != 1) return;
  {
    mp::mpi::Pool pool(2);
    const int victim = pool.apply(pid_after_ms, 0);
    auto first = pool.apply_async(pid_after_ms, 2'000);
    auto second = pool.apply_async(pid_after_ms, 2'000);
    REQUIRE(::kill(victim, SIGKILL) == 0);
    int lost = 0;
    for (auto* result : {&first, &second}) {
      try {
        const int pid = result->get(60s);  // 60 s: a hang guard, not a timing check
        CHECK(pid != victim);
      } catch (const mp::WorkerLost&) {
        ++lost;
      }
    }
    CHECK(lost >= 1);
    try {
      const int pid = pool.apply(pid_after_ms, 0);  // a surviving sibling serves on
      CHECK(pid != victim);
    } catch (const mp::WorkerLost&) {
    } catch (const mp::Error& e) {
      CHECK(std::string(e.what()).find("no live worker rank") != std::string::npos);
    }
  }
  mp::mpi::Pool fresh(2);
  std::vector<int> items(8);
  std::iota(items.begin(), items.end(), 0);
  CHECK(fresh.map(square, items, 1) == std::vector<int>{0, 1, 4, 9, 16, 25, 36, 49});
}
