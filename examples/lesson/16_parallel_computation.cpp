// Lesson "Example 1: Parallel Computation": a CPU-bound sum of squares for four sizes, mapped over a pool, timed.
//
//   def compute_square(n):
//       result = 0
//       for i in range(n):
//           result += i * i
//       return result
//
//   numbers = [1000000, 2000000, 3000000, 4000000]
//   start = time.time()
//   with multiprocessing.Pool() as pool:
//       results = pool.map(compute_square, numbers)
//   elapsed = time.time() - start
//   print(f"Results: {results}")
//   print(f"Time: {elapsed:.2f}s")
//
// The sums pass 2^64 (Python's ints are unbounded), so they are computed in 128 bits.
#include <chrono>
#include <iomanip>
#include <iostream>
#include <string>
#include <vector>

#include <mp/pool.hpp>

#include "lesson.hpp"

__extension__ using uint128 = unsigned __int128;  // GCC/Clang extension; __extension__ keeps -Wpedantic quiet
struct big_sum {                                  // trivially copyable: crosses back as its 16 bytes
  uint128 value;
};

std::ostream& operator<<(std::ostream& out, big_sum sum) {  // lesson::repr prints a big_sum through this
  std::string digits;
  uint128 v = sum.value;
  do {
    digits.insert(digits.begin(), static_cast<char>('0' + static_cast<int>(v % 10)));
    v /= 10;
  } while (v != 0);
  return out << digits;
}

big_sum compute_square(long n) {  // CPU-bound computation
  uint128 result = 0;
  for (long i = 0; i < n; ++i) result += static_cast<uint128>(i) * static_cast<uint128>(i);
  return {result};
}

int main(int argc, char** argv) {
  mp::init(argc, argv);

  const std::vector<long> numbers = {1000000, 2000000, 3000000, 4000000};

  const auto start = std::chrono::steady_clock::now();
  std::vector<big_sum> results;
  {
    mp::Pool pool;
    results = pool.map(compute_square, numbers);
  }
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;

  std::cout << "Results: " << lesson::repr(results) << std::endl;
  std::cout << "Time: " << std::fixed << std::setprecision(2) << elapsed.count() << "s" << std::endl;
}
