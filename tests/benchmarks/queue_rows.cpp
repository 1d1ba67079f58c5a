// The Queue rows of compare_mp alone (queue_8B, queue_1KiB, queue_<size>_MBps with memcpy of the same size), in a
// program that also compiles against older trees' headers, for before/after pairs:
//   g++ -std=gnu++20 -O2 -g1 -DNDEBUG -I<tree>/include tests/benchmarks/queue_rows.cpp -o queue_rows
// Usage: queue_rows small|big|size|single8|single1k [scale] [bytes]
//   small: queue_8B and queue_1KiB (1,000,000 and 200,000 items / scale), as compare_mp
//   big:   64 KiB to 64 MiB items, 256 MiB per run / scale, best of 3 runs from one producer process (started, and
//          its item made, before the first), memcpy of the same size after each row
//   size:  one row of `bytes` items
//   single8, single1k: one process puts 256 items then gets them, 1,000,000 / scale items in all: no waiting, for
//          instruction counts per put+get (valgrind --tool=callgrind; subtract a run at another scale)
#include <mp/process.hpp>
#include <mp/queue.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace {

using i64 = std::int64_t;
using clock_type = std::chrono::steady_clock;
using byte_vector = std::vector<std::byte>;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

double best_rate(int runs, i64 n, const std::function<void(i64)>& run) {
  double best = 0;
  for (int r = 0; r < runs; ++r) {
    const auto t0 = clock_type::now();
    run(n);
    best = std::max(best, static_cast<double>(n) / seconds_since(t0));
  }
  return best;
}

template <class T>
void produce(mp::Queue<T> q, i64 n, T item) {
  for (i64 i = 0; i < n; ++i) q.put(item);
}

template <class T>
void queue_throughput(i64 n, T item) {
  mp::Queue<T> q;
  mp::Process producer(produce<T>, q, n, item);
  producer.start();
  for (i64 i = 0; i < n; ++i) (void)q.get();
  producer.join();
}

// The producer makes its item once, then puts `n` of it for every run the consumer asks for (0: done). One producer
// and one queue serve the three runs, as one Pool serves compare_mp's Pool rows: the rate is the queue's, not that of
// a process start and of the item's first allocation (fresh pages cost ~8 us per 4 KiB page on this VM).
void produce_bytes(mp::Queue<byte_vector> q, mp::Queue<i64> runs, i64 size) {
  byte_vector item(static_cast<std::size_t>(size));
  for (std::size_t i = 0; i < item.size(); i += 4096) item[i] = static_cast<std::byte>(i >> 12);
  for (i64 n = runs.get(); n > 0; n = runs.get())
    for (i64 i = 0; i < n; ++i) q.put(item);
}

double memcpy_mbps(i64 n, i64 size) {
  byte_vector from(static_cast<std::size_t>(size), std::byte{1});
  byte_vector to(static_cast<std::size_t>(size));
  return best_rate(3, n, [&](i64 count) {
           for (i64 i = 0; i < count; ++i) {
             std::memcpy(to.data(), from.data(), from.size());
             asm volatile("" ::"r"(to.data()) : "memory");
           }
         }) * static_cast<double>(size) / 1e6;
}

/// Best of 3 runs of n items of `size` bytes from one producer process to this one through a default Queue.
double queue_mbps(i64 size, i64 scale) {
  const i64 n = std::max<i64>(1, (i64{256} << 20) / size / scale);
  mp::Queue<byte_vector> q;
  mp::Queue<i64> runs;
  mp::Process producer(produce_bytes, q, runs, size);
  producer.start();
  const double rate = best_rate(3, n, [&](i64 count) {
    runs.put(count);
    for (i64 i = 0; i < count; ++i)
      if (q.get().size() != static_cast<std::size_t>(size)) std::abort();
  });
  runs.put(0);
  producer.join();
  return rate * static_cast<double>(size) / 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);
  const std::string what = argc > 1 ? argv[1] : "small";
  const i64 scale = argc > 2 ? std::max<i64>(1, std::atoll(argv[2])) : 1;
  if (what == "small") {
    std::printf("queue_8B %.4g items/s\n", best_rate(3, 1000000 / scale, [](i64 n) { queue_throughput<i64>(n, 42); }));
    std::printf("queue_1KiB %.4g items/s\n",
                best_rate(3, 200000 / scale, [](i64 n) { queue_throughput(n, std::string(1024, 'x')); }));
  } else if (what == "big") {
    const std::pair<const char*, i64> sizes[] = {{"64KiB", i64{64} << 10}, {"256KiB", i64{256} << 10},
                                                 {"1MiB", i64{1} << 20},    {"4MiB", i64{4} << 20},
                                                 {"16MiB", i64{16} << 20},  {"64MiB", i64{64} << 20}};
    for (const auto& [label, size] : sizes) {
      const double rate = queue_mbps(size, scale);
      const i64 n = std::max<i64>(1, (i64{256} << 20) / size / scale);
      std::printf("queue_%s_MBps %.5g memcpy %.5g\n", label, rate, memcpy_mbps(n * 4, size));
      std::fflush(stdout);
    }
  } else if (what == "size" && argc > 3) {
    const i64 size = std::atoll(argv[3]);
    std::printf("queue_%lld_MBps %.5g\n", static_cast<long long>(size), queue_mbps(size, scale));
  } else if (what == "single8" || what == "single1k") {
    const i64 n = 1000000 / scale;
    const auto t0 = clock_type::now();
    if (what == "single8") {
      mp::Queue<i64> q;
      for (i64 i = 0; i < n; i += 256) {
        for (i64 k = 0; k < 256; ++k) q.put(i + k);
        for (i64 k = 0; k < 256; ++k)
          if (q.get() != i + k) std::abort();
      }
    } else {
      mp::Queue<std::string> q;
      const std::string item(1024, 'x');
      for (i64 i = 0; i < n; i += 256) {
        for (i64 k = 0; k < 256; ++k) q.put(item);
        for (i64 k = 0; k < 256; ++k)
          if (q.get().size() != 1024) std::abort();
      }
    }
    std::printf("%s %.4g items/s\n", what.c_str(), static_cast<double>(n) / seconds_since(t0));
  } else {
    std::fprintf(stderr, "usage: queue_rows small|big|size|single8|single1k [scale] [bytes]\n");
    return 2;
  }
  return 0;
}
