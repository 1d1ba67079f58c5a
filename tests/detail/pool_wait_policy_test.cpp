// Tests for the Pool's waiting policy (detail/pool/wait_policy.hpp): the pure decisions of when a worker spins,
// how deep a worker's queue is, and when a worker holds back the notice of a result. Their effect on speed is
// measured by compare_mp (--pool); here, what each decision answers.
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <vector>

#include <mp/detail/pool/wait_policy.hpp>
#include <mp/pool.hpp>
#include <mp/sync.hpp>

using namespace mp::detail::pool;

TEST_CASE("an idle worker spins only while the pool has no more workers than CPUs", "[pool_wait_policy]") {
  CHECK(worker_spin_for(2, 2) == 100'000u);
  CHECK(worker_spin_for(1, 8) == 100'000u);
  CHECK(worker_spin_for(3, 2) == 0u);
  CHECK(worker_spin_for(64, 2) == 0u);
}

TEST_CASE("tiny chunks get a deeper queue, deeper still in a crowded pool", "[pool_wait_policy]") {
  CHECK(prefetch_depth(50, false) == 8);
  CHECK(prefetch_depth(50, true) == 32);
  CHECK(prefetch_depth(tiny_chunk_ns - 1, true) == 32);
  // Chunks that take a while: one queued behind the running one, crowded or not (the load stays balanced).
  CHECK(prefetch_depth(tiny_chunk_ns, false) == 2);
  CHECK(prefetch_depth(tiny_chunk_ns, true) == 2);
  CHECK(prefetch_depth(1'000'000'000, true) == 2);
}

TEST_CASE("a worker holds back a result's notice only in a crowded pool, with tiny tasks and more queued",
          "[pool_wait_policy]") {
  const std::uint64_t tiny = 1'000;
  SECTION("all conditions met: held") { CHECK(hold_result_notice(true, true, tiny, 0)); }
  SECTION("a pool with a CPU per worker: told at once (its parent spins to collect)") {
    CHECK_FALSE(hold_result_notice(false, true, tiny, 0));
  }
  SECTION("nothing more queued: told at once (the parent must refill it, and an apply round trip waits)") {
    CHECK_FALSE(hold_result_notice(true, false, tiny, 0));
  }
  SECTION("a task that was not tiny: told at once (the next one may be as long)") {
    CHECK_FALSE(hold_result_notice(true, true, tiny_chunk_ns, 0));
  }
  SECTION("at most notice_batch results go untold") {
    unsigned held = 0;
    while (hold_result_notice(true, true, tiny, held)) ++held;
    CHECK(held == notice_batch - 1);  // the notice_batch-th result is told, with those before it
  }
}

namespace {
// Without an Event: returns 0 at once. With one: waits for it (the workload of a slow task, ended by the test), 1 if
// it was set, -1 if 30 s passed first.
int quick_or_held(std::optional<mp::Event> go) {
  if (!go) return 0;
  return go->wait(std::chrono::seconds(30)) ? 1 : -1;
}
}  // namespace

TEST_CASE("in a crowded pool, a result held back behind a slow task arrives while the slow task still runs",
          "[pool_wait_policy]") {
  // More workers than CPUs: workers hold back notices. Each worker gets quick tasks with a slow one queued behind
  // the last of them; the quick results must not wait for the slow tasks (the supervisor looks every
  // crowded_look_ms while work is outstanding). The slow tasks end only once every quick result has arrived: a
  // result held back until its worker finished a slow task would come after their 30 s timeout, and they say so.
  const std::size_t workers = mp::cpu_count() + 2;
  mp::Pool pool(workers);
  (void)pool.map(quick_or_held, std::vector<std::optional<mp::Event>>(400), 1);  // warm: its chunks are tiny
  mp::Event go;
  std::vector<std::optional<mp::Event>> items(8 * workers);
  for (std::size_t i = 0; i < workers; ++i) items.emplace_back(go);
  std::size_t seen = 0;
  for (int value : pool.imap(quick_or_held, items, 1)) {
    if (seen < 8 * workers) REQUIRE(value == 0);
    else CHECK(value == 1);  // set, not timed out
    if (++seen == 8 * workers) go.set();
  }
  CHECK(seen == items.size());
}
