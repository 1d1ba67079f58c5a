// The lesson's challenge "Build a distributed computation system using multiprocessing": a TCP manager serves a
// job queue and a result dict; worker *programs* (started separately, as they would be on other hosts) connect
// with the authkey, drain the jobs and report their results; the coordinator verifies every result.
//
// Python's version uses BaseManager.register('get_jobs', ...) and BaseManager(address, authkey).connect() in the
// workers; here the objects are named: mgr.queue<Job>("jobs") finds or creates the same queue in every program.
//
//   distributed_computation                      coordinator: serves, starts 3 workers, verifies
//   distributed_computation --worker HOST PORT   a worker; reads the authkey from MP_DISTRIBUTED_AUTHKEY
//
// The workers here are this same executable started again with --worker (posix_spawn of /proc/self/exe); run
// the same command by hand on another machine, with the same authkey, to join over the network. The authkey goes
// through the environment, not the command line, where other users could read it in `ps`.
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include <mp/manager.hpp>

extern char** environ;

namespace {

struct Job {
  std::int64_t id = 0;
  std::int64_t limit = 0;  // count the primes below limit; id < 0 means "no more jobs"
};

std::int64_t count_primes(std::int64_t limit) {
  std::vector<bool> composite(static_cast<std::size_t>(limit > 2 ? limit : 2), false);
  std::int64_t count = 0;
  for (std::int64_t n = 2; n < limit; ++n) {
    if (composite[static_cast<std::size_t>(n)]) continue;
    ++count;
    for (std::int64_t m = n * n; m < limit; m += n) composite[static_cast<std::size_t>(m)] = true;
  }
  return count;
}

int run_worker(const std::string& host, std::uint16_t port) {
  const char* key = std::getenv("MP_DISTRIBUTED_AUTHKEY");
  if (!key) {
    std::cerr << "worker: set MP_DISTRIBUTED_AUTHKEY to the coordinator's authkey\n";
    return 2;
  }
  auto manager = mp::Manager::connect(mp::Address::tcp(host, port), key);
  auto jobs = manager.queue<Job>("jobs");
  auto results = manager.dict<std::int64_t, std::int64_t>("results");
  auto done_by = manager.dict<std::int64_t, std::int64_t>("done_by");
  for (;;) {
    Job job = jobs.get();
    if (job.id < 0) break;
    results[job.id] = count_primes(job.limit);
    done_by[job.id] = ::getpid();
  }
  return 0;
}

pid_t start_worker(const std::string& host, std::uint16_t port, const std::string& authkey) {
  std::string port_text = std::to_string(port);
  std::vector<std::string> args{"distributed_computation", "--worker", host, port_text};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_storage{"MP_DISTRIBUTED_AUTHKEY=" + authkey};
  for (char** e = environ; *e; ++e) {
    if (std::string(*e).rfind("MP_DISTRIBUTED_AUTHKEY=", 0) != 0) env_storage.emplace_back(*e);
  }
  std::vector<char*> envp;
  for (auto& e : env_storage) envp.push_back(e.data());
  envp.push_back(nullptr);
  pid_t pid = 0;
  if (int rc = ::posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv.data(), envp.data())) {
    throw std::runtime_error("posix_spawn(/proc/self/exe): " + std::string(std::strerror(rc)));
  }
  return pid;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "--worker") {
    return run_worker(argv[2], static_cast<std::uint16_t>(std::stoi(argv[3])));
  }

  constexpr int n_workers = 3;
  constexpr int n_jobs = 30;
  // A fresh random authkey per run; the workers get it from the environment.
  std::random_device random;
  std::string authkey = "mp-demo-" + std::to_string(random()) + std::to_string(random());

  mp::Manager manager({.address = mp::Address::tcp("127.0.0.1", 0), .authkey = authkey});
  auto address = manager.address();
  auto jobs = manager.queue<Job>("jobs");
  auto results = manager.dict<std::int64_t, std::int64_t>("results");
  auto done_by = manager.dict<std::int64_t, std::int64_t>("done_by");
  std::cout << "Coordinator serving on 127.0.0.1 (port chosen by the system), " << n_workers << " workers, "
            << n_jobs << " jobs\n";

  std::vector<Job> all;
  for (int i = 0; i < n_jobs; ++i) all.push_back({i, 20'000 + 5'000 * i});
  for (const Job& job : all) jobs.put(job);
  for (int i = 0; i < n_workers; ++i) jobs.put(Job{-1, 0});  // one stop marker per worker

  std::vector<pid_t> workers;
  for (int i = 0; i < n_workers; ++i) workers.push_back(start_worker(address.host(), address.port(), authkey));
  int failed_workers = 0;
  for (pid_t pid : workers) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failed_workers;
  }

  // Someone without the key is turned away, and the server goes on.
  try {
    mp::Manager::connect(address, "not-the-key");
    std::cout << "ERROR: a wrong authkey was accepted\n";
    return 1;
  } catch (const mp::AuthenticationError&) {
    std::cout << "A client with a wrong authkey was refused\n";
  }

  int wrong = 0;
  for (const Job& job : all) {
    auto got = results.get(job.id);
    if (!got || *got != count_primes(job.limit)) ++wrong;
  }
  std::vector<std::int64_t> pids;
  for (const auto& [job, pid] : done_by.items()) {
    if (std::find(pids.begin(), pids.end(), pid) == pids.end()) pids.push_back(pid);
  }
  std::cout << "Results: " << results.size() << " of " << n_jobs << ", " << wrong << " wrong, computed by "
            << pids.size() << " worker process(es); " << failed_workers << " worker(s) failed\n";
  std::cout << "Primes below " << all.back().limit << ": " << results.get(all.back().id).value_or(-1) << "\n";
  bool ok = wrong == 0 && failed_workers == 0 && results.size() == n_jobs && jobs.empty();
  std::cout << (ok ? "All results verified" : "Verification FAILED") << "\n";
  return ok ? 0 : 1;
}
