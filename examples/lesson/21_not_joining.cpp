// Lesson "Common Mistakes 3: Not Joining Processes": what a child that nobody joins becomes, and the fix.
//
//   # WRONG: Main process may exit before workers finish
//   process = multiprocessing.Process(target=worker)
//   process.start()
//   # Missing process.join()
//
//   # CORRECT: Always join
//   process = multiprocessing.Process(target=worker)
//   process.start()
//   process.join()
//
// Python quietly joins a forgotten child when the interpreter exits (multiprocessing's atexit handler), and
// terminates a daemon one. mp does the same per object, at the end of the Process's scope:
//   1. a non-daemon mp::Process that is not joined is joined by ~Process: the scope waits for the child;
//   2. a daemon mp::Process is terminated (SIGTERM) and reaped by ~Process: it never finishes its work;
//   3. a raw fork() that is not waited for leaves a zombie: the child has exited, but its entry stays in the
//      process table (state Z in /proc/<pid>/stat) until the parent calls waitpid();
//   4. the fix: join(), then read the exit code (~Process cannot report a failure).
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>

#include <mp/process.hpp>
#include <mp/shared.hpp>
#include <mp/sync.hpp>

void worker() {
  std::cout << "worker: starting" << std::endl;
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::cout << "worker: finished" << std::endl;
}

void daemon_worker(mp::Event started, mp::Value<bool> finished) {
  std::cout << "daemon: starting" << std::endl;
  started.set();
  std::this_thread::sleep_for(std::chrono::seconds(10));  // terminated long before this ends
  finished.value() = true;
  std::cout << "daemon: finished" << std::endl;
}

/// The state letter of /proc/<pid>/stat ("R", "S", "Z", …), or "gone" when the process table has no such entry.
std::string process_state(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return "gone";
  // "pid (comm) S ...": the state follows the last ')' (comm may itself hold parentheses).
  std::istringstream rest(line.substr(line.rfind(')') + 1));
  std::string state;
  rest >> state;
  return state;
}

int main(int argc, char** argv) {
  mp::init(argc, argv);

  std::cout << "1. WRONG: an mp::Process started and never joined" << std::endl;
  {
    mp::Process process(worker);
    process.start();
    // Missing process.join(): at the closing brace ~Process joins the child, so this scope waits for it.
  }
  std::cout << "main: after the scope; ~Process joined the worker" << std::endl;

  std::cout << "2. A daemon mp::Process never joined" << std::endl;
  mp::Value<bool> finished(false);
  {
    mp::Event started;
    mp::Process process({.daemon = true}, daemon_worker, started, finished);
    process.start();
    started.wait();
    // At the closing brace ~Process terminates the daemon (its 10 s of work unfinished) and reaps it.
  }
  std::cout << "main: after the scope; the daemon was terminated, finished = " << std::boolalpha << finished.value()
            << std::endl;

  std::cout << "3. WRONG: a raw fork() never waited for" << std::endl;
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);  // the child ends at once
  // waitid with WNOWAIT waits for the child to end but leaves it unreaped: what a parent that never calls
  // waitpid() leaves behind.
  siginfo_t info{};
  ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT);
  std::cout << "the child has exited; /proc/<pid>/stat says state " << process_state(pid) << " (a zombie)"
            << std::endl;
  int status = 0;
  ::waitpid(pid, &status, 0);  // the fix for a raw fork: reap the child
  std::cout << "after waitpid(): /proc/<pid> is " << process_state(pid) << std::endl;

  std::cout << "4. CORRECT: always join" << std::endl;
  mp::Process process(worker);
  process.start();
  process.join();
  std::cout << "main: joined; exitcode " << process.exitcode().value_or(-1) << std::endl;
}
