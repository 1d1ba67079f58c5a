// Lost updates: why `counter.value() += 1` from several processes needs a lock, and the lock-free fix.
//
// value() += 1 is three steps — read, add, write. Two processes that read the same old value both write old + 1,
// and one increment is lost. Python has the same race (`v.value += 1` outside `with v.get_lock():`).
// Three runs of the same loop, 4 processes x N increments each:
//   1. value() += 1 without a lock: some updates are lost (how many depends on how often the processes overlap);
//   2. the same under value's lock (get_lock()): exact;
//   3. fetch_add(1): exact, lock-free — one atomic instruction, something Python cannot offer.
// Exit status: non-zero if the locked or fetch_add total is wrong. Usage: lost_updates [increments per process]
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <vector>

#include <mp/process.hpp>
#include <mp/shared.hpp>
#include <mp/sync.hpp>

namespace {

constexpr int processes = 4;

enum class method { racy, locked, fetch_add };

void increment(mp::Value<long> counter, long times, method how, mp::Barrier start) {
  start.wait();  // all processes begin together, so that they overlap
  for (long i = 0; i < times; ++i) {
    switch (how) {
      case method::racy: {
        // What `counter.value() += 1` does, spelled as the separate read and write it is (each one atomic, so
        // the compiler cannot merge the loop into a single add — the race stays the one between processes).
        std::atomic_ref<long> cell(counter.value());
        const long old = cell.load(std::memory_order_relaxed);
        cell.store(old + 1, std::memory_order_relaxed);
        break;
      }
      case method::locked: {
        std::lock_guard guard(counter.get_lock());
        counter.value() += 1;
        break;
      }
      case method::fetch_add:
        counter.fetch_add(1);
        break;
    }
  }
}

// Runs `processes` children incrementing one fresh counter; returns the final value and prints a line.
long run(const char* title, long times, method how) {
  mp::Value<long> counter(0);
  mp::Barrier start_together(processes);
  const auto start = std::chrono::steady_clock::now();
  std::vector<mp::Process> children;
  for (int p = 0; p < processes; ++p) {
    children.emplace_back(increment, counter, times, how, start_together);
    children.back().start();
  }
  for (mp::Process& child : children) child.join();
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  const long expected = processes * times;
  const long total = counter.value();
  std::printf("%-28s %9ld of %9ld  lost %9ld  (%.0f ms)\n", title, total, expected, expected - total, ms);
  return total;
}

}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);
  const long times = argc > 1 ? std::atol(argv[1]) : 500'000;
  if (times <= 0) {
    std::fprintf(stderr, "usage: lost_updates [increments per process > 0]\n");
    return 2;
  }
  const long expected = processes * times;
  std::printf("%d processes x %ld increments of one shared counter\n", processes, times);
  const long racy = run("value() += 1, no lock:", times, method::racy);
  const long locked = run("value() += 1 under get_lock:", times, method::locked);
  const long atomic = run("fetch_add(1), no lock:", times, method::fetch_add);
  if (racy < expected) {
    std::printf("without the lock %ld updates (%.1f%%) were lost\n", expected - racy,
                100.0 * static_cast<double>(expected - racy) / static_cast<double>(expected));
  } else {
    std::printf("without the lock no update was lost this time (the processes barely overlapped) - run it again\n");
  }
  const bool exact = locked == expected && atomic == expected;
  std::printf("%s\n", exact ? "with the lock and with fetch_add the total is exact"
                            : "ERROR: a locked or fetch_add total is wrong");
  return exact ? 0 : 1;
}
