// Tests of mp/shared_heap.hpp: SharedHeap, the shm:: containers and ShareableList across real processes, under every
// start method (ctest runs each test with MP_START_METHOD=fork, spawn and forkserver): children get the heap, locks
// and note pipes as Process arguments and find their containers by name.
// Processes synchronize through mp's primitives or note pipes, never through sleeps. A death inside the heap's
// bookkeeping is made deterministic by the test seam (detail/heap/test_seam.hpp): the child stops there, says so,
// and waits for its SIGKILL.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include <mp/detail/heap/offset_pointer.hpp>
#include <mp/detail/heap/test_seam.hpp>
#include <mp/process.hpp>
#include <mp/serialize.hpp>
#include <mp/shared_heap.hpp>
#include <mp/sync.hpp>

#include "support/child_process.hpp"

namespace {

using namespace std::chrono_literals;
using namespace mp_test;
namespace shm = mp::shm;

using int_vector = shm::vector<int>;
using index_map = shm::map<shm::string, shm::vector<int>>;

int open_fd_count() {
  int count = 0;
  for (int fd = 0; fd < 4096; ++fd) {
    if (::fcntl(fd, F_GETFD) != -1) ++count;
  }
  return count;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// ---- the test seam: a child that stops at a point inside the heap's bookkeeping until it is killed ---------------

mp::detail::heap::seam_point stop_at{};
int stopped_note = -1;

void stop_here(mp::detail::heap::seam_point point) {
  if (point != stop_at) return;
  const char c = 1;
  (void)!::write(stopped_note, &c, 1);
  hang();
}

/// In a child: stop (post on `stopped`, then wait for SIGKILL) the next time the heap reaches `point`.
void stop_next_time_at(mp::detail::heap::seam_point point, note_end stopped) {
  stop_at = point;
  stopped_note = stopped.fd;
  mp::detail::heap::the_seam_hook().store(stop_here);
}

}  // namespace

// ---- containers across processes --------------------------------------------------------------------------

TEST_CASE("SharedHeap vector appended by 4 children under a Lock holds every item exactly once", "[shared_heap]") {
  mp::SharedHeap heap(1 << 20);
  mp::Lock lock;
  heap.find_or_construct<int_vector>("xs");
  std::vector<mp::Process> children;
  for (int c = 0; c < 4; ++c) {
    children.push_back(start(
        [](mp::SharedHeap heap, mp::Lock lock, int c) {
          int_vector* xs = heap.find<int_vector>("xs");
          child_check(xs != nullptr, "xs exists");
          for (int i = 0; i < 1000; ++i) {
            std::lock_guard guard(lock);
            xs->push_back(c * 1000 + i);
          }
        },
        heap, lock, c));
  }
  for (auto& child : children) CHECK(finish(child) == 0);
  auto& xs = *heap.find<int_vector>("xs");
  std::vector<int> items(xs.begin(), xs.end());
  std::sort(items.begin(), items.end());
  std::vector<int> expected(4000);
  std::iota(expected.begin(), expected.end(), 0);
  CHECK(items == expected);
}

TEST_CASE("SharedHeap nested map of strings to vectors is filled by 3 children and read by the parent",
          "[shared_heap]") {
  mp::SharedHeap heap(1 << 20);
  mp::Lock lock;
  std::vector<mp::Process> children;
  for (int c = 0; c < 3; ++c) {
    children.push_back(start(
        [](mp::SharedHeap heap, mp::Lock lock, int c) {
          std::lock_guard guard(lock);
          auto& index = heap.find_or_construct<index_map>("index");
          // The inner vector gets the heap's allocator from the map (scoped allocator): no allocator in sight.
          const std::string name = "child-" + std::to_string(c);
          auto& own = index.try_emplace(shm::string(std::string_view(name), heap.allocator<char>())).first->second;
          for (int i = 0; i < 3; ++i) own.push_back(c * 10 + i);
          index.emplace(std::piecewise_construct, std::forward_as_tuple("all"), std::forward_as_tuple());
          index.find("all")->second.push_back(c);
        },
        heap, lock, c));
  }
  for (auto& child : children) CHECK(finish(child) == 0);
  const auto& index = *heap.find<index_map>("index");
  REQUIRE(index.size() == 4);
  for (int c = 0; c < 3; ++c) {
    const std::string name = "child-" + std::to_string(c);
    const auto& own = index.find(std::string_view(name))->second;
    CHECK(std::vector<int>(own.begin(), own.end()) == std::vector<int>{c * 10, c * 10 + 1, c * 10 + 2});
    CHECK(own.get_allocator() == heap.allocator<int>());
  }
  std::vector<int> all(index.find("all")->second.begin(), index.find("all")->second.end());
  std::sort(all.begin(), all.end());
  CHECK(all == std::vector<int>{0, 1, 2});
}

TEST_CASE("SharedHeap find, find_or_construct and destroy by name across processes", "[shared_heap]") {
  mp::SharedHeap heap(1 << 20);
  const std::size_t free_at_start = heap.free_memory();
  auto& counter = heap.find_or_construct<long>("counter", 41L);
  auto& words = heap.find_or_construct<shm::vector<shm::string>>("words");
  words.emplace_back("kept");
  CHECK(&heap.find_or_construct<long>("counter", 0L) == &counter);  // found, not constructed again
  CHECK(heap.find<double>("missing") == nullptr);

  auto child = start(
      [](mp::SharedHeap heap) {
        long* counter = heap.find<long>("counter");
        child_check(counter != nullptr && *counter == 41, "counter found with its value");
        *counter += 1;
        auto* words = heap.find<shm::vector<shm::string>>("words");
        child_check(words != nullptr && words->size() == 1 && (*words)[0] == "kept", "words found");
        child_check(heap.destroy<shm::vector<shm::string>>("words"), "words destroyed");
        child_check(!heap.destroy<shm::vector<shm::string>>("words"), "destroyed once only");
        heap.find_or_construct<shm::string>("note", "from the child");
      },
      heap);
  REQUIRE(finish(child) == 0);
  CHECK(counter == 42);
  CHECK(heap.find<shm::vector<shm::string>>("words") == nullptr);
  REQUIRE(heap.find<shm::string>("note") != nullptr);
  CHECK(*heap.find<shm::string>("note") == "from the child");

  SECTION("a name used with another type is an error naming the type") {
    CHECK_THROWS_WITH(heap.find<int>("counter"), Catch::Contains("find<int>(\"counter\")") &&
                                                     Catch::Contains("another type"));
    CHECK_THROWS_AS(heap.find_or_construct<double>("counter"), mp::Error);
    CHECK_THROWS_AS(heap.destroy<shm::string>("counter"), mp::Error);
    CHECK(*heap.find<long>("counter") == 42);  // untouched
  }
  SECTION("empty names are refused") {
    CHECK_THROWS_WITH(heap.find<int>(""), Catch::Contains("empty"));
    CHECK_THROWS_WITH(heap.find_or_construct<int>(std::string_view("a\0b", 3)), Catch::Contains("NUL"));
  }
  SECTION("destroying everything gives the memory back") {
    CHECK(heap.destroy<long>("counter"));
    CHECK(heap.destroy<shm::string>("note"));
    CHECK(heap.free_memory() == free_at_start);
  }
}

TEST_CASE("SharedHeap crosses to children started by spawn and forkserver, mapped at their own address",
          "[shared_heap]") {
  const auto method = GENERATE(mp::StartMethod::spawn, mp::StartMethod::forkserver);
  mp::SharedHeap heap(1 << 20);
  mp::Lock lock;
  auto& index = heap.find_or_construct<index_map>("index");
  index.try_emplace(shm::string("parent", heap.allocator<char>())).first->second.push_back(1);
  std::vector<mp::Process> children;
  for (int c = 0; c < 2; ++c) {
    children.emplace_back(
        mp::ProcessOptions{.start_method = method},
        [](mp::SharedHeap heap, mp::Lock lock, int c) {
          auto* index = heap.find<index_map>("index");
          child_check(index != nullptr, "index found");
          std::lock_guard guard(lock);
          child_check(index->find("parent")->second.size() == 1, "parent's entry seen");
          const std::string name = "spawned-" + std::to_string(c);
          auto& own = (*index)[shm::string(std::string_view(name), heap.allocator<char>())];
          for (int i = 0; i < 100; ++i) own.push_back(i);  // grows: allocates in the child's mapping
        },
        heap, lock, c);
    children.back().start();
  }
  for (auto& child : children) CHECK(finish(child) == 0);
  CHECK(index.size() == 3);
  CHECK(index.find("spawned-0")->second.size() == 100);
  CHECK(index.find("spawned-1")->second[99] == 99);
}

TEST_CASE("SharedHeap references taken before fork are valid in the forked child", "[shared_heap][fork]") {
  mp::SharedHeap heap(1 << 16);
  auto& xs = heap.find_or_construct<int_vector>("xs");
  xs.push_back(1);
  auto child = start_forked([&xs] { xs.push_back(2); });  // same mapping, same address
  CHECK(finish(child) == 0);
  CHECK(std::vector<int>(xs.begin(), xs.end()) == std::vector<int>{1, 2});
}

// ---- a process killed inside the heap's bookkeeping ----------------------------------------------------------

TEST_CASE("SharedHeap: a child SIGKILLed holding the allocation lock does not wedge it - a waiter gets it within 3 s",
          "[shared_heap][robust]") {
  mp::SharedHeap heap(1 << 20);
  auto& xs = heap.find_or_construct<int_vector>("xs");
  auto& other = heap.find_or_construct<int_vector>("other");
  note_pipe stopped;
  auto child = start(
      [](mp::SharedHeap heap, note_end stopped) {
        stop_next_time_at(mp::detail::heap::seam_point::allocator_locked, stopped);
        heap.find<int_vector>("xs")->push_back(1);  // allocates: stops holding the lock, before Boost writes
      },
      heap, stopped.writer());
  REQUIRE(stopped.wait());
  // A thread of this process allocates now: it waits for the lock the child holds (or, if it is slow to start,
  // takes it after the death; either way it must finish).
  std::promise<void> got;
  auto waiter = std::async(std::launch::async, [&other, &got] {
    other.push_back(0);  // allocates: the first call takes the lock
    got.set_value();
    for (int i = 1; i < 1000; ++i) other.push_back(i);
  });
  // Timed: the kill to the waiter's first allocation, not the child's reap nor the other 999 (slow on a loaded
  // machine).
  const auto killed_at = std::chrono::steady_clock::now();
  child.kill();
  REQUIRE(got.get_future().wait_for(10s) == std::future_status::ready);
  CHECK(std::chrono::steady_clock::now() - killed_at < 3s);
  CHECK(finish(child) == -SIGKILL);
  REQUIRE(waiter.wait_for(10s) == std::future_status::ready);
  waiter.get();
  CHECK(other.size() == 1000);
  for (int i = 0; i < 1000; ++i) xs.push_back(i);  // nothing was half-written: the heap goes on
  CHECK(xs.size() == 1000);
  CHECK(heap.find_or_construct<shm::string>("after", "still usable") == "still usable");
}

TEST_CASE("SharedHeap: a child SIGKILLed while the allocator may be writing breaks the heap with a clear error",
          "[shared_heap][robust]") {
  mp::SharedHeap heap(1 << 20);
  auto& xs = heap.find_or_construct<int_vector>("xs");
  xs.assign({1, 2, 3});
  note_pipe stopped;
  auto child = start(
      [](mp::SharedHeap heap, note_end stopped) {
        stop_next_time_at(mp::detail::heap::seam_point::allocator_writing, stopped);
        heap.find<int_vector>("xs")->reserve(1000);
      },
      heap, stopped.writer());
  REQUIRE(stopped.wait());
  child.kill();
  CHECK(finish(child) == -SIGKILL);
  const auto killed_at = std::chrono::steady_clock::now();
  // Every allocation from now on fails, in every process, with the cause.
  CHECK_THROWS_WITH(xs.reserve(1000), Catch::Contains("killed inside the heap's allocator") &&
                                          Catch::Contains("allocating") && Catch::Contains("new SharedHeap"));
  CHECK_THROWS_WITH(heap.find_or_construct<int>("n", 1), Catch::Contains("killed inside the heap's allocator"));
  CHECK(std::chrono::steady_clock::now() - killed_at < 1s);
  auto other = start(
      [](mp::SharedHeap heap) {
        try {
          heap.find<int_vector>("xs")->push_back(4);  // no room left in its capacity of 3: allocates
        } catch (const mp::Error& e) {
          child_check(contains(e.what(), "killed inside the heap's allocator"), "the cause, in another process");
          return;
        }
        child_check(false, "allocation on a broken heap threw");
      },
      heap);
  CHECK(finish(other) == 0);
  // What is in the heap stays readable, names still resolve, and freeing is a silent no-op (never a throw from a
  // destructor).
  CHECK(std::vector<int>(xs.begin(), xs.end()) == std::vector<int>{1, 2, 3});
  CHECK(heap.find<int_vector>("xs") == &xs);
  CHECK_NOTHROW(heap.destroy<int_vector>("xs"));
}

TEST_CASE("SharedHeap: a child SIGKILLed while writing a name makes names fail with an error naming it, "
          "and containers still allocate",
          "[shared_heap][robust]") {
  mp::SharedHeap heap(1 << 20);
  auto& xs = heap.find_or_construct<int_vector>("xs");
  note_pipe stopped;
  auto child = start(
      [](mp::SharedHeap heap, note_end stopped) {
        stop_next_time_at(mp::detail::heap::seam_point::names_writing, stopped);
        heap.find_or_construct<int>("half-made", 7);
      },
      heap, stopped.writer());
  REQUIRE(stopped.wait());
  child.kill();
  CHECK(finish(child) == -SIGKILL);
  CHECK_THROWS_WITH(heap.find<int_vector>("xs"), Catch::Contains("\"half-made\"") && Catch::Contains("index of names"));
  CHECK_THROWS_WITH(heap.find_or_construct<int>("other"), Catch::Contains("\"half-made\""));
  CHECK_THROWS_AS(heap.destroy<int_vector>("xs"), mp::Error);
  for (int i = 0; i < 1000; ++i) xs.push_back(i);  // the allocator is untouched
  CHECK(xs.size() == 1000);
}

TEST_CASE("SharedHeap survives children SIGKILLed at arbitrary instants while allocating: usable, or a clear error",
          "[shared_heap][robust]") {
  int usable = 0, broken = 0;
  for (int round = 0; round < 20; ++round) {
    mp::SharedHeap heap(1 << 20);
    mp::Lock lock;
    note_pipe started;
    auto child = start(
        [](mp::SharedHeap heap, note_end started) {
          auto& v = heap.find_or_construct<shm::vector<shm::string>>("churn");
          started.post();
          for (unsigned i = 0;; ++i) {  // allocates and frees blocks of many sizes until killed
            v.emplace_back(i % 200, 'x');
            if (v.size() > 50) v.erase(v.begin(), v.begin() + static_cast<long>(i % 40));
          }
        },
        heap, started.writer());
    REQUIRE(started.wait());
    child.kill();
    CHECK(finish(child) == -SIGKILL);
    try {
      auto& mine = heap.find_or_construct<shm::vector<double>>("mine");
      for (int i = 0; i < 10000; ++i) mine.push_back(i);
      CHECK(mine.size() == 10000);
      CHECK(heap.destroy<shm::vector<double>>("mine"));
      ++usable;
    } catch (const mp::Error& e) {
      CHECK(contains(e.what(), "killed inside the heap's allocator"));
      ++broken;
    }
  }
  CHECK(usable + broken == 20);
}

TEST_CASE("SharedHeap: a child SIGKILLed halfway through taking a small block is undone by the next user",
          "[shared_heap][robust]") {
  mp::SharedHeap heap(1 << 20);
  const std::size_t free_at_start = heap.free_memory();
  auto& keep = heap.find_or_construct<int_vector>("keep");
  keep.reserve(8);  // a 32-byte block: the slab for that size exists before the child takes from it
  note_pipe stopped;
  auto child = start(
      [](mp::SharedHeap heap, note_end stopped) {
        int_vector mine(heap.allocator<int>());
        stop_next_time_at(mp::detail::heap::seam_point::small_blocks_writing, stopped);
        mine.reserve(8);  // takes a block of the same size: stops with the slab's bookkeeping half-written
      },
      heap, stopped.writer());
  REQUIRE(stopped.wait());
  child.kill();
  CHECK(finish(child) == -SIGKILL);
  // Not broken: small and large blocks are handed out, every one once (each holds its own value).
  auto& nodes = heap.find_or_construct<shm::map<int, int>>("nodes");
  for (int i = 0; i < 3000; ++i) nodes.emplace(i, i * 7);
  auto& xs = heap.find_or_construct<int_vector>("xs");
  for (int i = 0; i < 10000; ++i) xs.push_back(i);
  bool all_there = nodes.size() == 3000;
  for (int i = 0; i < 3000; ++i) all_there = all_there && nodes.at(i) == i * 7;
  CHECK(all_there);
  CHECK(xs.size() == 10000);
  CHECK(xs[9999] == 9999);
  // The dead child's half-taken block went back: destroying everything gives back all the memory.
  CHECK(heap.destroy<shm::map<int, int>>("nodes"));
  CHECK(heap.destroy<int_vector>("xs"));
  CHECK(heap.destroy<int_vector>("keep"));
  CHECK(heap.free_memory() == free_at_start);
}

TEST_CASE("SharedHeap small blocks: their memory returns to large allocations, and running out is a clear error",
          "[shared_heap]") {
  mp::SharedHeap heap(1 << 20);
  const std::size_t free_at_start = heap.free_memory();
  auto child = start(
      [](mp::SharedHeap heap) {
        auto& nodes = heap.find_or_construct<shm::map<int, int>>("nodes");
        try {
          for (int i = 0;; ++i) nodes.emplace(i, i);  // 32-byte nodes until the heap is full
        } catch (const mp::Error& e) {
          child_check(contains(e.what(), "out of memory"), "out of memory");
        }
        child_check(nodes.size() > 20000, "most of the heap held nodes");
        child_check(nodes.rbegin()->first == static_cast<int>(nodes.size()) - 1, "no node lost");
      },
      heap);
  REQUIRE(finish(child) == 0);
  auto& nodes = *heap.find<shm::map<int, int>>("nodes");
  CHECK(heap.free_memory() < free_at_start / 10);
  nodes.clear();  // every slab empties and goes back
  CHECK(heap.destroy<shm::map<int, int>>("nodes"));
  CHECK(heap.free_memory() == free_at_start);
  auto& bytes = heap.find_or_construct<shm::vector<char>>("bytes");
  bytes.resize(free_at_start * 9 / 10);  // one block of most of the heap: the slabs' pages came back in one piece
  CHECK(bytes.size() == free_at_start * 9 / 10);
}

// ---- limits and misuse ----------------------------------------------------------------------------------------

TEST_CASE("SharedHeap out of memory throws mp::Error with the sizes, in any process, and stays usable",
          "[shared_heap]") {
  mp::SharedHeap heap(64 * 1024);
  auto& bytes = heap.find_or_construct<shm::vector<char>>("bytes");
  CHECK_THROWS_WITH(bytes.resize(100 * 1024), Catch::Contains("out of memory") && Catch::Contains("102400 bytes") &&
                                                 Catch::Contains("65536 bytes"));
  CHECK(bytes.empty());  // strong guarantee: the failed resize changed nothing
  using huge = std::array<char, 100000>;
  CHECK_THROWS_WITH(heap.find_or_construct<huge>("huge"), Catch::Contains("out of memory"));
  CHECK(heap.find<huge>("huge") == nullptr);
  auto child = start(
      [](mp::SharedHeap heap) {
        auto& bytes = *heap.find<shm::vector<char>>("bytes");
        try {
          for (;;) bytes.push_back('x');
        } catch (const mp::Error& e) {
          child_check(contains(e.what(), "out of memory"), "out of memory");
        }
        child_check(bytes.size() > 16 * 1024, "most of the heap was usable");
        bytes.clear();
        bytes.shrink_to_fit();
      },
      heap);
  CHECK(finish(child) == 0);
  bytes.resize(32 * 1024);  // the memory came back
  CHECK(bytes.size() == 32 * 1024);
}

TEST_CASE("SharedHeap refuses a size too small, and a default-constructed handle says it has no heap",
          "[shared_heap]") {
  CHECK_THROWS_WITH(mp::SharedHeap(16), Catch::Contains("too small"));
  mp::SharedHeap none;
  CHECK_THROWS_WITH(none.find<int>("x"), Catch::Contains("refers to no heap"));
  CHECK_THROWS_WITH(none.size(), Catch::Contains("refers to no heap"));
  mp::SharedHeap heap(4096);
  CHECK(heap.size() == 4096);
  CHECK(heap.free_memory() < 4096);
}

TEST_CASE("SharedHeap is a handle: it crosses only as a Process argument, not inside a Queue item",
          "[shared_heap]") {
  mp::SharedHeap heap(4096);
  CHECK_THROWS_AS(mp::serialize(heap), mp::SerializationError);
  mp::SharedHeap copy = heap;
  copy.find_or_construct<int>("x", 5);
  CHECK(*heap.find<int>("x") == 5);
}

TEST_CASE("SharedHeap leaves no /dev/shm entry and no descriptor behind", "[shared_heap][resources]") {
  {
    auto warm_up = start([] {});  // under forkserver, the server (and this process's line to it) exists from now on
    CHECK(finish(warm_up) == 0);
  }
  const auto shm_before = shm_entries_of({::getpid()});
  const int fds_before = open_fd_count();
  {
    mp::SharedHeap heap(1 << 20);
    CHECK(open_fd_count() == fds_before + 1);  // its memfd
    heap.find_or_construct<int_vector>("xs").push_back(1);
    {
      auto child = start([](mp::SharedHeap heap) { heap.find<int_vector>("xs")->push_back(2); }, heap);
      CHECK(finish(child) == 0);
    }
    CHECK(heap.find<int_vector>("xs")->size() == 2);
    CHECK(shm_entries_of({::getpid()}) == shm_before);
    mp::SharedHeap copy = heap;  // copies share the descriptor
    CHECK(open_fd_count() == fds_before + 1);
  }
  CHECK(open_fd_count() == fds_before);
  CHECK(shm_entries_of({::getpid()}) == shm_before);
}

// ---- the shm:: containers ------------------------------------------------------------------------------------

TEST_CASE("shm containers: string, set, deque, unordered_map and nesting take the heap's allocator",
          "[shared_heap][containers]") {
  mp::SharedHeap heap(1 << 20);
  auto& names = heap.find_or_construct<shm::set<shm::string>>("names");
  names.emplace("bob");
  names.emplace("alice");
  CHECK(names.count("alice") == 1);  // std::less<>: no shm::string built for the lookup
  CHECK(*names.begin() == "alice");

  auto& queue = heap.find_or_construct<shm::deque<int>>("queue");
  for (int i = 0; i < 1000; ++i) queue.push_front(i);
  CHECK(queue.front() == 999);

  auto& counts = heap.find_or_construct<shm::unordered_map<shm::string, shm::vector<shm::string>>>("counts");
  counts[shm::string("k", heap.allocator<char>())].emplace_back("a string longer than the small-string buffer");
  CHECK(counts.begin()->second.front() == "a string longer than the small-string buffer");

  shm::vector<shm::vector<int>> local(heap.allocator<int>());  // a container outside the heap, elements in it
  local.emplace_back(3, 7);
  CHECK(local[0].get_allocator() == heap.allocator<int>());
  CHECK(local[0][2] == 7);

  auto& explicit_allocator = heap.find_or_construct<shm::vector<double>>("d", heap.allocator<double>());
  explicit_allocator.push_back(1.5);
  CHECK(heap.find<shm::vector<double>>("d")->front() == 1.5);

  auto child = start(
      [](mp::SharedHeap heap) {
        auto& counts = *heap.find<shm::unordered_map<shm::string, shm::vector<shm::string>>>("counts");
        child_check(counts.size() == 1 && counts.begin()->second.size() == 1, "unordered_map seen");
        heap.find<shm::set<shm::string>>("names")->emplace("carol");
      },
      heap);
  CHECK(finish(child) == 0);
  CHECK(names.size() == 3);
}

namespace {

// The same pseudo-random operations on a shm::map and on a std::map: inserts and erases that rebalance the tree
// (its nodes keep their colour in their pointers' offsets) and lookups, from operation `first` for `count` of them.
template <class Map>
void churn_map(Map& m, std::uint32_t first, std::uint32_t count) {
  for (std::uint32_t i = first; i < first + count; ++i) {
    const std::uint32_t r = i * 2654435761u;  // Knuth's multiplicative hash: keys spread over the range
    const int key = static_cast<int>(r % 4000);
    if (r % 3 == 0) m.erase(key);
    else m[key] = static_cast<int>(i);
  }
}

}  // namespace

TEST_CASE("shm containers are walked and rebalanced by a child that maps the heap at its own address",
          "[shared_heap][containers]") {
  mp::SharedHeap heap(4 << 20);
  auto& m = heap.find_or_construct<shm::map<int, int>>("m");
  std::map<int, int> expected;
  churn_map(m, 0, 20000);
  churn_map(expected, 0, 20000);
  auto child = start(
      [](mp::SharedHeap heap) {
        auto& m = *heap.find<shm::map<int, int>>("m");
        std::map<int, int> replay;
        churn_map(replay, 0, 20000);
        child_check(std::equal(m.begin(), m.end(), replay.begin(), replay.end()), "the parent's map seen in order");
        child_check(std::equal(m.rbegin(), m.rend(), replay.rbegin(), replay.rend()), "and in reverse");
        churn_map(m, 20000, 20000);  // the child's own inserts, erases and rotations, at its own addresses
      },
      heap);
  CHECK(finish(child) == 0);
  churn_map(expected, 20000, 20000);
  CHECK(m.size() == expected.size());
  CHECK(std::equal(m.begin(), m.end(), expected.begin(), expected.end()));
  for (const auto& [key, value] : expected) {
    const auto found = m.find(key);
    REQUIRE(found != m.end());
    CHECK(found->second == value);
  }
  CHECK(m.find(4000) == m.end());
}

TEST_CASE("heap offset_pointer: null and addresses survive copies to other places, and tree bits stay apart",
          "[shared_heap][containers]") {
  using ptr = mp::detail::heap::offset_pointer<int>;
  using bits = boost::intrusive::pointer_plus_bits<ptr, 2>;
  int values[4] = {1, 2, 3, 4};

  SECTION("null is null wherever it is copied to, and null + 0 is null") {
    ptr a;
    std::array<ptr, 3> copies{a, a, a};  // other addresses: a copy restates the offset for its own address
    for (const ptr& copy : copies) {
      CHECK(copy.get() == nullptr);
      CHECK(!copy);
      CHECK(copy == a);
      CHECK(copy == nullptr);
    }
    ptr end = a;
    end += 0;
    CHECK(end == a);
    CHECK(end.get() == nullptr);
  }

  SECTION("a non-null pointer copied elsewhere points to the same object; arithmetic moves it like an int*") {
    ptr a(&values[1]);
    std::array<ptr, 3> copies{a, a, a};
    for (const ptr& copy : copies) {
      CHECK(copy.get() == &values[1]);
      CHECK(*copy == 2);
    }
    ptr b = copies[2] + 2;
    CHECK(b.get() == &values[3]);
    CHECK(b - a == 2);
    CHECK(a < b);
    CHECK(b[-3] == 1);
    mp::detail::heap::offset_pointer<const void> v = a;  // to const void: the same address
    CHECK(v.get() == &values[1]);
    CHECK(ptr::static_cast_from(mp::detail::heap::offset_pointer<void>(&values[0])).get() == &values[0]);
  }

  SECTION("bits kept in the offset leave the pointer, null or not, as it was") {
    ptr n;
    bits::set_bits(n, 3);
    CHECK(bits::get_bits(n) == 3);
    CHECK(bits::get_pointer(n).get() == nullptr);
    bits::set_pointer(n, ptr(&values[2]));
    CHECK(bits::get_bits(n) == 3);
    CHECK(bits::get_pointer(n).get() == &values[2]);
    bits::set_bits(n, 1);
    CHECK(bits::get_pointer(n).get() == &values[2]);
    bits::set_pointer(n, ptr());
    CHECK(bits::get_bits(n) == 1);
    CHECK(bits::get_pointer(n).get() == nullptr);
  }

  SECTION("empty containers: begin() == end(), and a loop over them does nothing") {
    mp::SharedHeap heap(1 << 16);
    shm::vector<int> v(heap.allocator<int>());
    CHECK(v.begin() == v.end());
    CHECK(std::accumulate(v.begin(), v.end(), 0) == 0);
    shm::map<int, int> m(heap.allocator<int>());
    CHECK(m.begin() == m.end());
    CHECK(m.find(1) == m.end());
  }
}

TEST_CASE("heap_storable tells which types can live in a SharedHeap", "[shared_heap][containers]") {
  using mp::detail::heap::storable;
  STATIC_REQUIRE(storable<int>);
  STATIC_REQUIRE(storable<std::array<double, 4>>);
  STATIC_REQUIRE(storable<std::pair<shm::string, shm::vector<int>>>);
  STATIC_REQUIRE(storable<boost::interprocess::offset_ptr<int>>);
  STATIC_REQUIRE_FALSE(storable<int*>);
  STATIC_REQUIRE_FALSE(storable<std::string>);
  STATIC_REQUIRE_FALSE(storable<std::vector<int>>);
  STATIC_REQUIRE_FALSE(storable<std::pair<int, std::string>>);
  STATIC_REQUIRE_FALSE(storable<std::tuple<int, std::array<const char*, 2>>>);
  STATIC_REQUIRE_FALSE(storable<std::optional<std::shared_ptr<int>>>);
  STATIC_REQUIRE_FALSE(storable<std::function<void()>>);
  STATIC_REQUIRE_FALSE(storable<std::exception>);  // virtual functions
}

// ---- ShareableList -------------------------------------------------------------------------------------------

TEST_CASE("ShareableList items are shared with children: get, set, count, index", "[shareable_list]") {
  mp::ShareableList<int> numbers{1, 2, 3, 2};
  mp::ShareableList<std::string> words{"howdy", "hi"};
  mp::Lock lock;
  CHECK(numbers.size() == 4);
  CHECK(numbers.count(2) == 2);
  CHECK(numbers.index(3) == 2);
  CHECK_THROWS_WITH(numbers.index(9), Catch::Contains("not in the list"));
  CHECK_THROWS_WITH(numbers.at(4), Catch::Contains("index 4") && Catch::Contains("size 4"));
  auto child = start(
      [](mp::ShareableList<int> numbers, mp::ShareableList<std::string> words, mp::Lock lock) {
        std::lock_guard guard(lock);
        numbers[0] = 100;
        numbers.set(1, numbers.get(1) * 10);
        words.set(1, "a much longer greeting than before");
        child_check(words.get(0) == "howdy" && words.index("howdy") == 0, "words seen");
      },
      numbers, words, lock);
  CHECK(finish(child) == 0);
  CHECK(std::vector<int>(numbers.begin(), numbers.end()) == std::vector<int>{100, 20, 3, 2});
  CHECK(words.get(1) == "a much longer greeting than before");
  CHECK(words[1].size() == 34);
  mp::ShareableList<double> empty(std::vector<double>{});
  CHECK(empty.size() == 0);
}
