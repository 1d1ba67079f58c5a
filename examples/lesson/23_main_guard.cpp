// Lesson "Best Practices 1: Always Use `if __name__ == '__main__'`": mp::init(argc, argv) as main's first line.
//
//   if __name__ == '__main__':
//       # Multiprocessing code here
//       pass
//
// Under spawn (and forkserver) a child is this program started anew. mp::init recognises such a child, runs its
// target and exits, so the code after it runs in the main process only, as Python's guarded block does: the line
// "main body" below is printed once, although the spawned child ran this same main(). (19_missing_main_guard.cpp
// shows what happens without mp::init.)
#include <iostream>

#include <mp/process.hpp>

void worker() {
  std::cout << "worker: in " << mp::current_process().name() << ", a new run of this program (spawn)" << std::endl;
}

int main(int argc, char** argv) {
  mp::init(argc, argv);  // if __name__ == '__main__':  (a spawned child runs worker here and never returns)

  // Multiprocessing code here
  std::cout << "main body: in " << mp::current_process().name() << std::endl;
  mp::Process process({.start_method = mp::StartMethod::spawn}, worker);
  process.start();
  process.join();
  std::cout << "main body: done, the worker exited with " << process.exitcode().value_or(-1) << std::endl;
}
