// Tests of mp/shared.hpp: Value, RawValue, Array, RawArray and SharedMemory across real processes, under every start
// method (ctest runs each test with MP_START_METHOD=fork, spawn and forkserver): children get the shared objects as
// Process arguments.
#include <catch2/catch.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <forward_list>
#include <list>
#include <mutex>
#include <numeric>
#include <string>
#include <vector>

#include <mp/detail/shm_tracker.hpp>
#include <mp/detail/unique_fd.hpp>
#include <mp/process.hpp>

#include "support/child_process.hpp"
#include <mp/shared.hpp>
#include <mp/sync.hpp>

namespace {

using namespace std::chrono_literals;
using namespace mp_test;

bool shm_exists(const std::string& os_name) { return std::filesystem::exists("/dev/shm" + os_name); }

std::vector<std::string> shm_entries_with_prefix(const std::string& prefix) {
  std::vector<std::string> found;
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm")) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) == 0) found.push_back(name);
  }
  return found;
}

int open_fd_count() {
  int count = 0;
  for (int fd = 0; fd < 4096; ++fd) {
    if (::fcntl(fd, F_GETFD) != -1) ++count;
  }
  return count;
}

struct point {
  int x;
  double y;
};

}  // namespace

// ---- Value ------------------------------------------------------------------------------------------------

TEST_CASE("Value with get_lock gives exactly 400000 for 4 processes x 100000 increments", "[value]") {
  mp::Value<long> counter(0);
  std::vector<mp::Process> children;
  for (int i = 0; i < 4; ++i) {
    children.push_back(start(
        [](mp::Value<long> counter) {
          for (int n = 0; n < 100'000; ++n) {
            std::lock_guard guard(counter.get_lock());
            counter.value() += 1;
          }
        },
        counter));
  }
  for (auto& child : children) CHECK(finish(child) == 0);
  CHECK(counter.value() == 400'000);
}

TEST_CASE("Value fetch_add from 4 processes x 100000 gives exactly 400000 without a lock", "[value]") {
  mp::Value<std::int64_t> counter(0);
  mp::RawValue<double> total(0.0);
  std::vector<mp::Process> children;
  for (int i = 0; i < 4; ++i) {
    children.push_back(start(
        [](mp::Value<std::int64_t> counter, mp::RawValue<double> total) {
          for (int n = 0; n < 100'000; ++n) {
            counter.fetch_add(1);
            total.fetch_add(0.5);
          }
        },
        counter, total));
  }
  for (auto& child : children) CHECK(finish(child) == 0);
  CHECK(counter.load() == 400'000);
  CHECK(total.load() == 200'000.0);
}

TEST_CASE("Value copies and children share one value - value() is a reference into shared memory", "[value]") {
  mp::Value<int> value(7);
  CHECK(value.value() == 7);
  mp::Value<int> copy = value;
  copy.value() = 8;
  CHECK(value.value() == 8);
  int& ref = value.value();
  auto child = start(
      [](mp::Value<int> value) {
        child_check(value.value() == 8);
        value.value() = 9;
      },
      value);
  CHECK(finish(child) == 0);
  CHECK(ref == 9);
  CHECK(mp::Value<double>().value() == 0.0);  // default: T{}
}

TEST_CASE("Value atomic load, store, exchange, compare_exchange, fetch_sub", "[value]") {
  mp::Value<int> value(10);
  value.store(20);
  CHECK(value.load() == 20);
  CHECK(value.exchange(30) == 20);
  int expected = 29;
  CHECK_FALSE(value.compare_exchange(expected, 40));
  CHECK(expected == 30);
  CHECK(value.compare_exchange(expected, 40));
  CHECK(value.fetch_sub(5) == 40);
  CHECK(value.load() == 35);
  auto child = start([](mp::Value<int> value) { value.fetch_sub(35); }, value);
  CHECK(finish(child) == 0);
  CHECK(value.load() == 0);
}

TEST_CASE("Value holds a trivially copyable struct", "[value]") {
  mp::Value<point> value(point{1, 2.5});
  auto child = start(
      [](mp::Value<point> value) {
        std::lock_guard guard(value);
        child_check(value.value().x == 1 && value.value().y == 2.5);
        value.value() = point{3, 4.5};
      },
      value);
  CHECK(finish(child) == 0);
  CHECK(value.value().x == 3);
  CHECK(value.value().y == 4.5);
}

TEST_CASE("Value lock held by a SIGKILLed process passes to its waiter within 3 s with owner_died()", "[value]") {
  mp::Value<int> value(0);
  mp::Semaphore locked(0), waiting(0), got(0);
  auto holder = start(
      [](mp::Value<int> value, mp::Semaphore locked) {
        value.get_lock().acquire();
        value.value() = -1;
        locked.release();
        hang();
      },
      value, locked);
  REQUIRE(locked.acquire(10s));
  auto waiter = start(
      [](mp::Value<int> value, mp::Semaphore waiting, mp::Semaphore got) {
        waiting.release();
        child_check(value.get_lock().acquire(5s));  // the hang detector
        got.release();
        child_check(value.get_lock().owner_died());
        child_check(value.value() == -1);
        value.value() = 1;  // repaired
        value.get_lock().release();
      },
      value, waiting, got);
  REQUIRE(waiting.acquire(10s));
  // Timed: the kill to the waiter's note that it holds the lock, not the exits and reaps (slow on a loaded machine);
  // 3 s stays below the waiter's 5 s deadline.
  const auto killed_at = std::chrono::steady_clock::now();
  holder.kill();
  CHECK(got.acquire(10s));
  CHECK(std::chrono::steady_clock::now() - killed_at < 3s);
  CHECK(finish(holder) == -SIGKILL);
  CHECK(finish(waiter) == 0);
  CHECK(value.value() == 1);
}

TEST_CASE("RawValue shares without a lock", "[value]") {
  mp::RawValue<std::uint16_t> value(5);
  auto child = start([](mp::RawValue<std::uint16_t> value) { value.value() = 6; }, value);
  CHECK(finish(child) == 0);
  CHECK(value.value() == 6);
  CHECK(value.fetch_add(1) == 6);
  CHECK(value.load() == 7);
}

// ---- Array ------------------------------------------------------------------------------------------------

TEST_CASE("Array written by 5 processes, one index each, reads [0, 10, 20, 30, 40]", "[array]") {
  mp::Array<int> numbers(5);
  CHECK(numbers.size() == 5);
  CHECK(numbers.to_vector() == std::vector<int>(5, 0));
  std::vector<mp::Process> children;
  for (std::size_t i = 0; i < 5; ++i) {
    children.push_back(start(
        [](mp::Array<int> numbers, std::size_t index) {
          std::lock_guard guard(numbers.get_lock());
          numbers[index] = static_cast<int>(index) * 10;
        },
        numbers, i));
  }
  for (auto& child : children) CHECK(finish(child) == 0);
  CHECK(numbers.to_vector() == std::vector<int>{0, 10, 20, 30, 40});
}

TEST_CASE("Array constructors: size, initializer list, sized and unsized ranges", "[array]") {
  mp::Array<double> zeros(3);
  CHECK(zeros.to_vector() == std::vector<double>{0, 0, 0});
  mp::Array<int> listed{1, 2, 3};
  CHECK(listed.to_vector() == std::vector<int>{1, 2, 3});
  std::vector<int> source{4, 5};
  mp::Array<long> from_vector(source);
  CHECK(from_vector.to_vector() == std::vector<long>{4, 5});
  std::list<int> linked{7, 8, 9};
  mp::Array<int> from_list(linked);
  CHECK(from_list.size() == 3);
  const std::forward_list<int> odd{1, 3, 5, 7, 9};
  mp::Array<int> from_unsized(odd);  // no size(): collected first
  CHECK(from_unsized.to_vector() == std::vector<int>{1, 3, 5, 7, 9});
  mp::Array<int> empty(std::size_t{0});
  CHECK(empty.empty());
  CHECK(empty.begin() == empty.end());
  mp::Array<point> structs{point{1, 1.5}, point{2, 2.5}};
  CHECK(structs[1].y == 2.5);
}

TEST_CASE("Array access: at() bounds check, span, iterators, data - copies share", "[array]") {
  mp::Array<int> numbers{1, 2, 3};
  CHECK_THROWS_WITH(numbers.at(3), Catch::Contains("index 3") && Catch::Contains("size 3"));
  numbers.at(2) = 30;
  CHECK(numbers[2] == 30);
  CHECK(std::accumulate(numbers.begin(), numbers.end(), 0) == 33);
  CHECK(numbers.span().size() == 3);
  CHECK(numbers.data() == numbers.span().data());
  mp::Array<int> copy = numbers;
  copy[0] = 10;
  CHECK(numbers[0] == 10);
  const mp::Array<int>& constant = numbers;
  CHECK(constant.at(0) == 10);
  CHECK(constant.span()[1] == 2);
}

TEST_CASE("Array fetch_add on an element from 4 processes gives exact totals", "[array]") {
  mp::Array<std::int64_t> counters(2);
  std::vector<mp::Process> children;
  for (int i = 0; i < 4; ++i) {
    children.push_back(start(
        [](mp::Array<std::int64_t> counters) {
          for (int n = 0; n < 50'000; ++n) {
            counters.fetch_add(0, 1);
            counters.fetch_sub(1, 2);
          }
        },
        counters));
  }
  for (auto& child : children) CHECK(finish(child) == 0);
  CHECK(counters.load(0) == 200'000);
  CHECK(counters.load(1) == -400'000);
  counters.store(0, 5);
  CHECK(counters[0] == 5);
}

TEST_CASE("RawArray shares without a lock", "[array]") {
  mp::RawArray<char> text(6);
  auto child = start([](mp::RawArray<char> text) { std::memcpy(text.data(), "hello", 6); }, text);
  CHECK(finish(child) == 0);
  CHECK(std::string(text.data()) == "hello");
  mp::RawArray<int> listed{1, 2};
  mp::RawArray<int> ranged(std::vector<int>{3, 4});
  CHECK(listed[1] + ranged[0] == 5);
}

// ---- SharedMemory -----------------------------------------------------------------------------------------

TEST_CASE("SharedMemory created here is attached by name in another process - bytes go both ways", "[shared_memory]") {
  auto block = mp::SharedMemory::create(4096);
  CHECK(block.size() == 4096);
  CHECK(block.name().rfind("/mp-" + std::to_string(::getpid()) + "-", 0) == 0);
  CHECK(shm_exists(block.name()));
  CHECK(block.buf()[100] == std::byte{0});
  block.buf()[0] = std::byte{42};
  auto child = start(
      [](std::string name) {
        auto attached = mp::SharedMemory::attach(name);
        child_check(attached.size() == 4096);
        child_check(attached.buf()[0] == std::byte{42});
        attached.buf()[1] = std::byte{43};
        attached.close();
      },
      block.name());
  CHECK(finish(child) == 0);
  CHECK(block.buf()[1] == std::byte{43});
  CHECK(shm_exists(block.name()));  // attaching and exiting never unlinks
  block.unlink();
  CHECK_FALSE(shm_exists(block.name()));
  CHECK(block.buf()[1] == std::byte{43});  // the mapping outlives the name
  block.close();
}

TEST_CASE("SharedMemory names: given with or without '/', attach accepts both", "[shared_memory]") {
  const std::string bare = "mp-test-" + std::to_string(::getpid()) + "-named";
  auto block = mp::SharedMemory::create(10, bare);
  CHECK(block.name() == bare);
  CHECK(shm_exists("/" + bare));
  auto by_bare = mp::SharedMemory::attach(bare);
  auto by_slash = mp::SharedMemory::attach("/" + bare);
  by_bare.buf()[3] = std::byte{3};
  CHECK(by_slash.buf()[3] == std::byte{3});
  CHECK_THROWS_WITH(mp::SharedMemory::create(10, bare), Catch::Contains("already exists") && Catch::Contains(bare));
  block.unlink();
  CHECK_THROWS_WITH(block.unlink(), Catch::Contains("already unlinked"));
  CHECK_THROWS_WITH(mp::SharedMemory::attach(bare), Catch::Contains("no block named") && Catch::Contains(bare));
}

TEST_CASE("SharedMemory rejects size 0, bad names, and use after close", "[shared_memory]") {
  CHECK_THROWS_WITH(mp::SharedMemory::create(0), Catch::Contains("size must be > 0"));
  CHECK_THROWS_WITH(mp::SharedMemory::create(10, "a/b"), Catch::Contains("invalid name \"a/b\""));
  CHECK_THROWS_WITH(mp::SharedMemory::attach("/"), Catch::Contains("invalid name"));
  CHECK_THROWS_WITH(mp::SharedMemory::attach(std::string(300, 'x')), Catch::Contains("invalid name"));
  auto block = mp::SharedMemory::create(16);
  mp::SharedMemory copy = block;
  block.close();
  CHECK_THROWS_WITH(copy.buf(), Catch::Contains("closed"));
  block.close();  // idempotent
  block.unlink();
}

TEST_CASE("SharedMemory of 64 MiB carries an array between processes without copying", "[shared_memory]") {
  constexpr std::size_t count = (64u << 20) / sizeof(std::uint64_t);
  auto block = mp::SharedMemory::create(count * sizeof(std::uint64_t));
  auto child = start(
      [](std::string name) {
        auto attached = mp::SharedMemory::attach(name);
        auto* numbers = reinterpret_cast<std::uint64_t*>(attached.buf().data());
        for (std::size_t i = 0; i < count; ++i) numbers[i] = i;
      },
      block.name());
  CHECK(finish(child) == 0);
  const auto* numbers = reinterpret_cast<const std::uint64_t*>(block.buf().data());
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < count; ++i) sum += numbers[i];
  CHECK(sum == std::uint64_t{count} * (count - 1) / 2);
  block.unlink();
}

TEST_CASE("SharedMemory its creator never unlinked is unlinked once the creator's family has exited",
          "[shared_memory]") {
  // A supervisor (a subreaper: the tracker, orphaned by design, becomes its child) starts a new tracker family,
  // so that the names its creator registers do not wait for this test process to exit.
  // Exit codes: 0 as specified, 2 the block vanished early, 3 an attacher unlinked it, 4 it was left behind.
  auto supervisor = start([] {
    ::prctl(PR_SET_CHILD_SUBREAPER, 1);
    mp::detail::shm_tracker::instance().start_new_family();
    mp::Semaphore created(0);
    mp::RawArray<char> name(256);
    mp::Event exit_now;
    mp::Process creator(
        [](mp::RawArray<char> name, mp::Semaphore created, mp::Event exit_now) {
          auto block = mp::SharedMemory::create(128);
          std::strncpy(name.data(), block.name().c_str(), 255);
          created.release();
          exit_now.wait();  // exits without unlink()
        },
        name, created, exit_now);
    creator.start();
    created.acquire();
    const std::string os_name = name.data();
    if (!shm_exists(os_name)) ::_exit(2);
    mp::Process attacher([](std::string os_name) { mp::SharedMemory::attach(os_name).buf()[0] = std::byte{1}; },
                         os_name);
    attacher.start();
    attacher.join();
    if (!shm_exists(os_name)) ::_exit(3);  // an attacher that exits does not unlink it (gh-82300)
    exit_now.set();
    creator.join();
    mp::detail::stop_forkserver();  // under forkserver this process's own server is a child that waits for it
    while (::waitpid(-1, nullptr, 0) > 0 || errno == EINTR) {  // the tracker, once it has cleaned up
    }
    if (shm_exists(os_name)) ::_exit(4);
  });
  CHECK(finish(supervisor) == 0);
}

TEST_CASE("SharedMemory created with track = false survives its creator", "[shared_memory]") {
  const std::string bare = "mp-test-" + std::to_string(::getpid()) + "-untracked";
  auto creator =
      start([](std::string bare) { mp::SharedMemory::create(64, bare, false).buf()[0] = std::byte{9}; }, bare);
  CHECK(finish(creator) == 0);
  auto block = mp::SharedMemory::attach(bare);
  CHECK(block.buf()[0] == std::byte{9});
  block.unlink();
}

// ---- resources --------------------------------------------------------------------------------------------

TEST_CASE("Value and Array use no /dev/shm name and no descriptor once they are gone", "[resources]") {
  const int before = open_fd_count();
  {
    std::vector<mp::Value<int>> values(1000);  // 128 bytes each: 2 chunks of 64 KiB, one descriptor each
    std::vector<mp::Array<double>> arrays;
    for (int i = 0; i < 16; ++i) arrays.emplace_back(std::size_t{1000});  // 8 KiB each: 2 more chunks
    mp::Array<std::byte> big(std::size_t{1} << 20);                        // a block of its own
    CHECK(open_fd_count() - before <= 6);
    for (const auto& name : shm_entries_with_prefix("mp-" + std::to_string(::getpid()))) FAIL("unexpected " << name);
    values[0].value() = 1;
    CHECK(values[1].value() == 0);
  }
  CHECK(open_fd_count() == before);
}

TEST_CASE("SIGKILLing the parent of a process tree using shared objects leaves no /dev/shm entry", "[resources]") {
  // A supervisor (a subreaper, so that it inherits and reaps every orphan) runs the tree, kills its root, reaps
  // everything, then checks /dev/shm. Exit codes: 0 clean, 2 the block never existed, 3 an entry remains.
  auto supervisor = start([] {
    ::prctl(PR_SET_CHILD_SUBREAPER, 1);
    mp::detail::shm_tracker::instance().start_new_family();
    mp::Semaphore ready(0);
    mp::RawArray<char> name(256);
    mp::RawValue<pid_t> root_pid(0);
    mp::Process root(
        [](mp::Semaphore ready, mp::RawArray<char> name, mp::RawValue<pid_t> root_pid) {
          mp::Value<int> value(0);
          mp::Array<int> numbers(4);
          mp::Lock lock;
          mp::Event never;
          mp::Barrier barrier(3);
          auto block = mp::SharedMemory::create(4096);  // never unlinked by anyone
          std::strncpy(name.data(), block.name().c_str(), 255);
          root_pid.value() = ::getpid();
          mp::Semaphore started(0);
          std::vector<mp::Process> workers;
          for (int i = 0; i < 2; ++i) {
            workers.emplace_back(
                [](mp::RawArray<char> name, mp::Lock lock, mp::Value<int> value, mp::Array<int> numbers,
                   mp::Semaphore started, mp::Event never, int i) {
                  ::signal(SIGTERM, SIG_DFL);  // Catch's handler, inherited by fork, would report the parent's death
                  auto attached = mp::SharedMemory::attach(name.data());
                  {
                    std::lock_guard guard(lock);
                    value.value() += 1;
                    numbers[static_cast<std::size_t>(i)] = i;
                    attached.buf()[static_cast<std::size_t>(i)] = std::byte{1};
                  }
                  started.release();
                  never.wait();
                },
                name, lock, value, numbers, started, never, i);
            workers.back().start();
          }
          for (int i = 0; i < 2; ++i) started.acquire();
          lock.acquire();  // killed holding it
          ready.release();
          hang();
        },
        ready, name, root_pid);
    root.start();
    ready.acquire();
    const std::string os_name = name.data();
    if (!shm_exists(os_name)) ::_exit(2);
    root.kill();
    root.join();
    mp::detail::stop_forkserver();  // under forkserver this process's own server is a child that waits for it
    // Reap the orphans: the workers (SIGTERMed by their parent's death) and the shm tracker.
    while (::waitpid(-1, nullptr, 0) > 0 || errno == EINTR) {
    }
    if (shm_exists(os_name)) ::_exit(3);
    if (!shm_entries_with_prefix("mp-" + std::to_string(root_pid.value()) + "-").empty()) ::_exit(3);
  });
  CHECK(finish(supervisor) == 0);
}

// ---- start methods spawn and forkserver -------------------------------------------------------------------

namespace {

void spawned_shared_worker(mp::Value<long> value, mp::RawValue<int> raw_value, mp::Array<int> array,
                           mp::RawArray<char> raw_array, mp::SharedMemory block, int index) {
  for (int i = 0; i < 10'000; ++i) {
    std::lock_guard guard(value.get_lock());
    value.value() += 1;
  }
  raw_value.fetch_add(index);
  {
    std::lock_guard guard(array);
    array[static_cast<std::size_t>(index)] = index * 10;
  }
  raw_array[static_cast<std::size_t>(index)] = static_cast<char>('a' + index);
  block.buf()[static_cast<std::size_t>(index)] = std::byte{static_cast<unsigned char>(index)};
}

}  // namespace

TEST_CASE("Value, Array and SharedMemory cross to children started by spawn and forkserver", "[spawn]") {
  const auto method = GENERATE(mp::StartMethod::spawn, mp::StartMethod::forkserver);
  mp::Value<long> value(0);
  mp::RawValue<int> raw_value(0);
  mp::Array<int> array(4);
  mp::RawArray<char> raw_array(4);
  auto block = mp::SharedMemory::create(64);
  std::vector<mp::Process> children;
  for (int i = 1; i <= 3; ++i) {
    children.emplace_back(mp::ProcessOptions{.start_method = method}, spawned_shared_worker, value, raw_value, array,
                          raw_array, block, i);
    children.back().start();
  }
  for (auto& child : children) CHECK(finish(child) == 0);
  CHECK(value.value() == 30'000);
  CHECK(raw_value.load() == 6);
  CHECK(array.to_vector() == std::vector<int>{0, 10, 20, 30});
  CHECK(std::string(raw_array.data() + 1, 3) == "bcd");
  CHECK(block.buf()[3] == std::byte{3});
  CHECK(shm_exists(block.name()));  // the spawned attachers did not unlink it
  block.unlink();
}
