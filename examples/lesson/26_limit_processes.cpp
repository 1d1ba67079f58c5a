// Lesson "Best Practices 4: Limit Number of Processes": a Pool of cpu_count() workers runs every task.
//
//   # Use CPU count as limit
//   num_processes = multiprocessing.cpu_count()
//   with multiprocessing.Pool(processes=num_processes) as pool:
//       pool.map(worker, tasks)
//
// The snippet leaves worker and tasks open: here 1000 tasks that square their number. (22_too_many_processes.cpp
// times this against one process per task.)
#include <iostream>
#include <numeric>
#include <vector>

#include <mp/pool.hpp>
#include <mp/process.hpp>

#include "lesson.hpp"

long worker(int task) { return static_cast<long>(task) * task; }

int main(int argc, char** argv) {
  mp::init(argc, argv);

  const std::vector<int> tasks = lesson::range(1000);

  // Use CPU count as limit
  const std::size_t num_processes = mp::cpu_count();
  mp::Pool pool(num_processes);
  const std::vector<long> results = pool.map(worker, tasks);
  std::cout << results.size() << " tasks on " << num_processes << " worker processes" << std::endl;
  std::cout << "sum of results: " << std::accumulate(results.begin(), results.end(), 0L) << std::endl;
}
