// Lesson "Common Mistakes 2: Sharing Mutable Objects Incorrectly": a plain container changed in a child stays
// unchanged in the parent (the child changed its own copy); a Manager list is shared.
#include <mp/manager.hpp>
#include <mp/process.hpp>

#include <cstdio>
#include <string>
#include <vector>

namespace {

std::vector<int> shared_list;  // WRONG: every process has its own copy

void worker() { shared_list.push_back(1); }

void shared_worker(mp::ListProxy<int> list) { list.append(1); }

std::string to_string(const std::vector<int>& items) {
  std::string out = "[";
  for (std::size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + std::to_string(items[i]);
  return out + "]";
}

}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);

  mp::Process wrong(worker);
  wrong.start();
  wrong.join();
  std::printf("WRONG: plain std::vector after the child appended: %s\n", to_string(shared_list).c_str());

  mp::Manager manager;
  auto list = manager.list<int>();
  mp::Process right(shared_worker, list);
  right.start();
  right.join();
  std::printf("CORRECT: Manager list after the child appended: %s\n", to_string(list.copy()).c_str());
  return 0;
}
