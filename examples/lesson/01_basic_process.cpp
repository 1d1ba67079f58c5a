// Lesson "Basic Process Creation": start one process running worker("Worker1"), wait for it, go on.
//
//   def worker(name):
//       print(f"Process {name} starting")
//       time.sleep(2)
//       print(f"Process {name} finished")
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
  std::cout << "Process " << name << " starting" << std::endl;
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the lesson sleeps 2 s
  std::cout << "Process " << name << " finished" << std::endl;
}

int main(int argc, char** argv) {
  mp::init(argc, argv);  // first line of main: the C++ `if __name__ == '__main__':`

  mp::Process process(worker, "Worker1");
  process.start();
  process.join();  // wait for the process to complete
  std::cout << "Main process continuing" << std::endl;
}
