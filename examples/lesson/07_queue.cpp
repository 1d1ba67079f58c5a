// Lesson "Process Communication / Queue": a producer puts five numbers and then None; a consumer takes them until
// it sees None.
//
//   def producer(q):
//       for i in range(5):
//           print(f"Producing {i}")
//           q.put(i)
//           time.sleep(0.5)
//       q.put(None)  # Signal completion
//
//   def consumer(q):
//       while True:
//           item = q.get()
//           if item is None:
//               break
//           print(f"Consuming {item}")
//           time.sleep(0.3)
//
// Python's None becomes std::nullopt: the queue carries std::optional<int>. The queue is a handle: the copy each
// child receives refers to the same queue. The lesson's sleeps are kept (shortened tenfold) so the two processes
// take turns as in Python; the .expected file compares lines unordered, since only "Producing i" before
// "Consuming i" is guaranteed.
#include <chrono>
#include <iostream>
#include <optional>
#include <thread>

#include <mp/process.hpp>
#include <mp/queue.hpp>

void producer(mp::Queue<std::optional<int>> q) {
  for (int i = 0; i < 5; ++i) {
    std::cout << "Producing " << i << std::endl;
    q.put(i);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  q.put(std::nullopt);  // Signal completion
}

void consumer(mp::Queue<std::optional<int>> q) {
  while (true) {
    std::optional<int> item = q.get();
    if (!item) break;
    std::cout << "Consuming " << *item << std::endl;
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
  }
}

int main(int argc, char** argv) {
  mp::init(argc, argv);

  mp::Queue<std::optional<int>> q;

  mp::Process p1(producer, q);
  mp::Process p2(consumer, q);

  p1.start();
  p2.start();

  p1.join();
  p2.join();
}
