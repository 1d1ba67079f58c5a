// sync_benchmark: lock+increment and fetch_add throughput of mp's shared primitives against raw baselines
// measured in the same run: a process-shared (non-robust) pthread mutex, and a std::atomic in a shared mapping.
// Uncontended: one process. Contended: 2 processes hammering the same lock/counter at once.
// Each comparison runs mp and the baseline back to back 7 times (the VM's load drifts); figures are medians, in
// million operations per second. Usage: sync_benchmark [iterations per process, default 3000000]
#include <pthread.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include <mp/shared.hpp>
#include <mp/sync.hpp>

namespace {

// Shared between the benchmark processes: a start flag and each process's elapsed time.
struct control {
  std::atomic<int> ready{0};
  std::atomic<int> go{0};
  double seconds[8]{};
};

// The baselines, in a plain shared mapping.
struct baseline {
  pthread_mutex_t mutex;
  alignas(64) pthread_mutex_t robust_mutex;  // robust like mp's, without mp's spin or bookkeeping
  alignas(64) long counter = 0;
  alignas(64) std::atomic<long> atomic_counter{0};
};

template <class T>
T* shared_new() {
  void* memory = ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) std::abort();
  return new (memory) T();
}

// Runs body(iterations) in `processes` forked processes started together; returns total Mops/s.
template <class Body>
double run(int processes, long iterations, Body body) {
  auto* ctl = shared_new<control>();
  for (int p = 0; p < processes; ++p) {
    if (::fork() == 0) {
      ctl->ready.fetch_add(1);
      while (ctl->go.load() == 0) {
      }
      const auto start = std::chrono::steady_clock::now();
      body(iterations);
      ctl->seconds[p] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      ::_exit(0);
    }
  }
  while (ctl->ready.load() < processes) {
  }
  ctl->go.store(1);
  while (::wait(nullptr) > 0) {
  }
  double slowest = 0;
  for (int p = 0; p < processes; ++p) slowest = std::max(slowest, ctl->seconds[p]);
  ::munmap(ctl, sizeof(control));
  return static_cast<double>(iterations) * processes / slowest / 1e6;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

// Runs mp's body and the baseline's back to back, 7 times, so that both see the same machine load (a shared VM
// drifts by tens of percent over seconds); prints the median rates and the median of the per-round ratios.
template <class Mine, class Base>
void compare(const char* name, const char* base_name, int processes, long iterations, Mine mine, Base base) {
  std::vector<double> mine_rates, base_rates, ratios;
  for (int round = 0; round < 7; ++round) {
    const double b = run(processes, iterations, base);
    const double m = run(processes, iterations, mine);
    base_rates.push_back(b);
    mine_rates.push_back(m);
    ratios.push_back(m / b);
  }
  std::printf("%-32s %9.1f %9.1f   %-30s %6.2fx\n", name, median(mine_rates), median(base_rates), base_name,
              median(ratios));
}

}  // namespace

int main(int argc, char** argv) {
  const long iterations = argc > 1 ? std::atol(argv[1]) : 3'000'000;

  auto* raw = shared_new<baseline>();
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutex_init(&raw->mutex, &attr);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(&raw->robust_mutex, &attr);

  mp::Lock lock;
  mp::RLock rlock;
  mp::RawValue<long> locked_counter(0);
  mp::Value<long> value(0);

  auto raw_mutex_body = [raw](long n) {
    for (long i = 0; i < n; ++i) {
      pthread_mutex_lock(&raw->mutex);
      raw->counter = raw->counter + 1;
      pthread_mutex_unlock(&raw->mutex);
    }
  };
  auto raw_robust_body = [raw](long n) {
    for (long i = 0; i < n; ++i) {
      if (pthread_mutex_lock(&raw->robust_mutex) == EOWNERDEAD) pthread_mutex_consistent(&raw->robust_mutex);
      raw->counter = raw->counter + 1;
      pthread_mutex_unlock(&raw->robust_mutex);
    }
  };
  auto lock_body = [lock, locked_counter](long n) mutable {
    long& counter = locked_counter.value();
    for (long i = 0; i < n; ++i) {
      std::lock_guard guard(lock);
      counter = counter + 1;
    }
  };
  auto rlock_body = [rlock, locked_counter](long n) mutable {
    long& counter = locked_counter.value();
    for (long i = 0; i < n; ++i) {
      std::lock_guard guard(rlock);
      counter = counter + 1;
    }
  };
  auto value_lock_body = [value](long n) mutable {
    for (long i = 0; i < n; ++i) {
      std::lock_guard guard(value.get_lock());
      value.value() = value.value() + 1;
    }
  };
  auto raw_atomic_body = [raw](long n) {
    for (long i = 0; i < n; ++i) raw->atomic_counter.fetch_add(1);
  };
  auto fetch_add_body = [value](long n) mutable {
    for (long i = 0; i < n; ++i) value.fetch_add(1);
  };

  std::printf("mp sync benchmark: %ld operations per process; medians of 7 rounds (mp and baseline back to back),\n"
              "million operations per second; ratio = median of the per-round ratios\n\n", iterations);
  std::printf("%-32s %9s %9s   %-30s %7s\n", "operation", "mp", "baseline", "baseline is", "ratio");
  for (int processes : {1, 2}) {
    std::printf("-- %s\n", processes == 1 ? "uncontended, 1 process" : "contended, 2 processes");
    compare("mp::Lock lock+increment", "pshared pthread mutex", processes, iterations, lock_body, raw_mutex_body);
    compare("mp::Lock lock+increment", "robust pshared pthread mutex", processes, iterations, lock_body,
            raw_robust_body);
    compare("mp::RLock lock+increment", "pshared pthread mutex", processes, iterations, rlock_body, raw_mutex_body);
    compare("mp::Value get_lock()+increment", "pshared pthread mutex", processes, iterations, value_lock_body,
            raw_mutex_body);
    compare("mp::Value fetch_add", "std::atomic fetch_add", processes, iterations, fetch_add_body, raw_atomic_body);
  }
  const long per_kind = 7L * 3 * iterations;  // 7 rounds x (1 + 2 processes) x iterations
  // locked_counter: Lock twice (two comparisons) and RLock once; value: its lock once and fetch_add once.
  const bool exact = locked_counter.value() == 3 * per_kind && value.value() == 2 * per_kind;
  std::printf("\ncounters exact: %s\n", exact ? "yes" : "NO");
  return exact ? 0 : 1;
}
