// Lesson "Process Pools / Using Pool": a pool of 4 worker processes maps a slow function over range(10).
//
//   def worker(x):
//       print(f"Processing {x}")
//       time.sleep(1)
//       return x * x
//
//   with multiprocessing.Pool(processes=4) as pool:
//       results = pool.map(worker, range(10))
//       print(f"Results: {results}")
//
// The workers print as they take the items, in any order (the .expected file compares those ten lines unordered);
// map() returns the results in input order, after every item is done.
#include <chrono>
#include <iostream>
#include <thread>
#include <vector>

#include <mp/pool.hpp>

#include "lesson.hpp"

int worker(int x) {
  std::cout << "Processing " << x << std::endl;
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the lesson sleeps 1 s
  return x * x;
}

int main(int argc, char** argv) {
  mp::init(argc, argv);

  mp::Pool pool(4);
  const std::vector<int> results = pool.map(worker, lesson::range(10));
  std::cout << "Results: " << lesson::repr(results) << std::endl;
}
