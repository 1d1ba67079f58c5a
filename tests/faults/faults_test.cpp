// Fault injection across real processes: SIGKILL at random points of Queue producers and consumers, of lock
// holders, of Pool workers mid-chunk, of Manager clients mid-call and of the root of a process tree; an EINTR
// storm; file descriptor exhaustion; a fork from a 1 GiB parent. docs/reliability.md lists what each proves.
// Random points come from one seed: every test prints it ("MP_FAULT_SEED=<n>") and MP_FAULT_SEED replays it.
// Children report through shared memory and pipes. The parent watches a victim's progress counter to pick the
// moment of a kill (that polling is the fault injection, not synchronization: nothing waits on a sleep).
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <new>
#include <numeric>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <mp/connection.hpp>
#include <mp/manager.hpp>
#include <mp/pool.hpp>
#include <mp/process.hpp>
#include <mp/queue.hpp>
#include <mp/shared.hpp>
#include <mp/sync.hpp>

namespace {

using namespace std::chrono_literals;

// ---- reproducible random points -------------------------------------------------------------------------------

std::uint64_t fault_seed() {
  static const std::uint64_t seed = [] {
    if (const char* text = std::getenv("MP_FAULT_SEED"); text != nullptr && *text != '\0')
      return static_cast<std::uint64_t>(std::strtoull(text, nullptr, 0));
    std::random_device device;
    return (static_cast<std::uint64_t>(device()) << 32) ^ device();
  }();
  return seed;
}

// A generator for one test, seeded from the run's seed and the test's name (so tests stay independent), after
// printing the seed that replays it.
std::mt19937_64 fault_rng(const char* test) {
  std::fprintf(stderr, "MP_FAULT_SEED=%llu (%s)\n", static_cast<unsigned long long>(fault_seed()), test);
  std::uint64_t mix = fault_seed();
  for (const char* c = test; *c != '\0'; ++c) mix = mix * 1099511628211ull ^ static_cast<unsigned char>(*c);
  return std::mt19937_64(mix);
}

std::int64_t uniform(std::mt19937_64& rng, std::int64_t low, std::int64_t high) {
  return std::uniform_int_distribution<std::int64_t>(low, high)(rng);
}

// ---- shared accounting ----------------------------------------------------------------------------------------

// `n` default-constructed T in an anonymous shared mapping: forked children write, the parent reads.
template <class T>
class shared_array {
 public:
  explicit shared_array(std::size_t n) : n_(n) {
    void* p = ::mmap(nullptr, bytes(), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("mmap failed");
    data_ = static_cast<T*>(p);
    for (std::size_t i = 0; i < n_; ++i) new (data_ + i) T();
  }
  shared_array(const shared_array&) = delete;
  shared_array& operator=(const shared_array&) = delete;
  ~shared_array() { ::munmap(data_, bytes()); }
  T& operator[](std::size_t i) const { return data_[i]; }
  std::size_t size() const { return n_; }

 private:
  std::size_t bytes() const { return std::max<std::size_t>(n_ * sizeof(T), 1); }
  std::size_t n_;
  T* data_;
};

using counter = std::atomic<std::int64_t>;

// ---- processes ------------------------------------------------------------------------------------------------

template <class F, class... Args>
mp::Process start(F&& target, Args&&... args) {
  mp::Process process(std::forward<F>(target), std::forward<Args>(args)...);
  process.start();
  return process;
}

int finish(mp::Process& process) {
  process.join();
  return *process.exitcode();
}

// A failed check in a child: the exception reaches stderr and the exit code becomes 1.
void child_check(bool condition, const std::string& what) {
  if (!condition) throw std::runtime_error("child check failed: " + what);
}

[[noreturn]] void hang() {
  for (;;) ::pause();
}

// Waits (polling) until `done()` or `limit` passes; false on the limit.
template <class F>
bool poll_until(F&& done, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(20us);
  }
  return true;
}

// Every child of this process (all threads), for the orphan check.
std::set<pid_t> children() {
  std::set<pid_t> pids;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream in(task.path() / "children");
    for (pid_t pid = 0; in >> pid;) pids.insert(pid);
  }
  return pids;
}

std::set<std::string> dev_shm() {
  std::set<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm")) names.insert(entry.path().filename());
  return names;
}

// A pipe of plain fds that children capture (trivially copyable) and the parent reads.
struct report_pipe {
  int read_end = -1, write_end = -1;
  report_pipe() {
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    read_end = fds[0], write_end = fds[1];
  }
  ~report_pipe() { ::close(read_end), ::close(write_end); }
  static void send(int fd, const std::string& text) {
    const std::uint32_t n = static_cast<std::uint32_t>(text.size());
    (void)!::write(fd, &n, sizeof n);
    (void)!::write(fd, text.data(), n);
  }
  std::string receive() const {
    std::uint32_t n = 0;
    if (::read(read_end, &n, sizeof n) != sizeof n) return {};
    std::string text(n, '\0');
    std::size_t got = 0;
    while (got < n) {
      const ssize_t r = ::read(read_end, text.data() + got, n - got);
      if (r <= 0) return {};
      got += static_cast<std::size_t>(r);
    }
    return text;
  }
};

int square(int x) { return x * x; }

// On a failed REQUIRE, kills the children still running so the test fails instead of joining them forever.
struct kill_on_exit {
  std::vector<std::vector<mp::Process>*> groups;
  ~kill_on_exit() {
    for (auto* group : groups)
      for (auto& p : *group)
        if (p.pid() != 0 && p.is_alive()) p.kill();
  }
};

// ---- EINTR storm ----------------------------------------------------------------------------------------------

volatile sig_atomic_t alarms = 0;
extern "C" void count_alarm(int) { alarms = alarms + 1; }

// SIGALRM every 100 µs with SA_RESTART cleared: every blocking system call of this process is interrupted.
// The timer is per process and not inherited: children arm their own.
void arm_storm() {
  struct sigaction action {};
  action.sa_handler = count_alarm;
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0;  // no SA_RESTART
  ::sigaction(SIGALRM, &action, nullptr);
  const itimerval every{{0, 100}, {0, 100}};
  ::setitimer(ITIMER_REAL, &every, nullptr);
}

// Stops the timer; the handler stays installed so a signal still in flight is harmless.
void disarm_storm() {
  const itimerval off{};
  ::setitimer(ITIMER_REAL, &off, nullptr);
}

struct storm {
  storm() { arm_storm(); }
  ~storm() { disarm_storm(); }
};

// ---- fd exhaustion --------------------------------------------------------------------------------------------

// Open descriptors below the soft limit, counted without opening one (/proc/self/fd would need a descriptor).
int count_open_fds() {
  rlimit limit{};
  ::getrlimit(RLIMIT_NOFILE, &limit);
  int n = 0;
  for (int fd = 0; fd < static_cast<int>(limit.rlim_cur); ++fd) n += ::fcntl(fd, F_GETFD) != -1;
  return n;
}

// Lowers RLIMIT_NOFILE and fills the table so that exactly `free_slots` descriptors can still be opened.
void leave_free_fds(int free_slots) {
  int highest = 0;
  for (int fd = 0; fd < 4096; ++fd)
    if (::fcntl(fd, F_GETFD) != -1) highest = fd;
  const rlimit limit{static_cast<rlim_t>(highest + 64), static_cast<rlim_t>(highest + 64)};
  if (::setrlimit(RLIMIT_NOFILE, &limit) != 0) throw std::runtime_error("setrlimit failed");
  std::vector<int> fillers;
  for (int fd; (fd = ::fcntl(0, F_DUPFD_CLOEXEC, 0)) != -1;) fillers.push_back(fd);
  for (int i = 0; i < free_slots && !fillers.empty(); ++i) {
    ::close(fillers.back());
    fillers.pop_back();
  }
}

}  // namespace

// ---- Queue -----------------------------------------------------------------------------------------------------

TEST_CASE("Queue under load: SIGKILLed producers and consumers lose nothing a survivor put and duplicate nothing",
          "[faults][queue]") {
  auto rng = fault_rng("queue");
  constexpr int producers = 4, consumers = 3;
  constexpr std::int64_t per_producer = 6000, total = producers * per_producer;
  const int producer_kills = static_cast<int>(uniform(rng, 1, 2));
  const int consumer_kills = static_cast<int>(uniform(rng, 1, 2));
  using item = std::pair<std::int64_t, std::string>;
  // Items of 0..1499 bytes through a 4 KiB ring: records wrap, and those over 1 KiB stream in pieces.
  auto make_item = [](std::int64_t id) {
    return item{id, std::string(static_cast<std::size_t>(id * 7919 % 1500), static_cast<char>('a' + id % 26))};
  };
  mp::Queue<item> q({.capacity_bytes = 4096});

  shared_array<counter> attempted(producers), done(producers), taken(consumers), seen(total), corrupt(1);
  std::vector<mp::Process> producing, consuming;
  kill_on_exit guard{{&producing, &consuming}};
  for (int c = 0; c < consumers; ++c)
    consuming.push_back(start([&, c] {
      for (;;) {
        auto [id, pad] = q.get();
        if (id < 0) return;
        if (id >= total || pad != make_item(id).second) {
          corrupt[0].fetch_add(1);
          continue;
        }
        seen[static_cast<std::size_t>(id)].fetch_add(1);
        taken[static_cast<std::size_t>(c)].fetch_add(1);
      }
    }));
  for (int p = 0; p < producers; ++p)
    producing.push_back(start([&, p] {
      for (std::int64_t i = 0; i < per_producer; ++i) {
        attempted[static_cast<std::size_t>(p)].store(i + 1);  // before put: item i may be in the queue
        q.put(make_item(p * per_producer + i));
        done[static_cast<std::size_t>(p)].store(i + 1);  // after put: item i is in the queue
      }
    }));

  struct victim {
    mp::Process* process;
    counter* progress;
    std::int64_t threshold;
    bool consumer;
    bool killed = false;
  };
  std::vector<int> order(producers);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<victim> victims;
  std::set<int> dead_producers, dead_consumers;
  for (int i = 0; i < producer_kills; ++i) {
    const int p = order[static_cast<std::size_t>(i)];
    dead_producers.insert(p);
    victims.push_back({&producing[static_cast<std::size_t>(p)], &done[static_cast<std::size_t>(p)],
                       uniform(rng, 0, per_producer - 1), false});
  }
  for (int i = 0; i < consumer_kills; ++i) {
    const int c = static_cast<int>(uniform(rng, 0, consumers - 1));
    if (!dead_consumers.insert(c).second) continue;
    victims.push_back({&consuming[static_cast<std::size_t>(c)], &taken[static_cast<std::size_t>(c)],
                       uniform(rng, 0, 2000), true});
  }
  auto survivors_done = [&] {
    for (int p = 0; p < producers; ++p)
      if (!dead_producers.contains(p) && done[static_cast<std::size_t>(p)].load() < per_producer) return false;
    return true;
  };
  const bool all_killed = poll_until(
      [&] {
        bool pending = false;
        for (auto& v : victims) {
          if (v.killed) continue;
          // A consumer that the others outran is killed once nothing is left for it to take.
          if (v.progress->load() >= v.threshold || (v.consumer && survivors_done())) {
            v.process->kill();
            v.killed = true;
          } else {
            pending = true;
          }
        }
        return !pending;
      },
      30s);
  INFO("taken per consumer:" << [&] {
    std::string text;
    for (int c = 0; c < consumers; ++c) text += " " + std::to_string(taken[static_cast<std::size_t>(c)].load());
    return text;
  }());
  REQUIRE(all_killed);  // false: the queue wedged (every survivor blocked) after a kill
  // A victim that finished before its signal came is a survivor.
  for (int p = 0; p < producers; ++p) {
    const int code = finish(producing[static_cast<std::size_t>(p)]);
    CHECK((code == 0 || (dead_producers.contains(p) && code == -SIGKILL)));
    if (code == 0) dead_producers.erase(p);
  }
  for (int c = 0; c < consumers; ++c)
    if (!dead_consumers.contains(c)) q.put(item{-1, {}});
  for (int c = 0; c < consumers; ++c)
    CHECK(finish(consuming[static_cast<std::size_t>(c)]) == (dead_consumers.contains(c) ? -SIGKILL : 0));
  while (auto left = q.try_get()) {
    if (left->first >= 0 && left->first < total) seen[static_cast<std::size_t>(left->first)].fetch_add(1);
  }

  std::int64_t duplicated = 0, lost = 0, phantom = 0, in_flight_delivered = 0;
  for (int p = 0; p < producers; ++p) {
    const std::int64_t put = done[static_cast<std::size_t>(p)].load();
    const std::int64_t tried = attempted[static_cast<std::size_t>(p)].load();
    if (!dead_producers.contains(p)) CHECK(put == per_producer);
    for (std::int64_t i = 0; i < per_producer; ++i) {
      const std::int64_t n = seen[static_cast<std::size_t>(p * per_producer + i)].load();
      duplicated += n > 1;
      if (i < put) lost += n == 0;                       // fully put: must arrive
      else if (i < tried) in_flight_delivered += n;      // killed inside put: at most once
      else phantom += n;                                 // never put: must not arrive
    }
  }
  INFO("producers killed " << dead_producers.size() << ", consumers killed " << dead_consumers.size()
                           << ", in-flight items delivered " << in_flight_delivered);
  CHECK(corrupt[0].load() == 0);
  CHECK(duplicated == 0);
  CHECK(phantom == 0);
  // Only an item a killed consumer was taking may be lost: at most one per killed consumer.
  CHECK(lost <= static_cast<std::int64_t>(dead_consumers.size()));
  CHECK(q.qsize() == 0);
}

// ---- Lock ------------------------------------------------------------------------------------------------------

TEST_CASE("Lock holders SIGKILLed at random points never wedge the others, and the next holder is told",
          "[faults][lock]") {
  auto rng = fault_rng("lock");
  constexpr int workers = 4, kills = 2;
  constexpr std::int64_t iterations = 20000;
  struct guarded {
    std::int64_t a = 0, b = 0;  // equal whenever the lock is free and its last holder lived
    std::int64_t scratch[64] = {};
  };
  mp::Lock lock;
  shared_array<guarded> state(1);
  shared_array<counter> mine(workers), repairs(1), violations(1);
  std::vector<mp::Process> running;
  kill_on_exit guard{{&running}};
  for (int w = 0; w < workers; ++w)
    running.push_back(start([&, w] {
      auto& s = state[0];
      for (std::int64_t i = 0; i < iterations; ++i) {
        lock.acquire();
        if (lock.owner_died()) {
          repairs[0].fetch_add(1);
          s.b = s.a;
        }
        if (s.a != s.b) violations[0].fetch_add(1);
        ++s.a;
        for (auto& x : s.scratch) x += i;  // widen the window between the two halves of the update
        ++s.b;
        mine[static_cast<std::size_t>(w)].fetch_add(1);
        lock.release();
      }
    }));
  std::vector<int> order(workers);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  std::set<int> dead(order.begin(), order.begin() + kills);
  for (int w : dead) {
    const std::int64_t threshold = uniform(rng, 1, iterations - 1);
    REQUIRE(poll_until([&] { return mine[static_cast<std::size_t>(w)].load() >= threshold; }, 60s));
    running[static_cast<std::size_t>(w)].kill();
  }
  std::int64_t finished = 0;
  for (int w = 0; w < workers; ++w) {
    // A victim may have finished its loop before the signal came: then it is a survivor.
    const int code = finish(running[static_cast<std::size_t>(w)]);
    CHECK((code == 0 || (dead.contains(w) && code == -SIGKILL)));
    if (code == 0) CHECK(mine[static_cast<std::size_t>(w)].load() == iterations);
    finished += mine[static_cast<std::size_t>(w)].load();
  }
  REQUIRE(lock.acquire(5s));
  if (lock.owner_died()) repairs[0].fetch_add(1), state[0].b = state[0].a;
  CHECK(state[0].a == state[0].b);
  lock.release();
  CHECK(violations[0].load() == 0);
  CHECK(repairs[0].load() <= kills);
  // A holder killed between its two halves counted in `a` but not in `mine`.
  CHECK(state[0].a - finished >= 0);
  CHECK(state[0].a - finished <= kills);
}

// ---- Pool ------------------------------------------------------------------------------------------------------

TEST_CASE("A Pool worker SIGKILLed mid-chunk fails that map with WorkerLost and the pool's later results are exact",
          "[faults][pool]") {
  auto rng = fault_rng("pool");
  report_pipe reports;
  mp::Pool pool(2);
  for (int round = 0; round < 3; ++round) {
    const int n = 2000;
    const std::size_t chunksize = static_cast<std::size_t>(uniform(rng, 2, 200));
    const int victim_item = static_cast<int>(uniform(rng, 0, n - 1));
    CAPTURE(round, chunksize, victim_item);
    const int fd = reports.write_end;
    std::vector<int> input(n);
    std::iota(input.begin(), input.end(), 0);
    auto doomed = pool.map_async(
        [fd, victim_item](int x) {
          if (x == victim_item) {
            report_pipe::send(fd, std::to_string(::getpid()));
            hang();
          }
          return x * x;
        },
        input, chunksize);
    std::vector<mp::AsyncResult<int>> others;
    for (int i = 0; i < 20; ++i) others.push_back(pool.apply_async(square, i));
    const pid_t worker = std::stoi(reports.receive());
    REQUIRE(::kill(worker, SIGKILL) == 0);
    try {
      (void)doomed.get(60s);
      FAIL("a map whose worker was killed returned a result");
    } catch (const mp::WorkerLost& e) {
      CHECK(e.exitcode() == -SIGKILL);
    }
    for (int i = 0; i < 20; ++i) CHECK(others[static_cast<std::size_t>(i)].get(60s) == i * i);
    const auto squares = pool.map(square, input, static_cast<std::size_t>(uniform(rng, 1, 300)));
    REQUIRE(squares.size() == input.size());
    for (int i = 0; i < n; ++i) CHECK(squares[static_cast<std::size_t>(i)] == i * i);
  }
}

// ---- Manager ---------------------------------------------------------------------------------------------------

TEST_CASE("Manager clients SIGKILLed mid-call leave the server consistent and serving the survivors",
          "[faults][manager]") {
  auto rng = fault_rng("manager");
  constexpr int clients = 4, kills = 2;
  constexpr std::int64_t iterations = 300;
  constexpr std::size_t big = 200'000;  // a value set of this size is several writes: kills land mid-frame
  mp::Manager manager;
  auto lock = manager.lock();
  auto shared_text = manager.value<std::string>(std::string(big, 'a'));
  auto counter_value = manager.value<std::int64_t>(0);
  std::vector<mp::ListProxy<std::int64_t>> lists;
  for (int c = 0; c < clients; ++c) lists.push_back(manager.list<std::int64_t>());
  shared_array<counter> attempted(clients), done(clients), locked_done(clients);
  std::vector<mp::Process> running;
  kill_on_exit guard{{&running}};
  for (int c = 0; c < clients; ++c)
    running.push_back(start([&, c] {
      auto& mine = lists[static_cast<std::size_t>(c)];
      for (std::int64_t i = 0; i < iterations; ++i) {
        attempted[static_cast<std::size_t>(c)].store(i + 1);
        mine.append(i);
        done[static_cast<std::size_t>(c)].store(i + 1);
        if (i % 10 == 0) shared_text.set(std::string(big, static_cast<char>('a' + c)));
        if (i % 5 == 0) {
          std::scoped_lock guard(lock);
          counter_value.set(counter_value.get() + 1);
          locked_done[static_cast<std::size_t>(c)].fetch_add(1);
        }
      }
    }));
  std::vector<int> order(clients);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  std::set<int> dead(order.begin(), order.begin() + kills);
  for (int c : dead) {
    const std::int64_t threshold = uniform(rng, 1, iterations - 1);
    REQUIRE(poll_until([&] { return done[static_cast<std::size_t>(c)].load() >= threshold; }, 60s));
    running[static_cast<std::size_t>(c)].kill();
  }
  std::int64_t locked_total = 0;
  for (int c = 0; c < clients; ++c) {
    const int code = finish(running[static_cast<std::size_t>(c)]);
    CHECK((code == 0 || (dead.contains(c) && code == -SIGKILL)));
    if (code == 0) dead.erase(c);  // it finished before the signal came: a survivor
    locked_total += locked_done[static_cast<std::size_t>(c)].load();
    const auto list = lists[static_cast<std::size_t>(c)].copy();
    const auto put = done[static_cast<std::size_t>(c)].load();
    CAPTURE(c, put, list.size());
    if (!dead.contains(c)) CHECK(put == iterations);
    // Each append applied once or not at all: the list is 0, 1, ... up to the calls made.
    CHECK(static_cast<std::int64_t>(list.size()) >= put);
    CHECK(static_cast<std::int64_t>(list.size()) <= attempted[static_cast<std::size_t>(c)].load());
    for (std::size_t i = 0; i < list.size(); ++i) CHECK(list[i] == static_cast<std::int64_t>(i));
  }
  // A big value is replaced whole or not at all.
  const std::string text = shared_text.get();
  CHECK(text.size() == big);
  CHECK(std::all_of(text.begin(), text.end(), [&](char ch) { return ch == text.front(); }));
  // The dead holders' lock was released; the counter moved once per completed locked step (a victim may have
  // set it and died before counting).
  REQUIRE(lock.acquire(5s));
  const auto counted = counter_value.get();
  lock.release();
  CHECK(counted >= locked_total);
  CHECK(counted <= locked_total + kills);
}

// ---- process trees ---------------------------------------------------------------------------------------------

TEST_CASE("Killing the root of a process tree leaves no orphan after 2 s and no /dev/shm entry", "[faults][tree]") {
  (void)fault_rng("tree");
  const auto shm_before = dev_shm();
  const auto children_before = children();
  report_pipe reports;
  const int fd = reports.write_end;
  auto root = start([fd] {
    ::signal(SIGTERM, SIG_DFL);  // the test runner's fatal-signal report is not the tree's business
    mp::detail::shm_tracker::instance().start_new_family();  // this tree's names are tracked by this tree alone
    auto block = mp::SharedMemory::create(4096);
    mp::Queue<int> q;
    q.put(1);
    mp::Lock lock;
    mp::Process child([] {
      mp::Process grandchild(mp::ProcessOptions{.daemon = true}, [] { hang(); });
      grandchild.start();
      hang();
    });
    child.start();
    mp::Process daemon_child(mp::ProcessOptions{.daemon = true}, [] { hang(); });
    daemon_child.start();
    mp::Pool pool(2);
    (void)pool.map(square, std::vector<int>{1, 2, 3, 4}, 1);
    mp::Manager manager;
    manager.dict<int, int>().set(1, 1);
    report_pipe::send(fd, block.name());
    hang();
  });
  const std::string name = reports.receive();
  REQUIRE(!name.empty());
  const auto killed_at = std::chrono::steady_clock::now();
  root.kill();
  CHECK(finish(root) == -SIGKILL);
  auto strays = [&] {
    while (::waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    std::set<pid_t> left;
    for (pid_t pid : children())
      if (!children_before.contains(pid)) left.insert(pid);
    return left;
  };
  const bool clean = poll_until([&] { return strays().empty(); }, 2s);
  std::string described;
  for (pid_t pid : strays()) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    std::getline(stat, line);
    described += line.substr(0, line.find(')') + 3) + "; ";
  }
  INFO("processes left after 2 s: " << described);
  CHECK(clean);
  CHECK(std::chrono::steady_clock::now() - killed_at < 2500ms);
  // The tree's tracker unlinks the block once the whole tree is gone.
  CHECK(poll_until([&] { return !dev_shm().contains(name.substr(name.find_first_not_of('/'))); }, 2s));
  std::set<std::string> added;
  for (const auto& entry : dev_shm())
    if (!shm_before.contains(entry)) added.insert(entry);
  CHECK(added.empty());
  for (pid_t pid : strays()) ::kill(pid, SIGKILL);
}

// ---- EINTR storm -----------------------------------------------------------------------------------------------

TEST_CASE("A SIGALRM every 100 us without SA_RESTART changes no result of Queue, Pipe, Lock, Pool, Manager",
          "[faults][eintr]") {
  (void)fault_rng("eintr");
  const sig_atomic_t alarms_before = alarms;

  SECTION("Queue") {
    mp::Queue<std::int64_t> q({.capacity_bytes = 4096});
    constexpr std::int64_t n = 20000;
    storm s;
    auto producer = start([q]() mutable {
      storm child_storm;
      for (std::int64_t i = 0; i < n; ++i) q.put(i);
    });
    std::int64_t sum = 0;
    for (std::int64_t i = 0; i < n; ++i) sum += q.get();
    CHECK(sum == n * (n - 1) / 2);
    CHECK(finish(producer) == 0);
    const auto before = std::chrono::steady_clock::now();
    CHECK_THROWS_AS(q.get(30ms), mp::Empty);  // a timed wait is not cut short by the signals
    CHECK(std::chrono::steady_clock::now() - before >= 30ms);
  }
  SECTION("Pipe") {
    auto ends = mp::Pipe<std::string>();  // not a structured binding: clang 14 cannot capture those
    auto& here = ends.first;
    auto& there = ends.second;
    storm s;
    auto echo = start([&] {
      storm child_storm;
      here.close();
      for (;;) {
        std::string text;
        try {
          text = there.recv();
        } catch (const mp::EOFError&) {
          return;
        }
        there.send(text);
      }
    });
    there.close();
    for (int i = 0; i < 300; ++i) {
      const std::string text(static_cast<std::size_t>(i) * 997 % 300'000, static_cast<char>('a' + i % 26));
      here.send(text);
      CHECK(here.recv() == text);
    }
    const auto before = std::chrono::steady_clock::now();
    CHECK_FALSE(here.poll(30ms));
    CHECK(std::chrono::steady_clock::now() - before >= 30ms);
    here.close();
    CHECK(finish(echo) == 0);
  }
  SECTION("Lock") {
    mp::Lock lock;
    mp::Value<std::int64_t> total(0);
    storm s;
    std::vector<mp::Process> workers;
    for (int w = 0; w < 3; ++w)
      workers.push_back(start([&] {
        storm child_storm;
        for (int i = 0; i < 20000; ++i) {
          std::scoped_lock guard(lock);
          total.value() += 1;
        }
      }));
    for (auto& w : workers) CHECK(finish(w) == 0);
    CHECK(total.value() == 60000);
    lock.acquire();
    auto holder_sees = start([&] {
      storm child_storm;
      const auto before = std::chrono::steady_clock::now();
      child_check(!lock.acquire(30ms), "acquire(30ms) of a held lock returned true");
      child_check(std::chrono::steady_clock::now() - before >= 30ms, "acquire(30ms) returned early");
    });
    CHECK(finish(holder_sees) == 0);
    lock.release();
  }
  SECTION("Pool") {
    storm s;
    mp::Pool pool({.processes = 2, .initializer = [] { arm_storm(); }});
    std::vector<int> input(5000);
    std::iota(input.begin(), input.end(), 0);
    const auto squares = pool.map(square, input, 7);
    REQUIRE(squares.size() == input.size());
    for (int i = 0; i < 5000; ++i) CHECK(squares[static_cast<std::size_t>(i)] == i * i);
    std::vector<mp::AsyncResult<int>> results;
    for (int i = 0; i < 200; ++i) results.push_back(pool.apply_async(square, i));
    for (int i = 0; i < 200; ++i) CHECK(results[static_cast<std::size_t>(i)].get() == i * i);
  }
  SECTION("Manager") {
    mp::Manager manager;
    auto d = manager.dict<int, int>();
    auto q = manager.queue<int>();
    storm s;
    auto producer = start([q] {
      storm child_storm;
      for (int i = 0; i < 500; ++i) q.put(i);
    });
    int sum = 0;
    for (int i = 0; i < 500; ++i) sum += q.get();
    CHECK(sum == 500 * 499 / 2);
    CHECK(finish(producer) == 0);
    for (int i = 0; i < 300; ++i) d.set(i, i * 3);
    for (int i = 0; i < 300; ++i) CHECK(d.get(i) == std::optional<int>(i * 3));
    CHECK(d.size() == 300);
  }
  CHECK(alarms - alarms_before > 10);  // the storm really ran
}

// ---- fd exhaustion ---------------------------------------------------------------------------------------------

TEST_CASE("With no file descriptor left, creating a Pipe, Queue, Process, Pool or Manager throws a clear mp::Error",
          "[faults][fds]") {
  (void)fault_rng("fds");
  // Each attempt runs in a child whose table is full but for `free_slots` descriptors; it either works or throws
  // mp::Error, leaks no descriptor, and with none free it must throw.
  auto attempt = [](const char* what, int free_slots, const std::function<void()>& create) {
    auto child = start([&] {
      leave_free_fds(free_slots);
      const int open_before = count_open_fds();
      bool threw = false;
      try {
        create();
      } catch (const mp::Error& e) {
        threw = true;
        const std::string message = e.what();
        child_check(message.find("open files") != std::string::npos,
                    std::string(what) + ": the message does not say descriptors ran out: " + message);
      }
      child_check(free_slots > 0 || threw, std::string(what) + " succeeded with no descriptor free");
      child_check(count_open_fds() == open_before, std::string(what) + " leaked a descriptor");
    });
    const bool ended = child.join(30s);
    if (!ended) child.kill(), child.join();
    INFO(what << " with " << free_slots << " free descriptors");
    CHECK(ended);
    CHECK(*child.exitcode() == 0);
  };
  for (int free_slots : {0, 1, 2, 3, 5}) {
    attempt("Pipe", free_slots, [] {
      auto [a, b] = mp::Pipe<int>();
      a.send(1);
      child_check(b.recv() == 1, "Pipe round trip");
    });
    attempt("Queue", free_slots, [] {
      mp::Queue<int> q;
      q.put(1);
      child_check(q.get() == 1, "Queue round trip");
    });
    attempt("Process", free_slots, [] {
      mp::Process p([] {});
      p.start();
      p.join();
      child_check(p.exitcode() == 0, "Process exit code");
    });
    attempt("Pool", free_slots, [] {
      mp::Pool pool(1);
      child_check(pool.apply(square, 3) == 9, "Pool::apply");
    });
    attempt("Manager", free_slots, [] {
      mp::Manager manager;
      child_check(manager.value<int>(5).get() == 5, "Manager value");
    });
  }
}

// ---- big parents -----------------------------------------------------------------------------------------------

TEST_CASE("A parent holding 1 GiB of touched memory forks Processes and Pool workers that work", "[faults][memory]") {
  (void)fault_rng("memory");
  constexpr std::size_t size = std::size_t{1} << 30;
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(p != MAP_FAILED);
  auto* bytes = static_cast<unsigned char*>(p);
  for (std::size_t i = 0; i < size; i += 4096) bytes[i] = static_cast<unsigned char>(i >> 12);
  {
    mp::Queue<std::uint64_t> q;
    auto child = start([&] {
      std::uint64_t sum = 0;
      for (std::size_t i = 0; i < size; i += 1 << 20) sum += bytes[i];
      bytes[0] = 0xff;  // copy-on-write: the parent does not see it
      q.put(sum);
    });
    std::uint64_t expected = 0;
    for (std::size_t i = 0; i < size; i += 1 << 20) expected += bytes[i];
    CHECK(q.get() == expected);
    CHECK(finish(child) == 0);
    CHECK(bytes[0] == 0);
    mp::Pool pool(2);
    const auto squares = pool.map(square, std::vector<int>{1, 2, 3, 4, 5}, 1);
    CHECK(squares == std::vector<int>{1, 4, 9, 16, 25});
  }
  ::munmap(p, size);
}
