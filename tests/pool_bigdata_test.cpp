// Tests for big Pool arguments and results (issue 14): items from blob_threshold up travel as recycled memfd
// segments whose descriptors cross beside the task bytes, written once by the sender and decoded straight from the
// receiver's cached mapping of the segment. Contents arrive intact through apply and map in both directions under every
// start method, and a worker killed while holding a big item leaks no segment or descriptor.
#include <catch2/catch.hpp>

#include <signal.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include <mp/detail/segment_pool.hpp>
#include <mp/pool.hpp>
#include <mp/shared.hpp>

#include "support/child_process.hpp"
#include "support/pool_checks.hpp"

namespace {

std::size_t open_fds() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}
// Entries of /dev/shm, except Open MPI's (vader_segment.*), which MPI programs running beside the tests create and
// remove at any time.
// A pattern that catches a lost, duplicated or shifted piece anywhere in the item.
std::vector<std::uint32_t> pattern(std::size_t bytes, std::uint32_t seed) {
  std::vector<std::uint32_t> v(bytes / sizeof(std::uint32_t));
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& e : v) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    e = x;
  }
  return v;
}

// The worker checks what it got against the pattern and returns a checksum plus the item reversed.
std::uint64_t checksum(const std::vector<std::uint32_t>& v) {
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < v.size(); ++i) sum = sum * 1099511628211ull + v[i] + i;
  return sum;
}
std::uint64_t checksum_of(std::vector<std::uint32_t> v) { return checksum(v); }
std::vector<std::uint32_t> make_item(std::size_t bytes, std::uint32_t seed) { return pattern(bytes, seed); }
std::vector<std::uint32_t> make_mib(std::uint32_t seed) { return pattern(std::size_t{1} << 20, seed); }
std::vector<std::uint32_t> reverse_item(std::vector<std::uint32_t> v) {
  std::reverse(v.begin(), v.end());
  return v;
}
std::size_t die_holding(std::vector<std::uint32_t> v) {
  ::kill(::getpid(), SIGKILL);
  return v.size();
}

}  // namespace


namespace {
// Under forkserver the first Pool starts the server, which keeps a descriptor here: start it before counting.
void start_any_server() { (void)mp::Pool(1).apply(checksum_of, std::vector<std::uint32_t>{}); }
}  // namespace

TEST_CASE("64 MiB and 256 MiB arguments and results of apply arrive intact", "[pool_bigdata]") {
  const std::size_t bytes = GENERATE(std::size_t{64} << 20, std::size_t{256} << 20);
  if (bytes > mp_test::largest_item()) return;  // under ASan, spawn and forkserver: 64 MiB takes the same path
  start_any_server();
  const std::size_t fds = open_fds();
  {
    mp::Pool pool(1);
    const auto item = pattern(bytes, 7);
    CHECK(pool.apply(checksum_of, item) == checksum(item));
    const auto made = pool.apply(make_item, bytes, 9u);
    CHECK(made == pattern(bytes, 9));
    auto reversed = pool.apply(reverse_item, item);
    std::reverse(reversed.begin(), reversed.end());
    CHECK(reversed == item);
  }
  CHECK(open_fds() == fds);
}

TEST_CASE("Big items of map arrive intact in both directions, small ones beside them", "[pool_bigdata]") {
  mp::Pool pool(2);
  std::vector<std::vector<std::uint32_t>> items;
  const std::size_t sizes[] = {std::size_t{64} << 20, 1000, mp::detail::blob_threshold, mp::detail::blob_threshold - 64,
                               std::size_t{1} << 20, 0, std::size_t{16} << 20};
  std::uint32_t seed = 1;
  for (std::size_t size : sizes) items.push_back(pattern(size, seed++));
  SECTION("chunksize 1") {
    const auto sums = pool.map(checksum_of, items, 1);
    for (std::size_t i = 0; i < items.size(); ++i) CHECK(sums[i] == checksum(items[i]));
    const auto back = pool.map(reverse_item, items, 1);
    for (std::size_t i = 0; i < items.size(); ++i) CHECK(std::equal(back[i].rbegin(), back[i].rend(), items[i].begin(), items[i].end()));
  }
  SECTION("chunks of several items, one big chunk among them") {
    const auto back = pool.map(reverse_item, items, 3);
    for (std::size_t i = 0; i < items.size(); ++i) CHECK(std::equal(back[i].rbegin(), back[i].rend(), items[i].begin(), items[i].end()));
  }
  SECTION("starmap") {
    std::vector<std::tuple<std::size_t, std::uint32_t>> args = {{std::size_t{16} << 20, 3u}, {100, 4u}, {std::size_t{2} << 20, 5u}};
    const auto made = pool.starmap(make_item, args, 1);
    for (std::size_t i = 0; i < args.size(); ++i) CHECK(made[i] == pattern(std::get<0>(args[i]), std::get<1>(args[i])));
  }
}

TEST_CASE("A worker killed while holding a big item leaks no segment or descriptor", "[pool_bigdata]") {
  start_any_server();
  const std::size_t fds = open_fds();
  const std::size_t shm = mp_test::own_shm_entries();
  {
    mp::Pool pool(2);
    const auto item = pattern(std::size_t{64} << 20, 3);
    CHECK_THROWS_AS(pool.apply(die_holding, item), mp::WorkerLost);
    std::vector<std::vector<std::uint32_t>> items(3, item);
    CHECK_THROWS_AS(pool.map(die_holding, items, 1), mp::WorkerLost);
    // The pool goes on with big items after the losses.
    CHECK(pool.apply(checksum_of, item) == checksum(item));
  }
  CHECK(open_fds() == fds);
  CHECK(mp_test::own_shm_entries() == shm);
}

TEST_CASE("A SharedMemory block passed to a task is the zero-copy path for big data", "[pool_bigdata]") {
  mp::Pool pool(2);
  auto block = mp::SharedMemory::create(std::size_t{32} << 20);
  auto bytes = block.buf();
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::byte>(i * 7);
  const auto sum = pool.apply([](mp::SharedMemory m) {
    std::uint64_t s = 0;
    for (std::byte b : m.buf()) s += static_cast<std::uint8_t>(b);
    return s;
  }, block);
  std::uint64_t expected = 0;
  for (std::byte b : bytes) expected += static_cast<std::uint8_t>(b);
  CHECK(sum == expected);
  block.unlink();
}

// Big payloads travel in recycled segments (segment_pool.hpp): more items than segments kept, so every segment is
// reused many times in both directions. A reused segment must never be handed out while its reader still maps it:
// a result received and kept must not change when later big tasks run, and no item may arrive as another's bytes.
TEST_CASE("Big items in recycled segments arrive intact and distinct, results kept while later tasks run",
          "[pool_bigdata]") {
  start_any_server();
  const std::size_t fds = open_fds();
  {
    mp::Pool pool(2);
    std::vector<std::vector<std::uint32_t>> items;
    for (std::uint32_t i = 0; i < 24; ++i) items.push_back(pattern((std::size_t{1} << 20) + 4096 * (i % 3), 100 + i));
    const auto sums = pool.map(checksum_of, items, 1);
    for (std::size_t i = 0; i < items.size(); ++i) CHECK(sums[i] == checksum(items[i]));
    const auto back = pool.map(reverse_item, items, 1);
    for (std::size_t i = 0; i < items.size(); ++i)
      CHECK(std::equal(back[i].rbegin(), back[i].rend(), items[i].begin(), items[i].end()));
    std::vector<std::vector<std::uint32_t>> kept;
    for (std::uint32_t i = 0; i < 12; ++i) kept.push_back(pool.apply(make_item, std::size_t{1} << 20, 200 + i));
    auto later = pool.map_async(make_mib, std::vector<std::uint32_t>{1, 2, 3, 4, 5, 6, 7, 8}, 1);
    for (std::uint32_t i = 0; i < 12; ++i) CHECK(kept[i] == pattern(std::size_t{1} << 20, 200 + i));
    const auto made = later.get();
    for (std::uint32_t i = 0; i < 8; ++i) CHECK(made[i] == pattern(std::size_t{1} << 20, i + 1));
    for (std::uint32_t i = 0; i < 12; ++i) CHECK(kept[i] == pattern(std::size_t{1} << 20, 200 + i));
  }
  CHECK(open_fds() == fds);
}

std::vector<std::vector<std::uint32_t>> temporary_items(std::uint32_t seed) {
  std::vector<std::vector<std::uint32_t>> items;
  for (std::uint32_t i = 0; i < 9; ++i) items.push_back(pattern(std::size_t{512} << 10, seed + i));
  return items;
}
std::uint64_t checksum_or_throw(std::vector<std::uint32_t> v) {
  if (v.size() == (std::size_t{600} << 10) / sizeof(std::uint32_t)) throw std::runtime_error("this item fails");
  return checksum(v);
}

// A synchronous map serializes its big chunks only when it sends them (from the caller's range, alive while map
// waits): a temporary range, a failing item among big ones, and map_async (which reads its input before it returns)
// next to it all give the same answers.
TEST_CASE("map serializes big chunks as it sends them and map_async before it returns", "[pool_bigdata]") {
  mp::Pool pool(2);
  const auto expected = temporary_items(7);
  const auto sums = pool.map(checksum_of, temporary_items(7), 1);
  for (std::size_t i = 0; i < expected.size(); ++i) CHECK(sums[i] == checksum(expected[i]));
  const auto pairs = pool.map(checksum_of, temporary_items(7), 2);
  CHECK(pairs == sums);
  auto items = temporary_items(7);
  auto async = pool.map_async(checksum_of, items, 1);
  for (auto& item : items) std::fill(item.begin(), item.end(), 0u);  // read before map_async returned
  CHECK(async.get() == sums);
  auto with_failure = temporary_items(3);
  with_failure[4] = pattern(std::size_t{600} << 10, 1);
  CHECK_THROWS_WITH(pool.map(checksum_or_throw, with_failure, 1), Catch::Contains("this item fails"));
  // The pool goes on, segments reused.
  CHECK(pool.map(checksum_of, temporary_items(7), 1) == sums);
}

// apply_async, map_async and imap put big payloads in the pool's recycled segments too (the segment is written
// when the chunk is dispatched: map_async and imap from their staged bytes), and read big results through the
// parent's cached mappings of each worker's segments. More tasks in flight than segments kept, sizes 1-64 MiB.
TEST_CASE("apply_async, map_async and imap carry 1-64 MiB arguments and results intact", "[pool_bigdata]") {
  start_any_server();
  const std::size_t fds = open_fds();
  const std::size_t shm = mp_test::own_shm_entries();
  const std::size_t bytes = GENERATE(std::size_t{1} << 20, std::size_t{16} << 20, std::size_t{64} << 20);
  const std::uint32_t count = bytes >= (std::size_t{64} << 20) ? 2 : bytes >= (std::size_t{16} << 20) ? 4 : 12;
  {
    mp::Pool pool(2);
    std::vector<std::vector<std::uint32_t>> items;
    for (std::uint32_t i = 0; i < count; ++i) items.push_back(pattern(bytes + 4096 * (i % 2), 300 + i));
    // apply_async: every task submitted before any answer is read; results held while later ones arrive.
    std::vector<mp::AsyncResult<std::vector<std::uint32_t>>> reversed;
    for (const auto& item : items) reversed.push_back(pool.apply_async(reverse_item, item));
    std::vector<mp::AsyncResult<std::vector<std::uint32_t>>> made;
    for (std::uint32_t i = 0; i < count; ++i) made.push_back(pool.apply_async(make_item, bytes, 400 + i));
    std::vector<std::vector<std::uint32_t>> kept;
    for (auto& r : reversed) kept.push_back(r.get());
    for (std::uint32_t i = 0; i < count; ++i) {
      CHECK(std::equal(kept[i].rbegin(), kept[i].rend(), items[i].begin(), items[i].end()));
      CHECK(made[i].get() == pattern(bytes, 400 + i));
    }
    // map_async reads its input before it returns: the caller may change it at once.
    auto copy = items;
    auto async = pool.map_async(reverse_item, copy, 1);
    for (auto& item : copy) std::fill(item.begin(), item.end(), 0u);
    const auto back = async.get();
    REQUIRE(back.size() == items.size());
    for (std::size_t i = 0; i < items.size(); ++i)
      CHECK(std::equal(back[i].rbegin(), back[i].rend(), items[i].begin(), items[i].end()));
    // imap: big arguments one way, big results the other, consumed one by one.
    std::size_t i = 0;
    for (const auto& got : pool.imap(reverse_item, items)) {
      REQUIRE(i < items.size());
      CHECK(std::equal(got.rbegin(), got.rend(), items[i].begin(), items[i].end()));
      ++i;
    }
    CHECK(i == items.size());
    // What was kept is untouched by everything since (its segments were reused many times over).
    for (std::uint32_t k = 0; k < count; ++k)
      CHECK(std::equal(kept[k].rbegin(), kept[k].rend(), items[k].begin(), items[k].end()));
  }
  CHECK(open_fds() == fds);
  CHECK(mp_test::own_shm_entries() == shm);
}

namespace {
pid_t test_parent = 0;  // set in the test's process: the item below kills only a worker
// A big result whose serialization kills the worker writing it, halfway through the result message.
struct dies_while_written {
  std::vector<std::uint32_t> data;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(data);
    if (::getpid() != test_parent) {
      static int calls = 0;
      if (++calls >= 2) ::kill(::getpid(), SIGKILL);  // the first call measures, the second writes
    }
  }
};
dies_while_written dying_result(std::size_t bytes) { return {pattern(bytes, 5)}; }
std::vector<std::uint32_t> make_seed0(std::size_t bytes) { return pattern(bytes, 0); }
}  // namespace

TEST_CASE("A worker SIGKILLed while writing a big result leaks no segment or descriptor", "[pool_bigdata]") {
  start_any_server();
  test_parent = ::getpid();
  const std::size_t fds = open_fds();
  const std::size_t shm = mp_test::own_shm_entries();
  {
    mp::Pool pool(2);
    // Warm: the workers and the parent's mappings of their segments exist before one dies.
    const auto warm = pool.map(make_seed0, std::vector<std::size_t>(6, std::size_t{4} << 20), 1);
    CHECK(warm.back() == pattern(std::size_t{4} << 20, 0));
    CHECK_THROWS_AS(pool.apply(dying_result, std::size_t{16} << 20), mp::WorkerLost);
    // The pool goes on with big results after the loss (the replacement's segments are new to the parent).
    for (std::uint32_t i = 0; i < 4; ++i) CHECK(pool.apply(make_item, std::size_t{16} << 20, i) == pattern(std::size_t{16} << 20, i));
  }
  CHECK(open_fds() == fds);
  CHECK(mp_test::own_shm_entries() == shm);
}

namespace {
// Item i of a chunk: a result of sizes[i] bytes, or (size 1) an exception.
std::vector<std::uint32_t> sized_or_throw_pair(std::size_t bytes, std::uint32_t seed) {
  if (bytes == 1) throw std::runtime_error("item " + std::to_string(seed) + " fails");
  return pattern(bytes, seed);
}
std::vector<std::uint32_t> sized_or_throw(std::tuple<std::size_t, std::uint32_t> item) {
  return sized_or_throw_pair(std::get<0>(item), std::get<1>(item));
}
}  // namespace

// A worker holds a chunk's big results (64 KiB and up) until the chunk ends, then serializes them straight into a
// segment (or, for a small body, into its buffer): the outputs keep their order around small ones, and a failure
// after them still reports every output before it, then the error.
TEST_CASE("A chunk's big results keep their order and survive a failure later in the chunk", "[pool_bigdata]") {
  start_any_server();
  const std::size_t fds = open_fds();
  const std::size_t shm = mp_test::own_shm_entries();
  {
    mp::Pool pool(2);
    const std::size_t k64 = std::size_t{64} << 10, m16 = std::size_t{16} << 20;
    SECTION("a body in a segment, small results before, between and after the big ones") {
      const std::vector<std::tuple<std::size_t, std::uint32_t>> items = {
          {1000, 1}, {m16, 2}, {100, 3}, {k64, 4}, {4, 5}, {std::size_t{1} << 20, 6}, {8, 7}};
      const auto got = pool.starmap(sized_or_throw_pair, items, items.size());
      REQUIRE(got.size() == items.size());
      for (std::size_t i = 0; i < items.size(); ++i)
        CHECK(got[i] == pattern(std::get<0>(items[i]), std::get<1>(items[i])));
    }
    SECTION("a small body with held results") {
      const std::vector<std::tuple<std::size_t, std::uint32_t>> items = {{k64, 1}, {100, 2}, {k64, 3}};
      const auto got = pool.starmap(sized_or_throw_pair, items, items.size());
      REQUIRE(got.size() == items.size());
      for (std::size_t i = 0; i < items.size(); ++i)
        CHECK(got[i] == pattern(std::get<0>(items[i]), std::get<1>(items[i])));
    }
    SECTION("a failure after big results: imap yields the outputs before it, then throws it") {
      const std::vector<std::tuple<std::size_t, std::uint32_t>> items = {
          {100, 1}, {m16, 2}, {k64, 3}, {1, 4}, {m16, 5}};
      std::size_t i = 0;
      try {
        for (const auto& got : pool.imap(sized_or_throw, items, items.size())) {
          REQUIRE(i < 3);
          CHECK(got == pattern(std::get<0>(items[i]), std::get<1>(items[i])));
          ++i;
        }
        FAIL("imap did not throw the chunk's failure");
      } catch (const std::runtime_error& e) {
        CHECK(std::string(e.what()).find("item 4 fails") != std::string::npos);
      }
      CHECK(i == 3);
      // The pool goes on, its segments reused.
      CHECK(pool.apply(make_item, m16, 9u) == pattern(m16, 9));
    }
  }
  CHECK(open_fds() == fds);
  CHECK(mp_test::own_shm_entries() == shm);
}

namespace {
// A big result whose serialize member measures otherwise than it writes (skew -1: 4 KiB short, +1: 4 KiB beyond):
// a writer that serialized it into exactly the measured room would overrun it or leave a gap in the body.
struct measured_otherwise {
  std::vector<std::uint32_t> data;
  std::int8_t skew = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    if constexpr (Archive::is_saving) {
      if (ar.measuring() && skew != 0) {
        const std::size_t bytes = data.size() * sizeof(std::uint32_t);
        ar.write_bytes(data.data(), skew < 0 ? bytes - 4096 : bytes + 4096);  // a measure only counts
        ar(skew);
        return;
      }
    }
    ar(data, skew);
  }
};
measured_otherwise skewed(std::int8_t skew) { return {pattern(std::size_t{4} << 20, 21), skew}; }
}  // namespace

TEST_CASE("A big result measured otherwise than it is written arrives intact", "[pool_bigdata]") {
  mp::Pool pool(1);
  const std::int8_t skew = GENERATE(std::int8_t{-1}, std::int8_t{1});
  // The worker's result segment, recycled below, holds other bytes first: a gap left in it would not read as zeros.
  CHECK(pool.apply(make_item, (std::size_t{4} << 20) + (std::size_t{64} << 10), 5u).size() ==
        ((std::size_t{4} << 20) + (std::size_t{64} << 10)) / sizeof(std::uint32_t));
  const auto one = pool.apply(skewed, skew);
  CHECK(one.data == pattern(std::size_t{4} << 20, 21));
  CHECK(one.skew == skew);
  const auto many = pool.map(skewed, std::vector<std::int8_t>{skew, 0, skew}, 3);
  REQUIRE(many.size() == 3);
  for (const auto& r : many) CHECK(r.data == pattern(std::size_t{4} << 20, 21));
  CHECK(many[1].skew == 0);
}
