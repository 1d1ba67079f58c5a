// The mp side of the Python comparison (tests/benchmarks/compare_python.py runs this and Python's multiprocessing
// on the same workloads and prints one table). Each line of output is machine-readable:
//   <name> <value> <unit>
// Latency rows (us per operation) are the best of 5 batches (pool_chunksize1_<w>w: the median of 9); throughput
// rows (per second) the best of 3 runs.
// Raw baselines measured in the same run: fork+waitpid of a child that _exits at once, and an 8-byte ping-pong
// over a socketpair, i.e. what the OS alone costs for a process start and a pipe round trip.
//
// Usage: compare_mp [--quick] [--big | --manager | --pipe | --pool]
//   --quick: about a tenth of the work, for a smoke run
//   --big:   only the big-data rows (Pipe round trip and big messages, Queue and Pool items), at 256 KiB and 4 MiB
//            too (the sizes of plot_bigdata.py's plot)
//   --pipe:  only the Pipe rows (round trips, big messages at every size): before/after runs of the Pipe alone
//   --pool:  only the Pool rows (small items, big items, chunksize=1 by workers, cpu speedups): before/after runs
#include <mp/manager.hpp>
#include <mp/pool.hpp>
#include <mp/process.hpp>
#include <mp/queue.hpp>
#include <mp/connection.hpp>
#include <mp/shared.hpp>

#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;
using i64 = std::int64_t;

bool more_sizes = false;  // --big: 256 KiB and 4 MiB rows as well

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

/// Best (lowest) over `batches` of the time per operation of `batch(n)`, in microseconds: on a shared machine the
/// fastest batch is the one least disturbed by other load, and the Python side is measured the same way.
double best_us(int batches, i64 n, const std::function<void(i64)>& batch) {
  std::vector<double> per_op;
  for (int b = 0; b < batches; ++b) {
    auto t0 = clock_type::now();
    batch(n);
    per_op.push_back(seconds_since(t0) / static_cast<double>(n) * 1e6);
  }
  return *std::min_element(per_op.begin(), per_op.end());
}

/// The median over `batches` of the time per operation of `batch(n)`, in microseconds: for rows read as ratios.
double median_us(int batches, i64 n, const std::function<void(i64)>& batch) {
  std::vector<double> per_op;
  for (int b = 0; b < batches; ++b) {
    auto t0 = clock_type::now();
    batch(n);
    per_op.push_back(seconds_since(t0) / static_cast<double>(n) * 1e6);
  }
  std::sort(per_op.begin(), per_op.end());
  return per_op[per_op.size() / 2];
}

/// Best over `runs` of operations per second of `run(n)`.
double best_rate(int runs, i64 n, const std::function<void(i64)>& run) {
  double best = 0;
  for (int r = 0; r < runs; ++r) {
    auto t0 = clock_type::now();
    run(n);
    best = std::max(best, static_cast<double>(n) / seconds_since(t0));
  }
  return best;
}

void row(const char* name, double value, const char* unit) {
  std::printf("%s %.6g %s\n", name, value, unit);
  std::fflush(stdout);
}

// A custom shared type (Python: BaseManager.register('Counter', Counter)).
struct Counter {
  i64 total = 0;
  i64 add(i64 n) { return total += n; }
};
/// A custom type whose method returns its argument (manager_custom_<size>: a big value there and back).
struct Echo {
  std::vector<char> echo(std::vector<char> v) { return v; }
};

// The best rate of `runs` runs of run(n), each in a child made by fork (the proxies are inherited), which reports
// its time through a pipe. run(1) first, untimed: a child's first manager call opens its connection (connect,
// handshake, channel, session: a few round trips to a sleeping server), a cost per process, not per call; with it
// in the timed run a 2000-call --quick row measured mostly the connection (2-47 ms at load 8, vs ~1 us a call).
double best_rate_in_child(int runs, i64 n, const std::function<void(i64)>& run) {
  double best = 0;
  for (int r = 0; r < runs; ++r) {
    int fds[2];
    if (::pipe(fds) != 0) std::abort();
    pid_t pid = ::fork();
    if (pid == 0) {
      ::close(fds[0]);
      run(1);
      auto t0 = clock_type::now();
      run(n);
      double seconds = seconds_since(t0);
      if (::write(fds[1], &seconds, sizeof seconds) != sizeof seconds) ::_exit(1);
      ::_exit(0);
    }
    ::close(fds[1]);
    double seconds = 0;
    if (::read(fds[0], &seconds, sizeof seconds) != sizeof seconds) std::abort();
    ::close(fds[0]);
    ::waitpid(pid, nullptr, 0);
    best = std::max(best, static_cast<double>(n) / seconds);
  }
  return best;
}

void fail(const char* what) {
  std::fprintf(stderr, "compare_mp: %s\n", what);
  std::exit(1);
}

// ---- workloads ---------------------------------------------------------------------------------------------------

void nothing() {}

void raw_fork_waitpid(i64 n) {
  for (i64 i = 0; i < n; ++i) {
    pid_t pid = ::fork();
    if (pid < 0) fail("fork failed");
    if (pid == 0) ::_exit(0);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0) {
    }
  }
}

void process_start_join(i64 n) {
  for (i64 i = 0; i < n; ++i) {
    mp::Process p(nothing);
    p.start();
    p.join();
  }
}

bool full_io(ssize_t (*io)(int, void*, size_t), int fd, void* buf, std::size_t size) {
  auto* p = static_cast<char*>(buf);
  while (size > 0) {
    ssize_t k = io(fd, p, size);
    if (k <= 0) return false;
    p += k;
    size -= static_cast<std::size_t>(k);
  }
  return true;
}
ssize_t write_io(int fd, void* buf, size_t n) { return ::write(fd, buf, n); }

void raw_socketpair_ping_pong(i64 n) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) fail("socketpair failed");
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(sv[0]);
    i64 v = 0;
    while (full_io(::read, sv[1], &v, sizeof v) && full_io(write_io, sv[1], &v, sizeof v)) {
    }
    ::_exit(0);
  }
  ::close(sv[1]);
  for (i64 i = 0; i < n; ++i) {
    i64 v = i;
    if (!full_io(write_io, sv[0], &v, sizeof v) || !full_io(::read, sv[0], &v, sizeof v) || v != i) fail("ping-pong");
  }
  ::close(sv[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
}

void echo(mp::Connection<i64> conn) {
  for (;;) {
    i64 v = conn.recv();
    if (v < 0) return;
    conn.send(v);
  }
}

void pipe_round_trip(i64 n) {
  auto [here, there] = mp::Pipe<i64>();
  mp::Process child(echo, there);
  child.start();
  there.close();
  for (i64 i = 0; i < n; ++i) {
    here.send(i);
    if (here.recv() != i) fail("pipe echo returned a wrong value");
  }
  here.send(-1);
  child.join();
}

// ---- big messages through a Pipe (issue 14): MB/s of send_bytes -> recv_bytes, beside memcpy of the same size ---

void send_items(mp::Connection<i64> out, std::size_t size, i64 n) {
  const std::vector<std::byte> item(size, std::byte{7});
  for (i64 i = 0; i < n; ++i) out.send_bytes(item);
}

/// One run: a child sends n + 1 items of `size` bytes; the clock runs from the first item's arrival to the last's.
double pipe_simplex_mb_per_s(std::size_t size, i64 n) {
  auto [reader, writer] = mp::Pipe<i64>();
  mp::Process child(send_items, writer, size, n + 1);
  child.start();
  writer.close();
  if (reader.recv_bytes().size() != size) fail("pipe simplex: a wrong size");
  const auto t0 = clock_type::now();
  for (i64 i = 0; i < n; ++i)
    if (reader.recv_bytes().size() != size) fail("pipe simplex: a wrong size");
  const double mb_per_s = static_cast<double>(size) * static_cast<double>(n) / seconds_since(t0) / 1e6;
  child.join();
  return mb_per_s;
}

/// memcpy of `size` bytes between two buffers touched beforehand, n times: what one copy costs on this machine.
double memcpy_mb_per_s(std::size_t size, i64 n) {
  std::vector<std::byte> from(size, std::byte{1}), to(size, std::byte{2});
  const auto t0 = clock_type::now();
  for (i64 i = 0; i < n; ++i) {
    from[static_cast<std::size_t>(i) % size] = static_cast<std::byte>(i);
    std::memcpy(to.data(), from.data(), size);
    asm volatile("" : : "r"(to.data()) : "memory");
  }
  return static_cast<double>(size) * static_cast<double>(n) / seconds_since(t0) / 1e6;
}

/// Memory freshly mapped, touched and unmapped, n times: what any transport pays that hands out new memory per item
/// (on some VMs a fresh page costs tens of µs: then this, not memcpy, bounds a big message's speed).
double fresh_memory_mb_per_s(std::size_t size, i64 n) {
  const auto t0 = clock_type::now();
  for (i64 i = 0; i < n; ++i) {
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) fail("mmap failed");
    std::memset(p, 1, size);
    ::munmap(p, size);
  }
  return static_cast<double>(size) * static_cast<double>(n) / seconds_since(t0) / 1e6;
}

void pipe_big_rows(i64 scale) {
  struct size_row {
    const char* name;
    std::size_t size;
    i64 n;  // about 256 MiB per run
  };
  const size_row sizes[] = {{"64KiB", std::size_t{64} << 10, 4096}, {"256KiB", std::size_t{256} << 10, 1024},
                            {"1MiB", std::size_t{1} << 20, 256},       {"4MiB", std::size_t{4} << 20, 64},
                            {"16MiB", std::size_t{16} << 20, 16},      {"64MiB", std::size_t{64} << 20, 4}};
  for (const auto& s : sizes) {
    if (!more_sizes && (s.size == std::size_t{256} << 10 || s.size == std::size_t{4} << 20)) continue;
    const i64 n = std::max<i64>(2, s.n / scale);
    double pipe = 0, copy = 0, fresh = 0;
    for (int r = 0; r < 3; ++r) {
      pipe = std::max(pipe, pipe_simplex_mb_per_s(s.size, n));
      copy = std::max(copy, memcpy_mb_per_s(s.size, n));
      fresh = std::max(fresh, fresh_memory_mb_per_s(s.size, std::max<i64>(1, n / 4)));
    }
    row(("pipe_simplex_" + std::string(s.name)).c_str(), pipe, "MB/s");
    row(("pipe_simplex_memcpy_" + std::string(s.name)).c_str(), copy, "MB/s");
    row(("pipe_simplex_fresh_memory_" + std::string(s.name)).c_str(), fresh, "MB/s");
  }
}

template <class T>
void produce(mp::Queue<T> q, i64 n, T item) {
  for (i64 i = 0; i < n; ++i) q.put(item);
}

template <class T>
void queue_throughput(i64 n, T item) {
  mp::Queue<T> q;
  mp::Process producer(produce<T>, q, n, item);
  producer.start();
  for (i64 i = 0; i < n; ++i) (void)q.get();
  producer.join();
}

// ---- large Queue items (issue 14): MB/s through a default Queue, and memcpy of the same size in the same run ----

using byte_vector = std::vector<std::byte>;

// The producer makes its item once, then puts `n` of it for every run the consumer asks for (0: done). One producer
// and one queue serve the three runs of a row, as one Pool serves the Pool rows: the rate is the queue's, not that of
// a process start and of the item's first allocation (fresh pages cost ~8 us per 4 KiB page on this VM).
void produce_bytes(mp::Queue<byte_vector> q, mp::Queue<i64> runs, i64 size) {
  byte_vector item(static_cast<std::size_t>(size));
  for (std::size_t i = 0; i < item.size(); i += 4096) item[i] = static_cast<std::byte>(i >> 12);
  for (i64 n = runs.get(); n > 0; n = runs.get())
    for (i64 i = 0; i < n; ++i) q.put(item);
}

/// Best of 3 runs of n items of `size` bytes from one child to this process through a default Queue, in items/s;
/// the consumer checks each size.
double queue_bytes_rate(i64 n, i64 size) {
  mp::Queue<byte_vector> q;
  mp::Queue<i64> runs;
  mp::Process producer(produce_bytes, q, runs, size);
  producer.start();
  const double rate = best_rate(3, n, [&](i64 count) {
    runs.put(count);
    for (i64 i = 0; i < count; ++i)
      if (q.get().size() != static_cast<std::size_t>(size)) fail("queue item of the wrong size");
  });
  runs.put(0);
  producer.join();
  return rate;
}

/// MB/s (10^6 bytes) of n copies of `size` bytes between two buffers allocated and touched beforehand.
double memcpy_mbps(i64 n, i64 size) {
  byte_vector from(static_cast<std::size_t>(size), std::byte{1}), to(static_cast<std::size_t>(size));
  return best_rate(3, n, [&](i64 count) {
           for (i64 i = 0; i < count; ++i) {
             std::memcpy(to.data(), from.data(), from.size());
             asm volatile("" ::"r"(to.data()) : "memory");  // the copy is not optimized away
           }
         }) * static_cast<double>(size) / 1e6;
}

// 256 MiB per run at every size (a tenth with --quick, at least one item), best of 3 runs from one producer.
void queue_big_rows(i64 scale) {
  const std::pair<const char*, i64> sizes[] = {{"64KiB", i64{64} << 10}, {"256KiB", i64{256} << 10},
                                               {"1MiB", i64{1} << 20},    {"4MiB", i64{4} << 20},
                                               {"16MiB", i64{16} << 20},  {"64MiB", i64{64} << 20}};
  for (const auto& [label, size] : sizes) {
    if (!more_sizes && (size == i64{256} << 10 || size == i64{4} << 20)) continue;
    const i64 n = std::max<i64>(1, (i64{256} << 20) / size / scale);
    const std::string name = std::string("queue_") + label + "_MBps";
    row(name.c_str(), queue_bytes_rate(n, size) * static_cast<double>(size) / 1e6, "MB/s");
    row((std::string("memcpy_") + label + "_MBps").c_str(), memcpy_mbps(n * 4, size), "MB/s");
  }
}

i64 identity(i64 x) { return x; }

void value_lock_worker(mp::Value<i64> v, i64 n) {
  for (i64 i = 0; i < n; ++i) {
    std::lock_guard guard(v.get_lock());
    v.value() += 1;
  }
}

void value_lock_increments(i64 total) {
  mp::Value<i64> v(0);
  std::vector<mp::Process> workers;
  for (int w = 0; w < 2; ++w) workers.emplace_back(value_lock_worker, v, total / 2);
  for (auto& w : workers) w.start();
  for (auto& w : workers) w.join();
  if (v.value() != total / 2 * 2) fail("Value+Lock lost increments");
}

/// The lesson's cpu_task over [lo, hi); the empty asm keeps the compiler from replacing the loop by its closed form.
i64 sum_of_squares(i64 lo, i64 hi) {
  std::uint64_t result = 0;
  for (i64 i = lo; i < hi; ++i) {
    std::uint64_t v = static_cast<std::uint64_t>(i);
    asm volatile("" : "+r"(v));
    result += v * v;
  }
  return static_cast<i64>(result);
}
i64 chunk_sum(std::pair<i64, i64> c) { return sum_of_squares(c.first, c.second); }
void chunk_into(mp::Array<i64> out, std::size_t w, i64 lo, i64 hi) { out[w] = sum_of_squares(lo, hi); }

void cpu_speedups(bool quick) {
  const std::size_t workers = mp::cpu_count();
  i64 n = 1 << 20;  // calibrate: about 0.4 s of serial work (0.05 s with --quick)
  for (;;) {
    auto t0 = clock_type::now();
    volatile i64 sink = sum_of_squares(0, n);
    (void)sink;
    double t = seconds_since(t0);
    if (t > 0.05) {
      n = static_cast<i64>(static_cast<double>(n) * (quick ? 0.05 : 0.4) / t);
      break;
    }
    n *= 4;
  }
  std::vector<std::pair<i64, i64>> chunks;
  for (std::size_t w = 0; w < workers; ++w) {
    chunks.emplace_back(n * static_cast<i64>(w) / static_cast<i64>(workers),
                        n * static_cast<i64>(w + 1) / static_cast<i64>(workers));
  }
  const i64 expected = sum_of_squares(0, n);
  double serial = 1e300, threads = 1e300, processes = 1e300, pool_time = 1e300;
  for (int trial = 0; trial < 3; ++trial) {
    auto t0 = clock_type::now();
    volatile i64 s = sum_of_squares(0, n);
    serial = std::min(serial, seconds_since(t0));
    if (s != expected) fail("serial sum differs");

    t0 = clock_type::now();
    std::vector<i64> partial(workers);
    std::vector<std::thread> ts;
    for (std::size_t w = 0; w < workers; ++w) {
      ts.emplace_back([&partial, w, c = chunks[w]] { partial[w] = sum_of_squares(c.first, c.second); });
    }
    for (auto& t : ts) t.join();
    threads = std::min(threads, seconds_since(t0));
    std::uint64_t total = 0;
    for (i64 p : partial) total += static_cast<std::uint64_t>(p);
    if (static_cast<i64>(total) != expected) fail("thread sum differs");

    t0 = clock_type::now();
    mp::Array<i64> out(workers);
    std::vector<mp::Process> ps;
    for (std::size_t w = 0; w < workers; ++w) ps.emplace_back(chunk_into, out, w, chunks[w].first, chunks[w].second);
    for (auto& p : ps) p.start();
    for (auto& p : ps) p.join();
    processes = std::min(processes, seconds_since(t0));
    total = 0;
    for (std::size_t w = 0; w < workers; ++w) total += static_cast<std::uint64_t>(out[w]);
    if (static_cast<i64>(total) != expected) fail("process sum differs");

    t0 = clock_type::now();
    {
      mp::Pool pool(workers);
      auto parts = pool.map(chunk_sum, chunks, 1);
      total = 0;
      for (i64 p : parts) total += static_cast<std::uint64_t>(p);
    }
    pool_time = std::min(pool_time, seconds_since(t0));
    if (static_cast<i64>(total) != expected) fail("pool sum differs");
  }
  row("cpu_speedup_threads", serial / threads, "x");
  row("cpu_speedup_processes", serial / processes, "x");
  row("cpu_speedup_pool", serial / pool_time, "x");
}

// ---- big Pool items (issue 14) and chunksize=1 with more workers than CPUs ------------------------------------

std::size_t byte_count(std::vector<char> item) { return item.size(); }
std::vector<char> make_bytes(std::size_t n) { return std::vector<char>(n); }

struct big_size {
  const char* label;
  std::size_t bytes;
  i64 items;  // per run: about 128 MiB moved
};
constexpr big_size all_big_sizes[] = {{"64KiB", std::size_t{64} << 10, 2048}, {"256KiB", std::size_t{256} << 10, 512},
                                      {"1MiB", std::size_t{1} << 20, 128},      {"4MiB", std::size_t{4} << 20, 32},
                                      {"16MiB", std::size_t{16} << 20, 8},      {"64MiB", std::size_t{64} << 20, 4}};

std::vector<big_size> big_sizes() {
  std::vector<big_size> sizes;
  for (const big_size& s : all_big_sizes)
    if (more_sizes || (s.bytes != std::size_t{256} << 10 && s.bytes != std::size_t{4} << 20)) sizes.push_back(s);
  return sizes;
}

/// memcpy_<size>, pool_args_<size> (map(len, items, 1): the items cross to the workers) and pool_results_<size>
/// (map(make, sizes, 1): the items come back), in MB/s; Python's side does the same with bytes objects.
void pool_big_items(i64 scale) {
  char name[64];
  for (const big_size& size : big_sizes()) {
    const i64 items = std::max<i64>(2, size.items / scale);
    std::vector<char> from(size.bytes, 'x'), to(size.bytes);
    const double copy_rate = best_rate(5, items, [&](i64 n) {
      for (i64 i = 0; i < n; ++i) {
        std::memcpy(to.data(), from.data(), size.bytes);
        asm volatile("" : : "r"(to.data()) : "memory");
      }
    });
    std::snprintf(name, sizeof name, "memcpy_%s", size.label);
    row(name, copy_rate * static_cast<double>(size.bytes) / 1e6, "MB/s");
    // The same copy into a new vector per item, all kept to the end of the batch as map's results are: a plain copy
    // paying what any receiver of kept results pays for fresh pages (the kernel's first touch of each).
    const double fresh_rate = best_rate(3, items, [&](i64 n) {
      std::vector<std::vector<char>> kept;
      kept.reserve(static_cast<std::size_t>(n));
      for (i64 i = 0; i < n; ++i) kept.emplace_back(from.begin(), from.end());
      asm volatile("" : : "r"(kept.data()) : "memory");
    });
    std::snprintf(name, sizeof name, "memcpy_fresh_%s", size.label);
    row(name, fresh_rate * static_cast<double>(size.bytes) / 1e6, "MB/s");
  }
  mp::Pool pool(2);
  (void)pool.map(byte_count, std::vector<std::vector<char>>(2), 1);
  for (const big_size& size : big_sizes()) {
    const i64 items = std::max<i64>(2, size.items / scale);
    std::vector<std::vector<char>> in(static_cast<std::size_t>(items), std::vector<char>(size.bytes, 'x'));
    const double args_rate = best_rate(3, items, [&](i64) {
      const auto out = pool.map(byte_count, in, 1);
      if (out.back() != size.bytes) fail("pool args result");
    });
    std::snprintf(name, sizeof name, "pool_args_%s", size.label);
    row(name, args_rate * static_cast<double>(size.bytes) / 1e6, "MB/s");
    in.clear();
    const std::vector<std::size_t> sizes(static_cast<std::size_t>(items), size.bytes);
    const double results_rate = best_rate(3, items, [&](i64) {
      const auto out = pool.map(make_bytes, sizes, 1);
      if (out.back().size() != size.bytes) fail("pool results result");
    });
    std::snprintf(name, sizeof name, "pool_results_%s", size.label);
    row(name, results_rate * static_cast<double>(size.bytes) / 1e6, "MB/s");
  }
}

/// pool_chunksize1_<w>w: map(identity, n ints, 1) per item with w workers on this machine's CPUs; the median of 9
/// batches (Python's side too): the row is read as a ratio to the 2-worker one, and a best-of-5 of a few
/// milliseconds swung with the load of the moment (issue 14: 1.1x in one run, 4.7x in the next).
void pool_chunksize1_by_workers(i64 scale) {
  char name[64];
  for (std::size_t workers : {2, 8, 32, 64}) {
    mp::Pool pool(workers);
    (void)pool.map(identity, std::vector<i64>(workers * 2, 1), 1);  // every worker up
    std::snprintf(name, sizeof name, "pool_chunksize1_%zuw", workers);
    row(name, median_us(9, 20000 / scale, [&](i64 n) {
          std::vector<i64> in(static_cast<std::size_t>(n), 7);
          auto out = pool.map(identity, in, 1);
          if (out.size() != in.size()) fail("pool.map chunksize=1 result");
        }), "us/item");
  }
}

/// pool_map_auto, pool_map_chunksize1 and apply_async_round_trip on a Pool of cpu_count() workers.
void pool_small_rows(i64 scale) {
  mp::Pool pool;
  std::vector<i64> warm{1, 2, 3, 4};
  (void)pool.map(identity, warm);  // the workers are up before anything is timed
  row("pool_map_auto", best_us(5, 1000000 / scale, [&](i64 n) {
        std::vector<i64> in(static_cast<std::size_t>(n));
        for (i64 i = 0; i < n; ++i) in[static_cast<std::size_t>(i)] = i;
        auto out = pool.map(identity, in);
        if (out.size() != in.size() || out.back() != n - 1) fail("pool.map result");
      }), "us/item");
  row("pool_map_chunksize1", best_us(5, 20000 / scale, [&](i64 n) {
        std::vector<i64> in(static_cast<std::size_t>(n), 7);
        auto out = pool.map(identity, in, 1);
        if (out.size() != in.size()) fail("pool.map chunksize=1 result");
      }), "us/item");
  row("apply_async_round_trip", best_us(5, 5000 / scale, [&](i64 n) {
        for (i64 i = 0; i < n; ++i) {
          if (pool.apply_async(identity, i).get() != i) fail("apply_async result");
        }
      }), "us");
}

// ---- Manager big values and many clients (issue 14; helper mgr3's block) -----------------------------------------

// MB/s (10^6 bytes) of dict set + get pairs of a `size`-byte value from this process, counting both directions
// (2 x size per pair); the value read back is checked.
double manager_value_mbps(mp::DictProxy<std::string, std::vector<char>>& d, std::size_t size, i64 n) {
  std::vector<char> value(size, 'v');
  d.set("value", value);  // warm: the first big value sets up the segments and buffers that later ones reuse
  return best_rate(3, n, [&](i64 count) {
           for (i64 i = 0; i < count; ++i) {
             d.set("value", value);
             if (d.get("value")->size() != size) fail("manager value of the wrong size");
           }
         }) * 2.0 * static_cast<double>(size) / 1e6;
}

// MB/s of queue put + get pairs (manager_queue_<size>) and of custom calls that return their argument
// (manager_custom_<size>) with a `size`-byte value, counting both directions, as manager_value_mbps.
double manager_queue_mbps(mp::QueueProxy<std::vector<char>>& q, std::size_t size, i64 n) {
  std::vector<char> value(size, 'q');
  q.put(value);
  (void)q.get();
  return best_rate(3, n, [&](i64 count) {
           for (i64 i = 0; i < count; ++i) {
             q.put(value);
             if (q.get().size() != size) fail("manager queue item of the wrong size");
           }
         }) * 2.0 * static_cast<double>(size) / 1e6;
}
double manager_custom_mbps(mp::ObjectProxy<Echo>& echo, std::size_t size, i64 n) {
  std::vector<char> value(size, 'c');
  (void)echo.call(&Echo::echo, value);
  return best_rate(3, n, [&](i64 count) {
           for (i64 i = 0; i < count; ++i) {
             if (echo.call(&Echo::echo, value).size() != size) fail("manager custom result of the wrong size");
           }
         }) * 2.0 * static_cast<double>(size) / 1e6;
}

void manager_value_rows(i64 scale) {
  const std::pair<const char*, std::size_t> sizes[] = {{"64KiB", std::size_t{64} << 10}, {"1MiB", std::size_t{1} << 20},
                                                       {"16MiB", std::size_t{16} << 20}, {"64MiB", std::size_t{64} << 20}};
  mp::Manager manager;
  auto d = manager.dict<std::string, std::vector<char>>();
  auto q = manager.queue<std::vector<char>>();
  auto echo = manager.make<Echo>();
  for (const auto& [label, size] : sizes) {
    const i64 n = std::max<i64>(2, static_cast<i64>((std::size_t{256} << 20) / size) / scale / 2);
    row((std::string("manager_value_") + label).c_str(), manager_value_mbps(d, size, n), "MB/s");
    row((std::string("manager_queue_") + label).c_str(), manager_queue_mbps(q, size, n), "MB/s");
    row((std::string("manager_custom_") + label).c_str(), manager_custom_mbps(echo, size, n), "MB/s");
    row((std::string("manager_value_memcpy_") + label).c_str(), memcpy_mbps(2 * n, static_cast<i64>(size)), "MB/s");
  }
}

// ops/s of `clients` children (fork) doing dict set + get on their own key at once: each warms its connection up,
// waits for the start signal, runs n ops and reports its time; the rate is all ops over the slowest child's time.
double manager_clients_rate(mp::DictProxy<std::string, i64>& d, int clients, i64 n) {
  int go[2], done[2];
  if (::pipe(go) != 0 || ::pipe(done) != 0) fail("pipe failed");
  std::vector<pid_t> pids;
  for (int c = 0; c < clients; ++c) {
    pid_t pid = ::fork();
    if (pid == 0) {
      ::close(go[1]), ::close(done[0]);
      const std::string key = "client-" + std::to_string(c);
      d.set(key, 0);
      char signal = 0;
      if (::read(go[0], &signal, 1) != 1) ::_exit(1);
      const auto t0 = clock_type::now();
      for (i64 i = 0; i < n; i += 2) {
        d.set(key, i);
        if (d.get(key) != i) ::_exit(2);
      }
      const double seconds = seconds_since(t0);
      if (::write(done[1], &seconds, sizeof seconds) != sizeof seconds) ::_exit(1);
      ::_exit(0);
    }
    pids.push_back(pid);
  }
  ::close(go[0]), ::close(done[1]);
  const std::string start(static_cast<std::size_t>(clients), 'g');
  if (::write(go[1], start.data(), start.size()) != static_cast<ssize_t>(start.size())) fail("write failed");
  double slowest = 0;
  for (int c = 0; c < clients; ++c) {
    double seconds = 0;
    if (::read(done[0], &seconds, sizeof seconds) != sizeof seconds) fail("a client failed");
    slowest = std::max(slowest, seconds);
  }
  for (auto pid : pids) ::waitpid(pid, nullptr, 0);
  ::close(go[1]), ::close(done[0]);
  return static_cast<double>(n) * clients / slowest;
}

void manager_clients_rows(i64 scale) {
  mp::Manager manager;
  auto d = manager.dict<std::string, i64>();
  for (int clients : {1, 4, 16}) {
    double best = 0;
    for (int r = 0; r < 3; ++r) best = std::max(best, manager_clients_rate(d, clients, 20000 / scale));
    row(("manager_dict_ops_" + std::to_string(clients) + "clients").c_str(), best, "ops/s");
  }
}

// The Manager rows: dict ops, a custom call and a list append, big values, and 1/4/16 clients.
void manager_rows(i64 scale) {
  {
    mp::Manager manager;
    auto d = manager.dict<std::string, i64>();
    row("manager_dict_ops", best_rate(3, 20000 / scale, [&](i64 n) {
          for (i64 i = 0; i < n; i += 2) {
            d.set("key", i);
            if (d.get("key") != i) fail("manager dict round trip");
          }
        }), "ops/s");
    // From a child, as a worker would: a custom type's method call and a list append.
    auto counter = manager.make<Counter>();
    row("manager_custom_call", best_rate_in_child(3, 20000 / scale, [&](i64 n) {
          for (i64 i = 0; i < n; ++i) counter.call(&Counter::add, i64{1});
        }), "calls/s");
    auto l = manager.list<i64>();
    row("manager_list_append", best_rate_in_child(3, 20000 / scale, [&](i64 n) {
          for (i64 i = 0; i < n; ++i) l.append(i);
        }), "ops/s");
  }
  manager_value_rows(scale);
  manager_clients_rows(scale);
}

// ---- end of helper mgr3's block ----------------------------------------------------------------------------------

}  // namespace

MP_REGISTER_TYPE(Counter, "Counter", &Counter::add);
MP_REGISTER_TYPE(Echo, "Echo", &Echo::echo);

int main(int argc, char** argv) {
  mp::init(argc, argv);
  // --big: the big-item rows only; --manager: the Manager rows only (compare_python.py passes them on); --pipe:
  // the Pipe rows only (round trips and big messages at every size, for before/after runs of the Pipe alone).
  bool quick = false, big = false, manager_only = false, pipe_only = false, pool_only = false;
  for (int i = 1; i < argc; ++i) {
    quick |= std::string_view(argv[i]) == "--quick";
    big |= std::string_view(argv[i]) == "--big";
    manager_only |= std::string_view(argv[i]) == "--manager";
    pipe_only |= std::string_view(argv[i]) == "--pipe";
    pool_only |= std::string_view(argv[i]) == "--pool";
  }
  const i64 scale = quick ? 10 : 1;
  row("cpu_count", static_cast<double>(mp::cpu_count()), "cpus");
  if (big) {
    more_sizes = true;
    row("raw_socketpair_round_trip", best_us(5, 20000 / scale, raw_socketpair_ping_pong), "us");
    row("pipe_round_trip", best_us(5, 20000 / scale, pipe_round_trip), "us");
    pipe_big_rows(scale);
    queue_big_rows(scale);
    pool_big_items(scale);
    return 0;
  }
  if (manager_only) return manager_rows(scale), 0;
  if (pool_only) {
    pool_small_rows(scale);
    pool_big_items(scale);
    pool_chunksize1_by_workers(scale);
    cpu_speedups(quick);
    return 0;
  }
  if (pipe_only) {
    more_sizes = true;
    row("raw_socketpair_round_trip", best_us(5, 20000 / scale, raw_socketpair_ping_pong), "us");
    row("pipe_round_trip", best_us(5, 20000 / scale, pipe_round_trip), "us");
    pipe_big_rows(scale);
    return 0;
  }

  row("raw_fork_waitpid", best_us(5, 200 / scale, raw_fork_waitpid), "us");
  row("process_start_join", best_us(5, 200 / scale, process_start_join), "us");

  row("raw_socketpair_round_trip", best_us(5, 20000 / scale, raw_socketpair_ping_pong), "us");
  row("pipe_round_trip", best_us(5, 20000 / scale, pipe_round_trip), "us");
  pipe_big_rows(scale);

  row("queue_8B", best_rate(3, 1000000 / scale, [](i64 n) { queue_throughput<i64>(n, 42); }), "items/s");
  row("queue_1KiB", best_rate(3, 200000 / scale, [](i64 n) { queue_throughput(n, std::string(1024, 'x')); }),
      "items/s");
  queue_big_rows(scale);

  pool_small_rows(scale);

  row("value_lock_increments", best_rate(3, 2000000 / scale, value_lock_increments), "ops/s");

  manager_rows(scale);

  pool_big_items(scale);
  pool_chunksize1_by_workers(scale);

  cpu_speedups(quick);
  return 0;
}
