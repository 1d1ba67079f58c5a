// Lesson "Example 1: Parallel Computation": a CPU-bound sum of squares for four sizes, mapped over a pool, timed.
// The sums pass 2^64 (Python's ints are unbounded), so they are computed in 128 bits.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <mp/pool.hpp>

__extension__ using uint128 = unsigned __int128;  // GCC/Clang extension; __extension__ keeps -Wpedantic quiet
struct big_sum {                                  // trivially copyable: crosses back as its 16 bytes
  uint128 value;
};

big_sum compute_square(long n) {  // CPU-bound computation
  uint128 result = 0;
  for (long i = 0; i < n; ++i) result += static_cast<uint128>(i) * static_cast<uint128>(i);
  return {result};
}

std::string to_string(uint128 v) {
  std::string digits;
  do {
    digits.insert(digits.begin(), static_cast<char>('0' + static_cast<int>(v % 10)));
    v /= 10;
  } while (v != 0);
  return digits;
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

  std::string text = "[";
  for (std::size_t i = 0; i < results.size(); ++i) text += (i ? ", " : "") + to_string(results[i].value);
  std::printf("Results: %s]\n", text.c_str());
  std::printf("Time: %.2fs\n", elapsed.count());
}
