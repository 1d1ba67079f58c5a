// Lesson "Common Mistakes 1: Not Using `if __name__ == '__main__'`", shown under the spawn start method.
//
//   # WRONG: Can cause issues on Windows
//   import multiprocessing
//
//   def worker():
//       print("Working")
//
//   process = multiprocessing.Process(target=worker)
//   process.start()
//   process.join()
//
//   # CORRECT: Use if __name__ == '__main__'
//   if __name__ == '__main__':
//       process = multiprocessing.Process(target=worker)
//       process.start()
//       process.join()
//
// Python's spawn re-imports the main module in the child, so unguarded code starts processes again (Python stops
// it with "An attempt has been made to start a new process before the current process has finished its
// bootstrapping phase"). mp's spawn starts the program anew, so main() must call mp::init(argc, argv) first: the
// child runs its target there. This program "forgets" it on purpose: start() refuses at once with an mp::Error
// instead of starting the whole program again (a fork bomb). Under fork nothing is started anew, so it works.
#include <iostream>

#include <mp/process.hpp>

void worker() { std::cout << "Working" << std::endl; }

int main() {  // WRONG: no mp::init(argc, argv) here
  mp::set_start_method(mp::StartMethod::spawn);
  mp::Process process(worker);
  try {
    process.start();
    process.join();
  } catch (const mp::Error& error) {
    std::cout << "Caught mp::Error: " << error.what() << std::endl;
  }

  // fork copies the running program instead of starting it anew: no mp::init needed (but call it anyway).
  mp::Process forked({.start_method = mp::StartMethod::fork}, worker);
  forked.start();
  forked.join();
  std::cout << "fork exit code " << *forked.exitcode() << std::endl;
}
