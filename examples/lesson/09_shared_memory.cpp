// Lesson "Shared Memory": five processes add 1 to a shared integer, each under a Lock; the final value is 5.
//
//   def worker(shared_value, lock):
//       with lock:
//           shared_value.value += 1
//           print(f"Value: {shared_value.value}")
//   shared_value = multiprocessing.Value('i', 0)
//   lock = multiprocessing.Lock()
//   ... five Processes with args=(shared_value, lock), started, then joined ...
//   print(f"Final value: {shared_value.value}")
//
// mp::Value<int> and mp::Lock are handles: the copies each child receives as arguments refer to the same shared
// memory, and value() is a reference into it. std::lock_guard is Python's `with lock:`. The print is inside the
// lock, so the lines come out in order: Value: 1 … Value: 5.
#include <iostream>
#include <mutex>
#include <vector>

#include <mp/process.hpp>
#include <mp/shared.hpp>
#include <mp/sync.hpp>

void worker(mp::Value<int> shared_value, mp::Lock lock) {
  std::lock_guard guard(lock);
  shared_value.value() += 1;
  std::cout << "Value: " << shared_value.value() << std::endl;
}

int main(int argc, char** argv) {
  mp::init(argc, argv);

  mp::Value<int> shared_value(0);  // Integer
  mp::Lock lock;

  std::vector<mp::Process> processes;
  for (int i = 0; i < 5; ++i) {
    processes.emplace_back(worker, shared_value, lock);
    processes.back().start();
  }

  for (mp::Process& process : processes) process.join();

  std::cout << "Final value: " << shared_value.value() << std::endl;
}
