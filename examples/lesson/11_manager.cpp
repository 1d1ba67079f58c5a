// Lesson "Manager": three processes update a shared dict and a shared list held by a manager server.
//
//   def worker(shared_dict, shared_list):
//       shared_dict['count'] = shared_dict.get('count', 0) + 1
//       shared_list.append(multiprocessing.current_process().name)
//
//   with multiprocessing.Manager() as manager:
//       shared_dict = manager.dict()
//       shared_list = manager.list()
//       ... three Processes with args=(shared_dict, shared_list), started then joined ...
//       print(f"Dict: {dict(shared_dict)}")
//       print(f"List: {list(shared_list)}")
//
// The lesson's get-then-set is a race (two workers may read the same count); the intent is to count the workers,
// so here the read-modify-write holds a manager lock. Proxies are handles: each child gets a copy that reaches
// the same server. The manager server takes the name Process-1, as in Python, so the workers are Process-2..4;
// they finish in any order (the .expected file matches any names there).
#include <iostream>
#include <mutex>
#include <string>
#include <vector>

#include <mp/manager.hpp>
#include <mp/process.hpp>

#include "lesson.hpp"

void worker(mp::DictProxy<std::string, int> shared_dict, mp::ListProxy<std::string> shared_list, mp::LockProxy lock) {
  {
    std::scoped_lock guard(lock);
    shared_dict["count"] = shared_dict.get("count", 0) + 1;
  }
  shared_list.append(mp::current_process().name());
}

int main(int argc, char** argv) {
  mp::init(argc, argv);

  mp::Manager manager;
  auto shared_dict = manager.dict<std::string, int>();
  auto shared_list = manager.list<std::string>();
  auto lock = manager.lock();

  std::vector<mp::Process> processes;
  for (int i = 0; i < 3; ++i) {
    processes.emplace_back(worker, shared_dict, shared_list, lock);
    processes.back().start();
  }
  for (mp::Process& process : processes) process.join();

  std::cout << "Dict: " << lesson::repr(shared_dict.copy()) << std::endl;  // dict(shared_dict)
  std::cout << "List: " << lesson::repr(shared_list.copy()) << std::endl;  // list(shared_list)
}
