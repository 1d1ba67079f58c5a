// Lesson "Best Practices 5: Handle Exceptions": catch errors inside the worker and report them.
//
//   def worker():
//       try:
//           # Work
//           pass
//       except Exception as e:
//           print(f"Error: {e}")
//
// The Python worker only says `pass`; this one does real work that fails for one input, so the except branch
// runs. It then shows what happens without the try: the exception ends the child (its type and message go to
// stderr, as Python prints the traceback) and the parent sees exitcode 1, the parent itself unharmed. The
// processes run one after another, so the output order is fixed.
#include <iostream>
#include <stdexcept>

#include <mp/process.hpp>

int divide(int a, int b) {
  if (b == 0) throw std::invalid_argument("division by zero");
  return a / b;
}

void worker(int x) {
  try {
    const int result = divide(100, x);  // Work (computed before printing: a throw leaves no half line)
    std::cout << "100 / " << x << " = " << result << std::endl;
  } catch (const std::exception& e) {
    std::cout << "Error: " << e.what() << std::endl;
  }
}

void unguarded_worker(int x) {
  const int result = divide(100, x);
  std::cout << "100 / " << x << " = " << result << std::endl;
}

int main(int argc, char** argv) {
  mp::init(argc, argv);

  for (int x : {5, 0, 4}) {
    mp::Process process(worker, x);
    process.start();
    process.join();
    std::cout << "worker(" << x << ") exitcode: " << process.exitcode().value_or(-1) << std::endl;
  }

  mp::Process process(unguarded_worker, 0);
  process.start();
  process.join();
  std::cout << "unguarded_worker(0) exitcode: " << process.exitcode().value_or(-1) << std::endl;
  std::cout << "Main process continuing" << std::endl;
}
