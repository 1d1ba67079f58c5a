// Lesson "Best Practices: 5. Handle Exceptions": catch errors inside the worker and report them.
// The Python snippet's worker only says `pass`; this one does real work that fails for one input, so the except
// branch runs. It then shows what happens without the try: the exception ends the child (its type and message go
// to stderr, as Python prints the traceback) and the parent sees exitcode 1, the parent itself unharmed.
// Processes run one after another so the output order is fixed.
#include <mp/process.hpp>

#include <cstdio>
#include <stdexcept>

namespace {

int divide(int a, int b) {
  if (b == 0) throw std::invalid_argument("division by zero");
  return a / b;
}

void worker(int x) {
  try {
    std::printf("100 / %d = %d\n", x, divide(100, x));
  } catch (const std::exception& e) {
    std::printf("Error: %s\n", e.what());
  }
}

void unguarded_worker(int x) { std::printf("100 / %d = %d\n", x, divide(100, x)); }

}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);
  for (int x : {5, 0, 4}) {
    mp::Process process(worker, x);
    process.start();
    process.join();
    std::printf("worker(%d) exitcode: %d\n", x, process.exitcode().value_or(-1));
  }

  mp::Process process(unguarded_worker, 0);
  process.start();
  process.join();
  std::printf("unguarded_worker(0) exitcode: %d\n", process.exitcode().value_or(-1));
  std::printf("Main process continuing\n");
  return 0;
}
