// Lesson "Process with Arguments": the target gets several arguments of different types.
//
//   def worker(name, count, delay):
//       for i in range(count):
//           print(f"{name}: {i}")
//           time.sleep(delay)
//
//   process = multiprocessing.Process(target=worker, args=("Worker", 5, 0.5))
//
// Arguments are copied into the Process when it is constructed, and the child gets its own copies.
#include <chrono>
#include <iostream>
#include <string>
#include <thread>

#include <mp/process.hpp>

void worker(const std::string& name, int count, std::chrono::duration<double> delay) {
  for (int i = 0; i < count; ++i) {
    std::cout << name << ": " << i << std::endl;
    std::this_thread::sleep_for(delay);
  }
}

int main(int argc, char** argv) {
  mp::init(argc, argv);

  // The lesson waits 0.5 s between lines; 0.05 s keeps the demo short.
  mp::Process process(worker, "Worker", 5, std::chrono::duration<double>(0.05));
  process.start();
  process.join();
}
