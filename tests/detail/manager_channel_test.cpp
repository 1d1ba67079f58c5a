// Tests for the manager's shared-memory channel (detail/manager/channel.hpp): calls larger than the channel, a
// client killed with a request half-written, blocking calls that sleep on the doorbell, a server that sleeps when
// idle, and many clients at once on both transports.
#include <catch2/catch.hpp>

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <mp/detail/manager/client.hpp>
#include <mp/detail/manager/protocol.hpp>
#include <mp/manager.hpp>
#include <mp/process.hpp>

#include "support/child_process.hpp"

using namespace std::chrono_literals;
using mp_test::child_check;
using mp_test::finish;
using mp_test::poll_until;
using mp_test::start;

namespace {

// A connection of our own to `manager`'s Unix socket, to reach the channel's memory.
mp::detail::manager::connection raw_connection(const mp::Manager& manager) {
  return mp::detail::manager::connection({false, {}, 0, manager.address().path()}, "");
}

// A ping request frame (4 bytes reserved for the length, then op and object id).
std::vector<std::byte> ping_frame() {
  std::vector<std::byte> frame(4);
  mp::detail::manager::protocol::writer out(frame);
  out.u8(static_cast<std::uint8_t>(mp::detail::manager::protocol::op::ping));
  out.u64(0);
  return frame;
}

// The scheduler state of a process ('R' running, 'S' sleeping, ...), from /proc/<pid>/stat.
char process_state(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  auto at = line.rfind(')');
  return at == std::string::npos || at + 2 >= line.size() ? '?' : line[at + 2];
}

}  // namespace

TEST_CASE("A local connection moves its calls to a shared-memory channel, TCP and opted-out ones stay on the socket",
          "[manager_channel]") {
  mp::Manager manager;
  auto connection = raw_connection(manager);
  REQUIRE(connection.has_channel());
  auto frame = ping_frame();
  auto reply = connection.call(frame);
  REQUIRE(reply.size() == 1);
  REQUIRE(reply[0] == 0);
  REQUIRE(connection.channel_memory()->request_seq.load() == 1);
  REQUIRE(connection.channel_memory()->reply_seq.load() == 1);

  mp::Manager tcp({.address = mp::Address::tcp("127.0.0.1", 0), .authkey = "channel-test"});
  mp::detail::manager::connection over_tcp({true, "127.0.0.1", tcp.address().port(), {}}, "channel-test");
  REQUIRE_FALSE(over_tcp.has_channel());

  mp::detail::manager::channels_enabled = false;
  auto plain = raw_connection(manager);
  mp::detail::manager::channels_enabled = true;
  REQUIRE_FALSE(plain.has_channel());
  frame = ping_frame();
  REQUIRE(plain.call(frame).size() == 1);
}

TEST_CASE("Requests and replies larger than the channel travel over the socket, in both directions",
          "[manager_channel]") {
  mp::Manager manager;
  const std::size_t big = mp::detail::manager::channel_capacity + 12345;
  auto text = manager.value<std::string>();
  auto small = manager.dict<int, int>();
  mp_test::note_pipe done;
  auto child = start([&] {
    for (int round = 0; round < 3; ++round) {
      std::string value(big, static_cast<char>('a' + round));
      value[big / 2] = 'z';
      text.set(value);           // a request too big for the channel
      child_check(text.get() == value, "a big value read back whole");  // a reply too big for it
      small.set(round, round);   // and small calls still go through the channel after it
      child_check(small.get(round) == round, "a small call after a big one");
    }
  });
  REQUIRE(finish(child) == 0);
  const auto last = text.get();
  REQUIRE(last.size() == big);
  REQUIRE(last[big / 2] == 'z');
  REQUIRE(std::count(last.begin(), last.end(), 'c') == static_cast<std::ptrdiff_t>(big - 1));
  REQUIRE(small.size() == 3);
}

TEST_CASE("A client killed with its request half-written in the channel wedges nothing, and others keep working",
          "[manager_channel]") {
  mp::Manager manager;
  auto d = manager.dict<int, int>();
  auto lock = manager.lock();
  mp_test::note_pipe written;
  auto victim = start([&] {
    std::scoped_lock held(lock);  // it also dies holding a lock: released when its socket closes
    auto connection = raw_connection(manager);
    child_check(connection.has_channel(), "the victim has a channel");
    auto* shared = connection.channel_memory();
    // Half of a set request: bytes and size written, the sequence number (the publication) never stored.
    auto frame = ping_frame();
    std::memcpy(shared->request, frame.data() + 4, (frame.size() - 4) / 2);
    shared->request_size.store(static_cast<std::uint32_t>(frame.size() - 4));
    written.post();
    mp_test::hang();
  });
  REQUIRE(written.wait());
  // While it lives with its half-written request, the server serves everyone else.
  for (int i = 0; i < 100; ++i) d.set(i, i);
  REQUIRE(d.size() == 100);
  victim.kill();
  REQUIRE(finish(victim) == -SIGKILL);
  REQUIRE(lock.acquire(10s));  // its lock was released when the server saw its socket close
  lock.release();
  auto survivor = start([&] {
    for (int i = 0; i < 100; ++i) d.set(i, d.get(i, -1) + 1);
  });
  REQUIRE(finish(survivor) == 0);
  for (int i = 0; i < 100; ++i) REQUIRE(d.get(i) == i + 1);
}

TEST_CASE("A client that publishes a corrupt request size loses its connection, and only it", "[manager_channel]") {
  mp::Manager manager;
  auto d = manager.dict<int, int>();
  auto child = start([&] {
    auto connection = raw_connection(manager);
    auto* shared = connection.channel_memory();
    shared->request_size.store(mp::detail::manager::channel_capacity + 1);
    shared->request_seq.store(1);
    if (shared->server_sleeping.load()) {
      const std::byte doorbell[4] = {};
      child_check(::send(connection.fd(), doorbell, sizeof doorbell, MSG_NOSIGNAL) == 4, "doorbell sent");
    }
    char byte = 0;
    child_check(::read(connection.fd(), &byte, 1) == 0, "the server closed the corrupt connection");
  });
  REQUIRE(finish(child) == 0);
  d.set(1, 2);
  REQUIRE(d.get(1) == 2);
}

TEST_CASE("A queue get sleeping on the doorbell wakes when another process puts", "[manager_channel]") {
  mp::Manager manager;
  auto q = manager.queue<int>();
  auto back = manager.queue<int>();
  mp_test::note_pipe getting;
  auto consumer = start([&] {
    for (int round = 0; round < 5; ++round) {
      getting.post();
      const int item = q.get();  // blocks in the server; the client spins, then sleeps in read()
      back.put(item * 10);
    }
  });
  for (int round = 0; round < 5; ++round) {
    REQUIRE(getting.wait());
    // The consumer is past its spin and asleep in the kernel (state S) before the put: the doorbell wakes it.
    REQUIRE(poll_until([&] { return process_state(consumer.pid()) == 'S'; }));
    q.put(round);
    REQUIRE(back.get() == round * 10);
  }
  REQUIRE(finish(consumer) == 0);
  REQUIRE_THROWS_AS(q.get(20ms), mp::Empty);  // a timed get through the channel still times out
}

TEST_CASE("An idle server sleeps, and a call rings the doorbell to wake it", "[manager_channel]") {
  mp::Manager manager;
  auto connection = raw_connection(manager);
  auto* shared = connection.channel_memory();
  REQUIRE(shared != nullptr);
  for (int round = 0; round < 20; ++round) {
    // The server raises server_sleeping only when it goes to sleep in poll() (no CPU while idle).
    REQUIRE(poll_until([&] { return shared->server_sleeping.load() == 1; }));
    auto frame = ping_frame();
    auto reply = connection.call(frame);
    REQUIRE(reply.size() == 1);
  }
}

TEST_CASE("Many clients at once, over channels and sockets, get the right results", "[manager_channel]") {
  mp::Manager manager;
  auto counts = manager.dict<int, std::int64_t>();
  auto lock = manager.lock();
  constexpr int processes = 6, threads = 2, steps = 300;
  std::vector<mp::ListProxy<int>> lists;
  for (int p = 0; p < processes * threads; ++p) lists.push_back(manager.list<int>());
  counts.set(0, 0);
  std::vector<mp::Process> children;
  for (int p = 0; p < processes; ++p) {
    children.push_back(start([&, p] {
      mp::detail::manager::channels_enabled = p % 3 != 0;  // every third process stays on the socket
      std::vector<std::thread> workers;
      std::atomic<int> failures{0};
      for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&, t] {
          const int me = p * threads + t;
          auto& mine = lists[static_cast<std::size_t>(me)];
          for (int i = 0; i < steps; ++i) {
            mine.append(i);
            counts.set(me + 1, i + 1);
            std::scoped_lock guard(lock);
            counts.set(0, counts.get(0, -1000000) + 1);
          }
          if (mine.size() != steps || counts.get(me + 1) != steps) failures.fetch_add(1);
        });
      }
      for (auto& w : workers) w.join();
      child_check(failures.load() == 0, "every thread saw its own writes");
    }));
  }
  for (auto& child : children) REQUIRE(finish(child) == 0);
  REQUIRE(counts.get(0) == processes * threads * steps);
  for (int me = 0; me < processes * threads; ++me) {
    const auto list = lists[static_cast<std::size_t>(me)].copy();
    REQUIRE(list.size() == steps);
    for (int i = 0; i < steps; ++i) REQUIRE(list[static_cast<std::size_t>(i)] == i);
  }
}

TEST_CASE("Forked children open channels of their own while the parent keeps calling through its channel",
          "[manager_channel]") {
  mp::Manager manager;
  auto d = manager.dict<int, int>();
  d.set(-1, 0);  // the parent's connection and channel exist before the forks
  constexpr int children = 3, calls = 200;
  std::vector<mp::Process> running;
  for (int c = 0; c < children; ++c) {
    running.push_back(start([d, c] {
      for (int i = 0; i < calls; ++i) {
        d.set(c * calls + i, i);
        child_check(d.get(c * calls + i) == i, "a child reads back its own write");
      }
    }));
  }
  for (int i = 0; i < calls; ++i) {
    d.set(-1, i);  // the parent's sequence numbers move on while the children call
    REQUIRE(d.get(-1) == i);
  }
  for (auto& child : running) REQUIRE(finish(child) == 0);
  REQUIRE(d.size() == children * calls + 1);
}
