// Tests of large items through mp::Queue, JoinableQueue and SimpleQueue (issue 14): items from the large-item
// threshold (256 KiB) to 256 MiB travel as sealed memfd segments whose descriptors wait in the queue's mailbox
// socket (detail/fd_mailbox.hpp, detail/ring_buffer.hpp). Across real processes under every start method (ctest
// runs each test with MP_START_METHOD=fork, spawn and forkserver): children get the queues and note pipes as
// Process arguments. Processes synchronize through the queues or plain pipes, never through sleeps.
#include <catch2/catch.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <mp/detail/ring_buffer.hpp>
#include <mp/detail/segment_pool.hpp>
#include <mp/process.hpp>
#include <mp/queue.hpp>

#include "support/child_process.hpp"

namespace {

using namespace std::chrono_literals;
using namespace mp_test;

using words = std::vector<std::uint64_t>;

constexpr std::size_t MiB = std::size_t{1} << 20;

// An item of `bytes` bytes (rounded down to whole words) that names itself: word 0 is `tag`, word i a mix of tag
// and i, so a swapped, shifted or stale page shows.
words make_item(std::size_t bytes, std::uint64_t tag) {
  words item(bytes / 8);
  if (item.empty()) return item;
  item[0] = tag;
  for (std::size_t i = 1; i < item.size(); ++i) item[i] = (i * 0x9E3779B97F4A7C15ULL) ^ (tag << 40) ^ tag;
  return item;
}
// The tag of an intact item; -1 if any word is off.
std::int64_t item_tag(const words& item) {
  if (item.empty()) return -1;
  const std::uint64_t tag = item[0];
  for (std::size_t i = 1; i < item.size(); ++i)
    if (item[i] != ((i * 0x9E3779B97F4A7C15ULL) ^ (tag << 40) ^ tag)) return -1;
  return static_cast<std::int64_t>(tag);
}

int open_fd_count() {
  int n = 0;
  for (int fd = 0; fd < 4096; ++fd)
    if (::fcntl(fd, F_GETFD) != -1) ++n;
  return n;
}

// This process's names in /dev/shm ("mp-<pid>-<n>", shared.hpp): other programs and tests on the machine make
// their own meanwhile. (A Queue never names anything there; this checks it stays so.)
int dev_shm_count() {
  int n = 0;
  const std::string prefix = "mp-" + std::to_string(::getpid()) + "-";
  if (DIR* dir = ::opendir("/dev/shm")) {
    while (dirent* entry = ::readdir(dir))
      if (std::strncmp(entry->d_name, prefix.c_str(), prefix.size()) == 0) ++n;
    ::closedir(dir);
  }
  return n;
}

// Descriptors and /dev/shm names of this process before a test; checked unchanged at its end. (The forkserver, if
// the start method uses it, is started before counting by a first child.)
struct resources {
  int fds = open_fd_count();
  int shm = dev_shm_count();
  void check() const {
    mp::detail::release_cached_segments();  // the segments this thread kept for reuse after its own large puts
    CHECK(open_fd_count() == fds);
    CHECK(dev_shm_count() == shm);
  }
};
resources counted() {
  {
    auto warm_up = start([] {});
    CHECK(finish(warm_up) == 0);
  }  // its pidfd closed before counting
  return {};
}

note_end g_note;

}  // namespace

TEST_CASE("64 MiB and 256 MiB items arrive intact through a default Queue, 8 MiB through JoinableQueue and SimpleQueue",
          "[queue][bigdata]") {
  const auto before = counted();
  {
    mp::Queue<words> q;
    mp::JoinableQueue<words> jq;
    mp::SimpleQueue<words> sq;
    auto producer = start(
        [](mp::Queue<words> q, mp::JoinableQueue<words> jq, mp::SimpleQueue<words> sq) {
          q.put(make_item(64 * MiB, 1));
          q.put(make_item(largest_item(), 2));  // 64 MiB under ASan, spawn and forkserver: the same path
          q.put(make_item(100, 3));
          jq.put(make_item(8 * MiB, 4));  // the same path; smaller, to stay within ctest's 60 s on a loaded machine
          sq.put(make_item(8 * MiB, 5));
        },
        q, jq, sq);
    words item = q.get();
    CHECK(item.size() == 64 * MiB / 8);
    CHECK(item_tag(item) == 1);
    item = q.get();
    CHECK(item.size() == largest_item() / 8);
    CHECK(item_tag(item) == 2);
    item = q.get();
    CHECK(item_tag(item) == 3);
    item = jq.get();
    CHECK(item_tag(item) == 4);
    jq.task_done();
    CHECK(jq.join(0s));
    item = sq.get();
    CHECK(item_tag(item) == 5);
    CHECK(finish(producer) == 0);
    CHECK(q.empty());
    CHECK(sq.empty());
  }
  before.check();
}

TEST_CASE("A child that puts 64 MiB into a default Queue and exits is joined before anyone reads the item",
          "[queue][bigdata]") {
  const auto before = counted();
  {
    mp::Queue<words> q;
    auto producer = start([](mp::Queue<words> q) { q.put(make_item(64 * MiB, 7)); }, q);
    // Python's trap: its feeder thread would still be writing into a pipe nobody reads, and join would block.
    producer.join(30s);
    REQUIRE(producer.exitcode() == std::optional<int>(0));
    CHECK(q.qsize() == 1);
    const words item = q.get();
    CHECK(item.size() == 64 * MiB / 8);
    CHECK(item_tag(item) == 7);
  }
  before.check();
}

TEST_CASE("Large items put by children that exited are freed with the last handle of a queue nobody read",
          "[queue][bigdata][resources]") {
  const auto before = counted();
  {
    mp::Queue<words> q;
    std::vector<mp::Process> producers;
    for (std::uint64_t c = 0; c < 3; ++c)
      producers.push_back(start([](mp::Queue<words> q, std::uint64_t c) { q.put(make_item(8 * MiB, c)); }, q, c));
    for (auto& p : producers) CHECK(finish(p) == 0);
    CHECK(q.qsize() == 3);
  }
  // The descriptors waited in the queue's mailbox socket, which closed with the queue: nothing left here.
  before.check();
}

TEST_CASE("A consumer SIGKILLed in the middle of a large item loses only that item and leaks nothing",
          "[queue][bigdata][fault]") {
  const bool before_commit = GENERATE(false, true);
  CAPTURE(before_commit);
  const auto before = counted();
  {
    mp::Queue<words> q;
    auto producer = start(
        [](mp::Queue<words> q) {
          q.put(make_item(16 * MiB, 1));
          q.put(make_item(64, 2));
          q.put(make_item(32 * MiB, 3));
        },
        q);
    note_pipe mid;
    auto victim = start(
        [](mp::Queue<words> q, note_end mid, bool before_commit) {
          g_note = mid;
          // Either holding the consumer lock with the descriptor taken and the record not yet committed, or after
          // the commit with the segment mapped, before decoding it.
          mp::detail::ring_segment_hook_before_commit = before_commit;
          mp::detail::ring_segment_hook = [] {
            g_note.post();
            hang();
          };
          (void)q.get();
        },
        q, mid.writer(), before_commit);
    REQUIRE(mid.wait());
    victim.kill();
    CHECK(finish(victim) == -SIGKILL);
    CHECK(item_tag(q.get(30s)) == 2);  // item 1 is the loss
    const words third = q.get(30s);
    CHECK(third.size() == 32 * MiB / 8);
    CHECK(item_tag(third) == 3);
    CHECK(finish(producer) == 0);
    CHECK(q.qsize() == 0);
    CHECK(q.empty());
    // The queue goes on, large items included.
    q.put(make_item(MiB, 4));
    CHECK(item_tag(q.get()) == 4);
  }
  before.check();
}

TEST_CASE("Many producers and consumers mixing small and large items: nothing lost, nothing duplicated",
          "[queue][bigdata]") {
  constexpr int producers = 3, consumers = 3, per_producer = 30;
  const auto before = counted();
  {
    // A low bound on large bytes waiting, so that producers also wait for consumers.
    mp::Queue<words> q({.large_bytes_limit = 4 * MiB});
    mp::Queue<std::vector<std::int64_t>> seen;
    std::vector<mp::Process> children;
    for (int p = 0; p < producers; ++p)
      children.push_back(start(
          [](mp::Queue<words> q, int p) {
            for (int i = 0; i < per_producer; ++i) {
              const std::uint64_t tag = static_cast<std::uint64_t>(p * 1000 + i);
              // Small, medium (a whole record in the ring) and large items in turn (large: 256 KiB to 3.25 MiB).
              const std::size_t size =
                  i % 3 == 0 ? 64 : (i % 3 == 1 ? 100'000 : (256 << 10) + (static_cast<std::size_t>(i) * 97'001) % (3 * MiB));
              q.put(make_item(size, tag));
            }
          },
          q, p));
    for (int c = 0; c < consumers; ++c)
      children.push_back(start(
          [](mp::Queue<words> q, mp::Queue<std::vector<std::int64_t>> seen) {
            std::vector<std::int64_t> tags;
            for (;;) {
              const words item = q.get();
              if (item.empty()) break;  // the end marker
              tags.push_back(item_tag(item));
            }
            seen.put(tags);
          },
          q, seen));
    for (int p = 0; p < producers; ++p) CHECK(finish(children[static_cast<std::size_t>(p)]) == 0);
    for (int c = 0; c < consumers; ++c) q.put(words{});
    std::map<std::int64_t, int> count;
    for (int c = 0; c < consumers; ++c)
      for (std::int64_t tag : seen.get(60s)) ++count[tag];
    for (auto& child : children) CHECK(finish(child) == 0);
    CHECK(count.count(-1) == 0);  // no damaged item
    CHECK(count.size() == static_cast<std::size_t>(producers * per_producer));
    for (int p = 0; p < producers; ++p)
      for (int i = 0; i < per_producer; ++i) CHECK(count[p * 1000 + i] == 1);
    CHECK(q.empty());
  }
  before.check();
}

TEST_CASE("Large items not yet taken are bounded in bytes: put waits, put_nowait throws Full naming the limit",
          "[queue][bigdata]") {
  const auto before = counted();
  {
    mp::Queue<words> q({.large_bytes_limit = 8 * MiB});
    q.put(make_item(3 * MiB, 1));
    q.put(make_item(3 * MiB, 2));
    CHECK_THROWS_WITH(q.put_nowait(make_item(3 * MiB, 3)), Catch::Contains("large_bytes_limit"));
    CHECK_THROWS_AS(q.put(make_item(3 * MiB, 3), 50ms), mp::Full);
    q.put(make_item(100, 4));  // small items do not count
    // A consumer makes room: the blocked put goes through.
    auto consumer = start(
        [](mp::Queue<words> q) {
          child_check(item_tag(q.get()) == 1, "item 1");
        },
        q);
    q.put(make_item(3 * MiB, 5));
    CHECK(finish(consumer) == 0);
    CHECK(item_tag(q.get()) == 2);
    CHECK(item_tag(q.get()) == 4);
    CHECK(item_tag(q.get()) == 5);
    // One item larger than the limit passes alone.
    q.put(make_item(20 * MiB, 6));
    CHECK_THROWS_AS(q.put_nowait(make_item(MiB, 7)), mp::Full);
    CHECK(item_tag(q.get()) == 6);
  }
  before.check();
}

TEST_CASE("large_item_threshold: SIZE_MAX streams every item through the ring, 0 sends every item apart",
          "[queue][bigdata]") {
  const auto before = counted();
  {
    mp::Queue<words> streamed({.capacity_bytes = 64 << 10, .large_item_threshold = ~std::size_t{0}});
    mp::Queue<words> apart({.large_item_threshold = 0});
    auto producer = start(
        [](mp::Queue<words> streamed, mp::Queue<words> apart) {
          streamed.put(make_item(3 * MiB, 1));
          apart.put(make_item(16, 2));
          apart.put(words{});
        },
        streamed, apart);
    CHECK(item_tag(streamed.get()) == 1);
    CHECK(item_tag(apart.get()) == 2);
    CHECK(apart.get().empty());
    CHECK(finish(producer) == 0);
  }
  before.check();
}

TEST_CASE("A consumer that keeps its mappings of recycled segments reads every new item, of changing sizes, intact",
          "[queue][bigdata]") {
  // The producer rewrites its few segments item after item; the consumer knows them again (segment_view_cache)
  // and must see each new item's words, never the previous item's, through the mapping it kept.
  const auto before = counted();
  {
    mp::Queue<words> q;
    constexpr std::uint64_t items = 40;
    auto producer = start(
        [](mp::Queue<words> q) {
          for (std::uint64_t i = 0; i < items; ++i) q.put(make_item((i % 3 == 2 ? 3 : 1) * MiB + 8 * i, 100 + i));
        },
        q);
    for (std::uint64_t i = 0; i < items; ++i) {
      const words item = q.get();
      CHECK(item.size() == ((i % 3 == 2 ? 3 : 1) * MiB + 8 * i) / 8);
      CHECK(item_tag(item) == static_cast<std::int64_t>(100 + i));
    }
    CHECK(finish(producer) == 0);
    // A mapping kept from an exited producer does not confuse the next producer's segments.
    auto second = start([](mp::Queue<words> q) { q.put(make_item(MiB, 7)); }, q);
    CHECK(item_tag(q.get()) == 7);
    CHECK(finish(second) == 0);
  }
  before.check();
}

TEST_CASE("A child that puts several large items nobody reads yet exits and is joined, and they arrive intact after",
          "[queue][bigdata]") {
  // The producer waits for a consumed segment only while a consumer has been giving them back: with nobody
  // reading, each put makes a new segment after at most 2 ms, and the child exits.
  const auto before = counted();
  {
    mp::Queue<words> q;
    auto producer = start(
        [](mp::Queue<words> q) {
          for (std::uint64_t i = 0; i < 6; ++i) q.put(make_item(4 * MiB, 20 + i));
        },
        q);
    producer.join(60s);
    REQUIRE(producer.exitcode() == std::optional<int>(0));
    CHECK(q.qsize() == 6);
    for (std::uint64_t i = 0; i < 6; ++i) CHECK(item_tag(q.get()) == static_cast<std::int64_t>(20 + i));
  }
  before.check();
}

namespace {
// Bytes and count of this process's mappings of Queue item segments ("/memfd:mp-queue-item (deleted)").
std::pair<std::size_t, int> item_mappings() {
  std::size_t bytes = 0;
  int count = 0;
  if (FILE* maps = std::fopen("/proc/self/maps", "r")) {
    char line[512];
    while (std::fgets(line, sizeof line, maps) != nullptr) {
      if (std::strstr(line, "memfd:mp-queue-item") == nullptr) continue;
      unsigned long from = 0, to = 0;
      if (std::sscanf(line, "%lx-%lx", &from, &to) == 2) bytes += to - from, ++count;
    }
    std::fclose(maps);
  }
  return {bytes, count};
}
}  // namespace

TEST_CASE("A consumer of 64 MiB items keeps its mappings of the producer's recycled segments, within its budget",
          "[queue][bigdata]") {
  // Mapping a 64 MiB segment anew for every item cost a fifth of the consumer's time: the consumer keeps the
  // mappings of the two segments the producer alternates between (segment_pool.hpp, queue_view_budget), reads every
  // item intact through them, holds no descriptor for them, and never keeps more than its budget.
  mp::detail::release_cached_segments();
  const auto before = counted();
  REQUIRE(item_mappings().second == 0);
  {
    mp::Queue<words> q;
    constexpr std::uint64_t items = 4;
    auto producer = start(
        [](mp::Queue<words> q) {
          for (std::uint64_t i = 0; i < items; ++i) q.put(make_item(64 * MiB, 200 + i));
          q.put(make_item(72 * MiB, 300));
        },
        q);
    for (std::uint64_t i = 0; i < items; ++i) {
      CHECK(item_tag(q.get()) == static_cast<std::int64_t>(200 + i));
      const auto [bytes, count] = item_mappings();
      CHECK(count >= 1);  // the segment just read stays mapped
      CHECK(bytes <= mp::detail::queue_view_budget);
    }
    // The budget holds two segments of 64 MiB items (the producer alternates between two while its consumer keeps up).
    CHECK(item_mappings().second <= 2);
    CHECK(item_tag(q.get()) == 300);  // one larger item: older mappings make room within the budget
    CHECK(item_mappings().first <= mp::detail::queue_view_budget);
    CHECK(finish(producer) == 0);
  }
  before.check();  // release_cached_segments(), then no descriptor more than before
  CHECK(item_mappings().second == 0);
}
