// Tests for mp handles as Pool task arguments: every handle kind crosses to the workers (apply, starmap tuples,
// map items, the initializer through mp::task) under every start method, is used there, and the effect is seen in
// the parent; a worker keeps one descriptor per shared object however many tasks carry it, and drops those no
// longer sent. Tasks are functions, their data passed as arguments, so that they cross to fresh workers too.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <map>
#include <optional>
#include <variant>
#include <filesystem>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <mp/connection.hpp>
#include <mp/manager.hpp>
#include <mp/pool.hpp>
#include <mp/process.hpp>
#include <mp/queue.hpp>
#include <mp/shared.hpp>
#include <mp/shared_heap.hpp>
#include <mp/serialize.hpp>
#include <mp/sync.hpp>
#include <mp/detail/syscall.hpp>

#include "support/pool_checks.hpp"

using namespace std::chrono_literals;

namespace {

std::size_t open_fds(pid_t pid) {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& entry :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd"))
    ++n;
  return n;
}


// ---- tasks ----
void put_into(mp::Queue<int> q, int x) { q.put(x * 10); }
void put_joinable(mp::JoinableQueue<int> q, int x) { q.put(x); }
void put_simple(mp::SimpleQueue<std::string> q, std::string s) { q.put(s + "!"); }
void send_on(mp::Connection<int> c, int x) { c.send(x + 1); }
void add_to(mp::Value<int> v, int x) {
  std::lock_guard guard(v);
  v.value() += x;
}
void add_raw(mp::RawValue<long> v, long x) { v.fetch_add(x); }
void fill(mp::Array<int> a, int x) {
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = x + static_cast<int>(i);
}
void fill_raw(mp::RawArray<double> a, double x) {
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = x;
}
bool try_lock(mp::Lock l) {
  if (!l.try_lock()) return false;
  l.release();
  return true;
}
bool try_rlock(mp::RLock l) {
  if (!l.try_lock()) return false;
  l.release();
  return true;
}
void release_semaphore(mp::Semaphore s) { s.release(); }
void release_bounded(mp::BoundedSemaphore s) { s.release(); }
void set_event(mp::Event e) { e.set(); }
void notify_condition(mp::Condition c, mp::Value<int> flag) {
  std::lock_guard guard(c);
  flag.store(1);
  c.notify_all();
}
int wait_barrier(mp::Barrier b) { return b.wait(); }
void write_shm(mp::SharedMemory m, int x) {
  for (auto& b : m.buf()) b = static_cast<std::byte>(x);
}
void heap_add(mp::SharedHeap heap, int x) { heap.find_or_construct<int>("counter", 0) += x; }
void list_append(mp::ListProxy<int> l, int x) { l.append(x); }
void dict_set(mp::DictProxy<std::string, int> d, std::string k, int x) { d.set(k, x); }
void value_set(mp::ValueProxy<int> v, int x) { v.set(x); }
void queue_proxy_put(mp::QueueProxy<int> q, int x) { q.put(x); }
void event_proxy_set(mp::EventProxy e) { e.set(); }
bool lock_proxy_try(mp::LockProxy l) {
  if (!l.try_lock()) return false;
  l.release();
  return true;
}
void ns_set(mp::NamespaceProxy ns, int x) { ns.set("x", x); }

int add_pair(mp::Value<int> v, int x) {
  v.fetch_add(x);
  return x;
}
int put_item(mp::Queue<int> q) {
  q.put(1);
  return 0;
}
pid_t touch_value(mp::Value<int> v) {
  v.fetch_add(1);
  return ::getpid();
}
pid_t own_pid() { return ::getpid(); }

}  // namespace

TEST_CASE("Every queue kind and Connection passed to apply is used in the worker", "[pool_handles]") {
  mp::Pool pool(2);
  mp::Queue<int> q;
  pool.apply(put_into, q, 4);
  CHECK(q.get(5s) == 40);
  mp::JoinableQueue<int> jq;
  pool.apply(put_joinable, jq, 7);
  CHECK(jq.get(5s) == 7);
  jq.task_done();
  mp::SimpleQueue<std::string> sq;
  pool.apply(put_simple, sq, std::string("hi"));
  CHECK(sq.get() == "hi!");
  auto [reader, writer] = mp::Pipe<int>(false);
  pool.apply(send_on, writer, 41);
  REQUIRE(reader.poll(5s));
  CHECK(reader.recv() == 42);
}

TEST_CASE("Value, Array and their raw kinds passed to apply are written by the worker", "[pool_handles]") {
  mp::Pool pool(2);
  mp::Value<int> v(1);
  mp::RawValue<long> rv(0);
  mp::Array<int> a(5);
  mp::RawArray<double> ra(3);
  std::vector<mp::AsyncResult<void>> results;
  for (int i = 0; i < 10; ++i) results.push_back(pool.apply_async(add_to, v, 2));
  for (int i = 0; i < 10; ++i) results.push_back(pool.apply_async(add_raw, rv, 3L));
  for (auto& r : results) r.get();
  pool.apply(fill, a, 100);
  pool.apply(fill_raw, ra, 2.5);
  CHECK(v.value() == 21);
  CHECK(rv.load() == 30);
  CHECK(a.to_vector() == std::vector<int>{100, 101, 102, 103, 104});
  CHECK(ra.to_vector() == std::vector<double>{2.5, 2.5, 2.5});
}

TEST_CASE("The seven synchronization types passed to apply act on the parent's objects", "[pool_handles]") {
  mp::Pool pool(2);
  mp::Lock lock;
  mp::RLock rlock;
  CHECK(pool.apply(try_lock, lock));
  lock.acquire();
  CHECK_FALSE(pool.apply(try_lock, lock));
  lock.release();
  rlock.acquire();
  CHECK_FALSE(pool.apply(try_rlock, rlock));
  rlock.release();
  CHECK(pool.apply(try_rlock, rlock));

  mp::Semaphore sem(0);
  pool.apply(release_semaphore, sem);
  CHECK(sem.acquire(5s));
  mp::BoundedSemaphore bounded(1);
  bounded.acquire();
  pool.apply(release_bounded, bounded);
  CHECK(bounded.acquire(5s));
  bounded.release();
  CHECK_THROWS_AS(pool.apply(release_bounded, bounded), mp::RemoteError);  // above its bound, in the worker

  mp::Event event;
  pool.apply(set_event, event);
  CHECK(event.is_set());

  mp::Condition cond;
  mp::Value<int> flag(0);
  {
    std::unique_lock guard(cond);
    auto done = pool.apply_async(notify_condition, cond, flag);
    CHECK(cond.wait_for([&] { return flag.load() == 1; }, 10s));
    guard.unlock();
    done.get();
  }

  mp::Barrier barrier(2);
  auto other = pool.apply_async(wait_barrier, barrier);
  const int mine = barrier.wait();
  CHECK(mine + other.get() == 1);  // indices 0 and 1
}

TEST_CASE("SharedMemory and SharedHeap passed to apply are written by the worker", "[pool_handles]") {
  const std::size_t shm_before = mp_test::own_shm_entries();
  {
    mp::Pool pool(2);
    auto block = mp::SharedMemory::create(4096);
    pool.apply(write_shm, block, 7);
    for (auto b : block.buf()) REQUIRE(b == std::byte{7});
    block.unlink();
    mp::SharedHeap heap(1 << 20);
    std::vector<mp::AsyncResult<void>> results;
    for (int i = 1; i <= 5; ++i) results.push_back(pool.apply_async(heap_add, heap, i));
    for (auto& r : results) r.get();
    REQUIRE(heap.find<int>("counter") != nullptr);
    CHECK(*heap.find<int>("counter") <= 15);  // unsynchronized adds: at least one, each at most once
    CHECK(*heap.find<int>("counter") >= 1);
  }
  CHECK(mp_test::own_shm_entries() == shm_before);
}

TEST_CASE("Manager proxies passed to apply change the manager's objects", "[pool_handles]") {
  mp::Manager manager;
  mp::Pool pool(2);
  auto list = manager.list<int>();
  auto dict = manager.dict<std::string, int>();
  auto value = manager.value<int>(0);
  auto queue = manager.queue<int>();
  auto event = manager.event();
  auto lock = manager.lock();
  auto ns = manager.namespace_();
  pool.apply(list_append, list, 3);
  pool.apply(dict_set, dict, std::string("k"), 5);
  pool.apply(value_set, value, 9);
  pool.apply(queue_proxy_put, queue, 11);
  pool.apply(event_proxy_set, event);
  CHECK(pool.apply(lock_proxy_try, lock));
  lock.acquire();
  CHECK_FALSE(pool.apply(lock_proxy_try, lock));
  lock.release();
  pool.apply(ns_set, ns, 13);
  CHECK(list.get(0) == 3);
  CHECK(dict.get("k") == 5);
  CHECK(value.get() == 9);
  CHECK(queue.get() == 11);
  CHECK(event.is_set());
  CHECK(ns.get<int>("x") == 13);
}

TEST_CASE("Handles cross inside starmap tuples and map items", "[pool_handles]") {
  mp::Pool pool(2);
  mp::Value<int> v(0);
  std::vector<std::tuple<mp::Value<int>, int>> pairs;
  for (int i = 1; i <= 100; ++i) pairs.emplace_back(v, i);
  const auto echoed = pool.starmap(add_pair, pairs, 7);
  CHECK(v.value() == 5050);
  CHECK(echoed.size() == 100);
  std::vector<mp::Queue<int>> queues(6);
  pool.map(put_item, queues, 1);
  for (auto& q : queues) CHECK(q.get(5s) == 1);
  int got = 0;
  for (int r : pool.imap(put_item, queues, 2)) got += 1 + r;
  CHECK(got == 6);
  for (auto& q : queues) CHECK(q.get(5s) == 1);
}

TEST_CASE("A worker decodes a task's handles into empty handles, not new shared objects", "[pool_handles]") {
  // What a worker decodes a task's arguments into before load() fills them in: a default-constructed Queue would
  // make a ring and a mailbox of its own (two descriptors), a default Lock or Value a fresh shared chunk, for
  // every task. The blanks hold nothing.
  using blank_args = std::tuple<int, mp::Queue<int>, mp::JoinableQueue<int>, mp::SimpleQueue<int>, mp::Lock, mp::RLock,
                                mp::Semaphore, mp::BoundedSemaphore, mp::Event, mp::Condition, mp::Barrier,
                                mp::Value<int>, mp::RawValue<long>, mp::Array<int>, mp::RawArray<double>>;
  STATIC_REQUIRE(mp::detail::blank_for_load<blank_args>::handle);
  STATIC_REQUIRE(!mp::detail::blank_for_load<std::tuple<int, std::string>>::handle);
  const std::size_t before = open_fds(::getpid());
  std::vector<blank_args> blanks;
  for (int i = 0; i < 100; ++i) blanks.push_back(mp::detail::blank_for_load<blank_args>::make());
  CHECK(open_fds(::getpid()) == before);
  CHECK(std::get<1>(blanks.front()).closed());  // a Queue without a state
  // The same arguments made by default hold descriptors: what every task used to cost its worker.
  std::vector<blank_args> made(3);
  CHECK(open_fds(::getpid()) > before);
}

namespace {
// In a worker, from its first task on: the shared objects made there (every Queue, Value, Lock, ... of its own starts
// with a memfd_create through the syscall seam), counted by the seam's test hook.
std::atomic<int> objects_made{0};
int count_objects_made(const char* call) noexcept {
  if (std::strcmp(call, "memfd_create") == 0) objects_made.fetch_add(1);
  return 0;  // the call goes ahead
}
int start_counting() {
  if (mp::detail::the_fault_hook().load() != &count_objects_made) mp::detail::the_fault_hook().store(&count_objects_made);
  return objects_made.load();
}
// Uses every handle it got; returns the shared objects made in this worker so far.
int use_nested(std::vector<mp::Value<int>> values, std::optional<mp::Lock> lock, std::map<std::string, mp::Queue<int>> queues,
               std::variant<int, mp::RawValue<long>> raw, std::array<mp::Event, 2> events, std::vector<mp::Array<int>> arrays) {
  for (auto& v : values) v.fetch_add(1);
  if (lock && lock->try_lock()) lock->release();
  for (auto& [name, q] : queues) q.put(static_cast<int>(name.size()));
  std::get<mp::RawValue<long>>(raw).fetch_add(1);
  events[1].set();
  arrays.at(0).fetch_add(0, 1);
  return start_counting();
}
int use_nested_item(std::vector<mp::Value<int>> values) {
  for (auto& v : values) v.fetch_add(1);
  return start_counting();
}
}  // namespace

TEST_CASE("Handles nested in containers decode into empty handles: a worker makes no shared object per task",
          "[pool_handles]") {
  // The archive builds a container's elements (a vector's, a map's values, an optional's, a variant's, a
  // std::array's) as empty handles that load() fills in, as it does for top-level arguments; a default-constructed
  // Value, Lock or Queue would be a new shared object (a memfd) made and dropped with every task.
  mp::Pool pool(2);
  mp::Value<int> a(0), b(0);
  mp::Lock lock;
  mp::Queue<int> q1, q2;
  mp::RawValue<long> raw(0);
  mp::Event e0, e1;
  mp::Array<int> counts(1);
  const std::vector<mp::Value<int>> values{a, b, a};
  const std::map<std::string, mp::Queue<int>> queues{{"one", q1}, {"three", q2}};
  const int tasks = 40;
  std::vector<mp::AsyncResult<int>> results;
  for (int i = 0; i < tasks; ++i)
    results.push_back(pool.apply_async(use_nested, values, std::optional<mp::Lock>(lock), queues,
                                       std::variant<int, mp::RawValue<long>>(raw), std::array<mp::Event, 2>{e0, e1},
                                       std::vector<mp::Array<int>>{counts}));
  for (auto& r : results) CHECK(r.get() == 0);
  CHECK(a.load() == 2 * tasks);
  CHECK(b.load() == tasks);
  CHECK(raw.load() == tasks);
  CHECK(counts[0] == tasks);
  CHECK(e1.is_set());
  CHECK_FALSE(e0.is_set());
  for (int i = 0; i < tasks; ++i) {
    CHECK(q1.get(5s) == 3);
    CHECK(q2.get(5s) == 5);
  }
  // As map items: a vector of Values per item.
  const std::vector<std::vector<mp::Value<int>>> items(200, std::vector<mp::Value<int>>{a, b});
  for (int made : pool.map(use_nested_item, items, 3)) CHECK(made == 0);
  CHECK(a.load() == 2 * tasks + 200);
  CHECK(b.load() == tasks + 200);
}

namespace {
// A struct holding handles that opts in to empty handles for decoding (mp::for_load_t), and one that does not.
struct job_with_handles {
  mp::Queue<int> out;
  mp::Lock lock;
  int n = 0;
  job_with_handles() = default;
  job_with_handles(mp::Queue<int> q, mp::Lock l, int x) : out(std::move(q)), lock(std::move(l)), n(x) {}
  explicit job_with_handles(mp::for_load_t tag) : out(tag), lock(tag) {}
  template <class Archive>
  void serialize(Archive& ar) {
    ar(out, lock, n);
  }
};
struct plain_job {
  mp::Value<int> total;
  int n = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(total, n);
  }
};
int run_job(job_with_handles job) {
  if (job.lock.try_lock()) job.lock.release();
  job.out.put(job.n);
  return start_counting();
}
int run_plain_job(plain_job job) {
  job.total.fetch_add(job.n);
  return start_counting();
}
}  // namespace

TEST_CASE("A struct holding handles decodes into empty handles when it has an mp::for_load_t constructor",
          "[pool_handles]") {
  mp::Pool pool(2);
  mp::Queue<int> out;
  mp::Lock lock;
  std::vector<mp::AsyncResult<int>> results;
  for (int i = 0; i < 30; ++i) results.push_back(pool.apply_async(run_job, job_with_handles(out, lock, i)));
  for (auto& r : results) CHECK(r.get() == 0);
  std::vector<job_with_handles> jobs;
  for (int i = 0; i < 60; ++i) jobs.emplace_back(out, lock, 100 + i);
  for (int made : pool.map(run_job, jobs, 4)) CHECK(made == 0);
  long sum = 0;
  for (int i = 0; i < 90; ++i) sum += out.get(5s);
  CHECK(sum == 29 * 30 / 2 + 60 * 100 + 59 * 60 / 2);
  // Without that constructor the struct still crosses and works, but its default constructor makes a Value of its
  // own in the worker for every task (the count above would see them).
  mp::Value<int> total(0);
  std::vector<mp::AsyncResult<int>> plain;
  for (int i = 1; i <= 20; ++i) plain.push_back(pool.apply_async(run_plain_job, plain_job{total, i}));
  int most = 0;
  for (auto& r : plain) most = std::max(most, r.get());
  CHECK(total.load() == 210);
  CHECK(most > 0);
}

namespace {
int add_to_both(mp::Value<int> a, mp::Value<int> b, int x) {
  a.fetch_add(x);
  b.fetch_add(2 * x);
  return x;
}
int add_one(mp::Value<int> v, int x) {
  v.fetch_add(x);
  return x;
}
int no_handle(int x) { return x; }
}  // namespace

// A worker is told "the same handles as your previous task" instead of their keys (handles.hpp): runs of one
// handle, switches between handles, two handles at once, tasks without any, more objects than a worker keeps, and
// worker replacement must each still reach the object the task was given.
TEST_CASE("Runs of tasks with the same handles, other handles and none each act on their own objects",
          "[pool_handles]") {
  mp::Pool pool({.processes = 2, .maxtasksperchild = 97});
  std::vector<mp::Value<int>> values;
  for (int i = 0; i < 40; ++i) values.emplace_back(0);  // more than a worker keeps (worker_keeps = 32)
  std::vector<int> expected(values.size(), 0);
  std::vector<mp::AsyncResult<int>> pending;
  unsigned state = 12345;
  auto next = [&](unsigned n) {
    state = state * 1103515245u + 12345u;
    return (state >> 16) % n;
  };
  int sent = 0;
  while (sent < 6000) {
    const std::size_t a = next(static_cast<unsigned>(values.size()));
    const std::size_t b = next(static_cast<unsigned>(values.size()));
    const unsigned kind = next(4);
    const unsigned run = 1 + next(12);
    for (unsigned r = 0; r < run; ++r, ++sent) {
      const int x = 1 + sent % 5;
      if (kind == 0) {
        pending.push_back(pool.apply_async(add_one, values[a], x));
        expected[a] += x;
      } else if (kind == 1) {
        pending.push_back(pool.apply_async(add_to_both, values[a], values[b], x));
        expected[a] += x;
        expected[b] += 2 * x;
      } else if (kind == 2) {
        pending.push_back(pool.apply_async(no_handle, x));
      } else {  // sequential: the worker has nothing queued behind it
        CHECK(pool.apply(add_one, values[a], x) == x);
        expected[a] += x;
      }
      if (pending.size() >= 64) {
        for (auto& result : pending) (void)result.get();
        pending.clear();
      }
    }
  }
  for (auto& result : pending) (void)result.get();
  for (std::size_t i = 0; i < values.size(); ++i) {
    INFO("value " << i);
    CHECK(values[i].load() == expected[i]);
  }
}

TEST_CASE("100,000 tasks carrying the same Value keep each worker's descriptor count bounded", "[pool_handles]") {
  mp::Pool pool(2);
  mp::Value<int> v(0);
  std::vector<mp::Value<int>> items(100'000, v);
  const auto pids = pool.map(touch_value, items, 1);
  CHECK(v.value() == 100'000);
  std::set<pid_t> workers(pids.begin(), pids.end());
  // A later Value, and many others each sent once: the worker keeps at most a bounded number of them.
  std::vector<std::size_t> before;
  for (pid_t pid : workers) before.push_back(open_fds(pid));
  for (int i = 0; i < 300; ++i) {
    mp::Queue<int> fresh;  // a descriptor of its own each
    pool.apply(put_item, fresh);
  }
  for (int i = 0; i < 3000; ++i) (void)pool.apply(own_pid);
  std::size_t k = 0;
  for (pid_t pid : workers) {
    INFO("worker " << pid << " had " << before[k] << " descriptors after 100,000 tasks");
    CHECK(before[k] <= 64);
    CHECK(open_fds(pid) <= before[k] + 40);
    ++k;
  }
}

namespace {
void init_with(mp::Queue<int> q, mp::Lock lock) {
  const bool got = lock.try_lock();
  if (got) lock.release();
  q.put(got ? 1 : 0);
}
int lock_state_seen(mp::Queue<int> q) { return q.get(10s); }
std::string worker_name() { return mp::current_process().name(); }
int parent_pid_seen() { return static_cast<int>(mp::parent_process()->pid()); }
long sum_array(mp::Array<long> a) {
  long sum = 0;
  for (long x : a.span()) sum += x;
  return sum;
}
void count_init() { (void)0; }
}  // namespace

TEST_CASE("An initializer bound with mp::task gets a Queue and a Lock in every worker", "[pool_handles]") {
  mp::Queue<int> q;
  mp::Lock lock;
  SECTION("the lock is free") {
    mp::Pool pool({.processes = 2, .initializer = mp::task(init_with, q, lock)});
    CHECK(q.get(10s) == 1);
    CHECK(q.get(10s) == 1);
  }
  SECTION("the parent holds the lock: the workers see it held") {
    std::lock_guard guard(lock);
    mp::Pool pool({.processes = 2, .initializer = mp::task(init_with, q, lock)});
    CHECK(q.get(10s) == 0);
    CHECK(q.get(10s) == 0);
  }
  SECTION("a plain function still works, and tasks still get handles") {
    mp::Pool pool({.processes = 1, .initializer = count_init});
    q.put(5);
    CHECK(pool.apply(lock_state_seen, q) == 5);
  }
}

TEST_CASE("Pool workers are named PoolWorker-N and know their parent", "[pool_handles]") {
  mp::Pool pool(2);
  const auto names = pool.map([](int) { return worker_name(); }, std::vector<int>(8, 0), 1);
  for (const auto& name : names) CHECK(name.rfind("PoolWorker-", 0) == 0);
  CHECK(pool.apply(parent_pid_seen) == static_cast<int>(::getpid()));
}

TEST_CASE("An Array passed to a task is read in place, not copied (the zero-copy path)", "[pool_handles]") {
  mp::Pool pool(2);
  mp::Array<long> big(std::size_t{1} << 20);  // 8 MiB
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<long>(i);
  const long n = static_cast<long>(big.size());
  CHECK(pool.apply(sum_array, big) == n * (n - 1) / 2);
  big[0] = 1'000'000;  // the worker sees the parent's memory, not a snapshot
  CHECK(pool.apply(sum_array, big) == n * (n - 1) / 2 + 1'000'000);
}
