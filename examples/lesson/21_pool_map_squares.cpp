// Lesson "Pool.map()": square every number of range(10) in a pool of cpu_count() workers.
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include <mp/pool.hpp>

int square(int x) { return x * x; }

std::vector<int> range(int n) {  // Python's range(n)
  std::vector<int> values(static_cast<std::size_t>(n));
  std::iota(values.begin(), values.end(), 0);
  return values;
}

int main(int argc, char** argv) {
  mp::init(argc, argv);
  mp::Pool pool;  // processes = cpu_count()
  const std::vector<int> results = pool.map(square, range(10));
  std::string text = "[";
  for (std::size_t i = 0; i < results.size(); ++i) text += (i ? ", " : "") + std::to_string(results[i]);
  std::printf("%s]\n", text.c_str());  // [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
}
