// Lesson "Process Information": inside the child, current_process() is the running Process.
//
//   def worker():
//       process = multiprocessing.current_process()
//       print(f"Name: {process.name}")
//       print(f"PID: {process.pid}")
//       print(f"Parent PID: {os.getppid()}")
//       print(f"Alive: {process.is_alive()}")
//
//   process = multiprocessing.Process(target=worker, name="Worker")
#include <unistd.h>

#include <iostream>

#include <mp/process.hpp>

#include "lesson.hpp"

void worker() {
  mp::Process& process = mp::current_process();
  std::cout << "Name: " << process.name() << std::endl;
  std::cout << "PID: " << process.pid() << std::endl;
  std::cout << "Parent PID: " << ::getppid() << std::endl;
  std::cout << "Alive: " << lesson::repr(process.is_alive()) << std::endl;
}

int main(int argc, char** argv) {
  mp::init(argc, argv);

  mp::Process process({.name = "Worker"}, worker);
  process.start();
  process.join();
}
