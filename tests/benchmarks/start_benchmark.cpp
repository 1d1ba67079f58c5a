// start_benchmark: start+join latency of mp::Process under each start method, beside raw baselines measured in
// the same run: fork()+waitpid, posix_spawn of /bin/true, and posix_spawn of a trivial C++ binary (this very
// program, which returns from main at once when MP_BENCH_TRIVIAL is set: same size, same libraries as a spawned
// mp child). Then the same with the parent holding 1 GiB it has touched: fork copies its page tables, posix_spawn
// (spawn) and the fork server (forkserver) do not.
// Each figure is the median of N runs (default 200; 1 GiB: N/4), in microseconds. Usage: start_benchmark [N]
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <mp/process.hpp>

extern char** environ;

namespace {

void nothing() {}

double median_us(int runs, const std::function<void()>& once) {
  std::vector<double> times;
  times.reserve(static_cast<std::size_t>(runs));
  for (int i = 0; i < runs; ++i) {
    const auto start = std::chrono::steady_clock::now();
    once();
    times.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

void raw_fork() {
  pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  ::waitpid(pid, nullptr, 0);
}

void raw_spawn(const char* path, char** env) {
  char* argv[] = {const_cast<char*>(path), nullptr};
  pid_t pid = 0;
  if (::posix_spawn(&pid, path, nullptr, nullptr, argv, env) != 0) std::abort();
  ::waitpid(pid, nullptr, 0);
}

void mp_start(mp::StartMethod method) {
  mp::Process p({.start_method = method}, nothing);
  p.start();
  p.join();
  if (p.exitcode() != 0) std::abort();
}

struct row {
  std::string name;
  double us;
  std::string baseline;
  double baseline_us;
};

void print(const std::vector<row>& rows) {
  std::printf("%-44s %12s   %s\n", "start + join", "median us", "ratio to baseline");
  for (const row& r : rows) {
    if (r.baseline.empty()) {
      std::printf("%-44s %12.1f\n", r.name.c_str(), r.us);
    } else {
      std::printf("%-44s %12.1f   %.2fx %s\n", r.name.c_str(), r.us, r.us / r.baseline_us, r.baseline.c_str());
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (std::getenv("MP_BENCH_TRIVIAL") != nullptr) ::_exit(0);  // the trivial C++ binary of the baseline
  mp::init(argc, argv);
  const int runs = argc > 1 ? std::max(4, std::atoi(argv[1])) : 200;

  std::vector<char*> trivial_env;
  std::string marker = "MP_BENCH_TRIVIAL=1";
  for (char** e = environ; *e != nullptr; ++e) trivial_env.push_back(*e);
  trivial_env.push_back(marker.data());
  trivial_env.push_back(nullptr);

  mp_start(mp::StartMethod::forkserver);  // the server starts at first use: not part of a child's start cost

  auto measure = [&](int n, const char* label, const std::vector<double>* small) {
    const double fork_us = median_us(n, raw_fork);
    const double true_us = median_us(n, [&] { raw_spawn("/bin/true", environ); });
    const double trivial_us = median_us(n, [&] { raw_spawn("/proc/self/exe", trivial_env.data()); });
    const double mp_fork = median_us(n, [] { mp_start(mp::StartMethod::fork); });
    const double mp_spawn = median_us(n, [] { mp_start(mp::StartMethod::spawn); });
    const double mp_forkserver = median_us(n, [] { mp_start(mp::StartMethod::forkserver); });
    std::vector<row> rows = {
        {std::string("raw fork+waitpid") + label, fork_us, "", 0},
        {std::string("raw posix_spawn /bin/true") + label, true_us, "", 0},
        {std::string("raw posix_spawn trivial C++ binary") + label, trivial_us, "", 0},
        {std::string("mp fork") + label, mp_fork, "raw fork+waitpid", fork_us},
        {std::string("mp spawn") + label, mp_spawn, "raw posix_spawn trivial C++", trivial_us},
        small ? row{std::string("mp forkserver") + label, mp_forkserver, "mp forkserver, small parent", (*small)[3]}
              : row{std::string("mp forkserver") + label, mp_forkserver, "raw fork+waitpid", fork_us},
    };
    print(rows);
    return std::vector<double>{fork_us, mp_fork, mp_spawn, mp_forkserver};
  };

  std::printf("parent holding little memory, %d runs each\n", runs);
  const std::vector<double> small = measure(runs, "", nullptr);

  const std::size_t gib = std::size_t{1} << 30;
  char* big = static_cast<char*>(std::malloc(gib));
  if (big == nullptr) {
    std::puts("cannot allocate 1 GiB: skipping the large-parent rows");
    return 0;
  }
  std::memset(big, 1, gib);  // touched: every page is mapped, so fork has page tables to copy
  std::printf("\nparent holding 1 GiB (touched), %d runs each\n", std::max(4, runs / 4));
  const std::vector<double> large = measure(std::max(4, runs / 4), " (1 GiB)", &small);
  std::printf("\n1 GiB vs small parent: raw fork %.2fx, mp fork %.2fx, mp spawn %.2fx, mp forkserver %.2fx\n",
              large[0] / small[0], large[1] / small[1], large[2] / small[2], large[3] / small[3]);
  volatile char keep = big[gib - 1];
  (void)keep;
  std::free(big);
  mp::detail::stop_forkserver();
}
