// Tests for mp::Manager and its proxies: every proxy method across processes, named objects shared between
// separately started programs, authentication, hostile frames, and the death of the server or of its owner.
#include <catch2/catch.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <mp/connection.hpp>
#include <mp/detail/manager/auth.hpp>
#include <mp/detail/manager/net.hpp>
#include <mp/detail/manager/store.hpp>
#include <mp/manager.hpp>
#include <mp/process.hpp>
#include <mp/sync.hpp>

#include "support/child_process.hpp"

using namespace std::chrono_literals;

namespace {

// Checks inside a child process: a failure ends the child with exit code 1 (and the reason on stderr).
void expect(bool condition, const std::string& what) {
  if (!condition) throw std::runtime_error("child check failed: " + what);
}

// Starts n children running f(i, args...) and requires that each exits with 0. f is a function or a lambda
// without captures and the proxies travel as Process arguments, so this works under every start method.
template <class F, class... A>
void run_children(int n, F f, const A&... args) {
  std::vector<mp::Process> children;
  for (int i = 0; i < n; ++i) children.emplace_back(f, i, args...);
  for (auto& child : children) child.start();
  for (auto& child : children) {
    child.join();
    REQUIRE(child.exitcode() == 0);
  }
}

// One child running f(args...), which must exit with 0.
template <class F, class... A>
void run_child(F f, const A&... args) {
  mp::Process child(f, args...);
  child.start();
  child.join();
  REQUIRE(child.exitcode() == 0);
}

// An input range whose elements are read from a list proxy as it is iterated: 2 * list[i] for i < n.
struct doubling_range {
  const mp::ListProxy<int>* list = nullptr;
  int n = 0;
  struct iterator {
    using iterator_concept = std::input_iterator_tag;
    using value_type = int;
    using difference_type = std::ptrdiff_t;
    const mp::ListProxy<int>* list = nullptr;
    int i = 0;
    int operator*() const { return 2 * list->get(i); }
    iterator& operator++() {
      ++i;
      return *this;
    }
    void operator++(int) { ++i; }
    bool operator==(const iterator& other) const { return i == other.i; }
  };
  iterator begin() const { return {list, 0}; }
  iterator end() const { return {list, n}; }
};

std::string random_key() { return "key-" + std::to_string(std::random_device{}()) + "-" + std::to_string(::getpid()); }

// fork + exec of this test binary running the hidden peer test case: a separately started program.
int run_peer_program(const std::string& role, const mp::Address& address, const std::string& authkey) {
  pid_t child = ::fork();
  if (child == 0) {
    ::setenv("MP_MANAGER_PEER_ROLE", role.c_str(), 1);
    ::setenv("MP_MANAGER_PEER_KEY", authkey.c_str(), 1);
    ::setenv("MP_MANAGER_PEER_ADDRESS", address.is_tcp() ? std::to_string(address.port()).c_str() : address.path().c_str(), 1);
    ::setenv("MP_MANAGER_PEER_TCP", address.is_tcp() ? "1" : "0", 1);
    int devnull = ::open("/dev/null", O_WRONLY);
    ::dup2(devnull, STDOUT_FILENO);
    ::execl("/proc/self/exe", "manager_test", "manager peer program", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

}  // namespace

// The second program of the "separately started programs" tests: run by run_peer_program, hidden from ctest.
TEST_CASE("manager peer program", "[.manager_peer]") {
  const char* role = std::getenv("MP_MANAGER_PEER_ROLE");
  if (!role) return;  // only meaningful when started by run_peer_program
  std::string where = std::getenv("MP_MANAGER_PEER_ADDRESS");
  auto address = std::string(std::getenv("MP_MANAGER_PEER_TCP")) == "1"
                     ? mp::Address::tcp("127.0.0.1", static_cast<std::uint16_t>(std::stoi(where)))
                     : mp::Address::unix_socket(where);
  auto manager = mp::Manager::connect(address, std::getenv("MP_MANAGER_PEER_KEY"));
  if (std::string(role) == "writer") {
    auto results = manager.dict<std::string, int>("results");
    results["from-peer"] = 42;
    results.update({{"a", 1}, {"b", 2}});
    manager.list<std::string>("log").append("peer was here");
    manager.queue<int>("jobs").put(7);
    CHECK_THROWS_AS((manager.dict<std::string, double>("results")), mp::Error);
  } else {
    auto results = manager.dict<std::string, int>("results");
    REQUIRE(results.get("from-owner") == 1);
    REQUIRE(results.get("from-peer") == 42);
    REQUIRE(manager.queue<int>("jobs").get(10s) == 7);
  }
}

TEST_CASE("DictProxy supports every method across processes, keeping insertion order", "[manager]") {
  mp::Manager manager;
  auto d = manager.dict<std::string, int>();
  d["first"] = 1;
  run_child([](mp::DictProxy<std::string, int> d) {
    expect(d.get("first") == 1, "get sees the parent's value");
    expect(!d.get("missing").has_value(), "get of a missing key is nullopt");
    expect(d.get("missing", 5) == 5, "get with a default");
    d.set("second", 2);
    d["third"] = 3;
    int third = d["third"];
    expect(third == 3, "d[k] converts to V");
    d.update(std::vector<std::pair<std::string, int>>{{"fourth", 4}, {"first", 10}});
    expect(d.setdefault("fifth", 5) == 5, "setdefault inserts");
    expect(d.setdefault("fifth", 50) == 5, "setdefault keeps an existing value");
  }, d);
  REQUIRE(d.size() == 5);
  REQUIRE(d.contains("fourth"));
  REQUIRE_FALSE(d.contains("sixth"));
  REQUIRE(d.keys() == std::vector<std::string>{"first", "second", "third", "fourth", "fifth"});
  REQUIRE(d.values() == std::vector<int>{10, 2, 3, 4, 5});
  REQUIRE(d.pop("second") == 2);
  REQUIRE_FALSE(d.pop("second").has_value());
  REQUIRE(d.pop("second", -1) == -1);
  REQUIRE(d.erase("third"));
  REQUIRE_FALSE(d.erase("third"));
  d["second"] = 22;  // re-inserted after deletion: now last, as in Python
  auto items = d.items();
  REQUIRE(items == std::vector<std::pair<std::string, int>>{{"first", 10}, {"fourth", 4}, {"fifth", 5}, {"second", 22}});
  REQUIRE(d.copy() == std::map<std::string, int>{{"first", 10}, {"fourth", 4}, {"fifth", 5}, {"second", 22}});
  REQUIRE(d.copy<std::unordered_map<std::string, int>>().at("fifth") == 5);
  REQUIRE_THROWS_WITH(static_cast<int>(d["nope"]), Catch::Contains("KeyError"));
  d.clear();
  REQUIRE(d.empty());
}

TEST_CASE("ListProxy supports every method across processes with Python's index rules", "[manager]") {
  mp::Manager manager;
  auto l = manager.list<int>();
  l.append(1);
  run_child([](mp::ListProxy<int> l) {
    l.extend(std::vector<int>{2, 3, 4});
    l.extend({5, 6});
    expect(l.size() == 6, "size after extend");
    expect(l.get(0) == 1 && l[-1] == 6, "get and negative indexes");
    l[1] = 20;
    l.set(-2, 50);
    l.insert(0, 0);
    l.insert(100, 7);   // past the end: appends
    l.insert(-100, -1); // before the start: prepends
  }, l);
  REQUIRE(l.copy() == std::vector<int>{-1, 0, 1, 20, 3, 4, 50, 6, 7});
  auto doubled = manager.list<int>();
  // Elements read from another proxy while the extend request is being built.
  doubled.extend(doubling_range{&l, 3});
  REQUIRE(doubled.copy() == std::vector<int>{-2, 0, 2});
  REQUIRE(l.pop() == 7);
  REQUIRE(l.pop(0) == -1);
  REQUIRE(l.pop(-2) == 50);
  REQUIRE(l.copy() == std::vector<int>{0, 1, 20, 3, 4, 6});
  REQUIRE_THROWS_WITH(l.get(6), Catch::Contains("out of range"));
  REQUIRE_THROWS_WITH(l.set(-7, 1), Catch::Contains("out of range"));
  l.clear();
  REQUIRE(l.empty());
  REQUIRE_THROWS_WITH(l.pop(), Catch::Contains("empty list"));
}

TEST_CASE("ValueProxy and NamespaceProxy share values of any serializable type", "[manager]") {
  mp::Manager manager;
  auto v = manager.value<double>(1.5);
  auto text = manager.value<std::vector<std::string>>({"a"});
  auto ns = manager.namespace_();
  ns.set("x", 1);
  run_child([](mp::ValueProxy<double> v, mp::ValueProxy<std::vector<std::string>> text, mp::NamespaceProxy ns) {
    expect(v.get() == 1.5 && v.value() == 1.5, "initial value");
    v.set(2.5);
    text.value({"b", "c"});
    ns.set("name", std::string("worker"));
    ns.set("x", ns.get<int>("x") + 1);
  }, v, text, ns);
  REQUIRE(v.get() == 2.5);
  REQUIRE(text.get() == std::vector<std::string>{"b", "c"});
  REQUIRE(ns.get<int>("x") == 2);
  REQUIRE(ns.get<std::string>("name") == "worker");
  REQUIRE(ns.names() == std::vector<std::string>{"name", "x"});
  REQUIRE_THROWS_WITH(ns.get<double>("x"), Catch::Contains("holds a int"));
  REQUIRE_THROWS_WITH(ns.get<int>("nothing"), Catch::Contains("AttributeError"));
  REQUIRE_FALSE(ns.try_get<int>("nothing").has_value());
  REQUIRE(ns.contains("x"));
  REQUIRE(ns.erase("x"));
  REQUIRE_FALSE(ns.contains("x"));
}

TEST_CASE("QueueProxy passes items between processes, its blocking calls waiting without stalling the server",
          "[manager]") {
  mp::Manager manager;
  auto q = manager.queue<std::string>();
  auto results = manager.dict<int, int>();
  // Two consumers block in get() while the parent keeps using the server; then the parent feeds them.
  std::vector<mp::Process> consumers;
  for (int i = 0; i < 2; ++i) {
    consumers.emplace_back([](int who, mp::QueueProxy<std::string> q, mp::DictProxy<int, int> results) {
      for (int n = 0; n < 50; ++n) {
        auto item = q.get();
        results.set(std::stoi(item), who);
      }
    }, i, q, results);
    consumers.back().start();
  }
  results.set(-1, -1);  // answered while both consumers wait in get()
  REQUIRE(results.get(-1) == -1);
  for (int n = 0; n < 100; ++n) q.put(std::to_string(n));
  for (auto& c : consumers) {
    c.join();
    REQUIRE(c.exitcode() == 0);
  }
  REQUIRE(results.size() == 101);  // every item delivered exactly once
  REQUIRE(q.empty());
  REQUIRE(q.qsize() == 0);
  REQUIRE_THROWS_AS(q.get_nowait(), mp::Empty);
  REQUIRE_THROWS_AS(q.get(20ms), mp::Empty);
  REQUIRE_FALSE(q.try_get().has_value());

  auto bounded = manager.queue<int>(2);
  bounded.put(1);
  REQUIRE(bounded.try_put(2));
  REQUIRE(bounded.full());
  REQUIRE_THROWS_AS(bounded.put_nowait(3), mp::Full);
  REQUIRE_THROWS_AS(bounded.put(3, 20ms), mp::Full);
  REQUIRE_FALSE(bounded.try_put(3));
  mp::Process producer([](mp::QueueProxy<int> b) { b.put(3); }, bounded);  // waits in the server until the get below makes room
  producer.start();
  REQUIRE(bounded.get() == 1);
  producer.join();
  REQUIRE(producer.exitcode() == 0);
  REQUIRE(bounded.get() == 2);
  REQUIRE(bounded.get() == 3);
}

TEST_CASE("A queue item is not lost when the process blocked in get() is killed", "[manager]") {
  mp::Manager manager;
  auto q = manager.queue<int>();
  auto started = manager.event();
  mp::Process victim([](mp::QueueProxy<int> q, mp::EventProxy started) {
    started.set();
    (void)q.get();
    ::_exit(3);  // never reached: killed while waiting
  }, q, started);
  victim.start();
  started.wait();
  victim.kill();
  victim.join();
  q.put(99);
  REQUIRE(q.get(10s) == 99);
}

TEST_CASE("LockProxy gives mutual exclusion across processes and is released when its holder dies", "[manager]") {
  mp::Manager manager;
  auto lock = manager.lock();
  auto counter = manager.value<int>(0);
  run_children(4, [](int, mp::LockProxy lock, mp::ValueProxy<int> counter) {
    for (int i = 0; i < 50; ++i) {
      std::scoped_lock guard(lock);
      counter.set(counter.get() + 1);  // a read-modify-write that races without the lock
    }
  }, lock, counter);
  REQUIRE(counter.get() == 200);

  REQUIRE(lock.try_acquire());
  REQUIRE_FALSE(lock.acquire(10ms));
  lock.release();
  REQUIRE_THROWS_WITH(lock.release(), Catch::Contains("unlocked"));

  auto held = manager.event();
  mp::Process holder([](mp::LockProxy lock, mp::EventProxy held) {
    lock.acquire();
    held.set();
    ::pause();
  }, lock, held);
  holder.start();
  held.wait();
  REQUIRE_FALSE(lock.try_acquire());
  holder.kill();
  holder.join();
  REQUIRE(lock.acquire(10s));  // the dead holder's connection closed: the server released its lock
  lock.release();
}

TEST_CASE("A lock is released when its holder dies even while the holder's own children live on", "[manager]") {
  mp::Manager manager;
  auto lock = manager.lock();
  auto ready = manager.event();
  mp::Event gate;  // in shared memory, not in the manager: the grandchild waits on it without using the manager
  mp::Process holder([](mp::LockProxy lock, mp::EventProxy ready, mp::Event gate) {
    lock.acquire();
    if (::fork() == 0) {  // a grandchild that never uses the manager and outlives the holder
      gate.wait();
      ::_exit(0);
    }
    ready.set();
    ::pause();
  }, lock, ready, gate);
  holder.start();
  ready.wait();
  holder.kill();
  holder.join();
  // The grandchild closed its inherited copy of the holder's connection at fork, so the server saw the holder go.
  REQUIRE(lock.acquire(10s));
  lock.release();
  gate.set();  // lets the grandchild exit
}

TEST_CASE("RLockProxy is re-entrant and owned by the acquiring process", "[manager]") {
  mp::Manager manager;
  auto rlock = manager.rlock();
  rlock.acquire();
  rlock.acquire();
  run_child([](mp::RLockProxy rlock) {
    expect(!rlock.try_acquire(), "another process cannot take a held RLock");
    bool threw = false;
    try {
      rlock.release();
    } catch (const mp::Error&) {
      threw = true;
    }
    expect(threw, "release by a non-owner throws");
  }, rlock);
  rlock.release();
  run_child([](mp::RLockProxy rlock) { expect(!rlock.try_acquire(), "still held once"); }, rlock);
  rlock.release();
  run_child([](mp::RLockProxy rlock) {
    expect(rlock.try_acquire(), "free after the second release");
    rlock.release();
  }, rlock);
}

TEST_CASE("SemaphoreProxy counts across processes", "[manager]") {
  mp::Manager manager;
  auto s = manager.semaphore(2);
  REQUIRE(s.get_value() == 2);
  s.acquire();
  REQUIRE(s.try_acquire());
  REQUIRE_FALSE(s.acquire(10ms));
  run_child([](mp::SemaphoreProxy s) { s.release(2); }, s);
  REQUIRE(s.get_value() == 2);
  run_child([](mp::SemaphoreProxy s) { s.acquire(); }, s);
  REQUIRE(s.get_value() == 1);
  REQUIRE_THROWS_AS(manager.semaphore(-1), mp::Error);
}

TEST_CASE("EventProxy wakes waiting processes", "[manager]") {
  mp::Manager manager;
  auto e = manager.event();
  auto ready = manager.barrier(4);
  REQUIRE_FALSE(e.is_set());
  REQUIRE_FALSE(e.wait(10ms));
  std::vector<mp::Process> waiters;
  for (int i = 0; i < 3; ++i) {
    waiters.emplace_back([](mp::EventProxy e, mp::BarrierProxy ready) {
      ready.wait();
      e.wait();
      expect(e.is_set(), "set after wait returns");
    }, e, ready);
    waiters.back().start();
  }
  ready.wait();
  e.set();
  for (auto& w : waiters) {
    w.join();
    REQUIRE(w.exitcode() == 0);
  }
  REQUIRE(e.wait(0ms));
  e.clear();
  REQUIRE_FALSE(e.is_set());
}

TEST_CASE("ConditionProxy waits, notifies and re-acquires its lock across processes", "[manager]") {
  mp::Manager manager;
  auto cond = manager.condition();
  auto items = manager.list<int>();
  std::vector<mp::Process> consumers;
  for (int i = 0; i < 2; ++i) {
    consumers.emplace_back([](mp::ConditionProxy cond, mp::ListProxy<int> items) {
      std::scoped_lock guard(cond);
      cond.wait_for([&] { return items.size() >= 3; });
      items.append(100);  // still under the lock after wait_for
    }, cond, items);
    consumers.back().start();
  }
  for (int i = 0; i < 3; ++i) {
    std::scoped_lock guard(cond);
    items.append(i);
    cond.notify_all();
  }
  for (auto& c : consumers) {
    c.join();
    REQUIRE(c.exitcode() == 0);
  }
  REQUIRE(items.size() == 5);
  cond.acquire();
  REQUIRE_FALSE(cond.wait(10ms));  // times out, lock re-acquired
  REQUIRE_FALSE(cond.wait_for([] { return false; }, 10ms));
  cond.notify();
  cond.release();
  REQUIRE_THROWS_WITH(cond.wait(), Catch::Contains("without holding its lock"));
  REQUIRE_THROWS_WITH(cond.notify(), Catch::Contains("without holding its lock"));
}

TEST_CASE("BarrierProxy releases all parties together and breaks on timeout or abort", "[manager]") {
  mp::Manager manager;
  auto barrier = manager.barrier(3);
  auto indexes = manager.list<int>();
  REQUIRE(barrier.parties() == 3);
  run_children(3, [](int, mp::BarrierProxy barrier, mp::ListProxy<int> indexes) { indexes.append(barrier.wait()); },
               barrier, indexes);
  auto got = indexes.copy();
  std::sort(got.begin(), got.end());
  REQUIRE(got == std::vector<int>{0, 1, 2});
  REQUIRE(barrier.n_waiting() == 0);

  REQUIRE_THROWS_AS(barrier.wait(10ms), mp::BrokenBarrierError);
  REQUIRE(barrier.broken());
  REQUIRE_THROWS_AS(barrier.wait(), mp::BrokenBarrierError);
  barrier.reset();
  REQUIRE_FALSE(barrier.broken());
  mp::Process waiter([](mp::BarrierProxy barrier) {
    bool broken = false;
    try {
      barrier.wait();
    } catch (const mp::BrokenBarrierError&) {
      broken = true;
    }
    expect(broken, "abort wakes a waiter with BrokenBarrierError");
  }, barrier);
  waiter.start();
  while (barrier.n_waiting() < 1) std::this_thread::yield();  // the waiter has arrived
  barrier.abort();
  waiter.join();
  REQUIRE(waiter.exitcode() == 0);
  REQUIRE(barrier.broken());
}

TEST_CASE("Blocking calls from one thread do not hold up other threads of the same process", "[manager]") {
  mp::Manager manager;
  auto e = manager.event();
  auto d = manager.dict<int, int>();
  std::thread waiter([&] { e.wait(); });  // its own connection: blocks only itself
  d.set(1, 1);
  e.set();
  waiter.join();
  REQUIRE(d.get(1) == 1);
}

TEST_CASE("Named objects are found by name, and attaching with other types is a clear error", "[manager]") {
  mp::Manager manager;
  auto a = manager.dict<std::string, int>("results");
  auto b = manager.dict<std::string, int>("results");
  a["x"] = 1;
  REQUIRE(b.get("x") == 1);
  REQUIRE(a.id() == b.id());
  REQUIRE(manager.dict<std::string, int>().id() != a.id());  // unnamed: always new
  REQUIRE_THROWS_WITH((manager.dict<std::string, double>("results")),
                      Catch::Contains("dict<std::string, int>") && Catch::Contains("dict<std::string, double>"));
  REQUIRE_THROWS_WITH(manager.list<int>("results"), Catch::Contains("cannot be attached"));
  auto named_value = manager.value<int>(5, "v");
  REQUIRE(manager.value<int>(9, "v").get() == 5);  // found: keeps its value
  REQUIRE(named_value.get() == 5);
}

TEST_CASE("Named objects are shared by two separately started programs over TCP and Unix sockets", "[manager]") {
  auto key = random_key();
  SECTION("tcp") {
    mp::Manager manager({.address = mp::Address::tcp("127.0.0.1", 0), .authkey = key});
    REQUIRE(manager.address().port() != 0);
    REQUIRE(run_peer_program("writer", manager.address(), key) == 0);
    auto results = manager.dict<std::string, int>("results");
    REQUIRE(results.items() == std::vector<std::pair<std::string, int>>{{"from-peer", 42}, {"a", 1}, {"b", 2}});
    REQUIRE(manager.list<std::string>("log").copy() == std::vector<std::string>{"peer was here"});
    REQUIRE(manager.queue<int>("jobs").get(10s) == 7);
    results["from-owner"] = 1;
    manager.queue<int>("jobs").put(7);
    REQUIRE(run_peer_program("reader", manager.address(), key) == 0);
  }
  SECTION("unix socket at a chosen path, with an authkey") {
    std::string path = "/tmp/mp-manager-test-" + std::to_string(::getpid()) + ".sock";
    {
      mp::Manager manager({.address = mp::Address::unix_socket(path), .authkey = key});
      REQUIRE(manager.address().path() == path);
      REQUIRE(run_peer_program("writer", manager.address(), key) == 0);
      REQUIRE(manager.dict<std::string, int>("results").get("from-peer") == 42);
    }
    struct stat info {};
    REQUIRE(::stat(path.c_str(), &info) == -1);  // removed at shutdown
  }
}

TEST_CASE("A wrong authkey raises AuthenticationError and the server goes on serving", "[manager]") {
  auto key = random_key();
  mp::Manager manager({.address = mp::Address::tcp("127.0.0.1", 0), .authkey = key});
  auto d = manager.dict<std::string, int>("d");
  d["x"] = 1;
  REQUIRE_THROWS_AS(mp::Manager::connect(manager.address(), key + "-wrong"), mp::AuthenticationError);
  REQUIRE_THROWS_WITH(mp::Manager::connect(manager.address(), ""), Catch::Contains("requires an authkey"));
  auto other = mp::Manager::connect(manager.address(), key);
  REQUIRE(other.dict<std::string, int>("d").get("x") == 1);
  REQUIRE(d.get("x") == 1);
  REQUIRE_THROWS_WITH((mp::Manager({.address = mp::Address::tcp("127.0.0.1", 0)})), Catch::Contains("needs an authkey"));

  mp::Manager keyless;  // a private Unix socket without an authkey: a key given to it is refused, not ignored
  REQUIRE_THROWS_AS(mp::Manager::connect(keyless.address(), key), mp::AuthenticationError);
}

namespace {

// A raw TCP connection to a manager, for sending hostile bytes.
mp::detail::unique_fd raw_connect(std::uint16_t port) {
  mp::detail::manager::endpoint endpoint{true, "127.0.0.1", port, {}};
  return mp::detail::manager::with_tcp_address(endpoint, "connect", [](int s, const sockaddr* a, socklen_t n) {
    return ::connect(s, a, n) == 0;
  });
}

void send_bytes(int fd, const std::string& bytes) {
  // The server may close the connection at any point: errors are expected and ignored.
  (void)::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
}

std::string frame(const std::string& payload, std::uint32_t announced) {
  std::string out;
  mp::detail::manager::protocol::writer w(out);
  w.u32(announced);
  w.raw(payload.data(), payload.size());
  return out;
}

std::string read_frame(int fd) {
  std::string out;
  char buffer[4096];
  for (;;) {
    auto got = ::read(fd, buffer, sizeof buffer);
    if (got <= 0) return out;
    out.append(buffer, static_cast<std::size_t>(got));
    if (out.size() >= 4) {
      mp::detail::manager::protocol::reader r(out.data(), 4);
      auto size = r.u32();
      if (out.size() >= 4 + size) return out.substr(4, size);
    }
  }
}

// Runs the client handshake on a raw socket so that hostile requests reach the request handler; returns the session
// key that every later frame must carry a MAC under (detail/manager/auth.hpp).
mp::detail::manager::hmac_digest authenticate(int fd, const std::string& key) {
  auto challenge = read_frame(fd);
  auto answer = mp::detail::manager::answer_challenge(key, challenge);
  send_bytes(fd, frame(std::string(reinterpret_cast<const char*>(answer.data()), answer.size()), 32));
  REQUIRE(read_frame(fd) == "#WELCOME#");
  auto mine = mp::detail::manager::make_challenge();
  send_bytes(fd, frame(mine, static_cast<std::uint32_t>(mine.size())));
  REQUIRE(mp::detail::manager::check_answer(key, mine, read_frame(fd)));
  return mp::detail::manager::session_key(key, challenge, mine);
}

// A request payload followed by its MAC, as an authenticated client sends it.
std::string sealed(const mp::detail::manager::hmac_digest& session, std::uint64_t sequence, const std::string& payload) {
  auto mac = mp::detail::manager::frame_mac(session, mp::detail::manager::direction::to_server, sequence, payload);
  return payload + std::string(reinterpret_cast<const char*>(mac.data()), mac.size());
}

}  // namespace

TEST_CASE("10k random, truncated and oversized frames close only their connections and the server still answers",
          "[manager]") {
  auto key = random_key();
  mp::Manager manager({.address = mp::Address::tcp("127.0.0.1", 0), .authkey = key});
  auto d = manager.dict<std::string, int>("kept");
  d["x"] = 1;
  auto port = manager.address().port();
  std::mt19937_64 random(std::random_device{}());
  auto random_bytes = [&](std::size_t n) {
    std::string bytes(n, '\0');
    for (auto& b : bytes) b = static_cast<char>(random());
    return bytes;
  };
  // Hostile frames after authentication reach the request parser: start them from valid op codes.
  auto hostile_request = [&] {
    std::string payload;
    mp::detail::manager::protocol::writer w(payload);
    // Any op but shutdown, which an authenticated client may send (as in Python) and which would end the test.
    auto code = static_cast<std::uint8_t>(random() % 100);
    w.u8(code == static_cast<std::uint8_t>(mp::detail::manager::protocol::op::shutdown) ? 0 : code);
    w.u64(random() % 4);  // small ids: often an existing object
    payload += random_bytes(random() % 40);
    return payload;
  };
  int sent = 0;
  // Each authenticated connection carries many frames until one of them closes it.
  auto authed = raw_connect(port);
  auto session = authenticate(authed.get(), key);
  std::uint64_t sequence = 0;
  while (sent < 10'000) {
    switch (random() % 5) {
      case 0: {  // garbage before authentication
        auto fd = raw_connect(port);
        send_bytes(fd.get(), random_bytes(random() % 300));
        break;
      }
      case 1: {  // an oversized announcement before authentication
        auto fd = raw_connect(port);
        send_bytes(fd.get(), frame(random_bytes(16), 0xFFFFFFF0u));
        break;
      }
      case 2: {  // truncated: announces more than it sends, then hangs up
        auto fd = raw_connect(port);
        send_bytes(fd.get(), frame(random_bytes(10), 100));
        break;
      }
      default: {  // hostile requests after authentication, some oversized, some truncated
        auto payload = sealed(session, sequence++, hostile_request());
        std::uint32_t announced = static_cast<std::uint32_t>(payload.size());
        if (random() % 50 == 0) announced = mp::detail::manager::protocol::max_request + 1;
        send_bytes(authed.get(), frame(payload, announced));
        pollfd p{authed.get(), POLLIN, 0};
        if (announced != payload.size() || ::poll(&p, 1, 1000) <= 0 || read_frame(authed.get()).empty()) {
          authed = raw_connect(port);  // closed by the server (or a hang): start a fresh authenticated one
          session = authenticate(authed.get(), key);
          sequence = 0;
        }
      }
    }
    ++sent;
  }
  // The server still answers correctly, on old and new connections. (Hostile but well-formed requests, such as a
  // clear of object 1, may have changed the objects: that is the protocol working, so values are set anew.)
  d["x"] = 2;
  REQUIRE(d.get("x") == 2);
  auto fresh = mp::Manager::connect(manager.address(), key);
  REQUIRE(fresh.dict<std::string, int>("kept").get("x") == 2);
  auto l = fresh.list<int>();
  l.extend({1, 2, 3});
  REQUIRE(l.copy() == std::vector<int>{1, 2, 3});
}

TEST_CASE("The request handler rejects mutated requests without applying them", "[manager]") {
  mp::detail::manager::store store;
  std::vector<mp::detail::manager::store::reply> out;
  auto now = mp::detail::manager::store::clock::now();
  std::string create;
  {
    mp::detail::manager::protocol::writer w(create);
    w.u8(static_cast<std::uint8_t>(mp::detail::manager::protocol::op::create)), w.u64(0);
    w.u8(static_cast<std::uint8_t>(mp::detail::manager::protocol::kind::list)), w.blob("list<int>"), w.blob(""), w.u64(0), w.blob("");
  }
  REQUIRE(store.handle(1, create, now, out));
  std::string extend;
  {
    mp::detail::manager::protocol::writer w(extend);
    w.u8(static_cast<std::uint8_t>(mp::detail::manager::protocol::op::list_extend)), w.u64(1);
    w.u32(3), w.blob("aaaa"), w.blob("bbbb"), w.blob("cccc");
  }
  std::mt19937 random(12345);
  for (int i = 0; i < 20'000; ++i) {
    auto mutated = extend;
    switch (random() % 3) {
      case 0: mutated.resize(random() % mutated.size()); break;                 // truncated
      case 1: mutated[random() % mutated.size()] = static_cast<char>(random()); break;  // flipped byte
      default: mutated += static_cast<char>(random());                          // trailing garbage
    }
    out.clear();
    store.handle(2, mutated, now, out);
    store.disconnect(2, out);
  }
  // Only well-formed extends applied; each added exactly 3 items or nothing.
  std::string size;
  {
    mp::detail::manager::protocol::writer w(size);
    w.u8(static_cast<std::uint8_t>(mp::detail::manager::protocol::op::list_size)), w.u64(1);
  }
  out.clear();
  REQUIRE(store.handle(1, size, now, out));
  mp::detail::manager::protocol::reader r(out.at(0).bytes);
  REQUIRE(r.u8() == 0);
  REQUIRE(r.u64() % 3 == 0);
  REQUIRE(store.handle(1, std::string("\x01", 1), now, out) == false);  // truncated create
}

TEST_CASE("Two barrier parties timing out in the same expiry both get BrokenBarrierError replies", "[manager]") {
  // Found by tests/fuzz/fuzz_manager.cpp: the first time-out broke the barrier and answered both parties; the
  // second was then timed out again and the server threw std::out_of_range.
  namespace p = mp::detail::manager::protocol;
  mp::detail::manager::store store;
  std::vector<mp::detail::manager::store::reply> out;
  const auto now = mp::detail::manager::store::clock::now();
  auto request = [](p::op code, std::uint64_t id, auto&& fill) {
    std::string bytes;
    p::writer w(bytes);
    w.u8(static_cast<std::uint8_t>(code)), w.u64(id);
    fill(w);
    return bytes;
  };
  REQUIRE(store.handle(1, request(p::op::create, 0, [](auto& w) {
    w.u8(static_cast<std::uint8_t>(p::kind::barrier)), w.blob(""), w.blob(""), w.u64(3), w.blob("");
  }), now, out));
  out.clear();
  const auto wait_1ms = request(p::op::barrier_wait, 1, [](auto& w) { w.i64(1'000'000); });
  REQUIRE(store.handle(2, wait_1ms, now, out));
  REQUIRE(store.handle(3, wait_1ms, now, out));
  REQUIRE(out.empty());  // both parked
  store.expire(now + std::chrono::milliseconds(5), out);
  REQUIRE(out.size() == 2);
  for (const auto& reply : out) CHECK(reply.bytes.at(0) == 1);  // error replies (broken barrier)
  CHECK_FALSE(store.next_deadline().has_value());
}

TEST_CASE("A client whose server died gets mp::Error, not a hang", "[manager]") {
  auto key = random_key();
  mp::detail::manager::endpoint endpoint{false, {}, 0, "/tmp/mp-manager-test-serve-" + std::to_string(::getpid())};
  auto address = mp::Address::unix_socket(endpoint.path);
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  pid_t server = ::fork();
  if (server == 0) {
    ::close(ready[0]);
    // A dedicated server program: Manager::serve_forever in this process. The pipe closing tells the parent that
    // the server is about to bind; the parent retries connect() until the socket exists.
    ::close(ready[1]);
    try {
      mp::Manager::serve_forever({.address = address, .authkey = key});
    } catch (...) {
      ::_exit(1);
    }
    ::_exit(0);
  }
  ::close(ready[1]);
  char byte;
  (void)::read(ready[0], &byte, 1);
  ::close(ready[0]);
  // The socket may not be bound yet: retry connecting until it is (bounded by the test timeout).
  std::optional<mp::Manager> client;
  for (int attempt = 0; !client && attempt < 100'000; ++attempt) {
    try {
      client.emplace(mp::Manager::connect(address, key));
    } catch (const mp::AuthenticationError&) {
      throw;
    } catch (const mp::Error&) {
      std::this_thread::yield();
    }
  }
  REQUIRE(client);
  auto q = client->queue<int>("q");
  q.put(1);
  REQUIRE(q.get() == 1);
  std::thread killer([&] {
    ::kill(server, SIGKILL);
  });
  REQUIRE_THROWS_WITH(q.get(), Catch::Contains("closed the connection"));  // blocked in get when the server dies
  killer.join();
  ::waitpid(server, nullptr, 0);
  ::unlink(endpoint.path.c_str());
  REQUIRE_THROWS_AS(q.put(2), mp::Error);
  REQUIRE_THROWS_AS(mp::Manager::connect(address, key), mp::Error);
}

namespace {

/// Owns a Manager (a private Unix socket, its server started by `method`) with a queue "q" until it is killed.
void own_a_manager_until_killed(mp::Connection<std::string> out, int method) {
  mp::Manager manager({.start_method = static_cast<mp::StartMethod>(method)});
  manager.queue<int>("q");
  out.send(manager.address().path());
  ::pause();
}

}  // namespace

TEST_CASE("A manager server exits on its own when its owner is killed, under every start method", "[manager]") {
  const auto method = GENERATE(mp::StartMethod::fork, mp::StartMethod::spawn, mp::StartMethod::forkserver);
  INFO("server started by " << mp::to_string(method));
  auto [paths, path_out] = mp::Pipe<std::string>(false);
  mp::Process owner(own_a_manager_until_killed, path_out, static_cast<int>(method));
  owner.start();
  path_out.close();
  const std::string path = paths.recv();
  auto client = mp::Manager::connect(mp::Address::unix_socket(path), "");
  auto q = client.queue<int>("q");
  std::thread killer([&] { owner.kill(); });
  REQUIRE_THROWS_WITH(q.get(), Catch::Contains("closed the connection"));  // the server exits: get() ends
  killer.join();
  owner.join();
  REQUIRE(owner.exitcode() == -SIGKILL);
  struct stat info {};
  REQUIRE(::stat(path.c_str(), &info) == -1);  // the server removed its socket and private directory
  REQUIRE(::stat(path.substr(0, path.rfind('/')).c_str(), &info) == -1);
}

TEST_CASE("shutdown() stops the server: later calls fail with a clear error, and nothing is left behind", "[manager]") {
  mp::Manager manager;
  auto d = manager.dict<int, int>();
  d.set(1, 1);
  auto path = manager.address().path();
  manager.shutdown();
  manager.shutdown();  // idempotent
  REQUIRE_THROWS_WITH(d.get(1), Catch::Contains("closed the connection"));
  REQUIRE_THROWS_WITH((manager.dict<int, int>()), Catch::Contains("shut down"));
  struct stat info {};
  REQUIRE(::stat(path.c_str(), &info) == -1);
}

TEST_CASE("serve_forever() serves until SIGTERM, then shuts the server down and returns", "[manager]") {
  auto key = random_key();
  auto [ports, port_out] = mp::Pipe<int>(false);
  mp::Process server_owner([](mp::Connection<int> out, std::string key) {
    mp::Manager manager({.address = mp::Address::tcp("127.0.0.1", 0), .authkey = key});
    manager.dict<std::string, int>("shared")["answer"] = 42;
    auto port = manager.address().port();
    // Block SIGTERM before telling the parent, so that it waits (pending) for serve_forever to read it.
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    ::sigprocmask(SIG_BLOCK, &term, nullptr);
    out.send(port);
    manager.serve_forever();  // returns on SIGTERM; exit code 0 tells the parent it did
  }, port_out, key);
  server_owner.start();
  port_out.close();
  const auto port = static_cast<std::uint16_t>(ports.recv());
  auto client = mp::Manager::connect(mp::Address::tcp("127.0.0.1", port), key);
  auto shared = client.dict<std::string, int>("shared");
  REQUIRE(shared.get("answer") == 42);
  server_owner.terminate();
  server_owner.join();
  REQUIRE(server_owner.exitcode() == 0);
  REQUIRE_THROWS_WITH(shared.get("answer"), Catch::Contains("closed the connection"));
}

TEST_CASE("A manager created on a thread that ends keeps serving", "[manager]") {
  std::optional<mp::Manager> manager;
  std::thread([&] { manager.emplace(); }).join();  // the server watches the owner process, not the thread
  auto d = manager->dict<int, int>();
  d.set(1, 2);
  run_child([](mp::DictProxy<int, int> d) { d.set(2, d.get(1, 0) + 1); }, d);
  REQUIRE(d.get(2) == 3);
}

// ---- start methods ----------------------------------------------------------------------------------------

namespace {

constexpr mp::StartMethod fresh_methods[] = {mp::StartMethod::spawn, mp::StartMethod::forkserver};

std::set<pid_t> children_of(pid_t pid) {
  std::set<pid_t> found;
  const std::string tasks = "/proc/" + std::to_string(pid) + "/task";
  if (DIR* dir = ::opendir(tasks.c_str())) {
    while (const dirent* entry = ::readdir(dir)) {
      if (entry->d_name[0] == '.') continue;
      std::ifstream list(tasks + "/" + entry->d_name + "/children");
      for (pid_t child; list >> child;) found.insert(child);
    }
    ::closedir(dir);
  }
  return found;
}

// Where a manager server can appear: among this process's children, or the fork server's.
std::set<pid_t> possible_servers() {
  std::set<pid_t> found = children_of(::getpid());
  if (pid_t server = mp::detail::forkserver_pid(); server > 0) {
    found.erase(server);
    found.merge(children_of(server));
  }
  return found;
}

// A Manager and the pid of the server it started (the one process that appeared while it started).
struct watched_manager {
  mp::Manager manager;
  pid_t server = 0;
};
watched_manager start_watched(mp::ManagerOptions options) {
  const auto before = possible_servers();
  mp::Manager manager(std::move(options));
  const auto after = possible_servers();
  std::vector<pid_t> appeared;
  std::set_difference(after.begin(), after.end(), before.begin(), before.end(), std::back_inserter(appeared));
  REQUIRE(appeared.size() == 1);
  return {std::move(manager), appeared.front()};
}

std::string link_target(const std::string& path) {
  std::string target(4096, '\0');
  auto n = ::readlink(path.c_str(), target.data(), target.size());
  REQUIRE(n > 0);
  target.resize(static_cast<std::size_t>(n));
  return target;
}

bool maps_mention(pid_t pid, const std::string& text) {
  std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
  for (std::string line; std::getline(maps, line);) {
    if (line.find(text) != std::string::npos) return true;
  }
  return false;
}

int open_fd_count() {
  int count = 0;
  for (int fd = 0; fd < 4096; ++fd) count += ::fcntl(fd, F_GETFD) != -1;
  return count;
}

void write_through_manager(mp::DictProxy<std::string, int> seen, mp::QueueProxy<std::string> done, std::string who) {
  seen[who] = static_cast<int>(::getpid());
  done.put(who);
}

}  // namespace

TEST_CASE("A Manager started by spawn or forkserver runs a fresh copy of the program, not a copy of its owner",
          "[manager]") {
  // A mapping only this process has: a forked server inherits it, a fresh program cannot.
  const std::string marker = "mp-manager-test-marker-" + std::to_string(::getpid());
  int memfd = ::memfd_create(marker.c_str(), MFD_CLOEXEC);
  REQUIRE(memfd >= 0);
  REQUIRE(::ftruncate(memfd, 4096) == 0);
  void* mapped = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  ::close(memfd);
  REQUIRE(mapped != MAP_FAILED);
  REQUIRE(maps_mention(::getpid(), marker));
  for (auto method : {mp::StartMethod::fork, mp::StartMethod::spawn, mp::StartMethod::forkserver}) {
    INFO("start method " << mp::to_string(method));
    auto [manager, server] = start_watched({.start_method = method});
    CHECK(link_target("/proc/" + std::to_string(server) + "/exe") == link_target("/proc/self/exe"));
    CHECK(maps_mention(server, marker) == (method == mp::StartMethod::fork));  // the fork control proves the check
    auto d = manager.dict<int, int>();
    d.set(1, 2);
    CHECK(d.get(1) == 2);
    manager.shutdown();
    CHECK(::kill(server, 0) == -1);  // stopped and reaped
  }
  ::munmap(mapped, 4096);
}

TEST_CASE("A Manager started by spawn or forkserver serves children started by every method, over Unix and TCP",
          "[manager]") {
  const auto key = random_key();
  for (auto server_method : fresh_methods) {
    for (bool tcp : {false, true}) {
      INFO("server started by " << mp::to_string(server_method) << (tcp ? " on TCP" : " on a Unix socket"));
      mp::ManagerOptions options{.start_method = server_method};
      if (tcp) options.address = mp::Address::tcp("127.0.0.1", 0), options.authkey = key;
      mp::Manager manager(options);
      auto seen = manager.dict<std::string, int>("seen");
      auto done = manager.queue<std::string>();
      for (auto child_method : {mp::StartMethod::fork, mp::StartMethod::spawn, mp::StartMethod::forkserver}) {
        mp::Process child({.start_method = child_method}, write_through_manager, seen, done,
                          std::string(mp::to_string(child_method)));
        child.start();
        child.join();
        REQUIRE(child.exitcode() == 0);
      }
      std::set<std::string> finished;
      for (int i = 0; i < 3; ++i) finished.insert(done.get(10s));
      CHECK(finished == std::set<std::string>{"fork", "forkserver", "spawn"});
      CHECK(seen.size() == 3);
      if (tcp) {
        REQUIRE_THROWS_AS(mp::Manager::connect(manager.address(), key + "-wrong"), mp::AuthenticationError);
        auto other = mp::Manager::connect(manager.address(), key);
        CHECK(other.dict<std::string, int>("seen").size() == 3);  // the named object, from another client
      }
    }
  }
}

TEST_CASE("shutdown() of a Manager started by spawn or forkserver leaves no process, descriptor or file behind",
          "[manager]") {
  const auto method = GENERATE(mp::StartMethod::spawn, mp::StartMethod::forkserver);
  INFO("server started by " << mp::to_string(method));
  mp::Manager({.start_method = method}).shutdown();  // the fork server, started at first use, stays: not counted
  const int fds_before = open_fd_count();
  auto [manager, server] = start_watched({.start_method = method});
  const auto shm_before = mp_test::shm_entries_of({::getpid(), server});
  const std::string path = manager.address().path();
  auto named = manager.list<int>("named");
  named.append(1);
  CHECK(manager.list<int>("named").size() == 1);
  manager.shutdown();
  CHECK(::kill(server, 0) == -1);
  struct stat info {};
  CHECK(::stat(path.c_str(), &info) == -1);
  CHECK(::stat(path.substr(0, path.rfind('/')).c_str(), &info) == -1);
  named = {};  // its connection closes with the last proxy
  CHECK(open_fd_count() == fds_before);
  CHECK(mp_test::shm_entries_of({::getpid(), server}) == shm_before);
}

TEST_CASE("A Manager refuses a start method that is not one, saying which", "[manager]") {
  REQUIRE_THROWS_WITH((mp::Manager({.start_method = static_cast<mp::StartMethod>(7)})),
                      Catch::Contains("start_method is 7") && Catch::Contains("StartMethod::spawn"));
}

TEST_CASE("A Manager whose server was SIGKILLed fails its calls clearly and shuts down cleanly, by every method",
          "[manager]") {
  const auto method = GENERATE(mp::StartMethod::fork, mp::StartMethod::spawn, mp::StartMethod::forkserver);
  INFO("server started by " << mp::to_string(method));
  auto [manager, server] = start_watched({.start_method = method});
  auto d = manager.dict<int, int>();
  d.set(1, 1);
  const std::string path = manager.address().path();
  REQUIRE(::kill(server, SIGKILL) == 0);
  REQUIRE_THROWS_WITH(d.get(1), Catch::Contains("closed the connection"));
  manager.shutdown();  // reaps the server and removes what it could not
  CHECK(::kill(server, 0) == -1);
  struct stat info {};
  CHECK(::stat(path.c_str(), &info) == -1);
  CHECK(::stat(path.substr(0, path.rfind('/')).c_str(), &info) == -1);
}
