// queue_benchmark: mp::Queue throughput and mp::Pipe / two-Queue round-trip latency, each beside a raw baseline
// measured in the same run:
//   - throughput baseline: a minimal single-producer single-consumer ring in a shared mapping (fixed slots of the
//     item's size, two indexes, busy-waiting both sides (yielding after a few µs), no locks, no serialization, no
//     robustness);
//   - Pipe baseline: a raw socketpair ping-pong of 8-byte write/read;
//   - two-Queue baseline: the same SPSC ring used as two one-slot-at-a-time channels, busy-waiting.
// Items: 8 B (std::int64_t), 1 KiB and 1 MiB (std::vector<std::byte>, so they are serialized); 1->1 and 2->2
// (2 producer and 2 consumer processes). Every figure is the best of 3 runs (the machine is shared).
// Usage: queue_benchmark [scale]   (scale multiplies the item counts; default 1)
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>
#include <string>
#include <vector>

#include <mp/connection.hpp>
#include <mp/detail/futex.hpp>
#include <mp/queue.hpp>

namespace {

using clock_type = std::chrono::steady_clock;

// --- process plumbing ---------------------------------------------------------------------------------------

// Shared by the processes of one measurement: a start line and the count each consumer took.
struct control {
  std::atomic<int> ready{0};
  std::atomic<int> go{0};
  std::atomic<long> taken{0};
  std::atomic<std::uint32_t> done{0};  // a futex word: consumers wake the parent
};

void* shared_alloc(std::size_t size) {
  void* memory = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) {
    std::perror("mmap");
    std::exit(1);
  }
  return memory;
}

// Forks one process per body, lines them up, and returns the seconds from "go" until every consumer is done.
// Exits if the consumers did not take exactly `items` items between them (a benchmark that loses items lies).
double run_processes(const std::vector<std::function<void(control&)>>& bodies, int consumers, long items) {
  auto* ctl = new (shared_alloc(sizeof(control))) control();
  std::vector<pid_t> pids;
  for (const auto& body : bodies) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      ctl->ready.fetch_add(1);
      while (ctl->go.load() == 0) mp::detail::cpu_relax();
      body(*ctl);
      ::_exit(0);
    }
    pids.push_back(pid);
  }
  while (ctl->ready.load() != static_cast<int>(bodies.size())) sched_yield();
  const auto start = clock_type::now();
  ctl->go.store(1);
  for (std::uint32_t done; (done = ctl->done.load()) != static_cast<std::uint32_t>(consumers);)
    mp::detail::futex_wait(ctl->done, done);
  const double seconds = std::chrono::duration<double>(clock_type::now() - start).count();
  for (pid_t pid : pids) ::waitpid(pid, nullptr, 0);
  if (ctl->taken.load() != items) {
    std::fprintf(stderr, "consumers took %ld items, expected %ld\n", ctl->taken.load(), items);
    std::exit(1);
  }
  ::munmap(ctl, sizeof(control));
  return seconds;
}

template <class F>
double best_of_3(F&& measure) {
  double best = 1e300;
  for (int i = 0; i < 3; ++i) best = std::min(best, measure());
  return best;
}

// --- the SPSC baseline ---------------------------------------------------------------------------------------

// Busy-waiting, but yielding the CPU after a few µs so that a loaded machine does not starve the other side (the
// Queue's waits do the same before they sleep).
inline void backoff(int spins) {
  if (spins < 2000) mp::detail::cpu_relax();
  else sched_yield();
}

// The simplest correct shared-memory ring: fixed slots, one writer index and one reader index on their own cache
// lines, each side caching the other's index, busy-waiting.
struct spsc_ring {
  alignas(64) std::atomic<std::uint64_t> tail{0};
  alignas(64) std::atomic<std::uint64_t> head{0};
  alignas(64) std::size_t slot_size = 0;
  std::size_t slots = 0;
  std::byte* data() { return reinterpret_cast<std::byte*>(this) + 4096; }

  static spsc_ring* create(std::size_t slot_size, std::size_t slots) {
    auto* ring = new (shared_alloc(4096 + slot_size * slots)) spsc_ring();
    ring->slot_size = slot_size;
    ring->slots = slots;
    return ring;
  }
  void destroy() { ::munmap(this, 4096 + slot_size * slots); }

  struct writer {
    spsc_ring& ring;
    std::uint64_t tail = 0, head_seen = 0;
    void put(const void* item) {
      for (int spins = 0; tail - head_seen >= ring.slots; ++spins) {
        head_seen = ring.head.load(std::memory_order_acquire);
        if (tail - head_seen >= ring.slots) backoff(spins);
      }
      std::memcpy(ring.data() + (tail % ring.slots) * ring.slot_size, item, ring.slot_size);
      ring.tail.store(++tail, std::memory_order_release);
    }
  };
  struct reader {
    spsc_ring& ring;
    std::uint64_t head = 0, tail_seen = 0;
    void get(void* item) {
      for (int spins = 0; head == tail_seen; ++spins) {
        tail_seen = ring.tail.load(std::memory_order_acquire);
        if (head == tail_seen) backoff(spins);
      }
      std::memcpy(item, ring.data() + (head % ring.slots) * ring.slot_size, ring.slot_size);
      ring.head.store(++head, std::memory_order_release);
    }
  };
};

// --- throughput ------------------------------------------------------------------------------------------------

struct throughput {
  double items_per_second;
  double bytes_per_second;
};

// mp::Queue<std::int64_t>: -1 ends a producer's stream.
throughput queue_ints(int producers, int consumers, long items) {
  const double seconds = best_of_3([&] {
    mp::Queue<std::int64_t> q;
    std::vector<std::function<void(control&)>> bodies;
    const long per_producer = items / producers;
    for (int p = 0; p < producers; ++p)
      bodies.push_back([q, per_producer](control&) mutable {
        for (long i = 0; i < per_producer; ++i) q.put(i);
        q.put(-1);
      });
    for (int c = 0; c < consumers; ++c)
      bodies.push_back([q](control& ctl) mutable {
        long n = 0;
        while (q.get() >= 0) ++n;
        ctl.taken.fetch_add(n);
        ctl.done.fetch_add(1);
        mp::detail::futex_wake(ctl.done);
      });
    return run_processes(bodies, consumers, per_producer * producers);
  });
  return {static_cast<double>(items) / seconds, static_cast<double>(items) * 8 / seconds};
}

// mp::Queue<std::vector<std::byte>>: an empty vector ends a producer's stream.
throughput queue_blobs(int producers, int consumers, long items, std::size_t size) {
  const double seconds = best_of_3([&] {
    mp::Queue<std::vector<std::byte>> q;
    std::vector<std::function<void(control&)>> bodies;
    const long per_producer = items / producers;
    for (int p = 0; p < producers; ++p)
      bodies.push_back([q, per_producer, size](control&) mutable {
        const std::vector<std::byte> item(size, std::byte{7});
        for (long i = 0; i < per_producer; ++i) q.put(item);
        q.put({});
      });
    for (int c = 0; c < consumers; ++c)
      bodies.push_back([q](control& ctl) mutable {
        long n = 0;
        while (!q.get().empty()) ++n;
        ctl.taken.fetch_add(n);
        ctl.done.fetch_add(1);
        mp::detail::futex_wake(ctl.done);
      });
    return run_processes(bodies, consumers, per_producer * producers);
  });
  return {static_cast<double>(items) / seconds, static_cast<double>(items) * static_cast<double>(size) / seconds};
}

throughput spsc(long items, std::size_t size) {
  const std::size_t slots = std::max<std::size_t>(8, (std::size_t{1} << 20) / size);  // ~1 MiB, as the Queue
  const double seconds = best_of_3([&] {
    auto* ring = spsc_ring::create(size, slots);
    std::vector<std::function<void(control&)>> bodies;
    bodies.push_back([ring, items, size](control&) {
      std::vector<std::byte> item(size, std::byte{7});
      spsc_ring::writer w{*ring};
      for (long i = 0; i < items; ++i) w.put(item.data());
    });
    bodies.push_back([ring, items, size](control& ctl) {
      std::vector<std::byte> item(size);
      spsc_ring::reader r{*ring};
      for (long i = 0; i < items; ++i) r.get(item.data());
      ctl.taken.fetch_add(items);
      ctl.done.fetch_add(1);
      mp::detail::futex_wake(ctl.done);
    });
    const double s = run_processes(bodies, 1, items);
    ring->destroy();
    return s;
  });
  return {static_cast<double>(items) / seconds, static_cast<double>(items) * static_cast<double>(size) / seconds};
}

// --- latency -----------------------------------------------------------------------------------------------------

double raw_socketpair_round_trip(long trips) {
  return best_of_3([&] {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) std::exit(1);
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(fds[0]);
      std::int64_t v;
      while (::read(fds[1], &v, sizeof v) == sizeof v) {
        if (::write(fds[1], &v, sizeof v) != sizeof v) break;
      }
      ::_exit(0);
    }
    ::close(fds[1]);
    std::int64_t v = 0;
    const auto start = clock_type::now();
    for (long i = 0; i < trips; ++i) {
      if (::write(fds[0], &v, sizeof v) != sizeof v || ::read(fds[0], &v, sizeof v) != sizeof v) std::exit(1);
      ++v;
    }
    const double s = std::chrono::duration<double>(clock_type::now() - start).count();
    ::close(fds[0]);
    ::waitpid(pid, nullptr, 0);
    return s / static_cast<double>(trips);
  });
}

double pipe_round_trip(long trips) {
  return best_of_3([&] {
    auto [here, there] = mp::Pipe<std::int64_t>();
    const pid_t pid = ::fork();
    if (pid == 0) {
      here.close();
      try {
        for (;;) there.send(there.recv());
      } catch (const mp::EOFError&) {
      }
      ::_exit(0);
    }
    there.close();
    const auto start = clock_type::now();
    for (long i = 0; i < trips; ++i) {
      here.send(i);
      if (here.recv() != i) std::exit(1);
    }
    const double s = std::chrono::duration<double>(clock_type::now() - start).count();
    here.close();
    ::waitpid(pid, nullptr, 0);
    return s / static_cast<double>(trips);
  });
}

double two_queue_round_trip(long trips) {
  return best_of_3([&] {
    mp::Queue<std::int64_t> ping, pong;
    const pid_t pid = ::fork();
    if (pid == 0) {
      for (;;) {
        const std::int64_t v = ping.get();
        pong.put(v);
        if (v < 0) break;
      }
      ::_exit(0);
    }
    for (int i = 0; i < 1000; ++i) {  // warm up: both sides spinning, pages touched
      ping.put(i);
      (void)pong.get();
    }
    const auto start = clock_type::now();
    for (long i = 0; i < trips; ++i) {
      ping.put(i);
      if (pong.get() != i) std::exit(1);
    }
    const double s = std::chrono::duration<double>(clock_type::now() - start).count();
    ping.put(-1);
    (void)pong.get();
    ::waitpid(pid, nullptr, 0);
    return s / static_cast<double>(trips);
  });
}

double two_spsc_round_trip(long trips) {
  return best_of_3([&] {
    auto* ping = spsc_ring::create(8, 1024);
    auto* pong = spsc_ring::create(8, 1024);
    const pid_t pid = ::fork();
    if (pid == 0) {
      spsc_ring::reader r{*ping};
      spsc_ring::writer w{*pong};
      for (;;) {
        std::int64_t v;
        r.get(&v);
        w.put(&v);
        if (v < 0) break;
      }
      ::_exit(0);
    }
    spsc_ring::writer w{*ping};
    spsc_ring::reader r{*pong};
    std::int64_t v = 0;
    for (std::int64_t i = 0; i < 1000; ++i) {
      w.put(&i);
      r.get(&v);
    }
    const auto start = clock_type::now();
    for (std::int64_t i = 0; i < trips; ++i) {
      w.put(&i);
      r.get(&v);
      if (v != i) std::exit(1);
    }
    const double s = std::chrono::duration<double>(clock_type::now() - start).count();
    v = -1;
    w.put(&v);
    r.get(&v);
    ::waitpid(pid, nullptr, 0);
    ping->destroy();
    pong->destroy();
    return s / static_cast<double>(trips);
  });
}

// --- report ------------------------------------------------------------------------------------------------------

std::string rate(const throughput& t, std::size_t size) {
  char text[64];
  if (size >= 1024)
    std::snprintf(text, sizeof text, "%8.2f GB/s (%7.0f k/s)", t.bytes_per_second / 1e9, t.items_per_second / 1e3);
  else
    std::snprintf(text, sizeof text, "%8.2f M items/s        ", t.items_per_second / 1e6);
  return text;
}

void row_throughput(const char* name, const throughput& mine, const throughput& base, std::size_t size) {
  std::printf("%-30s %-28s %-28s %6.2f\n", name, rate(mine, size).c_str(), rate(base, size).c_str(),
              mine.items_per_second / base.items_per_second);
}

void row_latency(const char* name, double mine, double base, const char* base_name) {
  char a[32], b[48];
  std::snprintf(a, sizeof a, "%8.2f us", mine * 1e6);
  std::snprintf(b, sizeof b, "%8.2f us %s", base * 1e6, base_name);
  std::printf("%-30s %-28s %-28s %6.2f\n", name, a, b, mine / base);
}

}  // namespace

int main(int argc, char** argv) {
  const double scale = argc > 1 ? std::atof(argv[1]) : 1.0;
  auto n = [&](double count) { return std::max(2L, static_cast<long>(count * scale)); };

  std::printf("mp::Queue / mp::Pipe against raw baselines in the same run (best of 3; %ld online CPUs)\n",
              ::sysconf(_SC_NPROCESSORS_ONLN));
  std::printf("Queue ring: default 1 MiB. Throughput ratio = mp / baseline (higher is better); latency ratio = "
              "mp / baseline (lower is better).\n\n");
  std::printf("%-30s %-28s %-28s %6s\n", "benchmark", "mp", "baseline (SPSC ring)", "ratio");

  const auto spsc8 = spsc(n(20e6), 8);
  row_throughput("Queue 8 B 1->1", queue_ints(1, 1, n(10e6)), spsc8, 8);
  row_throughput("Queue 8 B 2->2", queue_ints(2, 2, n(6e6)), spsc8, 8);
  const auto spsc1k = spsc(n(2e6), 1024);
  row_throughput("Queue 1 KiB 1->1", queue_blobs(1, 1, n(1e6), 1024), spsc1k, 1024);
  row_throughput("Queue 1 KiB 2->2", queue_blobs(2, 2, n(1e6), 1024), spsc1k, 1024);
  const auto spsc1m = spsc(n(2000), std::size_t{1} << 20);
  row_throughput("Queue 1 MiB 1->1", queue_blobs(1, 1, n(1000), std::size_t{1} << 20), spsc1m, std::size_t{1} << 20);
  row_throughput("Queue 1 MiB 2->2", queue_blobs(2, 2, n(1000), std::size_t{1} << 20), spsc1m, std::size_t{1} << 20);

  std::printf("\n%-30s %-28s %-28s %6s\n", "round trip", "mp", "baseline", "ratio");
  row_latency("Pipe<int64> ping-pong", pipe_round_trip(n(20000)), raw_socketpair_round_trip(n(20000)),
              "(raw socketpair)");
  row_latency("two Queues put/get/put/get", two_queue_round_trip(n(200000)), two_spsc_round_trip(n(200000)),
              "(two SPSC rings)");
  return 0;
}
