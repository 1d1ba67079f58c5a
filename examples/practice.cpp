// The lesson's "Practice Exercise" example solution (multiprocessing_practice.py), sections 1-10, in C++ with mp.
// It prints the same banners and results as the Python (pids, process order and timings aside), with the sleeps
// shortened so the whole tour runs in about a second. The program also checks every result it computes and
// exits 1 on a wrong one, so ctest running it proves the tour, not only that it ran.
// Two fixes of the Python: section 8's `d['count'] = d.get('count', 0) + 1` is a read-modify-write race between
// processes (it can print 2), so the C++ holds a Lock around it; and every line is flushed as it is printed
// (std::endl), so that lines of several processes come out in the order they were printed.
// ctest runs it under each start method (fork, spawn, forkserver) and diffs its output against practice.expected.
#include <mp/manager.hpp>
#include <mp/pool.hpp>
#include <mp/process.hpp>
#include <mp/queue.hpp>
#include <mp/connection.hpp>
#include <mp/shared.hpp>
#include <mp/sync.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "lesson/lesson.hpp"

using namespace std::chrono_literals;

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::cerr << "practice: wrong result: " << what << std::endl;
    ++failures;
  }
}

void banner(const char* title) {
  std::cout << title << std::endl;
  std::cout << std::string(60, '-') << std::endl;
}

/// Starts nothing; joins every process and checks each ended with exit code 0 (a child's own checks failed else).
void join_all(std::vector<mp::Process>& processes) {
  for (auto& p : processes) {
    p.join();
    expect(p.exitcode() == 0, p.name() + " exited with " + std::to_string(p.exitcode().value_or(-999)));
  }
}

// 1. Basic process
void basic_worker(std::string name) {
  std::cout << "Process " << name << " (PID: " << ::getpid() << ") starting" << std::endl;
  std::this_thread::sleep_for(100ms);
  std::cout << "Process " << name << " finished" << std::endl;
}

// 2. Multiple processes
void delayed_worker(std::string name, std::chrono::milliseconds delay) {
  std::cout << "Process " << name << " starting" << std::endl;
  std::this_thread::sleep_for(delay);
  std::cout << "Process " << name << " finished" << std::endl;
}

// 3. Process with class
class WorkerProcess : public mp::Process {
 public:
  WorkerProcess() = default;  // spawn and forkserver rebuild the object in the child: see MP_REGISTER_PROCESS
  explicit WorkerProcess(std::string name) : mp::Process(mp::ProcessOptions{.name = std::move(name)}) {}
  template <class Archive>
  void serialize(Archive&) {}  // no fields of its own (the name always travels)

 protected:
  void run() override {
    std::cout << name() << " starting" << std::endl;
    std::this_thread::sleep_for(100ms);
    std::cout << name() << " finished" << std::endl;
  }
};

}  // namespace

// Lets the start methods that start the program anew (spawn, forkserver) rebuild a WorkerProcess in the child.
MP_REGISTER_PROCESS(WorkerProcess);

namespace {

// 4. Queue for communication: std::nullopt plays Python's None sentinel.
void producer(mp::Queue<std::optional<int>> q) {
  for (int i = 0; i < 5; ++i) {
    std::cout << "Producing " << i << std::endl;
    q.put(i);
    std::this_thread::sleep_for(50ms);
  }
  q.put(std::nullopt);
}

void consumer(mp::Queue<std::optional<int>> q) {
  int expected = 0;
  while (true) {
    std::optional<int> item = q.get();
    if (!item) break;
    std::cout << "Consuming " << *item << std::endl;
    if (*item != expected++) std::exit(1);  // items arrive in order, each exactly once
  }
  if (expected != 5) std::exit(1);
}

// 5. Pipe for communication
void sender(mp::Connection<std::string> conn) {
  conn.send("Hello from sender");
  conn.close();
}

void receiver(mp::Connection<std::string> conn) {
  std::string message = conn.recv();
  std::cout << "Received: " << message << std::endl;
  conn.close();
  if (message != "Hello from sender") std::exit(1);
}

// 6. Shared memory
void increment_worker(mp::Value<int> shared_value, mp::Lock lock) {
  std::lock_guard guard(lock);
  shared_value.value() += 1;
  std::cout << "Value: " << shared_value.value() << std::endl;
}

// 7. Shared array
void array_worker(mp::Array<int> shared_array, std::size_t index, int value) {
  shared_array[index] = value;
  std::cout << "Set index " << index << " to " << value << std::endl;
}

// 8. Manager
void manager_worker(mp::DictProxy<std::string, int> shared_dict, mp::ListProxy<std::string> shared_list,
                    mp::Lock lock) {
  {
    std::lock_guard guard(lock);  // the Python races here; see the header comment
    shared_dict.set("count", shared_dict.get("count", 0) + 1);
  }
  shared_list.append(mp::current_process().name());
}

// 9. Process pool
int square(int x) { return x * x; }

// 10. Real-world: parallel computation
std::int64_t compute_square(std::int64_t n) {
  std::int64_t result = 0;
  for (std::int64_t i = 0; i < n; ++i) result += i * i;
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);
  const std::string rule(60, '=');

  std::cout << rule << std::endl;
  std::cout << "MULTIPROCESSING PRACTICE" << std::endl;
  std::cout << rule << std::endl;
  std::cout << std::endl;

  {
    banner("1. BASIC PROCESS");
    mp::Process process(basic_worker, std::string("Worker1"));
    process.start();
    process.join();
    expect(process.exitcode() == 0, "basic process exit code");
    std::cout << std::endl;
  }

  {
    banner("2. MULTIPLE PROCESSES");
    std::vector<mp::Process> processes;
    for (int i = 0; i < 3; ++i) {
      processes.emplace_back(delayed_worker, "Worker" + std::to_string(i), std::chrono::milliseconds(100));
      processes.back().start();
    }
    join_all(processes);
    std::cout << std::endl;
  }

  {
    banner("3. PROCESS WITH CLASS");
    WorkerProcess process("Worker");
    process.start();
    process.join();
    expect(process.exitcode() == 0, "WorkerProcess exit code");
    std::cout << std::endl;
  }

  {
    banner("4. QUEUE FOR COMMUNICATION");
    mp::Queue<std::optional<int>> q;
    std::vector<mp::Process> processes;
    processes.emplace_back(producer, q);
    processes.emplace_back(consumer, q);
    for (auto& p : processes) p.start();
    join_all(processes);
    std::cout << std::endl;
  }

  {
    banner("5. PIPE FOR COMMUNICATION");
    auto [parent_conn, child_conn] = mp::Pipe<std::string>();
    std::vector<mp::Process> processes;
    processes.emplace_back(sender, child_conn);
    processes.emplace_back(receiver, parent_conn);
    for (auto& p : processes) p.start();
    join_all(processes);
    std::cout << std::endl;
  }

  {
    banner("6. SHARED MEMORY");
    mp::Value<int> shared_value(0);
    mp::Lock lock;
    std::vector<mp::Process> processes;
    for (int i = 0; i < 5; ++i) {
      processes.emplace_back(increment_worker, shared_value, lock);
      processes.back().start();
    }
    join_all(processes);
    std::cout << "Final value: " << shared_value.value() << std::endl;
    expect(shared_value.value() == 5, "final value " + std::to_string(shared_value.value()) + ", expected 5");
    std::cout << std::endl;
  }

  {
    banner("7. SHARED ARRAY");
    mp::Array<int> shared_array(5);
    std::vector<mp::Process> processes;
    for (int i = 0; i < 5; ++i) {
      processes.emplace_back(array_worker, shared_array, static_cast<std::size_t>(i), i * 10);
      processes.back().start();
    }
    join_all(processes);
    std::vector<int> values(shared_array.begin(), shared_array.end());
    std::cout << "Final array: " << lesson::repr(values) << std::endl;
    expect(values == std::vector<int>{0, 10, 20, 30, 40}, "final array");
    std::cout << std::endl;
  }

  {
    banner("8. MANAGER");
    mp::Manager manager;
    auto shared_dict = manager.dict<std::string, int>();
    auto shared_list = manager.list<std::string>();
    mp::Lock lock;
    std::vector<mp::Process> processes;
    std::vector<std::string> names;
    for (int i = 0; i < 3; ++i) {
      processes.emplace_back(manager_worker, shared_dict, shared_list, lock);
      names.push_back(processes.back().name());
      processes.back().start();
    }
    join_all(processes);
    const std::string dict = lesson::repr(shared_dict.copy());
    std::vector<std::string> list = shared_list.copy();
    std::cout << "Dict: " << dict << std::endl;
    std::cout << "List: " << lesson::repr(list) << std::endl;
    expect(shared_dict.get("count", 0) == 3 && shared_dict.size() == 1, "dict " + dict + ", expected {'count': 3}");
    std::sort(list.begin(), list.end());
    std::sort(names.begin(), names.end());
    expect(list == names, "list holds the names of the three processes");
    std::cout << std::endl;
  }

  {
    banner("9. PROCESS POOL");
    mp::Pool pool;
    std::vector<int> inputs{0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    std::vector<int> results = pool.map(square, inputs);
    std::cout << "Results: " << lesson::repr(results) << std::endl;
    expect(results == std::vector<int>{0, 1, 4, 9, 16, 25, 36, 49, 64, 81}, "pool.map(square, range(10))");
    std::cout << std::endl;
  }

  {
    banner("10. REAL-WORLD: PARALLEL COMPUTATION");
    std::vector<std::int64_t> numbers{100000, 200000, 300000, 400000};
    auto start = std::chrono::steady_clock::now();
    std::vector<std::int64_t> results;
    {
      mp::Pool pool;
      results = pool.map(compute_square, numbers);
    }
    std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    std::cout << "Results: " << lesson::repr(results) << std::endl;
    std::cout << "Time: " << std::fixed << std::setprecision(2) << elapsed.count() << "s" << std::endl;
    for (std::size_t i = 0; i < numbers.size(); ++i) {
      const std::int64_t n = numbers[i];
      expect(results.size() == numbers.size() && results[i] == (n - 1) * n * (2 * n - 1) / 6,
             "compute_square(" + std::to_string(n) + ")");
    }
    std::cout << std::endl;
  }

  std::cout << rule << std::endl;
  std::cout << "PRACTICE COMPLETE!" << std::endl;
  std::cout << rule << std::endl;
  if (failures != 0) {
    std::cerr << "practice: " << failures << " wrong result(s)" << std::endl;
    return 1;
  }
  return 0;
}
