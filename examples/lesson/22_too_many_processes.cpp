// Lesson "Common Mistakes 4: Using Too Many Processes": one process per task, against a Pool of cpu_count().
//
//   # WRONG: Too many processes can hurt performance
//   processes = []
//   for _ in range(1000):  # Too many!
//       process = multiprocessing.Process(target=worker)
//       processes.append(process)
//       process.start()
//
//   # CORRECT: Use Pool with reasonable number
//   with multiprocessing.Pool(processes=multiprocessing.cpu_count()) as pool:
//       pool.map(worker, tasks)
//
// Both halves run the same 1000 tasks (each a little CPU work) and are timed. The wrong half pays a fork, an
// address space and a reaping per task, and keeps up to 1000 processes competing for the CPUs; the pool starts
// cpu_count() workers once and feeds them the tasks. The wrong half is bounded: if its processes take longer than
// 5 s to start (a very slow machine), it stops starting new ones and says how many it started.
#include <chrono>
#include <cstdint>
#include <iomanip>
#include <iostream>
#include <numeric>
#include <vector>

#include <mp/pool.hpp>
#include <mp/process.hpp>
#include <mp/shared.hpp>

#include "lesson.hpp"

std::uint64_t work(int task) {  // a little CPU work: about 50 µs
  std::uint64_t result = 0;
  for (std::uint64_t i = 0; i < 50'000; ++i) {
    std::uint64_t v = i + static_cast<std::uint64_t>(task);
    asm volatile("" : "+r"(v));
    result += v * v;
  }
  return result;
}

void worker(int task, mp::Array<std::uint64_t> results) { results[static_cast<std::size_t>(task)] = work(task); }

int main(int argc, char** argv) {
  mp::init(argc, argv);
  using clock = std::chrono::steady_clock;
  constexpr int n_tasks = 1000;
  const std::vector<int> tasks = lesson::range(n_tasks);
  std::cout << std::fixed << std::setprecision(2);

  // WRONG: one process per task.
  mp::Array<std::uint64_t> by_process(n_tasks);
  const auto start_wrong = clock::now();
  const auto give_up = start_wrong + std::chrono::seconds(5);
  std::vector<mp::Process> processes;
  processes.reserve(n_tasks);
  for (int task : tasks) {
    if (clock::now() > give_up) break;
    processes.emplace_back(worker, task, by_process);
    processes.back().start();
  }
  for (mp::Process& process : processes) process.join();
  const std::chrono::duration<double> wrong = clock::now() - start_wrong;
  const std::size_t started = processes.size();
  processes.clear();
  std::cout << "WRONG: " << started << " tasks";
  if (started < n_tasks) std::cout << " (of " << n_tasks << ": stopped starting after 5 s)";
  std::cout << ", one process each: " << wrong.count() << " s" << std::endl;

  // CORRECT: a Pool of cpu_count() workers.
  const auto start_right = clock::now();
  std::vector<std::uint64_t> by_pool;
  {
    mp::Pool pool(mp::cpu_count());
    by_pool = pool.map(work, tasks);
  }
  const std::chrono::duration<double> right = clock::now() - start_right;
  std::cout << "CORRECT: " << n_tasks << " tasks, Pool of cpu_count() = " << mp::cpu_count()
            << " processes: " << right.count() << " s" << std::endl;

  bool same = true;
  for (std::size_t i = 0; i < started; ++i) same = same && by_process[i] == by_pool[i];
  std::cout << "same results: " << lesson::repr(same) << std::endl;
  const double per_task_wrong = wrong.count() / static_cast<double>(started);
  const double per_task_right = right.count() / n_tasks;
  std::cout << "per task: " << per_task_wrong * 1e3 << " ms against " << per_task_right * 1e3 << " ms; the pool was "
            << per_task_wrong / per_task_right << "x faster" << std::endl;
  return same ? 0 : 1;
}
