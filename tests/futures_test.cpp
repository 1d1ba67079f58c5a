// Futures on mp::Pool results (concurrent.futures' surface): done callbacks, cancel, as_completed, wait with
// ReturnWhen; typed remote errors (Remote<E>, RemoteInfo, register_exception); the MapOptions progress bar.
// Registered once per start method (MP_START_METHOD): the workers are forks, spawned or forkserver children.
// Tasks synchronize with the test through named pipes, which a worker of any start method opens by path, or an
// mp::Event passed as a task argument.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <ios>
#include <map>
#include <mutex>
#include <new>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <mp/pool.hpp>
#include <mp/sync.hpp>

#include "support/child_process.hpp"
#include "support/pool_checks.hpp"

using namespace std::chrono_literals;

namespace {

using mp_test::leak_check;

// A named pipe (support/pool_checks.hpp): a task opens it by path and blocks reading until the test writes.
struct gate : mp_test::test_fifo {
  void open_once() const { write_int(1); }
};

// Task side: blocks until the test opens the gate once.
void pass(const std::string& path) { (void)mp_test::fifo_read(path); }
// Task side: writes an int for the test to read.
void tell(const std::string& path, int value) { mp_test::fifo_write(path, value); }

// Says "started" on one gate, then waits for the other; returns id.
int started_then_wait(std::string started, std::string release, int id) {
  tell(started, id);
  pass(release);
  return id;
}
int wait_then_return(std::string release, int id) {
  pass(release);
  return id;
}
// Appends id to a file (which tasks ran), returns it.
int record(std::string file, int id) {
  std::ofstream(file, std::ios::app) << id << "\n";
  return id;
}
std::vector<int> recorded(const std::string& file) {
  std::vector<int> ids;
  std::ifstream in(file);
  for (int id = 0; in >> id;) ids.push_back(id);
  return ids;
}

struct temp_file {
  std::string path;
  temp_file() {
    static int counter = 0;
    path = "/tmp/mp-futures-out-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
    ::unlink(path.c_str());
  }
  ~temp_file() { ::unlink(path.c_str()); }
  std::string read() const {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }
};

// Points this process's stderr at fd for its lifetime.
struct stderr_redirect {
  int saved = ::dup(STDERR_FILENO);
  explicit stderr_redirect(int fd) { REQUIRE(::dup2(fd, STDERR_FILENO) == STDERR_FILENO); }
  ~stderr_redirect() {
    ::dup2(saved, STDERR_FILENO);
    ::close(saved);
  }
};

struct quota_exceeded : std::exception {
  std::string message;
  explicit quota_exceeded(const std::string& m) : message(m) {}
  const char* what() const noexcept override { return message.c_str(); }
};
struct not_registered : std::runtime_error {
  using std::runtime_error::runtime_error;
};

int square(int x) { return x * x; }
int square_when_set(mp::Event go, int x) {
  go.wait();
  return x * x;
}

}  // namespace

TEST_CASE("add_done_callback runs once in the parent on the callback thread, or at once when added late",
          "[futures]") {
  leak_check leaks;
  std::mutex mutex;
  std::map<int, int> calls;  // value -> calls; guarded by mutex
  std::vector<pid_t> pids;
  std::vector<std::thread::id> threads;
  const auto main_thread = std::this_thread::get_id();
  std::vector<int> failures;
  {
    mp::Pool pool(2);
    // No task finishes before every callback is added, so each one runs on the callback thread.
    mp::Event go;
    std::vector<mp::AsyncResult<int>> results;
    for (int i = 0; i < 20; ++i) results.push_back(pool.submit(square_when_set, go, i));
    auto failing = pool.submit(
        [](mp::Event gate, int x) -> int {
          gate.wait();
          throw std::invalid_argument("no " + std::to_string(x));
        },
        go, 5);
    for (auto& r : results) {
      r.add_done_callback([&](mp::AsyncResult<int>& done) {
        std::lock_guard lock(mutex);
        ++calls[done.get()];
        pids.push_back(::getpid());
        threads.push_back(std::this_thread::get_id());
      });
    }
    failing.add_done_callback([&](mp::AsyncResult<int>& done) {
      std::lock_guard lock(mutex);
      if (!done.successful()) failures.push_back(1);
      CHECK_THROWS_AS(std::rethrow_exception(done.exception()), std::invalid_argument);
    });
    for (auto& r : results) CHECK_FALSE(r.done());
    go.set();
    pool.close();
    pool.join();  // waits for the callbacks too
    {
      std::lock_guard lock(mutex);
      CHECK(calls.size() == 20);
      for (const auto& [value, n] : calls) CHECK(n == 1);
      CHECK(failures == std::vector<int>{1});
      for (pid_t pid : pids) CHECK(pid == ::getpid());
      for (auto id : threads) CHECK(id != main_thread);
    }
    // Added late: runs at once, in this thread.
    int late = 0;
    std::thread::id late_thread;
    results[3].add_done_callback([&](mp::AsyncResult<int>& done) {
      late = done.get();
      late_thread = std::this_thread::get_id();
    });
    CHECK(late == 9);
    CHECK(late_thread == main_thread);
  }
}

TEST_CASE("A throwing done callback is reported on stderr and neither the other callbacks nor the pool suffer",
          "[futures]") {
  leak_check leaks;
  temp_file log;
  mp::Pool pool(2);
  std::atomic<int> later_calls{0};
  {
    const int fd = ::open(log.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    stderr_redirect to_log(fd);
    ::close(fd);
    auto first = pool.submit(square, 3);
    first.add_done_callback([](mp::AsyncResult<int>&) { throw std::runtime_error("callback boom"); });
    first.add_done_callback([&](mp::AsyncResult<int>&) { ++later_calls; });
    auto second = pool.submit(square, 4);
    second.add_done_callback([&](mp::AsyncResult<int>&) { ++later_calls; });
    CHECK(first.get() == 9);
    CHECK(second.get() == 16);
    CHECK(pool.submit(square, 5).get() == 25);
    pool.close();
    pool.join();
  }
  CHECK(later_calls == 2);
  CHECK_THAT(log.read(), Catch::Matchers::Contains("done callback threw std::runtime_error: callback boom"));
}

TEST_CASE("cancel succeeds only while a task is queued, and a cancelled task never runs", "[futures]") {
  leak_check leaks;
  gate started, release;
  temp_file ran;
  mp::Pool pool(1);
  auto blocker = pool.submit(started_then_wait, started.path, release.path, -1);
  CHECK(started.read_int() == -1);
  CHECK(blocker.running());
  CHECK_FALSE(blocker.cancel());  // running
  std::vector<mp::AsyncResult<int>> queued;
  for (int i = 0; i < 30; ++i) queued.push_back(pool.submit(record, ran.path, i));
  auto queued_map = pool.map_async(square, std::vector<int>{1, 2, 3});
  CHECK_FALSE(queued.back().running());
  CHECK(queued.back().cancel());
  CHECK(queued[25].cancel());
  CHECK(queued_map.cancel());
  CHECK(queued.back().cancelled());
  CHECK(queued.back().done());
  CHECK_FALSE(queued.back().successful());
  CHECK_FALSE(queued.back().cancel());  // once
  CHECK_THROWS_AS(queued.back().get(), mp::CancelledError);
  CHECK_THROWS_AS(queued.back().exception(), mp::CancelledError);
  CHECK_THROWS_AS(queued_map.get(), mp::CancelledError);
  release.open_once();
  CHECK(blocker.get() == -1);
  CHECK_FALSE(blocker.cancelled());
  for (int i = 0; i < 29; ++i)
    if (i != 25) CHECK(queued[static_cast<std::size_t>(i)].get() == i);
  CHECK_FALSE(queued[0].cancel());  // done
  pool.close();
  pool.join();
  std::vector<int> ids = recorded(ran.path);
  std::sort(ids.begin(), ids.end());
  std::vector<int> expected;
  for (int i = 0; i < 29; ++i)
    if (i != 25) expected.push_back(i);
  CHECK(ids == expected);
}

TEST_CASE("as_completed yields results in completion order and times out on the rest", "[futures]") {
  leak_check leaks;
  gate gates[3];
  mp::Pool pool(3);
  std::vector<mp::AsyncResult<int>> results;
  for (int i = 0; i < 3; ++i) results.push_back(pool.submit(wait_then_return, gates[i].path, i));
  SECTION("order") {
    const int order[3] = {2, 0, 1};
    gates[order[0]].open_once();
    std::vector<int> seen;
    for (auto& done : mp::as_completed(results)) {
      seen.push_back(done.get());
      if (seen.size() < 3) gates[order[seen.size()]].open_once();
    }
    CHECK(seen == std::vector<int>{2, 0, 1});
  }
  SECTION("timeout") {
    gates[1].open_once();
    results[1].wait();  // (no timing assumption: the timeout is about results 0 and 2)
    std::vector<int> seen;
    auto completed = mp::as_completed(results, 100ms);
    auto it = completed.begin();
    seen.push_back((*it).get());
    CHECK(seen == std::vector<int>{1});
    CHECK_THROWS_AS(++it, mp::TimeoutError);
    gates[0].open_once();
    gates[2].open_once();
    CHECK(results[0].get() == 0);
    CHECK(results[2].get() == 2);
  }
  SECTION("results done before the call come first, in completion order") {
    gates[2].open_once();
    CHECK(results[2].get() == 2);
    gates[0].open_once();
    CHECK(results[0].get() == 0);
    gates[1].open_once();
    CHECK(results[1].get() == 1);
    std::vector<int> seen;
    for (auto& done : mp::as_completed(results)) seen.push_back(done.get());
    CHECK(seen == std::vector<int>{2, 0, 1});
  }
}

TEST_CASE("wait returns the done and not-done indices for each ReturnWhen", "[futures]") {
  leak_check leaks;
  gate hold;
  mp::Pool pool(3);
  std::vector<mp::AsyncResult<int>> results;
  results.push_back(pool.submit(wait_then_return, hold.path, 0));
  SECTION("first_completed") {
    results.push_back(pool.submit(square, 7));
    const auto [done, not_done] = mp::wait(results, mp::ReturnWhen::first_completed);
    CHECK(done == std::vector<std::size_t>{1});
    CHECK(not_done == std::vector<std::size_t>{0});
  }
  SECTION("first_exception") {
    results.push_back(pool.submit(square, 7));
    results.push_back(pool.submit([](int) -> int { throw std::logic_error("bad"); }, 1));
    const auto [done, not_done] = mp::wait(results, mp::ReturnWhen::first_exception);
    CHECK(std::find(done.begin(), done.end(), 2) != done.end());  // (1 may or may not be done yet)
    CHECK(std::find(not_done.begin(), not_done.end(), 0) != not_done.end());
    CHECK(std::find(not_done.begin(), not_done.end(), 2) == not_done.end());
    CHECK_THROWS_AS(results[2].get(), std::logic_error);
  }
  SECTION("all_completed, with a timeout and without") {
    results.push_back(pool.submit(square, 7));
    results[1].wait();  // (no timing assumption: the timeout below is about result 0 alone)
    const auto [done, not_done] = mp::wait(results, mp::ReturnWhen::all_completed, 100ms);
    CHECK(done == std::vector<std::size_t>{1});
    CHECK(not_done == std::vector<std::size_t>{0});
    hold.open_once();
    const auto [all, none] = mp::wait(results, mp::ReturnWhen::all_completed);
    CHECK(all == std::vector<std::size_t>{0, 1});
    CHECK(none.empty());
  }
  SECTION("first_exception without any exception waits for all") {
    results.push_back(pool.submit(square, 7));
    hold.open_once();
    const auto [done, not_done] = mp::wait(results, mp::ReturnWhen::first_exception);
    CHECK(done == std::vector<std::size_t>{0, 1});
    CHECK(not_done.empty());
  }
  hold.open_once();  // (a second write is harmless)
  CHECK(results[0].get() == 0);
}

TEST_CASE("Remote exceptions keep their standard or registered type, others are RemoteError, all are RemoteInfo",
          "[futures]") {
  leak_check leaks;
  mp::register_exception<quota_exceeded>();
  mp::Pool pool(2);
  SECTION("std::invalid_argument") {
    auto r = pool.submit([](int x) -> int { throw std::invalid_argument("bad x = " + std::to_string(x)); }, 7);
    try {
      (void)r.get();
      FAIL("no exception");
    } catch (const std::invalid_argument& e) {
      CHECK(std::string(e.what()) == "bad x = 7");
      const auto* info = dynamic_cast<const mp::RemoteInfo*>(&e);
      REQUIRE(info != nullptr);
      CHECK(info->remote_type() == "std::invalid_argument");
      CHECK(info->pid() > 0);
      CHECK(info->pid() != ::getpid());
      CHECK_FALSE(info->remote_traceback().empty());
    }
    CHECK_THROWS_AS(r.get(), std::logic_error);
    CHECK_THROWS_AS(r.get(), mp::RemoteInfo);
    CHECK_THROWS_MATCHES(r.get(), std::exception, Catch::Matchers::Message("bad x = 7"));
    std::exception_ptr error = r.exception();
    CHECK_THROWS_AS(std::rethrow_exception(error), mp::Remote<std::invalid_argument>);
  }
  SECTION("std::bad_alloc and map's first failure") {
    CHECK_THROWS_AS(pool.apply([] { throw std::bad_alloc(); }), std::bad_alloc);
    CHECK_THROWS_MATCHES(pool.map([](int x) {
                           if (x == 50) throw std::out_of_range("item 50");
                           return x;
                         }, std::vector<int>(100, 50)),
                         std::out_of_range, Catch::Matchers::Message("item 50"));
  }
  SECTION("std::system_error and its kind keep their code; future_error and bad_array_new_length their type") {
    try {
      pool.apply([] { throw std::system_error(std::make_error_code(std::errc::no_such_file_or_directory), "open x"); });
      FAIL("no exception");
    } catch (const std::system_error& e) {
      CHECK(e.code() == std::errc::no_such_file_or_directory);
      CHECK(&e.code().category() == &std::generic_category());
      CHECK(std::string(e.what()).find("open x") == 0);
      CHECK(dynamic_cast<const mp::RemoteInfo&>(e).remote_type() == "std::system_error");
    }
    try {
      pool.apply([] { throw std::system_error(EACCES, std::system_category(), "chmod"); });
      FAIL("no exception");
    } catch (const std::system_error& e) {
      CHECK(e.code().value() == EACCES);
      CHECK(&e.code().category() == &std::system_category());
    }
    try {
      pool.apply([] { throw std::ios_base::failure("stream", std::make_error_code(std::io_errc::stream)); });
      FAIL("no exception");
    } catch (const std::ios_base::failure& e) {
      CHECK(e.code() == std::io_errc::stream);
    }
    try {
      pool.apply([] {
        throw std::filesystem::filesystem_error("copy", std::make_error_code(std::errc::file_exists));
      });
      FAIL("no exception");
    } catch (const std::filesystem::filesystem_error& e) {
      CHECK(e.code() == std::errc::file_exists);
    }
    try {
      pool.apply([] { throw std::future_error(std::future_errc::broken_promise); });
      FAIL("no exception");
    } catch (const std::future_error& e) {
      CHECK(e.code() == std::future_errc::broken_promise);
    }
    CHECK_THROWS_AS(pool.apply([] { throw std::bad_array_new_length(); }), std::bad_array_new_length);
    // A category the parent cannot name: the value arrives, in mp's own category.
    struct custom_category final : std::error_category {
      const char* name() const noexcept override { return "custom"; }
      std::string message(int) const override { return "custom error"; }
    };
    try {
      pool.apply([] {
        static const custom_category category;
        throw std::system_error(7, category, "mine");
      });
      FAIL("no exception");
    } catch (const std::system_error& e) {
      CHECK(e.code().value() == 7);
      CHECK(std::string(e.code().category().name()) == "mp.remote");
    }
  }
  SECTION("a registered type") {
    try {
      pool.apply([] { throw quota_exceeded("over by 3"); });
      FAIL("no exception");
    } catch (const quota_exceeded& e) {
      CHECK(std::string(e.what()) == "over by 3");
      CHECK(dynamic_cast<const mp::RemoteInfo&>(e).remote_type().find("quota_exceeded") != std::string::npos);
    }
  }
  SECTION("std::regex_error: RemoteError until registered, then Remote<std::regex_error> with its code()") {
    const auto bad_pattern = [] { return std::regex("(unclosed").mark_count(); };
    try {
      (void)pool.apply(bad_pattern);
      FAIL("no exception");
    } catch (const mp::RemoteError& e) {
      CHECK(e.remote_type() == "std::regex_error");
    }
    mp::register_exception<std::regex_error>();
    std::string here;
    try {
      (void)bad_pattern();
    } catch (const std::regex_error& e) {
      here = e.what();
    }
    try {
      (void)pool.apply(bad_pattern);
      FAIL("no exception");
    } catch (const std::regex_error& e) {
      CHECK(e.code() == std::regex_constants::error_paren);
      CHECK(std::string(e.what()) == here);
      CHECK(dynamic_cast<const mp::RemoteInfo&>(e).remote_type() == "std::regex_error");
    }
  }
  SECTION("an unregistered type") {
    try {
      pool.apply([] { throw not_registered("plain"); });
      FAIL("no exception");
    } catch (const mp::RemoteError& e) {
      CHECK(e.remote_type().find("not_registered") != std::string::npos);
      CHECK(std::string(e.what()) == e.remote_type() + ": plain");
      CHECK(e.pid() > 0);
    }
    CHECK_THROWS_AS(pool.apply([] { throw not_registered("plain"); }), mp::RemoteInfo);
  }
  SECTION("WorkerLost is RemoteInfo too, with the worker's pid") {
    try {
      pool.apply([] { ::_exit(3); });
      FAIL("no exception");
    } catch (const mp::RemoteInfo& e) {
      CHECK(e.remote_type() == "mp::WorkerLost");
      CHECK(e.pid() > 0);
    }
  }
}

namespace {
// Runs body with stderr on a fresh pseudo-terminal and returns what it wrote there.
template <class Body>
std::string through_pty(Body&& body) {
  int master = -1, slave = -1;
  REQUIRE(::openpty(&master, &slave, nullptr, nullptr, nullptr) == 0);
  ::fcntl(master, F_SETFD, FD_CLOEXEC);
  ::fcntl(slave, F_SETFD, FD_CLOEXEC);
  {
    stderr_redirect to_pty(slave);
    body();
  }
  ::close(slave);
  std::string text;
  char buffer[4096];
  for (;;) {
    pollfd p{master, POLLIN, 0};
    if (::poll(&p, 1, 0) != 1) break;
    const auto n = ::read(master, buffer, sizeof buffer);
    if (n <= 0) break;
    text.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(master);
  return text;
}
template <class Body>
std::string through_file(Body&& body) {
  temp_file out;
  const int fd = ::open(out.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  {
    stderr_redirect to_file(fd);
    ::close(fd);
    body();
  }
  return out.read();
}
}  // namespace

TEST_CASE("A progress bar is drawn on a terminal, forced into a file with always, and absent otherwise",
          "[futures]") {
  leak_check leaks;
  mp::Pool pool(2);
  std::vector<int> xs(200);
  for (int i = 0; i < 200; ++i) xs[static_cast<std::size_t>(i)] = i;
  SECTION("on_tty on a pseudo-terminal: map, map_async, starmap") {
    const std::string text = through_pty([&] {
      CHECK(pool.map(square, xs, {.chunksize = 7, .progress = mp::Progress::on_tty, .desc = "squares"}).size() == 200);
      CHECK(pool.map_async(square, xs, {.progress = mp::Progress::on_tty, .desc = "later"}).get().size() == 200);
    });
    CHECK_THAT(text, Catch::Matchers::Contains("squares: 100%|####################| 200/200 ["));
    CHECK_THAT(text, Catch::Matchers::Contains("it/s]"));
    CHECK_THAT(text, Catch::Matchers::Contains("later: 100%"));
    CHECK_THAT(text, Catch::Matchers::Contains("\r"));
  }
  SECTION("on_tty into a file, and off on a terminal: nothing") {
    CHECK(through_file([&] { (void)pool.map(square, xs, {.progress = mp::Progress::on_tty}); }).empty());
    CHECK(through_pty([&] { (void)pool.map(square, xs, {.progress = mp::Progress::off}); }).empty());
    CHECK(through_pty([&] { (void)pool.map(square, xs); }).empty());
  }
  SECTION("always into a file: lines, the last one complete") {
    const std::string text = through_file([&] { (void)pool.map(square, xs, {.progress = mp::Progress::always}); });
    CHECK_THAT(text, Catch::Matchers::Contains("100%|####################| 200/200 ["));
    CHECK(text.back() == '\n');
    CHECK(text.find('\r') == std::string::npos);
  }
  SECTION("imap counts what the caller consumed") {
    const std::string text = through_file([&] {
      int consumed = 0;
      for (int y : pool.imap(square, xs, {.chunksize = 4, .progress = mp::Progress::always, .desc = "lazy"})) {
        (void)y;
        if (++consumed == 5) break;
      }
    });
    CHECK_THAT(text, Catch::Matchers::Contains("lazy:   2%|"));
    CHECK_THAT(text, Catch::Matchers::Contains("| 5/200 ["));
  }
}
