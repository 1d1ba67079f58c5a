// libFuzzer target for the Manager wire protocol: request payloads go straight to the server's request handler
// (detail::manager::store::handle, a pure function of store, client, bytes and time) from four clients, with
// disconnects and clock jumps between them, as the server's event loop drives it. The input is a list of steps:
//   byte s: client = s & 3; action = s >> 2 & 3: 0, 1 request (u16 little-endian length, then the payload),
//           2 disconnect the client, 3 advance the clock by the next byte in milliseconds and expire.
// A request the handler rejects (malformed) must apply nothing: the object count stays; the caller then
// disconnects the client, as the server closes its connection. Every reply goes to a known client and starts with
// a valid status byte. Anything else — a crash, a sanitizer report, an exception escaping — is a finding.
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

#include <mp/detail/manager/store.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using store = mp::detail::manager::store;
  store server;
  auto now = store::clock::time_point{} + std::chrono::hours(1);
  std::vector<store::reply> replies;
  std::size_t at = 0;
  auto check_replies = [&] {
    for (const auto& r : replies) {
      if (r.client > 3 || r.bytes.empty() || static_cast<unsigned char>(r.bytes[0]) > 1) std::abort();
    }
    replies.clear();
  };
  while (at < size) {
    const std::uint8_t step = data[at++];
    const std::uint64_t client = step & 3u;
    switch ((step >> 2) & 3u) {
      case 0:
      case 1: {
        if (size - at < 2) return 0;
        const std::size_t length = std::min<std::size_t>(data[at] | (std::size_t{data[at + 1]} << 8), size - at - 2);
        at += 2;
        const std::string_view request(reinterpret_cast<const char*>(data + at), length);
        at += length;
        const std::size_t objects = server.object_count();
        if (!server.handle(client, request, now, replies)) {
          if (server.object_count() != objects) std::abort();  // a rejected request applied something
          server.disconnect(client, replies);
        }
        break;
      }
      case 2:
        server.disconnect(client, replies);
        break;
      case 3:
        if (at < size) now += std::chrono::milliseconds(data[at++]);
        server.expire(now, replies);
        break;
    }
    check_replies();
  }
  return 0;
}
