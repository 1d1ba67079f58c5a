// A raw pointer in a heap container is an address of one process; the heap is mapped elsewhere in others.
// expect: a raw pointer cannot live in a SharedHeap
// expect: offset_ptr
#include <mp/shared_heap.hpp>

#include <utility>

int main() {
  mp::SharedHeap heap(1 << 16);
  auto& index = heap.find_or_construct<mp::shm::map<int, std::pair<int, const char*>>>("index");
  return static_cast<int>(index.size());
}
