// The lesson's "Practice Exercise" example solution (multiprocessing_practice.py), sections 1-10, in C++ with mp.
// It prints the same banners and results as the Python (pids, process order and timings aside), with the sleeps
// shortened so the whole tour runs in about a second. The program also checks every result it computes and
// exits 1 on a wrong one, so ctest running it proves the tour, not only that it ran.
// Two fixes of the Python: section 8's `d['count'] = d.get('count', 0) + 1` is a read-modify-write race between
// processes (it can print 2), so the C++ holds a Lock around it; and every child flushes its lines as it prints them.
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
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

int failures = 0;

/// Prints one line and flushes it at once: lines from several processes then appear whole and in time order.
[[gnu::format(printf, 1, 2)]] void say(const char* format, ...) {
  std::va_list args;
  va_start(args, format);
  std::vprintf(format, args);
  va_end(args);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "practice: wrong result: %s\n", what.c_str());
    ++failures;
  }
}

void banner(const char* title) {
  say("%s", title);
  say("%s", std::string(60, '-').c_str());
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
  say("Process %s (PID: %d) starting", name.c_str(), static_cast<int>(::getpid()));
  std::this_thread::sleep_for(100ms);
  say("Process %s finished", name.c_str());
}

// 2. Multiple processes
void delayed_worker(std::string name, std::chrono::milliseconds delay) {
  say("Process %s starting", name.c_str());
  std::this_thread::sleep_for(delay);
  say("Process %s finished", name.c_str());
}

// 3. Process with class
class WorkerProcess : public mp::Process {
 public:
  explicit WorkerProcess(std::string name) : mp::Process(mp::ProcessOptions{.name = std::move(name)}) {}

 protected:
  void run() override {
    say("%s starting", name().c_str());
    std::this_thread::sleep_for(100ms);
    say("%s finished", name().c_str());
  }
};

// 4. Queue for communication: std::nullopt plays Python's None sentinel.
void producer(mp::Queue<std::optional<int>> q) {
  for (int i = 0; i < 5; ++i) {
    say("Producing %d", i);
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
    say("Consuming %d", *item);
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
  say("Received: %s", message.c_str());
  conn.close();
  if (message != "Hello from sender") std::exit(1);
}

// 6. Shared memory
void increment_worker(mp::Value<int> shared_value, mp::Lock lock) {
  std::lock_guard guard(lock);
  shared_value.value() += 1;
  say("Value: %d", shared_value.value());
}

// 7. Shared array
void array_worker(mp::Array<int> shared_array, std::size_t index, int value) {
  shared_array[index] = value;
  say("Set index %zu to %d", index, value);
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

template <class T, class F>
std::string python_list(const std::vector<T>& items, F format) {
  std::string out = "[";
  for (std::size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + format(items[i]);
  return out + "]";
}

std::string quoted(const std::string& s) { return "'" + s + "'"; }

}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);
  const std::string rule(60, '=');

  say("%s", rule.c_str());
  say("MULTIPROCESSING PRACTICE");
  say("%s", rule.c_str());
  say("%s", "");

  {
    banner("1. BASIC PROCESS");
    mp::Process process(basic_worker, std::string("Worker1"));
    process.start();
    process.join();
    expect(process.exitcode() == 0, "basic process exit code");
    say("%s", "");
  }

  {
    banner("2. MULTIPLE PROCESSES");
    std::vector<mp::Process> processes;
    for (int i = 0; i < 3; ++i) {
      processes.emplace_back(delayed_worker, "Worker" + std::to_string(i), std::chrono::milliseconds(100));
      processes.back().start();
    }
    join_all(processes);
    say("%s", "");
  }

  {
    banner("3. PROCESS WITH CLASS");
    WorkerProcess process("Worker");
    process.start();
    process.join();
    expect(process.exitcode() == 0, "WorkerProcess exit code");
    say("%s", "");
  }

  {
    banner("4. QUEUE FOR COMMUNICATION");
    mp::Queue<std::optional<int>> q;
    std::vector<mp::Process> processes;
    processes.emplace_back(producer, q);
    processes.emplace_back(consumer, q);
    for (auto& p : processes) p.start();
    join_all(processes);
    say("%s", "");
  }

  {
    banner("5. PIPE FOR COMMUNICATION");
    auto [parent_conn, child_conn] = mp::Pipe<std::string>();
    std::vector<mp::Process> processes;
    processes.emplace_back(sender, child_conn);
    processes.emplace_back(receiver, parent_conn);
    for (auto& p : processes) p.start();
    join_all(processes);
    say("%s", "");
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
    say("Final value: %d", shared_value.value());
    expect(shared_value.value() == 5, "final value " + std::to_string(shared_value.value()) + ", expected 5");
    say("%s", "");
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
    say("Final array: %s", python_list(values, [](int v) { return std::to_string(v); }).c_str());
    expect(values == std::vector<int>{0, 10, 20, 30, 40}, "final array");
    say("%s", "");
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
    std::string dict = "{";
    for (const auto& [key, value] : shared_dict.items()) {
      dict += (dict.size() > 1 ? ", " : "") + quoted(key) + ": " + std::to_string(value);
    }
    dict += "}";
    std::vector<std::string> list = shared_list.copy();
    say("Dict: %s", dict.c_str());
    say("List: %s", python_list(list, quoted).c_str());
    expect(shared_dict.get("count", 0) == 3 && shared_dict.size() == 1, "dict " + dict + ", expected {'count': 3}");
    std::sort(list.begin(), list.end());
    std::sort(names.begin(), names.end());
    expect(list == names, "list holds the names of the three processes");
    say("%s", "");
  }

  {
    banner("9. PROCESS POOL");
    mp::Pool pool;
    std::vector<int> inputs{0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    std::vector<int> results = pool.map(square, inputs);
    say("Results: %s", python_list(results, [](int v) { return std::to_string(v); }).c_str());
    expect(results == std::vector<int>{0, 1, 4, 9, 16, 25, 36, 49, 64, 81}, "pool.map(square, range(10))");
    say("%s", "");
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
    say("Results: %s", python_list(results, [](std::int64_t v) { return std::to_string(v); }).c_str());
    say("Time: %.2fs", elapsed.count());
    for (std::size_t i = 0; i < numbers.size(); ++i) {
      const std::int64_t n = numbers[i];
      expect(results.size() == numbers.size() && results[i] == (n - 1) * n * (2 * n - 1) / 6,
             "compute_square(" + std::to_string(n) + ")");
    }
    say("%s", "");
  }

  say("%s", rule.c_str());
  say("PRACTICE COMPLETE!");
  say("%s", rule.c_str());
  if (failures != 0) {
    std::fprintf(stderr, "practice: %d wrong result(s)\n", failures);
    return 1;
  }
  return 0;
}
