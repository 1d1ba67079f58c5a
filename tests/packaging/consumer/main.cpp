// A separate project using mp: starts a child that exits with 7 and reports its exit code.
#include <mp/mp.hpp>

#include <cstdio>
#include <unistd.h>

int consumer_child_exit_code();  // second.cpp

int main(int argc, char** argv) {
  mp::init(argc, argv);
  mp::Process child([] { ::_exit(consumer_child_exit_code()); });
  child.start();
  child.join();
  std::printf("consumer: child exited with %d\n", child.exitcode().value_or(-1000));
}
