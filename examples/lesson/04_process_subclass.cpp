// Lesson "Process Class Inheritance": derive from mp::Process and override run(), which the child executes.
//
//   class WorkerProcess(multiprocessing.Process):
//       def __init__(self, name):
//           super().__init__(name=name)
//       def run(self):
//           print(f"{self.name} starting")
//           time.sleep(2)
//           print(f"{self.name} finished")
//
//   process = WorkerProcess("Worker1")
//   process.start()
//   process.join()
#include <chrono>
#include <iostream>
#include <string>
#include <thread>

#include <mp/process.hpp>

class WorkerProcess : public mp::Process {
 public:
  WorkerProcess() = default;  // spawn and forkserver rebuild the object in the child: see MP_REGISTER_PROCESS
  explicit WorkerProcess(std::string name) : mp::Process({.name = std::move(name)}) {}
  template <class Archive>
  void serialize(Archive&) {}  // no fields of its own (the name always travels)

 protected:
  void run() override {
    std::cout << name() << " starting" << std::endl;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the lesson sleeps 2 s
    std::cout << name() << " finished" << std::endl;
  }
};

// Lets the start methods that start the program anew (spawn, forkserver) rebuild a WorkerProcess in the child.
MP_REGISTER_PROCESS(WorkerProcess);

int main(int argc, char** argv) {
  mp::init(argc, argv);

  WorkerProcess process("Worker1");
  process.start();
  process.join();
}
