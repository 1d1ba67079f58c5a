// The README's first example written with the standard library alone (threads where mp has processes): the
// squares of 0..4 computed in parallel, then a message from another thread. compile_time.py compiles it as the
// reference that mp's README example is compared with.
#include <future>
#include <iostream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

int square(int x) { return x * x; }

int main() {
  std::vector<std::future<int>> squares;
  for (int x : std::vector{0, 1, 2, 3, 4}) squares.push_back(std::async(std::launch::async, square, x));
  for (auto& r : squares) std::cout << r.get() << ' ';  // 0 1 4 9 16

  std::promise<std::string> q;
  std::future<std::string> message = q.get_future();
  std::thread child([](std::promise<std::string> q) { q.set_value("hello from a thread"); }, std::move(q));
  std::cout << '\n' << message.get() << '\n';
  child.join();
}
