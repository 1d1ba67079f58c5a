// Lesson "Shared Array": five processes each set one element of a shared integer array; the parent then sees
// [0, 10, 20, 30, 40].
//
//   def worker(shared_array, index, value):
//       shared_array[index] = value
//       print(f"Set index {index} to {value}")
//   shared_array = multiprocessing.Array('i', 5)  # Integer array of size 5
//   ... five Processes with args=(shared_array, i, i * 10), started, then joined ...
//   print(f"Final array: {list(shared_array)}")
//
// mp::Array<int>(5) is five zeros in shared memory; each child writes its own element, so no lock is needed.
// The children run at the same time: their lines come in any order (the .expected file compares those five unordered);
// the final line comes after every join().
#include <cstddef>
#include <iostream>
#include <vector>

#include <mp/process.hpp>
#include <mp/shared.hpp>

#include "lesson.hpp"

void worker(mp::Array<int> shared_array, std::size_t index, int value) {
  shared_array[index] = value;
  std::cout << "Set index " << index << " to " << value << std::endl;
}

int main(int argc, char** argv) {
  mp::init(argc, argv);

  mp::Array<int> shared_array(5);  // Integer array of size 5

  std::vector<mp::Process> processes;
  for (std::size_t i = 0; i < 5; ++i) {
    processes.emplace_back(worker, shared_array, i, static_cast<int>(i) * 10);
    processes.back().start();
  }

  for (mp::Process& process : processes) process.join();

  std::cout << "Final array: " << lesson::repr(shared_array.to_vector()) << std::endl;  // list(shared_array)
}
