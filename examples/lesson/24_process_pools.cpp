// Lesson "Best Practices 2: Use Process Pools for Similar Tasks": one pool maps one function over all the tasks.
//
//   with multiprocessing.Pool() as pool:
//       results = pool.map(worker, tasks)
//
// The snippet leaves worker and tasks open: here the tasks are words and the worker counts their vowels. The
// results come back in the order of the tasks.
#include <iostream>
#include <string>
#include <vector>

#include <mp/pool.hpp>

#include "lesson.hpp"

int worker(const std::string& word) {
  int vowels = 0;
  for (char c : word) vowels += std::string("aeiou").find(c) != std::string::npos;
  return vowels;
}

int main(int argc, char** argv) {
  mp::init(argc, argv);

  const std::vector<std::string> tasks = {"process", "pool", "queue", "pipe", "manager"};
  std::vector<int> results;
  {
    mp::Pool pool;  // with multiprocessing.Pool() as pool:
    results = pool.map(worker, tasks);
  }
  std::cout << "tasks:   " << lesson::repr(tasks) << std::endl;
  std::cout << "results: " << lesson::repr(results) << std::endl;
}
