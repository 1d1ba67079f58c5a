// Soak: N minutes (default 10; --minutes M, fractions allowed; --seed S to replay) of mixed Queue, Pool, Manager
// (a Unix-socket one and a TCP one, in turn) and Semaphore / Condition / Event / Barrier traffic with random
// SIGKILLs of producers, consumers, pool workers, manager clients, signallers and waiters, while a thread sends both
// manager servers a SIGALRM every 100 us (an EINTR storm: their handler has no SA_RESTART). Prints messages per
// second and the counts of lost and duplicated items; both must be 0, except at most one item per killed queue or
// semaphore consumer (the item it was taking: the documented at-most-once case). Not run by ctest.
//   build/tests/benchmarks/soak --minutes 2
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <mp/mp.hpp>

namespace {

using namespace std::chrono_literals;
using counter = std::atomic<std::int64_t>;
using clock_type = std::chrono::steady_clock;

// Counters in an anonymous shared mapping, written by forked children.
class ledger {
 public:
  explicit ledger(std::size_t n) : n_(n) {
    void* p = ::mmap(nullptr, n * sizeof(counter), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) std::abort();
    data_ = static_cast<counter*>(p);
    for (std::size_t i = 0; i < n; ++i) new (data_ + i) counter(0);
  }
  ledger(const ledger&) = delete;
  ledger& operator=(const ledger&) = delete;
  ~ledger() { ::munmap(data_, n_ * sizeof(counter)); }
  counter& operator[](std::size_t i) const { return data_[i]; }

 private:
  std::size_t n_;
  counter* data_;
};

struct tally {
  std::int64_t messages = 0, kills = 0, lost = 0, allowed_lost = 0, duplicated = 0, failed_tasks = 0;
  double seconds = 0;
};

std::int64_t uniform(std::mt19937_64& rng, std::int64_t low, std::int64_t high) {
  return std::uniform_int_distribution<std::int64_t>(low, high)(rng);
}

// Waits for `progress` to reach `threshold` (or for `give_up()`), then kills `victim`.
template <class F>
void kill_at(mp::Process& victim, const counter& progress, std::int64_t threshold, F&& give_up) {
  while (progress.load() < threshold && !give_up()) std::this_thread::sleep_for(20us);
  victim.kill();
}

// 2 producers and 2 consumers through a 64 KiB ring; one of the four is killed at a random point.
void queue_round(std::mt19937_64& rng, tally& t) {
  constexpr std::int64_t per = 20000, producers = 2, consumers = 2, total = per * producers;
  mp::Queue<std::pair<std::int64_t, std::string>> q({.capacity_bytes = 64 << 10});
  ledger done(producers), attempted(producers), taken(consumers), seen(total);
  const auto began = clock_type::now();
  std::vector<mp::Process> prod, cons;
  for (std::int64_t c = 0; c < consumers; ++c) {
    cons.emplace_back([&, c] {
      for (;;) {
        auto [id, pad] = q.get();
        if (id < 0) return;
        seen[static_cast<std::size_t>(id)].fetch_add(1);
        taken[static_cast<std::size_t>(c)].fetch_add(1);
      }
    });
    cons.back().start();
  }
  for (std::int64_t p = 0; p < producers; ++p) {
    prod.emplace_back([&, p] {
      for (std::int64_t i = 0; i < per; ++i) {
        attempted[static_cast<std::size_t>(p)].store(i + 1);
        q.put({p * per + i, std::string(static_cast<std::size_t>(i % 700), 'x')});
        done[static_cast<std::size_t>(p)].store(i + 1);
      }
    });
    prod.back().start();
  }
  const bool kill_consumer = uniform(rng, 0, 1) == 1;
  const auto victim = static_cast<std::size_t>(uniform(rng, 0, 1));
  const std::int64_t threshold = uniform(rng, 1, per - 1);
  auto producers_done = [&] {  // a consumer the other outran is killed once nothing is left for it
    for (std::size_t p = 0; p < producers; ++p)
      if (done[p].load() < per) return false;
    return true;
  };
  if (kill_consumer) {
    kill_at(cons[victim], taken[victim], threshold / 2, producers_done);
  } else {
    kill_at(prod[victim], done[victim], threshold, [] { return false; });
  }
  ++t.kills;
  int consumers_dead = 0, live_consumers = 0;
  for (auto& p : prod) p.join();
  for (std::size_t c = 0; c < consumers; ++c)
    if (!(kill_consumer && c == victim)) ++live_consumers;
  for (int c = 0; c < live_consumers; ++c) q.put({-1, {}});
  for (auto& c : cons) {
    c.join();
    consumers_dead += *c.exitcode() == -SIGKILL;
  }
  while (auto left = q.try_get())
    if (left->first >= 0) seen[static_cast<std::size_t>(left->first)].fetch_add(1);
  std::int64_t lost = 0;
  for (std::size_t p = 0; p < producers; ++p) {
    for (std::int64_t i = 0; i < per; ++i) {
      const auto n = seen[static_cast<std::size_t>(static_cast<std::int64_t>(p) * per + i)].load();
      t.duplicated += n > 1;
      if (i < done[p].load()) lost += n == 0;
      t.messages += n > 0;
    }
  }
  t.lost += lost;
  t.allowed_lost += std::min<std::int64_t>(lost, consumers_dead);  // per round: one per killed consumer
  t.seconds += std::chrono::duration<double>(clock_type::now() - began).count();
}

int square(int x) { return x * x; }

// A map of 4000 items over 4 workers; one worker is killed mid-task. Only the map that ran on it may fail (with
// WorkerLost, reported); a second map must be exact.
void pool_round(std::mt19937_64& rng, mp::Pool& pool, int report_fd, int read_fd, tally& t) {
  const auto began = clock_type::now();
  const int n = 4000;
  const int victim_item = static_cast<int>(uniform(rng, 0, n - 1));
  std::vector<int> input(n);
  std::iota(input.begin(), input.end(), 0);
  auto doomed = pool.map_async(
      [report_fd, victim_item](int x) {
        if (x == victim_item) {
          const pid_t me = ::getpid();
          (void)!::write(report_fd, &me, sizeof me);
          for (;;) ::pause();
        }
        return x * x;
      },
      input, static_cast<std::size_t>(uniform(rng, 1, 100)));
  pid_t worker = 0;
  if (::read(read_fd, &worker, sizeof worker) == sizeof worker) ::kill(worker, SIGKILL);
  ++t.kills;
  try {
    (void)doomed.get();
  } catch (const mp::WorkerLost&) {
    ++t.failed_tasks;
  }
  const auto squares = pool.map(square, input, static_cast<std::size_t>(uniform(rng, 1, 100)));
  for (int i = 0; i < n; ++i) {
    t.lost += squares[static_cast<std::size_t>(i)] != i * i;
    ++t.messages;
  }
  t.seconds += std::chrono::duration<double>(clock_type::now() - began).count();
}

// 3 clients append to their own list; one is killed at a random point. Each append is applied once or not at all.
void manager_round(std::mt19937_64& rng, mp::Manager& manager, tally& t) {
  constexpr std::int64_t per = 400, clients = 3;
  const auto began = clock_type::now();
  std::vector<mp::ListProxy<std::int64_t>> lists;
  for (int c = 0; c < clients; ++c) lists.push_back(manager.list<std::int64_t>());
  ledger done(clients), attempted(clients);
  std::vector<mp::Process> running;
  for (std::int64_t c = 0; c < clients; ++c) {
    running.emplace_back([&, c] {
      for (std::int64_t i = 0; i < per; ++i) {
        attempted[static_cast<std::size_t>(c)].store(i + 1);
        lists[static_cast<std::size_t>(c)].append(i);
        done[static_cast<std::size_t>(c)].store(i + 1);
      }
    });
    running.back().start();
  }
  const auto victim = static_cast<std::size_t>(uniform(rng, 0, clients - 1));
  kill_at(running[victim], done[victim], uniform(rng, 1, per - 1), [] { return false; });
  ++t.kills;
  for (auto& r : running) r.join();
  for (std::size_t c = 0; c < clients; ++c) {
    const auto items = lists[c].copy();
    const auto size = static_cast<std::int64_t>(items.size());
    if (size < done[c].load()) t.lost += done[c].load() - size;
    if (size > attempted[c].load()) t.duplicated += size - attempted[c].load();
    for (std::size_t i = 0; i < items.size(); ++i)
      if (items[i] != static_cast<std::int64_t>(i)) ++t.duplicated;  // out of place: applied twice or reordered
    t.messages += size;
    lists[c].clear();
  }
  t.seconds += std::chrono::duration<double>(clock_type::now() - began).count();
}

// Waits until `done()` or `limit` passed; true if done.
template <class F>
bool wait_until(F&& done, std::chrono::milliseconds limit) {
  const auto end = clock_type::now() + limit;
  while (!done()) {
    if (clock_type::now() >= end) return false;
    std::this_thread::sleep_for(200us);
  }
  return true;
}

// Semaphore: a signaller releases `per` times, two waiters take (timed acquires); one of the three is killed at a
// random point. Every release that returned is taken once, except at most one per killed waiter (taken, not yet
// counted); nothing is taken that was not released.
void semaphore_round(std::mt19937_64& rng, tally& t) {
  constexpr std::int64_t per = 5000, waiters = 2;
  const auto began = clock_type::now();
  mp::Semaphore sem(0);
  ledger attempted(1), done(1), got(waiters), stop(1);
  mp::Process signaller([&] {
    for (std::int64_t i = 0; i < per; ++i) {
      attempted[0].store(i + 1);
      sem.release();
      done[0].store(i + 1);
    }
  });
  std::vector<mp::Process> takers;
  for (std::int64_t w = 0; w < waiters; ++w) {
    takers.emplace_back([&, w] {
      while (stop[0].load() == 0) {
        if (sem.acquire(20ms)) got[static_cast<std::size_t>(w)].fetch_add(1);
      }
    });
    takers.back().start();
  }
  signaller.start();
  const auto victim = uniform(rng, 0, waiters);  // waiters: the signaller
  const std::int64_t threshold = uniform(rng, 1, per - 1);
  if (victim == waiters) {
    kill_at(signaller, done[0], threshold, [] { return false; });
  } else {
    kill_at(takers[static_cast<std::size_t>(victim)], got[static_cast<std::size_t>(victim)], threshold / 2,
            [&] { return done[0].load() == per; });
  }
  ++t.kills;
  signaller.join();
  auto taken = [&] { return got[0].load() + got[1].load(); };
  (void)wait_until([&] { return taken() >= done[0].load(); }, 5000ms);
  stop[0].store(1);
  std::int64_t killed_waiters = 0;
  for (auto& w : takers) {
    w.join();
    killed_waiters += *w.exitcode() == -SIGKILL;
  }
  std::int64_t total = taken();
  while (sem.try_acquire()) ++total;  // released, not taken by anyone (the signaller died after release)
  const std::int64_t lost = std::max<std::int64_t>(0, done[0].load() - total);
  t.lost += lost;
  t.allowed_lost += std::min(lost, killed_waiters);
  t.duplicated += std::max<std::int64_t>(0, total - attempted[0].load());
  t.messages += total;
  t.seconds += std::chrono::duration<double>(clock_type::now() - began).count();
}

// Condition: a producer raises a shared counter `per` times under the condition's lock, notifying all; two
// consumers wait for each change. One of the three is killed at a random point (possibly holding the lock: the next
// holder sees owner_died()). Every live consumer sees the last value the producer published; nothing beyond it.
void condition_round(std::mt19937_64& rng, tally& t) {
  constexpr std::int64_t per = 3000, consumers = 2;
  const auto began = clock_type::now();
  mp::Condition cond;
  ledger value(1), done(1), seen(consumers), stop(1);
  mp::Process producer([&] {
    for (std::int64_t i = 0; i < per; ++i) {
      {
        std::scoped_lock guard(cond);
        value[0].store(i + 1);
        cond.notify_all();
      }
      done[0].store(i + 1);
    }
  });
  std::vector<mp::Process> watching;
  for (std::int64_t c = 0; c < consumers; ++c) {
    watching.emplace_back([&, c] {
      auto& mine = seen[static_cast<std::size_t>(c)];
      while (stop[0].load() == 0) {
        std::scoped_lock guard(cond);
        (void)cond.wait_for([&] { return value[0].load() > mine.load() || stop[0].load() != 0; }, 20ms);
        mine.store(value[0].load());
      }
    });
    watching.back().start();
  }
  producer.start();
  const auto victim = uniform(rng, 0, consumers);
  const std::int64_t threshold = uniform(rng, 1, per - 1);
  if (victim == consumers) {
    kill_at(producer, done[0], threshold, [] { return false; });
  } else {
    kill_at(watching[static_cast<std::size_t>(victim)], seen[static_cast<std::size_t>(victim)], threshold,
            [&] { return done[0].load() == per; });
  }
  ++t.kills;
  producer.join();
  const std::int64_t published = value[0].load();
  auto live_caught_up = [&] {
    for (std::size_t c = 0; c < consumers; ++c) {
      if (watching[c].is_alive() && seen[c].load() < published) return false;
    }
    return true;
  };
  const bool caught_up = wait_until(live_caught_up, 5000ms);
  stop[0].store(1);
  for (auto& w : watching) w.join();
  for (std::size_t c = 0; c < consumers; ++c) {
    if (*watching[c].exitcode() == -SIGKILL) continue;
    t.lost += !caught_up && seen[c].load() < published;
    t.duplicated += seen[c].load() > published;  // a value never published
    t.messages += seen[c].load();
  }
  t.seconds += std::chrono::duration<double>(clock_type::now() - began).count();
}

// Event: three waiters block in wait(); one is killed; a setter process sets the event and may be killed too (before
// or after set() returned). Once set() returned, or the parent set it after the setter died, every live waiter
// wakes.
void event_round(std::mt19937_64& rng, tally& t) {
  constexpr std::int64_t waiters = 3;
  const auto began = clock_type::now();
  mp::Event event;
  ledger waiting(waiters), woke(waiters), set_done(1);
  std::vector<mp::Process> blocked;
  for (std::int64_t w = 0; w < waiters; ++w) {
    blocked.emplace_back([&, w] {
      waiting[static_cast<std::size_t>(w)].store(1);
      event.wait();
      woke[static_cast<std::size_t>(w)].store(1);
    });
    blocked.back().start();
  }
  const auto victim = static_cast<std::size_t>(uniform(rng, 0, waiters - 1));
  kill_at(blocked[victim], waiting[victim], 1, [] { return false; });
  ++t.kills;
  const auto spin = uniform(rng, 0, 2000);
  mp::Process setter([&] {
    std::this_thread::sleep_for(std::chrono::microseconds(spin));
    event.set();
    set_done[0].store(1);
  });
  setter.start();
  if (uniform(rng, 0, 1) == 1) {
    setter.kill();
    ++t.kills;
  }
  setter.join();
  if (set_done[0].load() == 0) event.set();  // the setter died first: the parent sets it
  const bool all_woke = wait_until([&] {
    for (std::size_t w = 0; w < waiters; ++w) {
      if (w != victim && woke[w].load() == 0) return false;
    }
    return true;
  }, 5000ms);
  for (std::size_t w = 0; w < waiters; ++w) {
    if (w == victim) continue;
    t.lost += !all_woke && woke[w].load() == 0;
    t.messages += woke[w].load();
  }
  for (auto& b : blocked) {
    if (b.is_alive()) b.kill();  // a waiter that never woke (counted as lost above)
    b.join();
  }
  t.seconds += std::chrono::duration<double>(clock_type::now() - began).count();
}

// Barrier: three parties pass it `per` times (timed waits); one is killed at a random pass. The survivors are never
// wedged: each finishes all passes or gets BrokenBarrierError (counted as failed) within the timeout.
void barrier_round(std::mt19937_64& rng, tally& t) {
  constexpr std::int64_t per = 300, parties = 3;
  const auto began = clock_type::now();
  mp::Barrier barrier(static_cast<int>(parties));
  ledger passed(parties), broken(parties);
  std::vector<mp::Process> party;
  for (std::int64_t p = 0; p < parties; ++p) {
    party.emplace_back([&, p] {
      for (std::int64_t i = 0; i < per; ++i) {
        try {
          (void)barrier.wait(2s);
        } catch (const mp::BrokenBarrierError&) {
          broken[static_cast<std::size_t>(p)].store(1);
          return;
        }
        passed[static_cast<std::size_t>(p)].store(i + 1);
      }
    });
    party.back().start();
  }
  const auto victim = static_cast<std::size_t>(uniform(rng, 0, parties - 1));
  kill_at(party[victim], passed[victim], uniform(rng, 1, per - 1), [] { return false; });
  ++t.kills;
  const bool ended = wait_until([&] {
    for (auto& p : party) {
      if (p.is_alive()) return false;
    }
    return true;
  }, 10000ms);
  for (std::size_t p = 0; p < parties; ++p) {
    if (p == victim) continue;
    t.lost += !ended && party[p].is_alive();  // wedged
    t.failed_tasks += broken[p].load();
    t.messages += passed[p].load();
  }
  for (auto& p : party) {
    if (p.is_alive()) p.kill();
    p.join();
  }
  t.seconds += std::chrono::duration<double>(clock_type::now() - began).count();
}

// The pids of this process's children (its main thread's).
std::vector<pid_t> children() {
  std::vector<pid_t> pids;
  if (FILE* list = std::fopen(("/proc/self/task/" + std::to_string(::getpid()) + "/children").c_str(), "r")) {
    int pid = 0;
    while (std::fscanf(list, "%d", &pid) == 1) pids.push_back(pid);
    std::fclose(list);
  }
  return pids;
}

// A manager server forked from here (so it inherits the SIGALRM handler below), and its pid.
mp::Manager started_manager(mp::ManagerOptions options, pid_t& pid) {
  const auto before = children();
  options.start_method = mp::StartMethod::fork;
  mp::Manager manager(std::move(options));
  for (pid_t child : children()) {
    if (std::find(before.begin(), before.end(), child) == before.end()) pid = child;
  }
  return manager;
}

extern "C" void ignore_alarm(int) {}

void print_row(const char* name, const tally& t) {
  std::printf("%-8s %10lld %10.0f %6lld %6lld %8lld %10lld %8lld\n", name, static_cast<long long>(t.messages),
              t.seconds > 0 ? static_cast<double>(t.messages) / t.seconds : 0.0, static_cast<long long>(t.kills),
              static_cast<long long>(t.lost), static_cast<long long>(t.allowed_lost),
              static_cast<long long>(t.duplicated), static_cast<long long>(t.failed_tasks));
}

}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);
  double minutes = 10;
  std::uint64_t seed = std::random_device{}();
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--minutes") == 0) minutes = std::atof(argv[i + 1]);
    else if (std::strcmp(argv[i], "--seed") == 0) seed = std::strtoull(argv[i + 1], nullptr, 0);
  }
  std::printf("soak: %.1f minute(s), seed %llu (replay with --seed)\n", minutes, static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  int fds[2];
  if (::pipe(fds) != 0) return 1;  // before the Pool: its workers inherit the write end
  tally queue_t, pool_t, manager_t, tcp_manager_t, semaphore_t, condition_t, event_t, barrier_t;
  // The manager servers' SIGALRM handler (inherited through fork): a signal interrupts their poll and reads.
  struct sigaction action {};
  action.sa_handler = ignore_alarm;
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0;  // no SA_RESTART
  ::sigaction(SIGALRM, &action, nullptr);
  std::int64_t alarms_sent = 0;
  {
    mp::Pool pool(4);
    pid_t unix_server = 0, tcp_server = 0;
    mp::Manager manager = started_manager({}, unix_server);
    mp::Manager tcp_manager = started_manager(
        {.address = mp::Address::tcp("127.0.0.1", 0), .authkey = "soak-" + std::to_string(seed)}, tcp_server);
    std::atomic<bool> storming{true};
    std::thread storm([&] {
      while (storming.load()) {
        for (pid_t server : {unix_server, tcp_server}) alarms_sent += server > 0 && ::kill(server, SIGALRM) == 0;
        std::this_thread::sleep_for(100us);
      }
    });
    const auto end = clock_type::now() + std::chrono::duration<double, std::ratio<60>>(minutes);
    int rounds = 0;
    while (clock_type::now() < end) {
      queue_round(rng, queue_t);
      pool_round(rng, pool, fds[1], fds[0], pool_t);
      manager_round(rng, rounds % 2 == 0 ? manager : tcp_manager, rounds % 2 == 0 ? manager_t : tcp_manager_t);
      switch (rounds % 4) {
        case 0: semaphore_round(rng, semaphore_t); break;
        case 1: condition_round(rng, condition_t); break;
        case 2: event_round(rng, event_t); break;
        default: barrier_round(rng, barrier_t); break;
      }
      ++rounds;
    }
    storming = false;
    storm.join();
    std::printf("%d rounds; %lld SIGALRMs sent to the 2 manager servers\n", rounds, static_cast<long long>(alarms_sent));
  }
  std::printf("%-8s %10s %10s %6s %6s %8s %10s %8s\n", "traffic", "messages", "msgs/s", "kills", "lost", "allowed",
              "duplicated", "failed");
  print_row("Queue", queue_t);
  print_row("Pool", pool_t);
  print_row("Manager", manager_t);
  print_row("TCP Mgr", tcp_manager_t);
  print_row("Semaphor", semaphore_t);
  print_row("Conditn", condition_t);
  print_row("Event", event_t);
  print_row("Barrier", barrier_t);
  std::printf("lost: items fully put (or results) that never arrived; allowed: those of them within one per\n"
              "killed consumer in its round (the documented at-most-once item);\n"
              "failed: pool maps that ran on a killed worker and raised WorkerLost, barrier parties that got\n"
              "BrokenBarrierError after a party was killed (reported, not lost); Condition messages: values seen,\n"
              "Event: wake-ups, Barrier: passes\n");
  std::int64_t unexplained = queue_t.lost - queue_t.allowed_lost + semaphore_t.lost - semaphore_t.allowed_lost;
  std::int64_t duplicated = 0;
  for (const tally* t : {&pool_t, &manager_t, &tcp_manager_t, &condition_t, &event_t, &barrier_t}) {
    unexplained += t->lost;
  }
  for (const tally* t : {&queue_t, &pool_t, &manager_t, &tcp_manager_t, &semaphore_t, &condition_t, &event_t,
                         &barrier_t}) {
    duplicated += t->duplicated;
  }
  const bool ok = unexplained == 0 && duplicated == 0;
  std::printf("%s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
