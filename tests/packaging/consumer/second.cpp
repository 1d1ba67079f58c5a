// A second translation unit that includes all of mp: header-only, every definition in mp's headers must be inline
// (or a template), or linking it with main.cpp fails with a multiple definition.
#include <mp/mp.hpp>

int consumer_child_exit_code() {
  mp::Queue<int> queue;
  queue.put(7);
  return queue.get();
}
