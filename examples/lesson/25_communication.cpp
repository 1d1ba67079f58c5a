// Lesson "Best Practices 3: Use Appropriate Communication Method": a Queue, a Pipe and a Manager dict, each used.
//
//   # For simple data: Queue
//   q = multiprocessing.Queue()
//
//   # For bidirectional: Pipe
//   parent_conn, child_conn = multiprocessing.Pipe()
//
//   # For shared state: Manager
//   with multiprocessing.Manager() as manager:
//       shared_dict = manager.dict()
//
// The snippet only creates them; here a child uses each: it puts numbers on the queue, answers a question through
// the pipe (both directions), and writes into the shared dict that the parent then reads. Each child runs alone,
// so the output order is fixed.
#include <iostream>
#include <string>

#include <mp/connection.hpp>
#include <mp/manager.hpp>
#include <mp/process.hpp>
#include <mp/queue.hpp>

#include "lesson.hpp"

void queue_worker(mp::Queue<int> q) {
  for (int i = 1; i <= 3; ++i) q.put(i * i);
}

void pipe_worker(mp::Connection<std::string> conn) {
  const std::string question = conn.recv();
  conn.send("pong (answer to " + question + ")");
}

void manager_worker(mp::DictProxy<std::string, int> shared_dict) {
  shared_dict["answer"] = 42;
  shared_dict["questions"] = 1;
}

int main(int argc, char** argv) {
  mp::init(argc, argv);

  // For simple data: Queue
  mp::Queue<int> q;
  mp::Process producer(queue_worker, q);
  producer.start();
  std::cout << "Queue: " << q.get() << ", " << q.get() << ", " << q.get() << std::endl;
  producer.join();

  // For bidirectional: Pipe
  auto [parent_conn, child_conn] = mp::Pipe<std::string>();
  mp::Process responder(pipe_worker, child_conn);
  responder.start();
  parent_conn.send("ping");
  std::cout << "Pipe: sent 'ping', received '" << parent_conn.recv() << "'" << std::endl;
  responder.join();

  // For shared state: Manager
  mp::Manager manager;
  auto shared_dict = manager.dict<std::string, int>();
  mp::Process writer(manager_worker, shared_dict);
  writer.start();
  writer.join();
  std::cout << "Manager dict: " << lesson::repr(shared_dict.copy()) << std::endl;
}
