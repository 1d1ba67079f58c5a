// Lesson "Process Communication / Pipe": one process sends a message through a Pipe, another receives it.
//
//   def sender(conn):
//       conn.send("Hello from sender")
//       conn.close()
//
//   def receiver(conn):
//       message = conn.recv()
//       print(f"Received: {message}")
//       conn.close()
//
//   parent_conn, child_conn = multiprocessing.Pipe()
//
// mp::Pipe<T>() returns the two ends of a duplex connection carrying values of type T. Each child receives a copy
// of one end; once start() returns the parent drops its copies (as Python does).
#include <iostream>
#include <string>

#include <mp/connection.hpp>
#include <mp/process.hpp>

void sender(mp::Connection<std::string> conn) {
  conn.send("Hello from sender");
  conn.close();
}

void receiver(mp::Connection<std::string> conn) {
  std::string message = conn.recv();
  std::cout << "Received: " << message << std::endl;
  conn.close();
}

int main(int argc, char** argv) {
  mp::init(argc, argv);

  auto [parent_conn, child_conn] = mp::Pipe<std::string>();

  mp::Process p1(sender, child_conn);
  mp::Process p2(receiver, parent_conn);

  p1.start();
  p2.start();

  p1.join();
  p2.join();
}
