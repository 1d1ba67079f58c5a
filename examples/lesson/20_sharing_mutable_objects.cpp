// Lesson "Common Mistakes 2: Sharing Mutable Objects Incorrectly": a plain container changed in a child stays
// unchanged in the parent (the child changed its own copy); a Manager list is shared.
//
//   # WRONG: Regular list won't work
//   shared_list = []
//
//   def worker():
//       shared_list.append(1)  # Won't be shared!
//
//   # CORRECT: Use Manager
//   if __name__ == '__main__':
//       with multiprocessing.Manager() as manager:
//           shared_list = manager.list()
//           process = multiprocessing.Process(target=worker, args=(shared_list,))
//           process.start()
//           process.join()
//
// The Python's CORRECT half passes the proxy to a worker that takes no argument; the intent is a worker that
// appends to the list it is given, which is what shared_worker does.
#include <iostream>
#include <vector>

#include <mp/manager.hpp>
#include <mp/process.hpp>

#include "lesson.hpp"

std::vector<int> shared_list;  // WRONG: every process has its own copy

void worker() { shared_list.push_back(1); }  // Won't be shared!

void shared_worker(mp::ListProxy<int> list) { list.append(1); }

int main(int argc, char** argv) {
  mp::init(argc, argv);

  mp::Process wrong(worker);
  wrong.start();
  wrong.join();
  std::cout << "WRONG: plain std::vector after the child appended: " << lesson::repr(shared_list) << std::endl;

  // CORRECT: Use Manager
  mp::Manager manager;
  auto list = manager.list<int>();
  mp::Process right(shared_worker, list);
  right.start();
  right.join();
  std::cout << "CORRECT: Manager list after the child appended: " << lesson::repr(list.copy()) << std::endl;
}
