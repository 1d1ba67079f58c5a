// mp::ThreadPool: Pool's interface on threads — results, lambdas capturing by reference, exceptions as thrown, and
// the futures surface (callbacks, cancel, as_completed, wait with ReturnWhen) and progress bars as a Pool's.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <mp/thread_pool.hpp>

using namespace std::chrono_literals;

namespace {

// A gate a task waits at until the test opens it.
struct gate {
  std::mutex mutex;
  std::condition_variable cv;
  bool open = false;
  void wait() {
    std::unique_lock lock(mutex);
    cv.wait(lock, [&] { return open; });
  }
  void release() {
    {
      std::lock_guard lock(mutex);
      open = true;
    }
    cv.notify_all();
  }
};

struct stderr_redirect {
  int saved = ::dup(STDERR_FILENO);
  explicit stderr_redirect(int fd) { REQUIRE(::dup2(fd, STDERR_FILENO) == STDERR_FILENO); }
  ~stderr_redirect() {
    ::dup2(saved, STDERR_FILENO);
    ::close(saved);
  }
};

template <class Body>
std::string stderr_of(Body&& body) {
  char path[] = "/tmp/mp-thread-pool-test-XXXXXX";
  const int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  {
    stderr_redirect to_file(fd);
    body();
  }
  ::close(fd);
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  ::unlink(path);
  return text.str();
}

}  // namespace

TEST_CASE("ThreadPool runs apply, map, starmap and imap on threads of this process without serializing",
          "[thread_pool]") {
  mp::ThreadPool pool(3);
  CHECK(pool.processes() == 3);
  std::mutex mutex;
  std::set<std::thread::id> threads;
  auto square = [&](int x) {
    std::lock_guard lock(mutex);
    threads.insert(std::this_thread::get_id());
    return x * x;
  };
  std::vector<int> xs(100);
  for (int i = 0; i < 100; ++i) xs[static_cast<std::size_t>(i)] = i;
  const auto squares = pool.map(square, xs, 1);
  for (int i = 0; i < 100; ++i) CHECK(squares[static_cast<std::size_t>(i)] == i * i);
  CHECK(threads.count(std::this_thread::get_id()) == 0);
  // Not serializable: a unique resource reached through a shared_ptr, a reference capture.
  auto counter = std::make_shared<std::atomic<int>>(0);
  pool.map([counter](int) { ++*counter; }, xs);
  CHECK(*counter == 100);
  CHECK(pool.apply([](const std::string& a, int b) { return a + std::to_string(b); }, std::string("x"), 1) == "x1");
  CHECK(pool.starmap([](int a, int b) { return a * b; }, std::vector<std::pair<int, int>>{{2, 3}, {4, 5}}) ==
        std::vector<int>{6, 20});
  std::vector<int> lazy;
  for (int y : pool.imap(square, xs, 7)) lazy.push_back(y);
  CHECK(lazy == squares);
  std::vector<int> unordered;
  for (int y : pool.imap_unordered(square, xs)) unordered.push_back(y);
  std::sort(unordered.begin(), unordered.end());
  CHECK(unordered == squares);
}

TEST_CASE("ThreadPool: move-only arguments and callables are moved into the task, as in Pool", "[thread_pool]") {
  mp::ThreadPool pool(2);
  auto p = std::make_unique<int>(41);
  const int* address = p.get();
  // The task owns the argument: the same object, moved, never copied.
  auto owned = pool.apply_async([address](std::unique_ptr<int> q) { return q.get() == address ? *q + 1 : -1; }, std::move(p));
  CHECK(owned.get() == 42);
  CHECK(p == nullptr);
  // A move-only callable, and an rvalue-reference parameter.
  auto state = std::make_unique<std::string>("ab");
  CHECK(pool.apply([s = std::move(state)](std::string&& tail) { return *s + tail; }, std::string("c")) == "abc");
  CHECK(pool.submit([](std::unique_ptr<int> q, int x) { return *q * x; }, std::make_unique<int>(6), 7).get() == 42);
  // std::ref still passes a reference.
  int target = 0;
  pool.apply([](int& t) { t = 5; }, std::ref(target));
  CHECK(target == 5);
}

TEST_CASE("ThreadPool: a task's exception arrives as the object it threw, not as a remote error", "[thread_pool]") {
  mp::ThreadPool pool(2);
  auto r = pool.submit([] { throw std::invalid_argument("local"); });
  CHECK_THROWS_MATCHES(r.get(), std::invalid_argument, Catch::Matchers::Message("local"));
  try {
    r.get();
  } catch (const std::exception& e) {
    CHECK(dynamic_cast<const mp::RemoteInfo*>(&e) == nullptr);
  }
  CHECK_THROWS_AS(pool.map([](int x) {
                    if (x == 7) throw std::out_of_range("seven");
                    return x;
                  }, std::vector<int>{1, 7, 3}),
                  std::out_of_range);
}

TEST_CASE("ThreadPool: done callbacks run once off the caller's thread, at once when late, a throwing one is "
          "reported", "[thread_pool]") {
  std::atomic<int> calls{0};
  std::string log;
  {
    mp::ThreadPool pool(2);
    std::vector<mp::AsyncResult<int>> results;
    log = stderr_of([&] {
      for (int i = 0; i < 10; ++i) {
        results.push_back(pool.submit([](int x) { return x + 1; }, i));
        results.back().add_done_callback([&](mp::AsyncResult<int>&) { ++calls; });
      }
      results[0].add_done_callback([](mp::AsyncResult<int>&) { throw std::runtime_error("thread callback boom"); });
      pool.close();
      pool.join();
    });
    CHECK(calls == 10);
    std::thread::id late;
    results[1].add_done_callback([&](mp::AsyncResult<int>& r) {
      late = std::this_thread::get_id();
      CHECK(r.get() == 2);
    });
    CHECK(late == std::this_thread::get_id());
  }
  CHECK_THAT(log, Catch::Matchers::Contains("std::runtime_error: thread callback boom"));
}

TEST_CASE("ThreadPool: cancel succeeds only while queued and a cancelled task never runs", "[thread_pool]") {
  mp::ThreadPool pool(1);
  gate started, release;
  auto blocker = pool.submit([&] {
    started.release();
    release.wait();
    return 1;
  });
  started.wait();
  CHECK(blocker.running());
  CHECK_FALSE(blocker.cancel());
  std::atomic<int> ran{0};
  auto queued = pool.submit([&] { ++ran; return 2; });
  auto queued_map = pool.map_async([&](int x) { ++ran; return x; }, std::vector<int>{1, 2, 3});
  CHECK_FALSE(queued.running());
  CHECK(queued.cancel());
  CHECK(queued_map.cancel());
  CHECK(queued.cancelled());
  CHECK_THROWS_AS(queued.get(), mp::CancelledError);
  CHECK_THROWS_AS(queued_map.get(), mp::CancelledError);
  auto after = pool.submit([&] { ++ran; return 3; });
  release.release();
  CHECK(blocker.get() == 1);
  CHECK(after.get() == 3);
  pool.close();
  pool.join();
  CHECK(ran == 1);
}

TEST_CASE("ThreadPool: as_completed in completion order with a timeout, and wait for each ReturnWhen",
          "[thread_pool]") {
  mp::ThreadPool pool(3);
  gate gates[3];
  std::vector<mp::AsyncResult<int>> results;
  for (int i = 0; i < 3; ++i) results.push_back(pool.submit([&gates, i] {
    gates[i].wait();
    if (i == 1) throw std::logic_error("one");
    return i;
  }));
  gates[2].release();
  results[2].wait();  // (no timing assumption: the timeout is about results 0 and 1)
  {
    auto completed = mp::as_completed(results, 50ms);
    auto it = completed.begin();
    CHECK((*it).get() == 2);
    CHECK_THROWS_AS(++it, mp::TimeoutError);
  }
  auto [done, not_done] = mp::wait(results, mp::ReturnWhen::first_completed);
  CHECK(done == std::vector<std::size_t>{2});
  CHECK(not_done == std::vector<std::size_t>{0, 1});
  auto [done2, not_done2] = mp::wait(results, mp::ReturnWhen::all_completed, 20ms);
  CHECK(not_done2 == std::vector<std::size_t>{0, 1});
  gates[1].release();
  auto [done3, not_done3] = mp::wait(results, mp::ReturnWhen::first_exception);
  CHECK(done3 == std::vector<std::size_t>{1, 2});
  CHECK(not_done3 == std::vector<std::size_t>{0});
  gates[0].release();
  std::vector<std::size_t> order;
  for (auto& r : mp::as_completed(results)) order.push_back(static_cast<std::size_t>(&r - results.data()));
  CHECK(order == std::vector<std::size_t>{2, 1, 0});
  auto [all, none] = mp::wait(results, mp::ReturnWhen::all_completed);
  CHECK(all.size() == 3);
  CHECK(none.empty());
}

TEST_CASE("ThreadPool: progress bars on a terminal and with always, and nothing when off", "[thread_pool]") {
  mp::ThreadPool pool(2);
  std::vector<int> xs(50, 1);
  const std::string forced = stderr_of([&] {
    (void)pool.map([](int x) { return x; }, xs, {.progress = mp::Progress::always, .desc = "threads"});
  });
  CHECK_THAT(forced, Catch::Matchers::Contains("threads: 100%|####################| 50/50 ["));
  // Not a terminal: no bar. (Only the bar is looked for: a sanitizer may write its own notes to stderr.)
  const std::string quiet =
      stderr_of([&] { (void)pool.map([](int x) { return x; }, xs, {.progress = mp::Progress::on_tty}); });
  INFO("stderr: " << quiet);
  CHECK(quiet.find("50/50") == std::string::npos);
  CHECK(quiet.find('|') == std::string::npos);
  int master = -1, slave = -1;
  REQUIRE(::openpty(&master, &slave, nullptr, nullptr, nullptr) == 0);
  {
    stderr_redirect to_pty(slave);
    int n = 0;
    for (int y : pool.imap([](int x) { return x; }, xs, {.progress = mp::Progress::on_tty, .desc = "tty"})) n += y;
    CHECK(n == 50);
  }
  ::close(slave);
  std::string text;
  char buffer[4096];
  for (pollfd p{master, POLLIN, 0}; ::poll(&p, 1, 0) == 1;) {
    const auto got = ::read(master, buffer, sizeof buffer);
    if (got <= 0) break;
    text.append(buffer, static_cast<std::size_t>(got));
  }
  ::close(master);
  CHECK_THAT(text, Catch::Matchers::Contains("tty: 100%|####################| 50/50 ["));
}

TEST_CASE("ThreadPool: terminate fails the queued tasks, close refuses new work, task_timeout is refused",
          "[thread_pool]") {
  CHECK_THROWS_AS(mp::ThreadPool({.processes = 1, .task_timeout = 10ms}), mp::Error);
  mp::ThreadPool pool(1);
  gate started, release;
  auto blocker = pool.submit([&] {
    started.release();
    release.wait();
    return 1;
  });
  started.wait();
  auto queued = pool.submit([] { return 2; });
  pool.terminate();  // drops the queued task, does not wait for the running one
  release.release();
  CHECK_THROWS_AS(queued.get(), mp::Error);
  CHECK(blocker.get() == 1);
  CHECK_THROWS_AS(pool.submit([] { return 3; }), mp::Error);
  pool.join();
}
