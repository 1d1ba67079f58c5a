// Tests of mp/connection.hpp (Pipe, Connection, wait) across real processes, under every start method (ctest runs
// each test with MP_START_METHOD=fork, spawn and forkserver): children get the connections as Process arguments.
// Processes synchronize through the connections under test or through plain pipes, never through sleeps; a short
// timeout appears only where the test asserts that something does NOT happen.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <mp/connection.hpp>
#include <mp/detail/unique_fd.hpp>
#include <mp/process.hpp>

#include "support/child_process.hpp"

namespace {

using namespace std::chrono_literals;
using namespace mp_test;

// A recognizable byte pattern: byte i of a message from `sender` with sequence `seq`.
std::byte pattern(std::size_t i, int sender, int seq) {
  return static_cast<std::byte>((i * 131 + static_cast<std::size_t>(sender) * 17 + static_cast<std::size_t>(seq)) &
                                0xff);
}

std::vector<std::byte> make_message(std::size_t size, int sender, int seq) {
  std::vector<std::byte> bytes(size);
  for (std::size_t i = 0; i < size; ++i) bytes[i] = pattern(i, sender, seq);
  if (size >= 8) {
    std::memcpy(bytes.data(), &sender, 4);
    std::memcpy(bytes.data() + 4, &seq, 4);
  }
  return bytes;
}

// True if `bytes` is exactly make_message(bytes.size(), sender, seq) for the sender and seq it names.
bool intact(const std::vector<std::byte>& bytes, int& sender, int& seq) {
  if (bytes.size() < 8) return false;
  std::memcpy(&sender, bytes.data(), 4);
  std::memcpy(&seq, bytes.data() + 4, 4);
  for (std::size_t i = 8; i < bytes.size(); ++i)
    if (bytes[i] != pattern(i, sender, seq)) return false;
  return true;
}

struct point {
  double x, y;
  int tag;
};

}  // namespace

TEST_CASE("Pipe carries values both ways between two processes", "[connection]") {
  auto [here, there] = mp::Pipe<std::string>();
  auto child = start([](mp::Connection<std::string> there) {
    for (;;) {
      std::string message = there.recv();
      if (message == "stop") return;
      there.send(message + message);
    }
  }, there);
  there.close();
  for (const std::string& word : std::vector<std::string>{"a", "hello", std::string(10000, 'x'), ""}) {
    here.send(word);
    CHECK(here.recv() == word + word);
  }
  here.send("stop");
  CHECK(finish(child) == 0);
  CHECK_THROWS_AS(here.recv(), mp::EOFError);
}

TEST_CASE("Pipe of a trivially copyable struct keeps every field", "[connection]") {
  auto [here, there] = mp::Pipe<point>();
  auto child = start([](mp::Connection<point> there) {
    point p = there.recv();
    there.send(point{p.y, p.x, p.tag + 1});
  }, there);
  here.send(point{1.5, -2.25, 41});
  const point back = here.recv();
  CHECK(back.x == -2.25);
  CHECK(back.y == 1.5);
  CHECK(back.tag == 42);
  CHECK(finish(child) == 0);
}

TEST_CASE("One-way Pipe: the first end only receives, the second only sends", "[connection]") {
  auto [reader, writer] = mp::Pipe<int>(false);
  auto child = start([](mp::Connection<int> writer) {
    for (int i = 0; i < 100; ++i) writer.send(i * i);
  }, writer);
  writer.close();
  for (int i = 0; i < 100; ++i) CHECK(reader.recv() == i * i);
  CHECK(finish(child) == 0);
  CHECK_THROWS_AS(reader.recv(), mp::EOFError);
  CHECK_THROWS_WITH(reader.send(1), Catch::Contains("only receives"));

  auto [reader2, writer2] = mp::Pipe<int>(false);
  CHECK_THROWS_WITH((void)writer2.recv(), Catch::Contains("only sends"));
  CHECK_THROWS_WITH((void)writer2.poll(), Catch::Contains("only sends"));
}

TEST_CASE("recv throws EOFError only after every message sent before the close is read", "[connection]") {
  for (bool duplex : {true, false}) {
    auto [a, b] = mp::Pipe<std::string>(duplex);
    auto child = start([](mp::Connection<std::string> b) {
      b.send("one");
      b.send("two");
      b.send(std::string(100'000, '3'));
      // exits without closing: the process's end closes with it
    }, b);
    b.close();
    CHECK(a.recv() == "one");
    CHECK(a.recv() == "two");
    CHECK(a.recv() == std::string(100'000, '3'));
    CHECK(finish(child) == 0);
    CHECK(a.poll());  // end of stream counts as "recv will not block"
    CHECK_THROWS_AS(a.recv(), mp::EOFError);
    CHECK_THROWS_WITH(a.recv(), Catch::Contains("closed"));
  }
}

TEST_CASE("poll is false on an idle connection, honours its timeout, and sees a message", "[connection]") {
  auto [a, b] = mp::Pipe<int>();
  note_pipe go;
  CHECK_FALSE(a.poll());
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_FALSE(a.poll(30ms));
  CHECK(std::chrono::steady_clock::now() - t0 >= 30ms);
  auto child = start([](note_end go, mp::Connection<int> b) {
    go.wait();
    b.send(7);
  }, go.reader(), b);
  go.post();
  CHECK(a.poll(std::chrono::hours(1)));
  CHECK(a.poll());
  CHECK(a.recv() == 7);
  CHECK_FALSE(a.poll());
  CHECK(finish(child) == 0);
}

TEST_CASE("A 64 MiB message passes through a Pipe intact", "[connection]") {
  constexpr std::size_t size = std::size_t{64} << 20;
  for (bool duplex : {true, false}) {
    SECTION(duplex ? "socketpair" : "pipe") {
      auto [reader, writer] = mp::Pipe<std::vector<std::byte>>(duplex);
      auto child = start([](mp::Connection<std::vector<std::byte>> writer) {
        writer.send(make_message(size, 1, 2));
        writer.send_bytes(make_message(size, 3, 4));
      }, writer);
      writer.close();
      int sender = 0, seq = 0;
      const auto first = reader.recv();
      CHECK(first.size() == size);
      CHECK(intact(first, sender, seq));
      CHECK((sender == 1 && seq == 2));
      const auto second = reader.recv_bytes();
      CHECK(second.size() == size);
      CHECK(intact(second, sender, seq));
      CHECK((sender == 3 && seq == 4));
      CHECK(finish(child) == 0);
    }
  }
}

TEST_CASE("Concurrent senders in 4 processes on one Connection never interleave their messages", "[connection]") {
  constexpr int senders = 4;
  constexpr int per_sender = 60;
  for (bool duplex : {true, false}) {
    SECTION(duplex ? "socketpair" : "pipe") {
      auto [reader, writer] = mp::Pipe<std::vector<std::byte>>(duplex);
      std::vector<mp::Process> children;
      for (int s = 0; s < senders; ++s) {
        children.push_back(start([](mp::Connection<std::vector<std::byte>> writer, int s) {
          // Sizes well above PIPE_BUF and the socket buffer, so each message takes many write(2) calls.
          for (int seq = 0; seq < per_sender; ++seq)
            writer.send(make_message(std::size_t{1000} + static_cast<std::size_t>((seq * 7919 + s * 104729) % 300'000),
                                     s, seq));
        }, writer, s));
      }
      writer.close();
      std::map<int, int> next_seq;
      int received = 0;
      for (;;) {
        std::vector<std::byte> message;
        try {
          message = reader.recv();
        } catch (const mp::EOFError&) {
          break;
        }
        int sender = -1, seq = -1;
        REQUIRE(intact(message, sender, seq));
        CHECK(seq == next_seq[sender]);  // each sender's messages arrive in its order
        next_seq[sender] = seq + 1;
        ++received;
      }
      CHECK(received == senders * per_sender);
      for (auto& child : children) CHECK(finish(child) == 0);
    }
  }
}

TEST_CASE("Concurrent receivers in 3 processes on one Connection each get whole messages", "[connection]") {
  auto [reader, writer] = mp::Pipe<std::vector<std::byte>>();
  auto [results_in, results_out] = mp::Pipe<std::int64_t>(false);
  std::vector<mp::Process> children;
  for (int r = 0; r < 3; ++r) {
    children.push_back(start([](mp::Connection<std::vector<std::byte>> reader,
                                mp::Connection<std::int64_t> results_out) {
      std::int64_t count = 0;
      for (;;) {
        auto message = reader.recv();
        if (message.empty()) break;
        int sender = 0, seq = 0;
        child_check(intact(message, sender, seq), "whole message");
        ++count;
      }
      results_out.send(count);
    }, reader, results_out));
  }
  reader.close();
  results_out.close();
  for (int seq = 0; seq < 150; ++seq) writer.send(make_message(70'000 + static_cast<std::size_t>(seq), 0, seq));
  for (int r = 0; r < 3; ++r) writer.send({});
  std::int64_t total = 0;
  for (int r = 0; r < 3; ++r) total += results_in.recv();
  CHECK(total == 150);
  for (auto& child : children) CHECK(finish(child) == 0);
}

TEST_CASE("send_bytes, recv_bytes and recv_bytes_into - BufferTooShort for a small buffer", "[connection]") {
  auto [a, b] = mp::Pipe<int>();
  const std::vector<std::byte> bytes = make_message(300, 9, 9);
  b.send_bytes(bytes);
  CHECK(a.recv_bytes() == bytes);
  b.send_bytes({});
  CHECK(a.recv_bytes().empty());
  b.send_bytes(bytes);
  std::array<std::byte, 512> big{};
  CHECK(a.recv_bytes_into(big) == 300);
  CHECK(std::memcmp(big.data(), bytes.data(), 300) == 0);
  b.send_bytes(bytes);
  std::array<std::byte, 100> small{};
  CHECK_THROWS_AS(a.recv_bytes_into(small), mp::BufferTooShort);
  b.send(5);  // the short message was consumed: the stream is still in step
  CHECK(a.recv() == 5);
  b.send_bytes(bytes);  // a message of the wrong size for the type
  CHECK_THROWS_AS(a.recv(), mp::SerializationError);
  b.send(6);
  CHECK(a.recv() == 6);
}

TEST_CASE("A closed Connection refuses every operation with mp::Error - copies share the close", "[connection]") {
  auto [a, b] = mp::Pipe<int>();
  mp::Connection<int> copy = a;
  CHECK(copy == a);
  CHECK_FALSE(copy == b);
  CHECK_FALSE(a.closed());
  copy.close();
  CHECK(a.closed());
  CHECK_THROWS_AS(a.send(1), mp::Error);
  CHECK_THROWS_AS(a.recv(), mp::Error);
  CHECK_THROWS_AS(a.poll(), mp::Error);
  CHECK_THROWS_WITH((void)a.fileno(), Catch::Contains("closed"));
  a.close();  // closing twice is harmless
  mp::Connection<int> empty;
  CHECK(empty.closed());
  CHECK_THROWS_AS(b.recv(), mp::EOFError);  // b's peer is now gone
}

TEST_CASE("send to a closed peer throws mp::Error instead of killing the process with SIGPIPE", "[connection]") {
  for (bool duplex : {true, false}) {
    auto [reader, writer] = mp::Pipe<std::string>(duplex);
    reader.close();
    CHECK_THROWS_WITH(writer.send(std::string(200'000, 'x')), Catch::Contains("Broken pipe"));
    CHECK_THROWS_WITH(writer.send("small"), Catch::Contains("closed"));
  }
}

TEST_CASE("A sender SIGKILLed in the middle of a message leaves the direction marked broken", "[connection]") {
  // A one-way Pipe: its messages stream through the pipe(2) in pieces. (On a socketpair a message this big goes
  // whole as a blob frame, so a sender cannot die inside it: connection_bigdata_test.cpp.)
  auto [reader, writer] = mp::Pipe<std::vector<std::byte>>(false);
  auto child = start(
      [](mp::Connection<std::vector<std::byte>> writer) { writer.send(make_message(std::size_t{64} << 20, 0, 0)); },
      writer);
  // The first bytes have arrived and the message is far larger than the socket buffer: the child is inside send.
  REQUIRE(reader.poll(std::chrono::seconds(30)));
  child.kill();
  CHECK(finish(child) == -SIGKILL);
  CHECK_THROWS_WITH(writer.send({}), Catch::Contains("killed in the middle of a message"));
  // The reader is told too, rather than decoding the partial message or waiting for its missing bytes.
  CHECK_THROWS_WITH(reader.recv(), Catch::Contains("killed in the middle of a message"));
}

TEST_CASE("wait returns the ready connections and ended processes, in input order", "[connection][wait]") {
  auto [a1, b1] = mp::Pipe<int>();
  auto [a2, b2] = mp::Pipe<int>();
  auto [a3, b3] = mp::Pipe<int>();
  std::vector<mp::Connection<int>> readers{a1, a2, a3};
  CHECK(mp::wait(readers, 10ms).empty());
  b3.send(3);
  b1.send(1);
  auto ready = mp::wait(readers);
  REQUIRE(ready.size() == 2);
  CHECK(ready[0] == a1);
  CHECK(ready[1] == a3);
  CHECK(ready[0].recv() == 1);
  CHECK(ready[1].recv() == 3);
  CHECK(mp::wait({a1, a2, a3}, 0ms).empty());

  note_pipe go;
  auto child = start([](note_end go) { go.wait(); }, go.reader());
  CHECK(mp::wait({child.sentinel(), a2.fileno()}, 10ms).empty());
  go.post();
  auto ended = mp::wait({child.sentinel(), a2.fileno()});
  REQUIRE(ended.size() == 1);
  CHECK(ended[0] == child.sentinel());
  std::vector<mp::Process*> processes{&child};
  CHECK(mp::wait(processes, 1s).size() == 1);
  CHECK(finish(child) == 0);

  b2.close();  // end of stream makes a connection ready too
  CHECK(mp::wait({a2}).size() == 1);
}

TEST_CASE("A Pipe holds two sockets and one memfd, and releases them with its last handle", "[connection][resources]") {
  auto count_fds = [] {
    int n = 0;
    for (int fd = 0; fd < 4096; ++fd)
      if (::fcntl(fd, F_GETFD) != -1) ++n;
    return n;
  };
  const int before = count_fds();
  {
    auto [a, b] = mp::Pipe<int>();
    CHECK(count_fds() == before + 3);
    a.close();
    CHECK(count_fds() == before + 2);
  }
  CHECK(count_fds() == before);
}
