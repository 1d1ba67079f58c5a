// Tests of big messages through mp::Pipe (connection.hpp, detail/segment_pool.hpp): on a socketpair, a message
// of pipe_segment_threshold bytes (256 KiB) and up crosses in a memfd segment, recycled by its sending end, whose
// descriptor rides beside a blob frame; smaller ones stream, and the tests mix both. Then the shared-memory lane (detail/connection_lane.hpp). Across
// real processes, under every start method (ctest runs each test with MP_START_METHOD=fork, spawn and forkserver).
// Processes synchronize through the connections under test or through note pipes, never through sleeps.
#include <catch2/catch.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <mp/connection.hpp>
#include <mp/detail/connection_state.hpp>
#include <mp/detail/unique_fd.hpp>
#include <mp/process.hpp>

#include "support/child_process.hpp"

namespace {

using namespace std::chrono_literals;
using namespace mp_test;
using bytes = std::vector<std::byte>;

constexpr std::size_t MiB = std::size_t{1} << 20;
constexpr int kept_at_most = 3 * static_cast<int>(mp::detail::pipe_segments_kept) + 1;  // an end that sends and receives

// Word i (8 bytes) of a message from `sender` with sequence `seq`; word 0 names them. Word-wise, so that making
// and checking 256 MiB stays cheap on a loaded machine.
std::uint64_t pattern(std::size_t i, int sender, int seq) {
  return (i * 0x9E3779B97F4A7C15u) ^ (static_cast<std::uint64_t>(sender) << 40) ^ static_cast<std::uint64_t>(seq);
}

bytes make_message(std::size_t size, int sender, int seq) {
  bytes out(size);
  for (std::size_t i = 1; i < size / 8; ++i) {
    const std::uint64_t word = pattern(i, sender, seq);
    std::memcpy(out.data() + i * 8, &word, 8);
  }
  std::memcpy(out.data(), &sender, 4);
  std::memcpy(out.data() + 4, &seq, 4);
  return out;
}

// True if `data` is exactly make_message(data.size(), sender, seq) for the sender and seq it names.
bool intact(std::span<const std::byte> data, int& sender, int& seq) {
  if (data.size() < 8) return false;
  std::memcpy(&sender, data.data(), 4);
  std::memcpy(&seq, data.data() + 4, 4);
  for (std::size_t i = 1; i < data.size() / 8; ++i) {
    std::uint64_t word;
    std::memcpy(&word, data.data() + i * 8, 8);
    if (word != pattern(i, sender, seq)) return false;
  }
  for (std::size_t i = data.size() / 8 * 8; i < data.size(); ++i)
    if (data[i] != std::byte{0}) return false;
  return true;
}

bool is(std::span<const std::byte> data, std::size_t size, int sender, int seq) {
  int s = -1, q = -1;
  return data.size() == size && intact(data, s, q) && s == sender && q == seq;
}

int count_fds() {
  int n = 0;
  for (int fd = 0; fd < 4096; ++fd)
    if (::fcntl(fd, F_GETFD) != -1) ++n;
  return n;
}

// Descriptors and mappings of this process that are big-message segments ("mp-pipe-message",
// detail/segment_pool.hpp). A sending end keeps up to pipe_segments_kept of them (a descriptor and a mapping each),
// a receiving end up to pipe_segments_kept + 1 mappings of received ones.
int message_segments_here() {
  int n = 0;
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);)
    if (line.find("mp-pipe-message") != std::string::npos) ++n;
  if (DIR* dir = ::opendir("/proc/self/fd")) {
    while (dirent* entry = ::readdir(dir)) {
      char target[256] = {};
      const std::string path = std::string("/proc/self/fd/") + entry->d_name;
      if (::readlink(path.c_str(), target, sizeof target - 1) > 0 && std::strstr(target, "mp-pipe-message")) ++n;
    }
    ::closedir(dir);
  }
  return n;
}

// Counting descriptors: under forkserver the server, and this process's line to it, appear with the first child.
void warm_up() {
  auto child = start([] {});
  finish(child);
}

// Sends a raw frame header on `socket` with `fd` (if >= 0) beside it: what a hostile peer can do. (In a child: no
// Catch2 macro.)
void send_raw_header(int socket, std::uint64_t word, int fd) {
  iovec part{&word, sizeof word};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr message{};
  message.msg_iov = &part;
  message.msg_iovlen = 1;
  if (fd >= 0) {
    message.msg_control = control;
    message.msg_controllen = sizeof control;
    cmsghdr* cmsg = CMSG_FIRSTHDR(&message);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cmsg), &fd, sizeof fd);
  }
  child_check(::sendmsg(socket, &message, MSG_NOSIGNAL) == static_cast<ssize_t>(sizeof word), "sendmsg");
}

// A memfd of `size` bytes, sealed with `seals`. (In a child.)
mp::detail::unique_fd memfd_of(std::size_t size, int seals) {
  mp::detail::unique_fd fd(::memfd_create("hostile", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  child_check(static_cast<bool>(fd), "memfd_create");
  child_check(::ftruncate(fd.get(), static_cast<off_t>(size)) == 0, "ftruncate");
  if (seals != 0) child_check(::fcntl(fd.get(), F_ADD_SEALS, seals) == 0, "F_ADD_SEALS");
  return fd;
}

}  // namespace

namespace {

// A message of `size` bytes to a child and back (the child checks it and returns it as it came, by send_bytes),
// then one of the child's own; no descriptor, mapping or /dev/shm entry is left behind.
void big_messages_both_ways(std::size_t size) {
  warm_up();
  const int fds_before = count_fds();
  std::vector<int> pids{::getpid()};
  {
    auto [here, there] = mp::Pipe<bytes>();
    auto child = start([](mp::Connection<bytes> there) {
      bytes message = there.recv();
      int sender = 0, seq = 0;
      child_check(intact(message, sender, seq) && sender == 1 && seq == 1, "the message intact in the child");
      there.send_bytes(mp::serialize(message));
      there.send(make_message(16 * MiB, 2, 2));
    }, there);
    pids.push_back(child.pid());
    there.close();
    here.send(make_message(size, 1, 1));
    CHECK(is(mp::deserialize<bytes>(here.recv_bytes()), size, 1, 1));
    CHECK(is(here.recv(), 16 * MiB, 2, 2));
    CHECK(finish(child) == 0);
    CHECK_THROWS_AS(here.recv(), mp::EOFError);
    CHECK(message_segments_here() <= kept_at_most);  // `here` keeps its segments for its next big message
  }
  CHECK(message_segments_here() == 0);
  CHECK(count_fds() == fds_before);
  CHECK(shm_entries_of(pids).empty());
}

}  // namespace

TEST_CASE("A 64 MiB message crosses a Pipe intact in both directions", "[connection][bigdata]") {
  big_messages_both_ways(64 * MiB);
}

TEST_CASE("A 256 MiB message crosses a Pipe intact in both directions", "[connection][bigdata]") {
  big_messages_both_ways(256 * MiB);
}

TEST_CASE("send_bytes and recv_bytes_into move big buffers - BufferTooShort consumes the message",
          "[connection][bigdata]") {
  auto [reader, writer] = mp::Pipe<int>();
  auto child = start([](mp::Connection<int> writer) {
    writer.send_bytes(make_message(32 * MiB, 1, 0));
    writer.send_bytes(make_message(1 * MiB, 1, 1));
    writer.send_bytes(make_message(300 * 1024, 1, 2));  // stream frames between blob frames
    writer.send_bytes(make_message(64 * 1024, 1, 3));
    writer.send_bytes(make_message(48 * MiB, 1, 4));
    writer.send(42);
  }, writer);
  writer.close();
  bytes buffer(40 * MiB);
  const std::size_t n = reader.recv_bytes_into(buffer);
  CHECK(n == 32 * MiB);
  CHECK(is(std::span(buffer).first(n), 32 * MiB, 1, 0));
  CHECK(is(std::span(buffer).first(reader.recv_bytes_into(buffer)), 1 * MiB, 1, 1));
  CHECK(is(std::span(buffer).first(reader.recv_bytes_into(buffer)), 300 * 1024, 1, 2));
  CHECK(is(std::span(buffer).first(reader.recv_bytes_into(buffer)), 64 * 1024, 1, 3));
  CHECK_THROWS_AS(reader.recv_bytes_into(buffer), mp::BufferTooShort);  // 48 MiB into 40
  CHECK(reader.recv() == 42);  // the big one was consumed: the stream is in step
  CHECK(finish(child) == 0);
  CHECK(message_segments_here() <= kept_at_most);  // the reader's mappings of received segments, kept for reuse
}

TEST_CASE("poll, wait and fileno see a big message waiting", "[connection][bigdata]") {
  auto [reader, writer] = mp::Pipe<bytes>();
  auto [other, other_writer] = mp::Pipe<bytes>();
  note_pipe go;
  auto child = start([](note_end go, mp::Connection<bytes> writer) {
    go.wait();
    writer.send(make_message(32 * MiB, 4, 4));  // a blob frame
  }, go.reader(), writer);
  writer.close();
  CHECK_FALSE(reader.poll());
  CHECK(mp::wait({reader, other}, 10ms).empty());
  go.post();
  auto ready = mp::wait({other, reader});
  REQUIRE(ready.size() == 1);
  CHECK(ready[0] == reader);
  CHECK(mp::wait({reader.fileno()}, 0ms).size() == 1);
  CHECK(reader.poll());
  CHECK(is(reader.recv(), 32 * MiB, 4, 4));
  CHECK(finish(child) == 0);
  CHECK(reader.poll());  // end of stream
  CHECK_THROWS_AS(reader.recv(), mp::EOFError);
}

TEST_CASE("A big message sent just before the sender exits or is killed arrives, then EOFError",
          "[connection][bigdata]") {
  auto [reader, writer] = mp::Pipe<bytes>();
  auto child = start([](mp::Connection<bytes> writer) {
    writer.send(make_message(64 * MiB, 5, 5));
    hang();
  }, writer);
  writer.close();
  REQUIRE(reader.poll(std::chrono::seconds(60)));
  child.kill();  // its segment lives on in the socket: the frame went whole
  CHECK(finish(child) == -SIGKILL);
  CHECK(is(reader.recv(), 64 * MiB, 5, 5));
  CHECK_THROWS_AS(reader.recv(), mp::EOFError);

  // A receiver blocked in recv when its peer dies gets EOFError.
  auto [reader2, writer2] = mp::Pipe<bytes>();
  auto child2 = start([](mp::Connection<bytes>) { hang(); }, writer2);
  writer2.close();
  CHECK_FALSE(reader2.poll(5ms));
  child2.kill();
  CHECK_THROWS_AS(reader2.recv(), mp::EOFError);
  CHECK(finish(child2) == -SIGKILL);
}

TEST_CASE("A receiver SIGKILLed while copying a big message loses only that message and leaks nothing",
          "[connection][bigdata]") {
  warm_up();
  const int fds_before = count_fds();
  std::vector<int> pids{::getpid()};
  {
    auto [reader, writer] = mp::Pipe<bytes>();
    note_pipe got_first;
    auto child = start([](note_end got_first, mp::Connection<bytes> reader) {
      bytes first = reader.recv();
      child_check(is(first, 64 * MiB, 0, 0), "the first message intact");
      got_first.post();
      for (;;) (void)reader.recv();  // copies until killed
    }, got_first.writer(), reader);
    pids.push_back(child.pid());
    // The parent keeps its copy of the receiving end: it takes over after the kill.
    writer.send(make_message(64 * MiB, 0, 0));
    REQUIRE(got_first.wait());
    writer.send(make_message(64 * MiB, 0, 1));
    // 64 MiB is the window: this send goes once the child has taken message 1, so the child is copying it now.
    writer.send(make_message(64 * MiB, 0, 2));
    child.kill();
    CHECK(finish(child) == -SIGKILL);
    writer.send(make_message(64 * 1024, 0, 3));  // a stream frame: no window (this thread is the receiver now)
    // Message 1 is lost with the child, message 2 too if it got that far; what comes is whole and in order.
    bytes next = reader.recv();
    int sender = -1, seq = -1;
    CHECK(intact(next, sender, seq));
    if (seq == 2) {
      CHECK(next.size() == 64 * MiB);
      next = reader.recv();
    }
    CHECK(is(next, 64 * 1024, 0, 3));
    CHECK_FALSE(reader.poll());
    CHECK(message_segments_here() <= kept_at_most);  // the writer's kept ones
    // The window healed: a sender is not left waiting for bytes a dead receiver never gave back.
    for (int seq = 4; seq < 7; ++seq) {
      writer.send(make_message(64 * MiB, 0, seq));
      CHECK(is(reader.recv(), 64 * MiB, 0, seq));
    }
  }
  CHECK(message_segments_here() == 0);
  CHECK(count_fds() == fds_before);
  CHECK(shm_entries_of(pids).empty());
}

TEST_CASE("Concurrent senders in 3 processes send big and small messages, each arrives whole and in order",
          "[connection][bigdata]") {
  constexpr int senders = 3;
  constexpr int per_sender = 12;
  auto [reader, writer] = mp::Pipe<bytes>();
  std::vector<mp::Process> children;
  for (int s = 0; s < senders; ++s) {
    children.push_back(start([](mp::Connection<bytes> writer, int s) {
      for (int seq = 0; seq < per_sender; ++seq) {
        // From 1 KiB to 128 KiB (stream frames) and 256 KiB to 32 MiB (blob frames), interleaved.
        const std::size_t size = std::size_t{1024} << ((seq * 5 + s * 3) % 16);
        if (seq % 2 == 0) {
          writer.send(make_message(size, s, seq));
        } else {
          writer.send_bytes(mp::serialize(make_message(size, s, seq)));
        }
      }
    }, writer, s));
  }
  writer.close();
  std::map<int, int> next_seq;
  int received = 0;
  for (;;) {
    bytes message;
    try {
      message = reader.recv();
    } catch (const mp::EOFError&) {
      break;
    }
    int sender = -1, seq = -1;
    REQUIRE(intact(message, sender, seq));
    CHECK(seq == next_seq[sender]);
    next_seq[sender] = seq + 1;
    ++received;
  }
  CHECK(received == senders * per_sender);
  for (auto& child : children) CHECK(finish(child) == 0);
  CHECK(message_segments_here() <= kept_at_most);  // the reader's mappings of received segments
  reader.close();
  reader = {};
  CHECK(message_segments_here() == 0);
}

TEST_CASE("A hostile blob frame throws SerializationError and marks the connection corrupt", "[connection][bigdata]") {
  warm_up();
  const int fds_before = count_fds();
  constexpr std::uint64_t blob = mp::detail::blob_frame_flag;
  constexpr std::size_t header = mp::detail::segment_header_bytes;
  enum class descriptor { none, memfd, sealed_memfd, shrunk_after_sending, pipe };
  struct hostile {
    const char* what;
    std::uint64_t word;
    descriptor kind;
    std::size_t size;  // of the memfd
  };
  const hostile cases[] = {
      {"a memfd with no room for the header", blob | (1 * MiB), descriptor::memfd, 1 * MiB},
      {"a memfd shorter than announced", blob | (2 * MiB), descriptor::memfd, header + 1 * MiB},
      {"a memfd sealed against shrinking, shorter than announced", blob | (2 * MiB), descriptor::sealed_memfd,
       header + 1 * MiB},
      {"a memfd shrunk once sent", blob | (1 * MiB), descriptor::shrunk_after_sending, header + 1 * MiB},
      {"a pipe, not a memfd", blob | (1 * MiB), descriptor::pipe, 0},
      {"no descriptor", blob | (1 * MiB), descriptor::none, 0},
      {"a descriptor on a plain frame", 4, descriptor::memfd, 4096},
  };
  for (const auto& c : cases) {
    SECTION(c.what) {
      auto [reader, writer] = mp::Pipe<bytes>();
      auto child = start([](mp::Connection<bytes> writer, std::uint64_t word, descriptor kind, std::size_t size) {
        mp::detail::unique_fd fd, other;
        if (kind == descriptor::memfd || kind == descriptor::shrunk_after_sending) fd = memfd_of(size, 0);
        if (kind == descriptor::sealed_memfd) fd = memfd_of(size, F_SEAL_SHRINK);
        if (kind == descriptor::pipe) {
          int ends[2];
          child_check(::pipe(ends) == 0, "pipe");
          fd.reset(ends[0]);
          other.reset(ends[1]);
        }
        send_raw_header(writer.fileno(), word, fd ? fd.get() : -1);
        if (kind == descriptor::shrunk_after_sending) child_check(::ftruncate(fd.get(), 100) == 0, "shrink");
        if (word == 4) {
          const char payload[4] = {};
          child_check(::send(writer.fileno(), payload, 4, MSG_NOSIGNAL) == 4, "payload");
        }
      }, writer, c.word, c.kind, c.size);
      CHECK(finish(child) == 0);
      CHECK_THROWS_AS(reader.recv(), mp::SerializationError);
      CHECK_THROWS_WITH(reader.recv(), Catch::Contains("malformed"));
      CHECK_THROWS_WITH(writer.send(bytes(10)), Catch::Contains("malformed"));
    }
  }
  CHECK(count_fds() == fds_before);
}

TEST_CASE("A segment from another program, laid out right and sealed against writing or shrinking only, is read",
          "[connection][bigdata]") {
  constexpr std::size_t header = mp::detail::segment_header_bytes;
  // Sealed against writing: read by preadv (not mappable writable), its consumed mark fails harmlessly. Sealed
  // against shrinking only: mapped (through the end's kept mappings), as mp's own segments are.
  const int seals = GENERATE(F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW, F_SEAL_SHRINK);
  auto [reader, writer] = mp::Pipe<bytes>();
  auto child = start([](mp::Connection<bytes> writer, int seals) {
    const bytes message = make_message(1 * MiB, 9, 9);
    mp::detail::unique_fd fd = memfd_of(header + message.size(), 0);
    child_check(::pwrite(fd.get(), message.data(), message.size(), header) == static_cast<ssize_t>(message.size()),
                "pwrite");
    child_check(::fcntl(fd.get(), F_ADD_SEALS, seals) == 0, "seal");
    send_raw_header(writer.fileno(), mp::detail::blob_frame_flag | message.size(), fd.get());
    send_raw_header(writer.fileno(), mp::detail::blob_frame_flag | message.size(), fd.get());  // again
  }, writer, seals);
  CHECK(finish(child) == 0);
  CHECK(is(reader.recv_bytes(), 1 * MiB, 9, 9));
  bytes again(2 * MiB);  // the same file again: a kept mapping of it is found (or it is read again)
  CHECK(is(std::span(again).first(reader.recv_bytes_into(again)), 1 * MiB, 9, 9));
  writer.send(make_message(10, 1, 1));
  CHECK(is(reader.recv(), 10, 1, 1));
}

// ---- the shared-memory lane (detail/connection_lane.hpp): small messages to a receiver waiting in recv() ---------

TEST_CASE("Round trips of small values stay intact and in order, then EOFError", "[connection][lane]") {
  auto [here, there] = mp::Pipe<std::string>();
  auto child = start([](mp::Connection<std::string> there) {
    for (;;) {
      std::string message = there.recv();
      if (message == "stop") return;
      there.send(message + "!");
    }
  }, there);
  there.close();
  for (int i = 0; i < 3000; ++i) {
    const std::string message = std::to_string(i);
    here.send(message);
    const std::string back = here.recv();
    if (back != message + "!") FAIL("round trip " << i << ": " << back);
  }
  here.send("stop");
  CHECK_THROWS_AS(here.recv(), mp::EOFError);  // the child exits while this receiver waits
  CHECK(finish(child) == 0);
}

TEST_CASE("Messages around the lane's capacity cross both ways intact", "[connection][lane]") {
  const std::size_t capacity = mp::detail::pipe_lane_capacity;
  const std::size_t sizes[] = {0, 1, 8, capacity - 1, capacity, capacity + 1, 100 * 1024};
  auto [here, there] = mp::Pipe<int>();
  auto child = start([](mp::Connection<int> there) {
    for (;;) {
      bytes message = there.recv_bytes();
      if (message.size() == 3) return;
      there.send_bytes(message);
    }
  }, there);
  there.close();
  for (int round = 0; round < 50; ++round) {
    for (std::size_t size : sizes) {
      bytes message(size);
      for (std::size_t i = 0; i < size; ++i) message[i] = static_cast<std::byte>((i + size + round) & 0xff);
      here.send_bytes(message);
      bytes back(size + 16);
      const std::size_t n = here.recv_bytes_into(back);
      REQUIRE(n == size);
      back.resize(n);
      REQUIRE(back == message);
    }
  }
  here.send_bytes(bytes(3));
  CHECK(finish(child) == 0);
}

TEST_CASE("poll, wait and fileno see messages between receives that used the lane", "[connection][lane]") {
  auto [here, there] = mp::Pipe<int>();
  auto child = start([](mp::Connection<int> there) {
    for (;;) {
      const int v = there.recv();
      if (v < 0) return;
      for (int k = 0; k < v; ++k) there.send(k);  // v answers to one question
    }
  }, there);
  there.close();
  for (int round = 1; round < 200; ++round) {
    const int answers = round % 4;
    here.send(answers);
    for (int k = 0; k < answers; ++k) {
      if (k % 2 == 0) {
        // A receiver outside recv(): the answer must be visible on the descriptor.
        REQUIRE(here.poll(std::chrono::seconds(60)));
        REQUIRE(mp::wait({here.fileno()}, std::chrono::seconds(60)).size() == 1);
        REQUIRE(mp::wait({here}).size() == 1);
      }
      REQUIRE(here.recv() == k);
    }
    REQUIRE_FALSE(here.poll());
  }
  here.send(-1);
  CHECK(finish(child) == 0);
  CHECK(here.poll());
  CHECK_THROWS_AS(here.recv(), mp::EOFError);
}

TEST_CASE("4 processes sending small messages on one end, to a receiver in recv, lose and reorder nothing",
          "[connection][lane]") {
  constexpr int senders = 4;
  constexpr int per_sender = 1000;
  auto [reader, writer] = mp::Pipe<std::vector<std::int32_t>>();
  std::vector<mp::Process> children;
  for (int s = 0; s < senders; ++s) {
    children.push_back(start([](mp::Connection<std::vector<std::int32_t>> writer, int s) {
      for (int seq = 0; seq < per_sender; ++seq)
        writer.send(std::vector<std::int32_t>(static_cast<std::size_t>(2 + (seq * 7 + s) % 40), s * 1'000'000 + seq));
    }, writer, s));
  }
  writer.close();
  std::map<int, int> next_seq;
  int received = 0;
  for (;;) {
    std::vector<std::int32_t> message;
    try {
      message = reader.recv();
    } catch (const mp::EOFError&) {
      break;
    }
    REQUIRE(message.size() >= 2);
    const int sender = message[0] / 1'000'000, seq = message[0] % 1'000'000;
    REQUIRE(message.size() == static_cast<std::size_t>(2 + (seq * 7 + sender) % 40));
    for (auto word : message) REQUIRE(word == message[0]);
    REQUIRE(seq == next_seq[sender]);
    next_seq[sender] = seq + 1;
    ++received;
  }
  CHECK(received == senders * per_sender);
  for (auto& child : children) CHECK(finish(child) == 0);
}
