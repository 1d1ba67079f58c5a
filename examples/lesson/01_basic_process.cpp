// Lesson "Basic Process Creation": start one process running worker("Worker1"), wait for it, go on.
//
//   process = multiprocessing.Process(target=worker, args=("Worker1",))
//   process.start()
//   process.join()  # Wait for process to complete
#include <chrono>
#include <iostream>
#include <string>
#include <thread>

#include <mp/process.hpp>

void worker(const std::string& name) {
  std::cout << "Process " << name << " starting\n";
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the lesson sleeps 2 s
  std::cout << "Process " << name << " finished\n";
}

int main(int argc, char** argv) {
  mp::init(argc, argv);  // first line of main: the C++ `if __name__ == '__main__':`

  mp::Process process(worker, "Worker1");
  process.start();
  process.join();  // wait for the process to complete
  std::cout << "Main process continuing\n";
}
