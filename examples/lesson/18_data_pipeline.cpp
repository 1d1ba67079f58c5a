// Lesson "Example 3: Data Processing Pipeline": three stages, each run in the pool on the previous stage's output.
//
//   def stage1(data):
//       return [x * 2 for x in data]
//   def stage2(data):
//       return [x ** 2 for x in data]
//   def stage3(data):
//       return sum(data)
//
//   input_data = list(range(10))
//   with multiprocessing.Pool() as pool:
//       stage1_result = pool.map(stage1, [input_data])[0]
//       stage2_result = pool.map(stage2, [stage1_result])[0]
//       final_result = pool.map(stage3, [stage2_result])[0]
//   print(f"Final result: {final_result}")
#include <iostream>
#include <numeric>
#include <vector>

#include <mp/pool.hpp>

#include "lesson.hpp"

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

  const std::vector<int> input_data = lesson::range(10);

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
  std::cout << "Final result: " << final_result << std::endl;
}
