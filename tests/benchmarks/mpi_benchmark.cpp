// The C++ half of mpi_compare.py: the same three measurements for mp::mpi::Pool (`mpirun -n 3 mpi_benchmark mpi`:
// the 2 worker ranks) and mp::Pool (`mpi_benchmark local`: 2 forked workers, no MPI). Prints "name value" lines:
//   map_us_per_item          100,000 trivial items (x + 1) at chunksize 12,500, median of 5 runs
//   map_chunk1_us_per_item   2,000 trivial items at chunksize 1
//   round_trip_us            one apply at a time (submit and wait), mean over 2,000
//   round_trip_median_us     ... their median, 90th and 99th percentiles (round_trip_p90_us, round_trip_p99_us)
//   buffers_mb_per_s         16 tasks each taking and returning a 16 MiB buffer: 2 x 16 x 16 MiB / wall time
#include <mp/mp.hpp>
#include <mp/mpi.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

namespace {

int inc(int x) { return x + 1; }
std::vector<std::byte> echo(std::vector<std::byte> data) { return data; }

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

template <class Pool>
void measure(Pool& pool) {
  std::vector<int> items(100'000);
  std::iota(items.begin(), items.end(), 0);
  (void)pool.map(inc, items, 12'500);  // warm-up
  std::vector<double> runs;
  for (int r = 0; r < 5; ++r) {
    const auto start = std::chrono::steady_clock::now();
    const auto out = pool.map(inc, items, 12'500);
    runs.push_back(seconds_since(start));
    if (out.back() != 100'000) std::printf("error wrong map result\n");
  }
  std::sort(runs.begin(), runs.end());
  std::printf("map_us_per_item %.5f\n", runs[2] * 1e6 / static_cast<double>(items.size()));

  std::vector<int> few(2'000);
  std::iota(few.begin(), few.end(), 0);
  auto start = std::chrono::steady_clock::now();
  (void)pool.map(inc, few, 1);
  std::printf("map_chunk1_us_per_item %.3f\n", seconds_since(start) * 1e6 / static_cast<double>(few.size()));

  for (int i = 0; i < 200; ++i) (void)pool.apply(inc, i);
  const int trips = 2'000;
  std::vector<double> trip(trips);
  start = std::chrono::steady_clock::now();
  for (int i = 0; i < trips; ++i) {
    const auto one = std::chrono::steady_clock::now();
    (void)pool.apply_async(inc, i).get();
    trip[static_cast<std::size_t>(i)] = seconds_since(one) * 1e6;
  }
  std::printf("round_trip_us %.2f\n", seconds_since(start) * 1e6 / trips);
  std::sort(trip.begin(), trip.end());
  std::printf("round_trip_median_us %.2f\n", trip[trips / 2]);
  std::printf("round_trip_p90_us %.2f\n", trip[trips * 9 / 10]);
  std::printf("round_trip_p99_us %.2f\n", trip[trips * 99 / 100]);

  const std::vector<std::byte> buffer(16u << 20, std::byte{7});
  (void)pool.apply(echo, buffer);
  start = std::chrono::steady_clock::now();
  std::vector<decltype(pool.apply_async(echo, buffer))> results;
  for (int i = 0; i < 16; ++i) results.push_back(pool.apply_async(echo, buffer));
  std::size_t bytes = 0;
  for (auto& r : results) bytes += r.get().size();
  std::printf("buffers_mb_per_s %.0f\n", 2.0 * static_cast<double>(bytes) / 1e6 / seconds_since(start));
}

}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "local") {
    mp::Pool pool(2);
    measure(pool);
    return 0;
  }
  mp::mpi::init(argc, argv);
  if (mode != "mpi") {
    std::fprintf(stderr, "usage: mpirun -n 3 mpi_benchmark mpi | mpi_benchmark local\n");
    return 2;
  }
  mp::mpi::Pool pool;
  std::printf("ranks %d\n", mp::mpi::size());
  measure(pool);
}
