// Tests for issue 19: hostile peers of a manager, on loopback TCP and Unix sockets. Each attack runs against a
// real server (or, for the client-side findings, a fake one speaking hostile bytes), bounded in time, and checks
// that the server stays alive and keeps serving others, that memory stays bounded (measured in /proc), and that
// the client gets a clear mp:: error.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <mp/detail/manager/net.hpp>
#include <mp/detail/manager/protocol.hpp>
#include <mp/detail/unique_fd.hpp>
#include <mp/manager.hpp>
#include <mp/process.hpp>

using namespace std::chrono_literals;
using Catch::Matchers::Contains;
namespace manager = mp::detail::manager;

namespace {

[[maybe_unused]] std::string random_key() { return "key-" + std::to_string(std::random_device{}()) + "-" + std::to_string(::getpid()); }

// A fresh Unix socket path for a fake server: the pid and a counter keep parallel runs apart.
std::string socket_path() {
  static int counter = 0;
  return "/tmp/mp-reliab-" + std::to_string(::getpid()) + "-" + std::to_string(++counter) + ".sock";
}

// Virtual memory of this process (kB) from /proc/self/status: "VmSize" or "VmPeak".
long vm_kb(const char* field) {
  long value = 0;
  if (FILE* status = std::fopen("/proc/self/status", "r")) {
    char line[256];
    const std::string prefix = std::string(field) + ":";
    while (std::fgets(line, sizeof line, status)) {
      if (std::strncmp(line, prefix.c_str(), prefix.size()) == 0) value = std::strtol(line + prefix.size(), nullptr, 10);
    }
    std::fclose(status);
  }
  return value;
}

// Caps this process's address space at its current size plus `extra` bytes: an allocation beyond fails with
// std::bad_alloc, which the child functions below turn into exit code 2.
void cap_address_space(std::size_t extra) {
  const rlim_t limit = static_cast<rlim_t>(vm_kb("VmSize")) * 1024 + extra;
  const rlimit allowance{limit, limit};
  if (::setrlimit(RLIMIT_AS, &allowance) != 0) std::_Exit(4);
}

// Runs f(args...) in a child and returns its exit code; a child still running after `limit` is killed and the
// test fails (the attack hung it).
template <class F, class... A>
int run_bounded(std::chrono::seconds limit, F f, const A&... args) {
  mp::Process child(f, args...);
  child.start();
  if (!child.join(limit)) {
    child.kill();
    child.join();
    FAIL("the child was still running after " << limit.count() << " s: the attack hung it");
  }
  return *child.exitcode();
}

// A listening socket that plays a hostile server: each accepted connection gets `behave(fd)` on a thread of this
// process, which then waits for the peer to hang up.
class fake_server {
 public:
  fake_server(bool tcp, std::function<void(int)> behave) : behave_(std::move(behave)) {
    where_.tcp = tcp;
    if (tcp) {
      where_.host = "127.0.0.1";
    } else {
      where_.path = socket_path();
    }
    listener_ = manager::listen_on(where_);
    thread_ = std::thread([this] {
      pollfd ready[2] = {{listener_.get(), POLLIN, 0}, {stop_[0], POLLIN, 0}};
      while (::poll(ready, 2, -1) > 0 && !ready[1].revents) {
        mp::detail::unique_fd peer(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
        if (!peer) continue;
        behave_(peer.get());
        // Wait until the client hangs up (or the test ends).
        pollfd gone[2] = {{peer.get(), POLLIN, 0}, {stop_[0], POLLIN, 0}};
        char sink[4096];
        while (::poll(gone, 2, -1) > 0 && !gone[1].revents && ::read(peer.get(), sink, sizeof sink) > 0) {
        }
      }
    });
  }
  ~fake_server() {
    (void)::write(stop_[1], "x", 1);
    thread_.join();
    ::close(stop_[0]);
    ::close(stop_[1]);
    if (!where_.tcp) ::unlink(where_.path.c_str());
  }
  mp::Address address() const {
    return where_.tcp ? mp::Address::tcp(where_.host, where_.port) : mp::Address::unix_socket(where_.path);
  }

 private:
  std::function<void(int)> behave_;
  manager::endpoint where_;
  mp::detail::unique_fd listener_;
  int stop_[2] = {-1, -1};
  bool piped_ = ::pipe2(stop_, O_CLOEXEC) == 0;
  std::thread thread_;  // last: it starts once the rest exists
};

// Exit codes of the client children: 0 the expected mp error; 2 an allocation failed; 3 no error; 5 another error.
int connect_expecting(const std::string& where, bool tcp, std::uint16_t port, long timeout_ms, int expected_kind,
                      const std::string& expected_text) {
  const auto address = tcp ? mp::Address::tcp(where, port) : mp::Address::unix_socket(where);
  try {
    (void)mp::Manager::connect(address, "some key", std::chrono::milliseconds(timeout_ms));
  } catch (const std::bad_alloc&) {
    return 2;
  } catch (const mp::Error& e) {
    std::fprintf(stderr, "client: %s\n", e.what());
    const bool kind = expected_kind == 0   ? dynamic_cast<const mp::AuthenticationError*>(&e) != nullptr
                      : expected_kind == 1 ? dynamic_cast<const mp::TimeoutError*>(&e) != nullptr
                                           : true;
    return kind && std::string(e.what()).find(expected_text) != std::string::npos ? 0 : 5;
  }
  return 3;
}

}  // namespace

// ---- finding 3: the client bounds every read before authentication -----------------------------------------------

TEST_CASE("A server greeting with a 4 GiB length is refused by the client without allocating it", "[reliability]") {
  for (const bool tcp : {false, true}) {
    CAPTURE(tcp);
    // The greeting announces 0xFFFFFFFF bytes, sends a few, then stays silent: the client used to reserve 4 GiB.
    fake_server server(tcp, [](int fd) {
      const unsigned char header[] = {0xFF, 0xFF, 0xFF, 0xFF, '#', 'C', 'H'};
      (void)::send(fd, header, sizeof header, MSG_NOSIGNAL);
    });
    const auto address = server.address();
    const int code = run_bounded(30s, [](std::string where, bool is_tcp, std::uint16_t port) {
      cap_address_space(64u << 20);  // the 4 GiB would fail here as std::bad_alloc (exit 2)
      const int result = connect_expecting(where, is_tcp, port, 10'000, 0, "announced a 4294967295-byte frame");
      std::fprintf(stderr, "client VmPeak after the attack: %ld kB\n", vm_kb("VmPeak"));
      std::_Exit(result);
    }, tcp ? address.host() : address.path(), tcp, address.port());
    CHECK(code == 0);
  }
}

// ---- finding 2: connecting and the handshake have a deadline -----------------------------------------------------

TEST_CASE("Manager::connect to an endpoint that never speaks throws TimeoutError after its timeout", "[reliability]") {
  for (const bool tcp : {false, true}) {
    CAPTURE(tcp);
    fake_server silent(tcp, [](int) {});  // accepts, never writes
    const auto address = silent.address();
    const int code = run_bounded(30s, [](std::string where, bool is_tcp, std::uint16_t port) {
      std::_Exit(connect_expecting(where, is_tcp, port, 300, 1, "took longer than 300 ms"));
    }, tcp ? address.host() : address.path(), tcp, address.port());
    CHECK(code == 0);
  }
  // A listener that never accepts: the kernel completes the connection, then nothing is ever said.
  manager::endpoint where{false, {}, 0, socket_path()};
  auto listener = manager::listen_on(where);
  REQUIRE_THROWS_AS(mp::Manager::connect(mp::Address::unix_socket(where.path), "", 200ms), mp::TimeoutError);
  REQUIRE_THROWS_WITH(mp::Manager::connect(mp::Address::unix_socket(where.path), "", 200ms),
                      Contains("ManagerOptions::connect_timeout"));
  ::unlink(where.path.c_str());
  // A real server still connects within a short timeout, and the deadline ends with the handshake: a later call
  // may block for longer than it.
  mp::Manager real({.connect_timeout = 5s});
  auto other = mp::Manager::connect(real.address(), "", 200ms);
  auto queue = other.queue<int>();
  REQUIRE_THROWS_AS(queue.get(400ms), mp::Empty);
  queue.put(7);
  REQUIRE(queue.qsize() == 1);
}
