// libFuzzer target for the Connection framing (mp/detail/wire.hpp through mp/connection.hpp): the input after its
// first byte is written as a peer's whole stream into one end of a Pipe, whose writer then closes; the first byte
// picks the receiving Connection type and, two bits per message, the receive call. Receiving until the end of the
// stream must give messages or mp:: exceptions (EOFError at the end, SerializationError / BufferTooShort for a
// message of the wrong shape, mp::Error for an over-limit length). Anything else — a crash, a sanitizer report,
// another exception, more payload out than bytes in, a hang — is a finding.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include <mp/connection.hpp>

namespace {

struct point {  // a bitwise type: Connection<point>::recv takes the fixed-size path
  std::int32_t x, y;
};

template <class T>
mp::Connection<T> stream_of(const std::uint8_t* data, std::size_t size) {
  auto [reader, writer] = mp::Pipe<T>();
  std::size_t written = 0;
  while (written < size) {
    const ssize_t n = ::write(writer.fileno(), data + written, size - written);
    if (n <= 0) std::abort();  // the stream fits in the socket buffer (inputs are capped below)
    written += static_cast<std::size_t>(n);
  }
  return std::move(reader);
}

enum class outcome { more, end, lost_sync };

// One receive: more, the end of the stream, or a stream that cannot be resynchronized.
template <class T>
outcome receive_one(mp::Connection<T>& in, unsigned mode, std::size_t& out_bytes) {
  try {
    if constexpr (std::is_same_v<T, std::string>) {
      if (mode == 0) out_bytes += in.recv().size();
    } else {
      if (mode == 0) (void)in.recv(), out_bytes += sizeof(T);
    }
    if (mode == 1 || mode == 2) out_bytes += in.recv_bytes().size();
    if (mode == 3) {
      std::byte buffer[64];
      out_bytes += in.recv_bytes_into(buffer);
    }
  } catch (const mp::EOFError&) {
    return outcome::end;
  } catch (const mp::SerializationError&) {
  } catch (const mp::BufferTooShort&) {
  } catch (const mp::Error&) {
    return outcome::lost_sync;  // an over-limit length: the rest of the stream has no frame boundary to resume at
  }
  return outcome::more;
}

template <class T>
void drain(const std::uint8_t* data, std::size_t size, unsigned modes) {
  auto in = stream_of<T>(data, size);
  std::size_t out_bytes = 0;
  outcome last = outcome::more;
  for (unsigned i = 0; i < 256 && last == outcome::more; ++i) {  // more frames add time, not coverage
    last = receive_one(in, (modes >> (2 * (i % 3))) & 3u, out_bytes);
    if (out_bytes > size) std::abort();  // nothing comes out that did not go in
  }
  if (last != outcome::end) return;
  // Once the stream is over, every later receive says so too.
  try {
    (void)in.recv_bytes();
    std::abort();
  } catch (const mp::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0 || size > 65536) return 0;
  if (data[0] & 0x80) {
    drain<point>(data + 1, size - 1, data[0]);
  } else {
    drain<std::string>(data + 1, size - 1, data[0]);
  }
  return 0;
}
