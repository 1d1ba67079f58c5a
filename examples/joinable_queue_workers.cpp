// A worker pool built from two queues, as Python's JoinableQueue documentation shows: workers take tasks from a
// JoinableQueue, put results on a Queue, and confirm each task with task_done(); the main process join()s the task
// queue to learn that every task is done, then stops the workers with one std::nullopt ("None") each.
//
// The demo checks its own results (exit code 1 on a wrong answer): every task's result arrives exactly once.
#include <cstdint>
#include <iostream>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include <mp/process.hpp>
#include <mp/queue.hpp>

struct task {
  int id;
  std::uint64_t n;  // the worker sums the integers 1..n
};

struct result {
  int id;
  std::uint64_t sum;
  int worker;
};

void worker(int number, mp::JoinableQueue<std::optional<task>> tasks, mp::Queue<result> results) {
  for (;;) {
    std::optional<task> next = tasks.get();
    if (!next) {  // the stop signal is a task too
      tasks.task_done();
      return;
    }
    std::uint64_t sum = 0;
    for (std::uint64_t i = 1; i <= next->n; ++i) sum += i;
    results.put(result{next->id, sum, number});
    tasks.task_done();
  }
}

int main(int argc, char** argv) {
  mp::init(argc, argv);

  constexpr int n_workers = 4;
  constexpr int n_tasks = 200;
  mp::JoinableQueue<std::optional<task>> tasks;
  mp::Queue<result> results;

  std::vector<mp::Process> workers;
  for (int w = 0; w < n_workers; ++w) {
    workers.emplace_back(worker, w, tasks, results);
    workers.back().start();
  }

  for (int id = 0; id < n_tasks; ++id) tasks.put(task{id, static_cast<std::uint64_t>(1000 + id * 37)});
  tasks.join();  // every task has been processed (and its result put)
  std::cout << "all " << n_tasks << " tasks done; unfinished tasks: 0\n";

  std::map<int, std::uint64_t> sums;
  std::map<int, int> per_worker;
  for (int i = 0; i < n_tasks; ++i) {
    result r = results.get();
    if (!sums.emplace(r.id, r.sum).second) {
      std::cout << "task " << r.id << " answered twice\n";
      return 1;
    }
    ++per_worker[r.worker];
  }
  for (int id = 0; id < n_tasks; ++id) {
    const std::uint64_t n = 1000 + static_cast<std::uint64_t>(id) * 37;
    if (sums.count(id) == 0 || sums[id] != n * (n + 1) / 2) {
      std::cout << "task " << id << ": wrong or missing result\n";
      return 1;
    }
  }
  if (!results.empty()) {
    std::cout << "unexpected extra results\n";
    return 1;
  }

  for (int w = 0; w < n_workers; ++w) tasks.put(std::nullopt);
  tasks.join();
  for (auto& p : workers) p.join();

  std::cout << "all " << n_tasks << " results correct; tasks per worker:";
  for (auto [w, count] : per_worker) std::cout << " worker " << w << ": " << count;
  std::cout << "\n";
  return 0;
}
