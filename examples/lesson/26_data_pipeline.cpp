// Lesson "Example 3: Data Processing Pipeline": three stages, each run in the pool on the previous stage's output.
#include <cstdio>
#include <numeric>
#include <vector>

#include <mp/pool.hpp>

std::vector<int> stage1(const std::vector<int>& data) {
  std::vector<int> out;
  for (int x : data) out.push_back(x * 2);
  return out;
}

std::vector<int> stage2(const std::vector<int>& data) {
  std::vector<int> out;
  for (int x : data) out.push_back(x * x);
  return out;
}

int stage3(const std::vector<int>& data) { return std::accumulate(data.begin(), data.end(), 0); }

int main(int argc, char** argv) {
  mp::init(argc, argv);
  std::vector<int> input_data(10);
  std::iota(input_data.begin(), input_data.end(), 0);

  int final_result = 0;
  {
    mp::Pool pool;
    // Stage 1
    const auto stage1_result = pool.map(stage1, std::vector<std::vector<int>>{input_data})[0];
    // Stage 2
    const auto stage2_result = pool.map(stage2, std::vector<std::vector<int>>{stage1_result})[0];
    // Stage 3
    final_result = pool.map(stage3, std::vector<std::vector<int>>{stage2_result})[0];
  }
  std::printf("Final result: %d\n", final_result);
}
