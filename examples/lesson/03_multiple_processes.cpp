// Lesson "Multiple Processes": start three processes, then wait for all of them.
//
//   def worker(name, delay):
//       print(f"Process {name} starting")
//       time.sleep(delay)
//       print(f"Process {name} finished")
//
//   for i in range(3):
//       process = multiprocessing.Process(target=worker, args=(f"Worker{i}", 2))
//       processes.append(process)
//       process.start()
//   for process in processes:
//       process.join()
//   print("All processes finished")
//
// mp::Process is movable, so it lives in a std::vector like Python's list. The three run at the same time: their
// lines interleave in any order (the .expected file compares those six unordered), and "All processes finished"
// comes last: every join() has returned.
#include <chrono>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <mp/process.hpp>

void worker(const std::string& name, std::chrono::milliseconds delay) {
  std::cout << "Process " << name << " starting" << std::endl;
  std::this_thread::sleep_for(delay);
  std::cout << "Process " << name << " finished" << std::endl;
}

int main(int argc, char** argv) {
  mp::init(argc, argv);

  std::vector<mp::Process> processes;
  for (int i = 0; i < 3; ++i) {
    // The lesson sleeps 2 s in each worker; 200 ms keeps the demo short.
    processes.emplace_back(worker, "Worker" + std::to_string(i), std::chrono::milliseconds(200));
    processes.back().start();
  }

  // Wait for all processes
  for (mp::Process& process : processes) process.join();

  std::cout << "All processes finished" << std::endl;
}
