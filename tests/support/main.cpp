// The one Catch2 runner of every test executable. Besides running the tests it checks that they leak nothing:
// no process they started outlives them (orphaned grandchildren included: this runner is their subreaper) and
// no file descriptor stays open.
// Catch2's implementation, Session included, is support/catch_impl.cpp (without its handlers for fatal signals: see
// there).
#include "support/catch_session.hpp"

// The whole library, so every test executable has two translation units that include every header: a function
// that is not `inline` fails to link.
#include <mp/mp.hpp>

#include <dirent.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace {

int count_open_fds() {
  int n = 0;
  if (DIR* dir = ::opendir("/proc/self/fd")) {
    while (const dirent* entry = ::readdir(dir)) n += entry->d_name[0] != '.';
    ::closedir(dir);
  }
  return n - 1;  // the directory's own descriptor
}

std::vector<pid_t> live_children() {
  std::vector<pid_t> children;
  std::ifstream list("/proc/self/task/" + std::to_string(::getpid()) + "/children");
  for (pid_t pid; list >> pid;) children.push_back(pid);
  return children;
}

// Reaps every descendant that ended; returns the ones still alive after `grace` (then killed and reaped).
std::vector<pid_t> reap_descendants(std::chrono::milliseconds grace) {
  const auto deadline = std::chrono::steady_clock::now() + grace;
  for (;;) {
    while (::waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    std::vector<pid_t> alive = live_children();
    if (alive.empty()) return alive;
    if (std::chrono::steady_clock::now() >= deadline) {
      for (pid_t pid : alive) ::kill(pid, SIGKILL);
      while (::waitpid(-1, nullptr, 0) > 0) {
      }
      return alive;
    }
    // Killed trees wind down asynchronously (death signals); this bounded wait only collects stragglers.
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);  // a spawned child runs its target here and never returns
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  const int fds_before = count_open_fds();

  int status = mp_test::run_catch_session(argc, argv);
  mp::detail::stop_forkserver();  // the fork server (start method forkserver) ends with the tests that used it
  mp::detail::stop_shm_tracker();  // so does the SharedMemory tracker (it unlinks any name a test left behind)

  if (const auto leaked = reap_descendants(std::chrono::seconds(2)); !leaked.empty()) {
    std::fprintf(stderr, "leak check: %zu process(es) started by the tests were still running after them\n",
                 leaked.size());
    status = status != 0 ? status : 1;
  }
  if (const int fds_after = count_open_fds(); fds_after > fds_before) {
    std::fprintf(stderr, "leak check: %d file descriptor(s) open before the tests, %d after\n", fds_before,
                 fds_after);
    status = status != 0 ? status : 1;
  }
  return status;
}
