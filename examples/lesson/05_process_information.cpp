// Lesson "Process Information": inside the child, current_process() is the running Process.
//
//   process = multiprocessing.current_process()
//   print(f"Name: {process.name}")
//   print(f"PID: {process.pid}")
//   print(f"Parent PID: {os.getppid()}")
//   print(f"Alive: {process.is_alive()}")
//
//   process = multiprocessing.Process(target=worker, name="Worker")
#include <unistd.h>

#include <iostream>

#include <mp/process.hpp>

void worker() {
  mp::Process& process = mp::current_process();
  std::cout << "Name: " << process.name() << '\n';
  std::cout << "PID: " << process.pid() << '\n';
  std::cout << "Parent PID: " << ::getppid() << '\n';
  std::cout << "Alive: " << (process.is_alive() ? "True" : "False") << '\n';
}

int main(int argc, char** argv) {
  mp::init(argc, argv);

  mp::Process process({.name = "Worker"}, worker);
  process.start();
  process.join();
}
