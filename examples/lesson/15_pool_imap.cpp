// Lesson "Pool.imap()": the results are consumed lazily, in input order, by a range-for.
//
//   def square(x):
//       return x * x
//
//   with multiprocessing.Pool() as pool:
//       results = pool.imap(square, range(10))
//       for result in results:
//           print(result)
#include <iostream>

#include <mp/pool.hpp>

#include "lesson.hpp"

int square(int x) { return x * x; }

int main(int argc, char** argv) {
  mp::init(argc, argv);

  mp::Pool pool;
  auto results = pool.imap(square, lesson::range(10));
  for (int result : results) std::cout << result << std::endl;
}
