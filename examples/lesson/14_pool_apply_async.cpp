// Lesson "Pool.apply_async()": five tasks submitted at once; their results are collected in submission order.
//
//   def worker(name, delay):
//       print(f"{name} starting")
//       time.sleep(delay)
//       return f"{name} finished"
//
//   with multiprocessing.Pool() as pool:
//       results = []
//       for i in range(5):
//           result = pool.apply_async(worker, (f"Worker{i}", 1))
//           results.append(result)
//       for result in results:
//           print(result.get())
//
// The "starting" lines come from the workers as they take the tasks, the "finished" lines from the parent in
// submission order; the two interleave (the .expected file compares all but the last line unordered: "Worker4
// finished" comes after every other line).
#include <chrono>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <mp/pool.hpp>

std::string worker(const std::string& name, std::chrono::milliseconds delay) {
  std::cout << name << " starting" << std::endl;
  std::this_thread::sleep_for(delay);
  return name + " finished";
}

int main(int argc, char** argv) {
  mp::init(argc, argv);

  mp::Pool pool;
  std::vector<mp::AsyncResult<std::string>> results;
  for (int i = 0; i < 5; ++i) {
    // The lesson's delay is 1 s; 100 ms keeps the demo short.
    results.push_back(pool.apply_async(worker, "Worker" + std::to_string(i), std::chrono::milliseconds(100)));
  }
  // Get results
  for (auto& result : results) std::cout << result.get() << std::endl;
}
