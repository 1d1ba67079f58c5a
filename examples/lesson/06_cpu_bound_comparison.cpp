// Lesson "Example: CPU-Bound Task Comparison": the same CPU-bound work on 4 threads, then on 4 processes, timed.
//
//   def cpu_task(n):
//       """CPU-bound task"""
//       result = 0
//       for i in range(n):
//           result += i * i
//       return result
//
//   def threading_approach():
//       start = time.time()
//       threads = []
//       for _ in range(4):
//           thread = threading.Thread(target=cpu_task, args=(10000000,))
//           threads.append(thread)
//           thread.start()
//       for thread in threads:
//           thread.join()
//       return time.time() - start
//
//   def multiprocessing_approach():   # the same with multiprocessing.Process
//       ...
//
//   print("Threading time:", threading_approach())
//   print("Multiprocessing time:", multiprocessing_approach())
//
// In Python the threads share one GIL and take turns, so the processes win. C++ has no GIL: both lines show the
// four tasks running in parallel on the CPUs there are, and the times match. Only for tiny work does a process
// lose, by its start cost (a fork, about a millisecond, against a thread's tens of microseconds); the last two
// lines time the same comparison with n = 1000. examples/cpu_bound_speedup.cpp measures this carefully and checks it.
#include <chrono>
#include <cstdint>
#include <functional>
#include <iostream>
#include <thread>
#include <vector>

#include <mp/process.hpp>

std::uint64_t cpu_task(std::uint64_t n) {  // CPU-bound task
  std::uint64_t result = 0;
  for (std::uint64_t i = 0; i < n; ++i) {
    std::uint64_t v = i;
    asm volatile("" : "+r"(v));  // keeps the compiler from replacing the loop by its closed form
    result += v * v;
  }
  asm volatile("" : : "r"(result));  // the result counts as used: the additions stay, even where it is discarded
  return result;
}

void process_target(std::uint64_t n) { cpu_task(n); }

double threading_approach(std::uint64_t n) {
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) threads.emplace_back(cpu_task, n);
  for (std::thread& thread : threads) thread.join();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double multiprocessing_approach(std::uint64_t n) {
  const auto start = std::chrono::steady_clock::now();
  std::vector<mp::Process> processes;
  for (int i = 0; i < 4; ++i) {
    processes.emplace_back(process_target, n);
    processes.back().start();
  }
  for (mp::Process& process : processes) process.join();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int main(int argc, char** argv) {
  mp::init(argc, argv);

  // The lesson's n = 10,000,000 takes Python a second per task and C++ about 10 ms; 100,000,000 makes the work,
  // not the start, what is timed.
  const std::uint64_t n = 100'000'000;
  std::cout << "Threading time: " << threading_approach(n) << std::endl;
  std::cout << "Multiprocessing time: " << multiprocessing_approach(n) << std::endl;
  std::cout << "No GIL in C++: threads and processes run CPU-bound work equally in parallel; for tiny work the "
               "process start cost dominates:"
            << std::endl;
  std::cout << "Threading time (n = 1000): " << threading_approach(1000) << std::endl;
  std::cout << "Multiprocessing time (n = 1000): " << multiprocessing_approach(1000) << std::endl;
}
