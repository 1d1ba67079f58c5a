// libFuzzer target for the CLIENT side of the manager handshake: the fuzzer plays a hostile server. Each input is
// written as the whole stream a server sends to a client connecting on a Unix socket (then the server side shuts its
// writing half, so the stream ends); the client (detail::manager::connection, as Manager::connect builds it) reads
// its greeting and what follows. The first input byte picks the client's authkey (empty or not). With an authkey
// the fuzzer cannot pass the client's own challenge (fresh random bytes); without one, a "#WELCOME#" greeting gets
// it to the shared-memory channel offer, whose reply comes from the rest of the input.
// Connecting must give a connection or an mp::Error (AuthenticationError for a bad greeting or a frame over the
// 256-byte pre-authentication limit, mp::Error for a stream that ends); anything else — a crash, a sanitizer report,
// another exception, an allocation beyond the limit, a hang past the 5 s setup timeout — is a finding.
// Seeds: MP_FUZZ_WRITE_SEEDS=<dir> fuzz_manager_client writes a few greetings into <dir> and exits.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include <mp/detail/manager/auth.hpp>
#include <mp/detail/manager/client.hpp>
#include <mp/detail/manager/net.hpp>
#include <mp/detail/manager/protocol.hpp>
#include <mp/detail/unique_fd.hpp>
#include <mp/errors.hpp>

#include "fuzz_manager_socket.hpp"

namespace manager = mp::detail::manager;

namespace {

using mp_fuzz::frame;
using mp_fuzz::poll_on;

mp_fuzz::listener& the_listener() {
  static mp_fuzz::listener l("client");
  return l;
}

void write_seeds(const std::filesystem::path& directory) {
  std::filesystem::create_directories(directory);
  const auto seed = [&](const std::string& name, char key, const std::string& stream) {
    std::ofstream file(directory / name, std::ios::binary);
    file.put(key);
    file << stream;
  };
  const std::string challenge = std::string(manager::challenge_tag) + std::string(manager::challenge_size, 'c');
  std::string ok_reply;
  manager::protocol::writer(ok_reply).u8(0);
  seed("challenge-then-welcome", 1, frame(challenge) + frame(manager::welcome_tag) + frame(std::string(32, 'a')));
  seed("challenge-then-failure", 1, frame(challenge) + frame(manager::failure_tag));
  seed("welcome-no-key", 0, frame(manager::welcome_tag) + frame(ok_reply));
  seed("welcome-with-key", 1, frame(manager::welcome_tag));
  seed("challenge-no-key", 0, frame(challenge));
  seed("short-challenge", 1, frame(std::string(manager::challenge_tag) + "xy"));
  seed("huge-length", 1, std::string("\xff\xff\xff\xff", 4) + "#CHALLENGE#");
  seed("limit-length", 1, std::string("\x00\x01\x00\x00", 4) + std::string(256, 'z'));
  seed("truncated", 1, std::string("\x2b\x00\x00\x00", 4) + "#CHALL");
  seed("empty", 1, "");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* directory = std::getenv("MP_FUZZ_WRITE_SEEDS")) {
    write_seeds(directory);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0 || size > (1u << 20)) return 0;
  auto& l = the_listener();
  const std::string authkey = data[0] & 1 ? "the key" : "";
  const std::string stream(reinterpret_cast<const char*>(data) + 1, size - 1);
  // The hostile server: accepts, writes the stream, ends it, and reads whatever the client says until it hangs up.
  std::thread server([&] {
    pollfd ready{l.fd.get(), POLLIN, 0};
    if (poll_on(&ready, 1, 60'000) != 1) std::abort();  // the client never connected
    int accepted;
    do {
      accepted = ::accept4(l.fd.get(), nullptr, nullptr, SOCK_CLOEXEC);
    } while (accepted < 0 && errno == EINTR);
    mp::detail::unique_fd peer(accepted);
    if (!peer) std::abort();
    pollfd both{peer.get(), POLLIN | POLLOUT, 0};
    std::size_t written = 0;
    char sink[4096];
    while (written < stream.size()) {  // write while reading, so that neither side blocks the other
      if (poll_on(&both, 1, 60'000) != 1) std::abort();  // a hang (60 s: a niced run on a busy machine is slow)
      if (both.revents & POLLIN) {
        if (::read(peer.get(), sink, sizeof sink) <= 0) return;  // the client gave up early
      }
      if (both.revents & POLLOUT) {
        const auto sent = ::send(peer.get(), stream.data() + written, stream.size() - written, MSG_NOSIGNAL);
        if (sent <= 0) return;
        written += static_cast<std::size_t>(sent);
      }
    }
    ::shutdown(peer.get(), SHUT_WR);
    pollfd in{peer.get(), POLLIN, 0};
    while (poll_on(&in, 1, 60'000) == 1 && ::read(peer.get(), sink, sizeof sink) > 0) {
    }
  });
  try {
    manager::connection client(l.where, authkey, std::chrono::seconds(5));
  } catch (const mp::Error&) {
  }
  server.join();
  return 0;
}
