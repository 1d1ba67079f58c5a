// A std::string in a heap container keeps its characters in the creating process's private memory.
// expect: std::string keeps its characters in this process's private memory
// expect: Use mp::shm::string
#include <mp/shared_heap.hpp>

#include <string>

int main() {
  mp::SharedHeap heap(1 << 16);
  auto& names = heap.find_or_construct<mp::shm::vector<std::string>>("names");
  return static_cast<int>(names.size());
}
