// Lesson "Pool.map()": square every number of range(10) in a pool of cpu_count() workers.
//
//   def square(x):
//       return x * x
//
//   with multiprocessing.Pool() as pool:
//       results = pool.map(square, range(10))
//       print(results)  # [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
#include <iostream>
#include <vector>

#include <mp/pool.hpp>

#include "lesson.hpp"

int square(int x) { return x * x; }

int main(int argc, char** argv) {
  mp::init(argc, argv);

  mp::Pool pool;  // processes = cpu_count()
  const std::vector<int> results = pool.map(square, lesson::range(10));
  std::cout << lesson::repr(results) << std::endl;  // [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
}
