// sync_benchmark: lock+increment and fetch_add throughput of mp's shared primitives against raw baselines
// measured in the same run: a process-shared (non-robust) pthread mutex, and a std::atomic in a shared mapping.
// Uncontended: one process. Contended: 2 processes hammering the same lock/counter at once.
// Each figure is the median of 5 runs, in million operations per second. Usage: sync_benchmark [iterations]
#include <pthread.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
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

template <class Body>
double median_of_5(int processes, long iterations, Body body) {
  std::vector<double> results;
  for (int i = 0; i < 5; ++i) results.push_back(run(processes, iterations, body));
  std::sort(results.begin(), results.end());
  return results[2];
}

void row(const char* name, double mine, double base, const char* base_name) {
  std::printf("%-34s %9.1f %9.1f   %-26s %6.2fx\n", name, mine, base, base_name, mine / base);
}

}  // namespace

int main(int argc, char** argv) {
  const long iterations = argc > 1 ? std::atol(argv[1]) : 5'000'000;

  auto* raw = shared_new<baseline>();
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutex_init(&raw->mutex, &attr);

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

  std::printf("mp sync benchmark: %ld operations per process, median of 5 runs, million ops/s\n\n", iterations);
  std::printf("%-34s %9s %9s   %-26s %7s\n", "operation", "mp", "baseline", "baseline is", "ratio");
  for (int processes : {1, 2}) {
    const char* label = processes == 1 ? "uncontended, 1 process" : "contended, 2 processes";
    std::printf("-- %s\n", label);
    const double base_mutex = median_of_5(processes, iterations, raw_mutex_body);
    row("mp::Lock lock+increment", median_of_5(processes, iterations, lock_body), base_mutex,
        "pshared pthread mutex");
    row("mp::RLock lock+increment", median_of_5(processes, iterations, rlock_body), base_mutex,
        "pshared pthread mutex");
    row("mp::Value get_lock()+increment", median_of_5(processes, iterations, value_lock_body), base_mutex,
        "pshared pthread mutex");
    const double base_atomic = median_of_5(processes, iterations, raw_atomic_body);
    row("mp::Value fetch_add", median_of_5(processes, iterations, fetch_add_body), base_atomic,
        "std::atomic fetch_add");
  }
  const long per_kind = 5L * 3 * iterations;  // 5 runs x (1 + 2 processes) x iterations
  const bool exact = locked_counter.value() == 2 * per_kind && value.value() == 2 * per_kind;  // Lock+RLock; lock+fetch_add
  std::printf("\ncounters exact: %s\n", exact ? "yes" : "NO");
  return exact ? 0 : 1;
}
