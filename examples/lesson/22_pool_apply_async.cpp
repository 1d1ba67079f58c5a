// Lesson "Pool.apply_async()": five tasks started at once; their results are collected in submission order.
// (The "starting" lines come from the workers, so their order relative to the results varies.)
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <mp/pool.hpp>

std::string worker(const std::string& name, int delay) {
  std::printf("%s starting\n", name.c_str());
  std::this_thread::sleep_for(std::chrono::seconds(delay));
  return name + " finished";
}

int main(int argc, char** argv) {
  mp::init(argc, argv);
  mp::Pool pool;
  std::vector<mp::AsyncResult<std::string>> results;
  for (int i = 0; i < 5; ++i) results.push_back(pool.apply_async(worker, "Worker" + std::to_string(i), 1));
  // Get results
  for (auto& result : results) std::printf("%s\n", result.get().c_str());
}
