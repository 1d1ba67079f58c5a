// Lesson "Common Mistakes 4: Using Too Many Processes" and "Best Practices 4: Limit Number of Processes": rather
// than one process per task (1000 forks, 1000 address spaces), a Pool of cpu_count() workers runs the 1000 tasks.
#include <mp/pool.hpp>
#include <mp/process.hpp>

#include <cstdio>
#include <numeric>
#include <vector>

namespace {

long worker(long task) { return task * task; }

}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);
  std::vector<long> tasks(1000);
  std::iota(tasks.begin(), tasks.end(), 0L);

  const std::size_t num_processes = mp::cpu_count();
  mp::Pool pool(num_processes);
  std::vector<long> results = pool.map(worker, tasks);
  std::printf("%zu tasks on %zu worker processes\n", results.size(), num_processes);
  std::printf("sum of results: %ld\n", std::accumulate(results.begin(), results.end(), 0L));
  return 0;
}
