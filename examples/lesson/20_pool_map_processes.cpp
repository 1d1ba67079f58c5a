// Lesson "Process Pools / Using Pool": a pool of 4 worker processes maps a slow function over range(10).
// Workers print as they go (in any order); the results come back in input order.
#include <chrono>
#include <cstdio>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include <mp/pool.hpp>

int worker(int x) {
  std::printf("Processing %d\n", x);
  std::this_thread::sleep_for(std::chrono::seconds(1));
  return x * x;
}

std::string to_list(const std::vector<int>& values) {  // Python's list repr
  std::string text = "[";
  for (std::size_t i = 0; i < values.size(); ++i) text += (i ? ", " : "") + std::to_string(values[i]);
  return text + "]";
}

std::vector<int> range(int n) {  // Python's range(n)
  std::vector<int> values(static_cast<std::size_t>(n));
  std::iota(values.begin(), values.end(), 0);
  return values;
}

int main(int argc, char** argv) {
  mp::init(argc, argv);
  mp::Pool pool(4);
  const std::vector<int> results = pool.map(worker, range(10));
  std::printf("Results: %s\n", to_list(results).c_str());
}
