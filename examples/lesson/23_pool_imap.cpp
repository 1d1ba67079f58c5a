// Lesson "Pool.imap()": results are consumed lazily, in input order, as a range-for.
#include <cstdio>
#include <numeric>
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
  mp::Pool pool;
  auto results = pool.imap(square, range(10));
  for (int result : results) std::printf("%d\n", result);
}
