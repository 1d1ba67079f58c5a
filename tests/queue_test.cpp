// Tests of mp/queue.hpp (Queue, JoinableQueue, SimpleQueue) and the ring buffer under them, across real processes,
// under every start method (ctest runs each test with MP_START_METHOD=fork, spawn and forkserver): children get the
// queues, rings and note pipes as Process arguments, never through captures.
// Processes synchronize through the queues under test or through plain pipes, never through sleeps; a short
// timeout appears only where the test asserts that something does NOT happen.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/ring_buffer.hpp>
#include <mp/detail/shm_segment.hpp>
#include <mp/detail/unique_fd.hpp>
#include <mp/process.hpp>

#include "support/child_process.hpp"
#include <mp/queue.hpp>
#include <mp/sync.hpp>

namespace {

using namespace std::chrono_literals;
using namespace mp_test;

using bytes = std::vector<std::byte>;

// An item of `size` bytes that names itself: its first 8 bytes hold `tag`, the rest a pattern derived from it.
bytes make_item(std::size_t size, std::uint64_t tag) {
  bytes item(size);
  for (std::size_t i = 0; i < size; ++i) item[i] = static_cast<std::byte>((i * 131 + tag * 29) & 0xff);
  if (size >= 8) std::memcpy(item.data(), &tag, 8);
  return item;
}
// The tag of an intact item of at least 8 bytes; nullopt if any byte is off.
std::optional<std::uint64_t> item_tag(const bytes& item) {
  if (item.size() < 8) return std::nullopt;
  std::uint64_t tag = 0;
  std::memcpy(&tag, item.data(), 8);
  for (std::size_t i = 8; i < item.size(); ++i)
    if (item[i] != static_cast<std::byte>((i * 131 + tag * 29) & 0xff)) return std::nullopt;
  return tag;
}

// For the fault-injection tests: the ring's mid-item hook is a plain function pointer. A child sets g_mid_item
// from its note_end argument.
note_end g_mid_item;
pid_t g_victim = 0;
note_end g_after_kill;

// Decoding this type blocks forever once g_block_on_load is set: a consumer is then inside get(), mid-record.
bool g_block_on_load = false;
struct slow_item {
  std::int64_t value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value);
    if constexpr (Archive::is_loading) {
      if (g_block_on_load) {
        g_mid_item.post();
        hang();
      }
    }
  }
};

// The sizes of the "mixed sizes" items: empty, streamed (5x the ring) and in between.
std::size_t mixed_size(int i) {
  if (i % 10 == 0) return 0;
  if (i % 97 == 0) return 20'000;  // streamed: 5x the ring
  return 8 + static_cast<std::size_t>(i * 7919) % 1500;
}

std::size_t blob_size(std::int64_t c) { return c == 0 ? (5 << 20) : 600'000; }  // large items: segments

// What each consumer counted, summed by the parent.
struct tally {
  std::int64_t count = 0, sum = 0, sum_of_squares = 0;
};

int open_fd_count() {
  int n = 0;
  for (int fd = 0; fd < 4096; ++fd)
    if (::fcntl(fd, F_GETFD) != -1) ++n;
  return n;
}

}  // namespace

TEST_CASE("Queue keeps each producer's items in order with 3 producers through a small ring", "[queue]") {
  constexpr int producers = 3;
  constexpr int per_producer = 20'000;
  mp::Queue<std::pair<int, int>> q({.capacity_bytes = 4096});  // wraps hundreds of times, producers block
  std::vector<mp::Process> children;
  for (int p = 0; p < producers; ++p)
    children.push_back(start(
        [](mp::Queue<std::pair<int, int>> q, int p) {
          for (int i = 0; i < per_producer; ++i) q.put({p, i});
        },
        q, p));
  std::map<int, int> next;
  for (int n = 0; n < producers * per_producer; ++n) {
    const auto [p, i] = q.get();
    REQUIRE(i == next[p]);
    next[p] = i + 1;
  }
  for (auto& child : children) CHECK(finish(child) == 0);
  CHECK(q.empty());
  CHECK_FALSE(q.try_get());
}

TEST_CASE("Queue delivers every item exactly once with 3 producers and 2 consumers", "[queue]") {
  constexpr int producers = 3, consumers = 2;
  constexpr std::int64_t per_producer = 30'000;
  const std::size_t capacity = GENERATE(std::size_t{4096}, std::size_t{1} << 20);
  CAPTURE(capacity);
  mp::Queue<std::optional<std::int64_t>> q({.capacity_bytes = capacity});
  mp::Queue<tally> results;
  std::vector<mp::Process> children;
  for (int c = 0; c < consumers; ++c)
    children.push_back(start(
        [](mp::Queue<std::optional<std::int64_t>> q, mp::Queue<tally> results) {
          tally t;
          while (auto item = q.get()) {
            ++t.count;
            t.sum += *item;
            t.sum_of_squares += *item * *item;
          }
          results.put(t);
        },
        q, results));
  std::vector<mp::Process> producing;
  for (int p = 0; p < producers; ++p)
    producing.push_back(start(
        [](mp::Queue<std::optional<std::int64_t>> q, std::int64_t p) {
          for (std::int64_t i = 0; i < per_producer; ++i) q.put(p * per_producer + i);
        },
        q, std::int64_t{p}));
  for (auto& child : producing) CHECK(finish(child) == 0);
  for (int c = 0; c < consumers; ++c) q.put(std::nullopt);
  tally total;
  for (int c = 0; c < consumers; ++c) {
    const tally t = results.get();
    total.count += t.count;
    total.sum += t.sum;
    total.sum_of_squares += t.sum_of_squares;
  }
  for (auto& child : children) CHECK(finish(child) == 0);
  const std::int64_t n = producers * per_producer;  // the items are 0 .. n-1, each once
  CHECK(total.count == n);
  CHECK(total.sum == n * (n - 1) / 2);
  CHECK(total.sum_of_squares == (n - 1) * n * (2 * n - 1) / 6);
  CHECK(q.qsize() == 0);
}

TEST_CASE("Items of mixed sizes, from empty to 5x the ring, arrive intact and in order", "[queue]") {
  mp::Queue<bytes> q({.capacity_bytes = 4096});
  constexpr int items = 3000;
  auto producer = start(
      [](mp::Queue<bytes> q) {
        for (int i = 0; i < items; ++i) q.put(make_item(mixed_size(i), static_cast<std::uint64_t>(i)));
      },
      q);
  for (int i = 0; i < items; ++i) {
    const bytes item = q.get();
    REQUIRE(item.size() == mixed_size(i));
    if (!item.empty()) REQUIRE(item_tag(item) == std::optional<std::uint64_t>(i));
  }
  CHECK(finish(producer) == 0);
}

TEST_CASE("A 64 MiB item passes through a Queue with a 1 MiB ring", "[queue]") {
  constexpr std::size_t size = std::size_t{64} << 20;
  mp::Queue<bytes> q;
  CHECK(q.capacity_bytes() == std::size_t{1} << 20);
  auto producer = start(
      [](mp::Queue<bytes> q) {
        q.put(make_item(size, 64));
        q.put(make_item(100, 65));
      },
      q);
  const bytes big = q.get();
  CHECK(big.size() == size);
  CHECK(item_tag(big) == std::optional<std::uint64_t>(64));
  CHECK(item_tag(q.get()) == std::optional<std::uint64_t>(65));
  CHECK(finish(producer) == 0);
}

TEST_CASE("A producer may put and exit at once: nothing is lost", "[queue]") {
  mp::Queue<std::int64_t> numbers;
  mp::Queue<bytes> blobs({.capacity_bytes = 16 << 20});  // room for every blob: nobody takes them before the end
  std::vector<mp::Process> children;
  for (std::int64_t c = 0; c < 8; ++c)
    children.push_back(start(
        [](mp::Queue<std::int64_t> numbers, mp::Queue<bytes> blobs, std::int64_t c) {
          for (std::int64_t i = 0; i < 1000; ++i) numbers.put(c * 1000 + i);
          blobs.put(make_item(blob_size(c), static_cast<std::uint64_t>(c)));
          ::_exit(0);  // no destructors, no flush: the items must already be in the queue
        },
        numbers, blobs, c));
  for (auto& child : children) CHECK(finish(child) == 0);  // every producer is gone before anything is taken
  CHECK(numbers.qsize() == 8000);
  CHECK(blobs.qsize() == 8);
  std::int64_t sum = 0;
  for (int i = 0; i < 8000; ++i) sum += numbers.get();
  CHECK(sum == 7999LL * 8000 / 2);
  CHECK_THROWS_AS(numbers.get_nowait(), mp::Empty);
  std::vector<bool> seen(8);
  for (int i = 0; i < 8; ++i) {
    const bytes blob = blobs.get();
    const auto tag = item_tag(blob);
    REQUIRE(tag);
    REQUIRE(*tag < 8);
    CHECK(blob.size() == blob_size(static_cast<std::int64_t>(*tag)));
    CHECK_FALSE(seen[*tag]);
    seen[*tag] = true;
  }
}

TEST_CASE("Queue::get with a timeout throws Empty saying how long it waited", "[queue]") {
  mp::Queue<int> q;
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH(q.get(250ms), "Queue::get timed out after 250 ms");
  CHECK(std::chrono::steady_clock::now() - t0 >= 250ms);
  CHECK_THROWS_AS(q.get(0ms), mp::Empty);
  CHECK_THROWS_WITH(q.get_nowait(), "Queue::get_nowait: the queue is empty");
  CHECK_FALSE(q.try_get().has_value());

  note_pipe go;
  auto child = start(
      [](note_end go, mp::Queue<int> q) {
        go.wait();
        q.put(11);
      },
      go.reader(), q);
  go.post();
  CHECK(q.get(std::chrono::hours(1)) == 11);  // a long timeout, met by another process's put
  CHECK(finish(child) == 0);
}

TEST_CASE("A full Queue makes put_nowait and put(timeout) throw Full - a get in another process unblocks put",
          "[queue]") {
  mp::Queue<int> q(2);
  CHECK(q.maxsize() == 2);
  q.put(1);
  CHECK_FALSE(q.full());
  q.put(2);
  CHECK(q.full());
  CHECK(q.qsize() == 2);
  CHECK_THROWS_WITH(q.put_nowait(3), "Queue::put_nowait: the queue is full (maxsize 2)");
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH(q.put(3, 50ms), "Queue::put timed out after 50 ms: the queue is full (maxsize 2)");
  CHECK(std::chrono::steady_clock::now() - t0 >= 50ms);
  CHECK_FALSE(q.try_put(3));

  mp::Queue<int> taken;
  auto consumer = start([](mp::Queue<int> q, mp::Queue<int> taken) { taken.put(q.get()); }, q, taken);
  q.put(3);  // blocks until the child has taken one
  CHECK(taken.get() == 1);
  CHECK(q.get() == 2);
  CHECK(q.get() == 3);
  CHECK(q.empty());
  CHECK_FALSE(q.full());
  CHECK(finish(consumer) == 0);
}

TEST_CASE("put(timeout) on a full queue says it is full even while another process waits to put", "[queue]") {
  mp::Queue<int> q(1);
  q.put(1);
  note_pipe started;
  auto blocked = start(
      [](mp::Queue<int> q, note_end started) {
        started.post();
        q.put(2);  // waits for room, holding the producers' turn
      },
      q, started.writer());
  REQUIRE(started.wait());
  CHECK_THROWS_WITH(q.put(3, 50ms), "Queue::put timed out after 50 ms: the queue is full (maxsize 1)");
  CHECK(q.get() == 1);
  CHECK(q.get() == 2);
  CHECK(finish(blocked) == 0);
  CHECK(q.empty());
}

TEST_CASE("put blocks while the ring's bytes are full - put_nowait then throws Full naming the ring", "[queue]") {
  mp::Queue<bytes> q({.capacity_bytes = 4096});
  int stored = 0;
  while (q.try_put(make_item(900, static_cast<std::uint64_t>(stored)))) ++stored;
  CHECK(stored == 4);  // 4 records of 924 bytes in 4096
  CHECK_FALSE(q.full());  // full() is about maxsize, which this queue has none of
  CHECK_THROWS_WITH(q.put_nowait(make_item(900, 99)), Catch::Contains("ring buffer is full (4096 bytes"));
  auto consumer = start(
      [](mp::Queue<bytes> q) {
        for (std::uint64_t i = 0; i < 6; ++i) child_check(item_tag(q.get()) == i, "FIFO after a full ring");
      },
      q);
  q.put(make_item(900, 4));  // waits for the child to make room
  q.put(make_item(900, 5));
  CHECK(finish(consumer) == 0);
  CHECK(q.empty());
}

TEST_CASE("A consumer SIGKILLed inside get in the middle of a big item does not wedge the queue", "[queue][fault]") {
  mp::Queue<bytes> q({.capacity_bytes = 64 << 10});
  note_pipe mid;
  auto producer = start(
      [](mp::Queue<bytes> q) {
        // 3x the ring, below the large-item threshold: streams while the consumer takes it
        q.put(make_item(std::size_t{200} << 10, 1));
        q.put(make_item(1000, 2));
        q.put(make_item(std::size_t{250} << 10, 3));
      },
      q);
  auto victim = start(
      [](mp::Queue<bytes> q, note_end mid) {
        g_mid_item = mid;
        mp::detail::ring_mid_item_hook = [] {
          g_mid_item.post();
          hang();
        };
        (void)q.get();
      },
      q, mid.writer());
  REQUIRE(mid.wait());  // the victim has taken the first chunk of item 1 and holds the consumer lock
  victim.kill();
  CHECK(finish(victim) == -SIGKILL);
  // The next consumer recovers the lock, discards the rest of item 1 (the only loss) and goes on.
  CHECK(item_tag(q.get()) == std::optional<std::uint64_t>(2));
  const bytes third = q.get();
  CHECK(third.size() == std::size_t{250} << 10);
  CHECK(item_tag(third) == std::optional<std::uint64_t>(3));
  CHECK(finish(producer) == 0);
  CHECK(q.qsize() == 0);
  q.put(make_item(10, 4));
  CHECK(item_tag(q.get()) == std::optional<std::uint64_t>(4));
}

TEST_CASE("A consumer SIGKILLed while decoding an item leaves that item to the next consumer", "[queue][fault]") {
  mp::Queue<slow_item> q;
  note_pipe mid;
  for (std::int64_t i = 1; i <= 3; ++i) q.put(slow_item{i});
  auto victim = start(
      [](mp::Queue<slow_item> q, note_end mid) {
        g_mid_item = mid;
        g_block_on_load = true;
        (void)q.get();
      },
      q, mid.writer());
  REQUIRE(mid.wait());  // inside get, decoding item 1, holding the consumer lock
  victim.kill();
  CHECK(finish(victim) == -SIGKILL);
  CHECK(q.get(10s).value == 1);  // not lost: it was never taken
  CHECK(q.get(10s).value == 2);
  CHECK(q.get(10s).value == 3);
  CHECK(q.empty());
}

TEST_CASE("A producer SIGKILLed in the middle of a big item does not wedge the queue", "[queue][fault]") {
  mp::Queue<bytes> q({.capacity_bytes = 64 << 10});
  note_pipe go;
  g_after_kill = go.writer();
  auto victim = start([](mp::Queue<bytes> q) { q.put(make_item(std::size_t{250} << 10, 1)); }, q);  // streams
  auto next = start(
      [](mp::Queue<bytes> q, note_end go) {
        go.wait();
        q.put(make_item(500, 2));
      },
      q, go.reader());
  g_victim = victim.pid();
  // Kill the producer from inside our own get, right after we took its first chunk: it is then mid-item.
  mp::detail::ring_mid_item_hook = [] {
    ::kill(g_victim, SIGKILL);
    g_after_kill.post();
  };
  const bytes item = q.get();
  mp::detail::ring_mid_item_hook = nullptr;
  CHECK(item_tag(item) == std::optional<std::uint64_t>(2));  // the partial item was dropped, the next one came
  CHECK(finish(victim) == -SIGKILL);
  CHECK(finish(next) == 0);
  CHECK(q.qsize() == 0);
  q.put(make_item(64, 3));
  CHECK(item_tag(q.get()) == std::optional<std::uint64_t>(3));
}

// ---- detail::ring_buffer: a process killed inside a commit, at the exact step that matters ----------------------

namespace {

// A bare ring in a memfd segment, so a test can play a process dying between two words of a commit.
struct ring_memory {
  explicit ring_memory(mp::detail::shm_segment memory)
      : segment(std::move(memory)),
        header(static_cast<mp::detail::ring_header*>(segment.data())),
        ring(segment.data()) {}
  /// The next item, or nullopt if none came within `timeout` or it is not one int64 (no Catch macro: usable in a
  /// child).
  std::optional<std::int64_t> get(std::chrono::seconds timeout = 5s) {
    mp::detail::ring_status why{};
    return ring.get(
        [](std::span<const std::byte> b) -> std::optional<std::int64_t> {
          std::int64_t v = 0;
          if (b.size() != sizeof v) return std::nullopt;
          std::memcpy(&v, b.data(), sizeof v);
          return v;
        },
        std::chrono::steady_clock::now() + timeout, why)
        .value_or(std::nullopt);
  }
  std::atomic<std::uint64_t>& slot(std::uint64_t position) {
    return *reinterpret_cast<std::atomic<std::uint64_t>*>(static_cast<std::byte*>(segment.data()) +
                                                          mp::detail::ring_buffer::header_bytes + (position & 4095));
  }
  mp::detail::shm_segment segment;
  mp::detail::ring_header* header;
  mp::detail::ring_buffer ring;
};

/// A test ring's segment as a Process argument (its memfd crosses as a descriptor); map() maps it in the child.
struct ring_fd : mp_test::fd_argument {
  ring_memory map() const {
    return ring_memory(mp::detail::shm_segment::from_fd(mp::detail::unique_fd(::dup(fd)), "ring_test"));
  }
};

struct test_ring : ring_memory {
  test_ring()
      : ring_memory(mp::detail::shm_segment::create(mp::detail::ring_buffer::header_bytes + 4096, "ring_test")) {
    mp::detail::ring_buffer::create(segment.data(), 4096, 0);
    ring = mp::detail::ring_buffer(segment.data());
  }
  void put(std::int64_t value) {
    REQUIRE(ring.put(std::as_bytes(std::span<const std::int64_t, 1>(&value, 1)), {}) ==
            mp::detail::ring_status::ok);
  }
  ring_fd handle() const { return {segment.fd()}; }
};

[[noreturn]] void die_holding_locks() {
  ::kill(::getpid(), SIGKILL);
  hang();
}

}  // namespace

TEST_CASE("ring_buffer: a consumer killed halfway through its commit is rolled forward", "[ring_buffer][fault]") {
  test_ring t;
  t.put(1);
  t.put(2);
  auto victim = start([](ring_fd ring) {
    ring_memory t = ring.map();
    auto& c = t.header->consumers;
    c.mutex.lock();
    // Took item 1 and began committing: journal written, get_count applied, head not yet.
    c.journal.index.store(c.head.load() + mp::detail::record_size(8));
    c.journal.count.store(1);
    c.journal.in_item.store(0);
    c.journal.valid.store(1);
    c.get_count.store(1);
    die_holding_locks();
  }, t.handle());
  CHECK(finish(victim) == -SIGKILL);
  CHECK(t.get() == std::optional<std::int64_t>(2));  // item 1 counts as taken by the dead consumer
  CHECK(t.ring.size() == 0);
  t.put(3);
  CHECK(t.get() == std::optional<std::int64_t>(3));
}

TEST_CASE("ring_buffer: a producer killed after publishing a record but before its bookkeeping is rolled forward",
          "[ring_buffer][fault]") {
  test_ring t;
  t.put(1);
  auto victim = start([](ring_fd ring) {
    ring_memory t = ring.map();
    auto& p = t.header->producers;
    p.mutex.lock();
    const std::uint64_t tail = p.tail.load();
    const std::uint64_t size = mp::detail::record_size(8);
    const std::int64_t value = 2;
    std::memcpy(static_cast<std::byte*>(t.segment.data()) + mp::detail::ring_buffer::header_bytes + tail + 8, &value,
                8);
    t.slot(tail + size).store(0);
    p.journal.position.store(tail);
    p.journal.index.store(tail + size);
    p.journal.count.store(p.put_count.load() + 1);
    p.journal.in_item.store(0);
    p.journal.valid.store(1);
    t.slot(tail).store(mp::detail::record_header(mp::detail::record_kind::whole, 8));  // published...
    die_holding_locks();                                                                 // ...tail not moved
  }, t.handle());
  CHECK(finish(victim) == -SIGKILL);
  CHECK(t.get() == std::optional<std::int64_t>(1));
  CHECK(t.get() == std::optional<std::int64_t>(2));  // visible: consumers read headers, not the tail
  t.put(3);  // recovers the producer side: goes after item 2, not over it
  CHECK(t.get() == std::optional<std::int64_t>(3));
  CHECK(t.ring.size() == 0);
}

TEST_CASE("ring_buffer: a sleeper whose waker died inside wake() still gets the item", "[ring_buffer][fault]") {
  // Found by tests/faults (a queue wedged after a SIGKILL): a waker killed after clearing `sleeping` and bumping
  // `seq` but before futex_wake left the sleeper asleep, and later wakers saw no sleeper to wake.
  test_ring t;
  auto* h = t.header;
  // A deadline far beyond the bound below: a consumer left asleep until it would say so clearly.
  mp::Semaphore got(0);
  auto consumer = start([](ring_fd ring, mp::Semaphore got) {
    if (ring.map().get(30s) != std::optional<std::int64_t>(7)) ::_exit(3);
    got.release();
  }, t.handle(), got);
  // Wait until the consumer registered as a sleeper and sleeps in the kernel.
  auto asleep = [&] {
    std::ifstream stat("/proc/" + std::to_string(consumer.pid()) + "/stat");
    std::string line;
    std::getline(stat, line);
    return h->data_ready.sleeping.load() == 1 && line.size() > line.rfind(')') + 2 && line[line.rfind(')') + 2] == 'S';
  };
  const auto limit = std::chrono::steady_clock::now() + 5s;
  while (!asleep() && std::chrono::steady_clock::now() < limit) std::this_thread::sleep_for(1ms);
  REQUIRE(asleep());
  // What a waker killed between its seq bump and its futex_wake leaves behind.
  h->data_ready.sleeping.exchange(0);
  h->data_ready.seq.fetch_add(1);
  t.put(7);  // sees no sleeper: no wake
  // Timed: the put to the consumer's note that it got the item, not its exit and reap (slow on a loaded machine).
  // Its bounded sleep (lost_wake_period) finds the item; a lost wake-up would sleep until the 30 s deadline.
  const auto put_at = std::chrono::steady_clock::now();
  CHECK(got.acquire(40s));
  CHECK(std::chrono::steady_clock::now() - put_at < 5s);
  CHECK(finish(consumer) == 0);
}

TEST_CASE("ring_buffer: a producer killed before publishing leaves nothing behind", "[ring_buffer][fault]") {
  test_ring t;
  auto victim = start([](ring_fd ring) {
    ring_memory t = ring.map();
    auto& p = t.header->producers;
    p.mutex.lock();
    const std::uint64_t tail = p.tail.load();
    const std::uint64_t size = mp::detail::record_size(8);
    t.slot(tail + size).store(0);
    p.journal.position.store(tail);
    p.journal.index.store(tail + size);
    p.journal.count.store(p.put_count.load() + 1);
    p.journal.valid.store(1);
    die_holding_locks();  // the header word was never stored
  }, t.handle());
  CHECK(finish(victim) == -SIGKILL);
  t.put(7);
  CHECK(t.ring.size() == 1);
  CHECK(t.get() == std::optional<std::int64_t>(7));
  mp::detail::ring_status why{};
  CHECK_FALSE(t.ring.get([](std::span<const std::byte>) { return 0; }, std::chrono::steady_clock::now(), why));
  CHECK(why == mp::detail::ring_status::empty);
}

TEST_CASE("close() refuses later put and get in this process - other processes and items are unaffected",
          "[queue]") {
  mp::Queue<int> q;
  mp::Queue<int> results;
  note_pipe go;
  auto child = start(
      [](mp::Queue<int> q, mp::Queue<int> results, note_end go) {
        go.wait();
        results.put(q.get());
        q.put(8);
      },
      q, results, go.reader());
  q.put(7);
  mp::Queue<int> copy = q;
  copy.close();
  CHECK(q.closed());
  CHECK_THROWS_WITH(q.put(1), "Queue::put: the queue is closed in this process (close() was called)");
  CHECK_THROWS_AS(q.get(), mp::Error);
  CHECK_THROWS_AS(q.qsize(), mp::Error);
  go.post();
  CHECK(results.get() == 7);
  CHECK(finish(child) == 0);
  q.join_thread();  // Python compatibility: nothing to join
  q.cancel_join_thread();

  mp::Queue<int> from;
  mp::Queue<int> to = std::move(from);
  CHECK(from.closed());
  CHECK_THROWS_WITH(from.put(1), Catch::Contains("moved from"));
  to.put(1);
  CHECK(to.get() == 1);
}

TEST_CASE("JoinableQueue::join waits until task_done was called for every item", "[queue][joinable]") {
  mp::JoinableQueue<int> tasks;
  mp::Queue<int> done;
  tasks.put(0);
  CHECK_FALSE(tasks.join(20ms));  // one item put, none done
  auto worker = start(
      [](mp::JoinableQueue<int> tasks, mp::Queue<int> done) {
        for (int i = 0; i < 101; ++i) {
          done.put(tasks.get());
          tasks.task_done();
        }
      },
      tasks, done);
  for (int i = 1; i <= 100; ++i) tasks.put(i);
  tasks.join();
  CHECK(done.qsize() == 101);  // every result was put before its task_done
  CHECK(tasks.join(0ms));
  CHECK(finish(worker) == 0);
  CHECK_THROWS_WITH(tasks.task_done(), Catch::Contains("called more times than items were put"));
  CHECK(tasks.qsize() == 0);
}

TEST_CASE("SimpleQueue passes items between processes - empty and close", "[queue][simple]") {
  mp::SimpleQueue<std::string> q;
  CHECK(q.empty());
  auto child = start(
      [](mp::SimpleQueue<std::string> q) {
        q.put("hello");
        q.put(std::string(300'000, 'z'));
      },
      q);
  CHECK(q.get() == "hello");
  CHECK(q.get() == std::string(300'000, 'z'));
  CHECK(q.empty());
  CHECK(finish(child) == 0);
  q.close();
  CHECK_THROWS_AS(q.put("x"), mp::Error);
  CHECK_THROWS_WITH(mp::SimpleQueue<int>({.maxsize = 3}), Catch::Contains("SimpleQueue has no maxsize"));
}

TEST_CASE("QueueOptions: capacity is rounded up to a power of two and bounded", "[queue]") {
  CHECK(mp::Queue<int>({.capacity_bytes = 1}).capacity_bytes() == 4096);
  CHECK(mp::Queue<int>({.capacity_bytes = 5000}).capacity_bytes() == 8192);
  CHECK(mp::Queue<int>({.maxsize = 3, .capacity_bytes = 1 << 16}).maxsize() == 3);
  CHECK_THROWS_WITH(mp::Queue<int>({.capacity_bytes = (std::size_t{1} << 32) + 1}),
                    Catch::Contains("over the limit"));
  mp::JoinableQueue<int> joinable({.maxsize = 1});
  CHECK(joinable.maxsize() == 1);
}

TEST_CASE("A Queue holds a memfd and a mailbox socket, no /dev/shm name, released with its last handle",
          "[queue][resources]") {
  const int before = open_fd_count();
  {
    mp::Queue<int> q;
    mp::Queue<int> copy = q;
    CHECK(open_fd_count() == before + 2);
    copy.put(1);
    CHECK(q.get() == 1);
  }
  CHECK(open_fd_count() == before);
}
