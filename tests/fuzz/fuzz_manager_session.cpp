// libFuzzer target for a manager session after the handshake: a real detail::manager::server runs its event loop
// on a thread of this process (a fresh one per input), the harness connects on a Unix socket, passes the handshake
// with the key, and then sends the frames the input describes — sealed with the session's MAC, as a client
// would, so that they reach the server's dispatcher (server::process, the store's handlers, parking, throttling)
// rather than the MAC check alone. The input is a list of steps; byte s:
//   s % 8 in 0-4: a sealed request (u16 little-endian length, then the payload);
//   5: a sealed create request of kind (next byte), with name (next byte: none, "a" or "b") and number (next
//      byte) — a shortcut to objects (ids start at 1) the other requests can name;
//   6: an empty frame (a doorbell, with no channel attached);
//   7: raw bytes (u8 length, then the bytes): hostile framing, a bad MAC.
// Then the harness ends its writing half, reads replies until the server closes the connection, and stops the
// server. Every reply must carry a valid MAC under the session key, in sequence, and start with a status byte
// (0 or 1). Anything else — a crash, a sanitizer report, an exception out of the server's loop, a hang (60 s),
// a bad reply — is a finding.
// Seeds: MP_FUZZ_WRITE_SEEDS=<dir> fuzz_manager_session writes a few request sequences into <dir> and exits.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include <mp/detail/manager/auth.hpp>
#include <mp/detail/manager/net.hpp>
#include <mp/detail/manager/protocol.hpp>
#include <mp/detail/manager/server.hpp>
#include <mp/detail/unique_fd.hpp>

#include "fuzz_manager_socket.hpp"

namespace manager = mp::detail::manager;
namespace p = manager::protocol;

namespace {

using mp_fuzz::frame;
using mp_fuzz::poll_on;

constexpr std::string_view key = "fuzz session key";

mp_fuzz::listener& the_listener() {
  static mp_fuzz::listener l("session");
  return l;
}

// Blocking reads and writes of the handshake (the server answers at once; 60 s means it hung).
bool read_exactly(int fd, std::string& into, std::size_t n) {
  into.resize(n);
  for (std::size_t done = 0; done < n;) {
    pollfd in{fd, POLLIN, 0};
    if (poll_on(&in, 1, 60'000) != 1) std::abort();
    const auto got = ::read(fd, into.data() + done, n - done);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    done += static_cast<std::size_t>(got);
  }
  return true;
}

std::string read_frame(int fd) {
  std::string header, payload;
  if (!read_exactly(fd, header, 4)) std::abort();
  p::reader r(header);
  if (!read_exactly(fd, payload, r.u32())) std::abort();
  return payload;
}

void send_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const auto sent = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (sent < 0 && errno == EINTR) continue;
    if (sent <= 0) std::abort();
    bytes.remove_prefix(static_cast<std::size_t>(sent));
  }
}

struct session {
  manager::hmac_digest key{};
  std::uint64_t sent = 0, received = 0;
  std::string sealed(std::string_view payload) {
    const auto mac = manager::frame_mac(key, manager::direction::to_server, sent++, payload);
    return frame(std::string(payload) + std::string(reinterpret_cast<const char*>(mac.data()), mac.size()));
  }
};

// The client side of the handshake, as detail::manager::connection runs it.
session handshake(int fd) {
  const auto challenge = read_frame(fd);
  const auto answer = manager::answer_challenge(key, challenge);
  send_all(fd, frame({reinterpret_cast<const char*>(answer.data()), answer.size()}));
  if (read_frame(fd) != manager::welcome_tag) std::abort();
  const auto mine = manager::make_challenge();
  send_all(fd, frame(mine));
  if (!manager::check_answer(key, mine, read_frame(fd))) std::abort();
  return {manager::session_key(key, challenge, mine)};
}

std::string create_request(std::uint8_t kind, std::uint8_t name, std::uint8_t number) {
  std::string payload;
  p::writer w(payload);
  w.u8(static_cast<std::uint8_t>(p::op::create));
  w.u64(0);
  w.u8(static_cast<std::uint8_t>(kind % p::last_kind + 1));
  w.blob("t");
  w.blob(name % 3 == 0 ? "" : name % 3 == 1 ? "a" : "b");
  w.u64(number);
  w.blob("");
  return payload;
}

// The bytes the input's steps describe.
std::string stream_of(const std::uint8_t* data, std::size_t size, session& s) {
  std::string out;
  std::size_t at = 0;
  const auto next = [&]() -> std::uint8_t { return at < size ? data[at++] : 0; };
  while (at < size) {
    const std::uint8_t step = data[at++] % 8;
    if (step <= 4) {
      const std::size_t wanted = next() | (std::size_t{next()} << 8);
      const std::size_t length = std::min(wanted, size - at);
      out += s.sealed({reinterpret_cast<const char*>(data + at), length});
      at += length;
    } else if (step == 5) {
      const auto kind = next(), name = next(), number = next();
      out += s.sealed(create_request(kind, name, number));
    } else if (step == 6) {
      out += frame({});
    } else {
      const std::size_t length = std::min<std::size_t>(next(), size - at);
      out.append(reinterpret_cast<const char*>(data + at), length);
      at += length;
    }
  }
  return out;
}

// Checks the replies read so far (whole frames), removing them from `in`.
void check_replies(std::string& in, session& s) {
  for (;;) {
    if (in.size() < 4) return;
    p::reader r(in.data(), 4);
    const std::size_t size = r.u32();
    if (in.size() < 4 + size) return;
    const std::string_view payload(in.data() + 4, size);
    if (size < manager::hmac_size + 1) std::abort();  // every reply has a status byte and a MAC (no channel here)
    const auto body = payload.substr(0, size - manager::hmac_size);
    if (!manager::frame_mac_matches(s.key, manager::direction::to_client, s.received++, body,
                                    payload.substr(body.size()))) {
      std::abort();
    }
    if (static_cast<unsigned char>(body[0]) > 1) std::abort();
    in.erase(0, 4 + size);
  }
}

void write_seeds(const std::filesystem::path& directory) {
  std::filesystem::create_directories(directory);
  const auto request = [](p::op code, std::uint64_t id, std::string_view args) {
    std::string payload;
    p::writer w(payload);
    w.u8(static_cast<std::uint8_t>(code));
    w.u64(id);
    w.raw(args.data(), args.size());
    std::string step(1, '\0');
    p::writer(step).integer<std::uint16_t>(static_cast<std::uint16_t>(payload.size()));
    return step + payload;
  };
  const auto blob = [](std::string_view bytes) {
    std::string out;
    p::writer(out).blob(bytes);
    return out;
  };
  const auto seed = [&](const std::string& name, const std::string& steps) {
    std::ofstream(directory / name, std::ios::binary) << steps;
  };
  const std::string create_dict("\x05\x00\x01\x00", 4), create_list("\x05\x01\x00\x00", 4),
      create_queue("\x05\x03\x02\x02", 4), create_lock("\x05\x04\x00\x00", 4), create_barrier("\x05\x09\x00\x02", 4);
  seed("ping", request(p::op::ping, 0, ""));
  seed("dict", create_dict + request(p::op::dict_set, 1, blob("k") + blob("v")) +
                   request(p::op::dict_get, 1, blob("k")) + request(p::op::dict_items, 1, ""));
  seed("list", create_list + request(p::op::list_append, 1, blob("x")) + request(p::op::list_copy, 1, "") +
                   request(p::op::list_pop, 1, std::string(8, '\xff')));
  seed("queue-parks", create_queue + request(p::op::queue_get, 1, std::string(9, '\0')) +
                          request(p::op::ping, 0, ""));
  seed("lock", create_lock + request(p::op::lock_acquire, 1, std::string(9, '\0')) +
                   request(p::op::lock_release, 1, ""));
  seed("barrier", create_barrier + request(p::op::barrier_wait, 1, std::string(9, '\0')));
  seed("doorbell-and-raw", std::string("\x06\x07\x04\x00\x00\x00\x01", 7) + request(p::op::ping, 0, ""));
  seed("attach-no-fd", request(p::op::attach_channel, 0, ""));
  seed("shutdown", request(p::op::shutdown, 0, ""));
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
  if (size > (1u << 20)) return 0;
  auto& l = the_listener();
  int stop[2];
  if (::pipe2(stop, O_CLOEXEC) != 0) std::abort();
  std::thread serving;
  {
    manager::server server(mp::detail::unique_fd(::fcntl(l.fd.get(), F_DUPFD_CLOEXEC, 0)), std::string(key), -1,
                           stop[0]);
    std::atomic<bool> stopped{false};  // the server's loop ended (a shutdown request): nobody closes our end then
    serving = std::thread([&] {
      server.run();
      stopped = true;
    });
    mp::detail::unique_fd client(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    auto address = manager::unix_address(l.where.path);
    if (::connect(client.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) std::abort();
    session s = handshake(client.get());
    const std::string out = stream_of(data, size, s);
    // Send while reading replies (the server may stop reading a client that does not read), then end the stream
    // and read until the server closes the connection.
    std::string in;
    char chunk[65536];
    std::size_t written = 0;
    if (out.empty()) ::shutdown(client.get(), SHUT_WR);
    bool open = true;
    for (int idle = 0; open;) {
      pollfd both{client.get(), static_cast<short>(POLLIN | (written < out.size() ? POLLOUT : 0)), 0};
      if (poll_on(&both, 1, 20) != 1) {
        if (stopped) break;
        if (++idle == 3000) std::abort();  // 60 s without progress: the server hung (a niced run on a busy machine is slow)
        continue;
      }
      idle = 0;
      if (both.revents & (POLLIN | POLLHUP | POLLERR)) {
        const auto got = ::read(client.get(), chunk, sizeof chunk);
        if (got <= 0) {
          open = false;  // closed by the server (end of our stream, or a malformed frame)
        } else {
          in.append(chunk, static_cast<std::size_t>(got));
          check_replies(in, s);
        }
      }
      if (open && written < out.size() && (both.revents & POLLOUT)) {
        const auto sent = ::send(client.get(), out.data() + written, out.size() - written, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (sent > 0) written += static_cast<std::size_t>(sent);
        if (sent < 0 && errno != EAGAIN) written = out.size();  // closed by the server: read what is left
        if (written == out.size()) ::shutdown(client.get(), SHUT_WR);
      }
    }
    client.reset();
    (void)::write(stop[1], "x", 1);
    serving.join();
  }
  ::close(stop[0]);
  ::close(stop[1]);
  return 0;
}
