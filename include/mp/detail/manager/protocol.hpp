// protocol: the manager's wire protocol — frame limits, operation codes and the bounds-checked byte reader and
// writer that both sides use. A frame is a 4-byte little-endian length followed by that many payload bytes.
// (No .ipp: everything here is a constant, a template or a few-line reader on the parsing path.)
//
// Request payload:  u8 op, u64 object id, then the op's arguments.
// Response payload: u8 status (0 ok, 1 error); ok: the op's results; error: u8 error kind, string message.
// Integers are little-endian; a "blob" and a "string" are a u32 length and that many bytes. Values are blobs of
// mp::serialize bytes the server never decodes, which keeps the server type-agnostic: it compares dict keys by
// their bytes and checks types by the type names each object records.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

namespace mp::detail::manager::protocol {

/// Largest request the server reads; a frame announcing more closes the connection before any byte is buffered
/// beyond the header. (512 MiB: a 256 MiB value with its key and headers fits, with room.)
inline constexpr std::uint32_t max_request = 512u << 20;
/// Requests and replies from this size up cross a Unix socket as a memfd segment whose descriptor rides beside a
/// small frame (op::large_request / status::in_segment), instead of streaming through the socket; below it they
/// fit the shared-memory channel's slot (channel.hpp), whose capacity this is.
inline constexpr std::uint32_t large_bytes = (1u << 20) + 1;
/// Segments and buffers for large requests and replies up to this size are kept for the next one (warm pages: a
/// fresh page costs more to fault in than to copy); larger ones are let go after use.
inline constexpr std::size_t kept_bytes = std::size_t{128} << 20;
/// Largest frame before authentication: the handshake's messages are under 64 bytes.
inline constexpr std::uint32_t max_handshake = 256;

enum class kind : std::uint8_t { dict = 1, list, value, queue, lock, rlock, semaphore, event, condition, barrier,
                                 namespace_, joinable_queue, array, bounded_semaphore, object };
inline constexpr std::uint8_t last_kind = static_cast<std::uint8_t>(kind::object);

enum class op : std::uint8_t {
  create = 1,  // kind u8, type string, name string, number u64, initial blob -> id u64
  shutdown,    // -> (nothing); the server stops after replying
  ping,        // -> (nothing)
  attach_channel,  // (a memfd attached with SCM_RIGHTS, Unix sockets only) -> (nothing); see channel.hpp
  hello,       // session u64, u32 n, n x lend token u64 -> u32 m, m x adopted id u64 (refs.hpp)
  decref,      // (id) count u64 -> (nothing)
  lend,        // u32 n, n x id u64 -> token u64
  erase_name,  // name string -> u8 flag
  type_info,   // name string -> u8 known, u64 signature (registered.hpp)
  dict_get = 10, dict_set, dict_contains, dict_erase, dict_size, dict_keys, dict_values, dict_items, dict_clear,
  dict_update, dict_setdefault, dict_pop,
  list_append = 30, list_extend, list_get, list_set, list_insert, list_pop, list_size, list_clear, list_copy,
  value_get = 45, value_set,
  queue_put = 50, queue_get, queue_state, queue_task_done, queue_join,
  lock_acquire = 60, lock_release,
  semaphore_acquire = 65, semaphore_release, semaphore_value,
  event_set = 70, event_clear, event_is_set, event_wait,
  condition_wait = 75, condition_notify,
  barrier_wait = 80, barrier_reset, barrier_abort, barrier_state,
  ns_get = 90, ns_set, ns_contains, ns_erase, ns_names,
  // list (and array) additions: remove value, index value i64 start i64 stop -> u64, count value -> u64, reverse,
  // slice i64 begin i64 end -> list, snapshot -> u64 version + list, permute u64 version + u32 n + n x u32 -> flag
  list_remove = 100, list_index, list_count, list_reverse, list_slice, list_snapshot, list_permute,
  dict_popitem = 110,  // -> u8 flag (+ key blob, value blob)
  object_call = 120,   // u32 method, args blob -> result blob (custom types, see registered.hpp)
  // A request of large_bytes or more, over a Unix socket: u64 size; its payload (a whole request, op first) is the
  // first `size` bytes of the memfd that comes with this frame (SCM_RIGHTS). The server reads it with pread, so
  // the client may reuse the segment for its next request and nothing it does to it can fault the server.
  large_request = 125,
};

/// in_segment: a reply of large_bytes or more to a Unix socket client: u64 size; the reply's payload is the first
/// `size` bytes of the memfd that comes with this frame (the client reads it with pread).
enum class status : std::uint8_t { ok = 0, error = 1, in_segment = 2 };
/// Which mp exception the client throws for an error reply.
/// remote: the message blob is followed by a second one; the first names the exception's type, the second is its
/// what() (a custom type's method threw).
enum class error_kind : std::uint8_t { error = 0, empty, full, broken_barrier, key, index, value, remote };

/// A request or reply that does not parse: the connection that sent it is closed.
struct malformed {};

/// Appends protocol fields to a byte buffer (std::string on the server, std::vector<std::byte> on the client).
template <class Buffer>
class writer {
 public:
  explicit writer(Buffer& buffer) : buffer_(buffer) {}
  void raw(const void* data, std::size_t size) {
    auto at = buffer_.size();
    buffer_.resize(at + size);
    if (size) std::memcpy(buffer_.data() + at, data, size);
  }
  template <class Int>
  void integer(Int value) {
    static_assert(std::is_integral_v<Int>);
    unsigned char bytes[sizeof(Int)];
    auto u = static_cast<std::make_unsigned_t<Int>>(value);
    for (std::size_t i = 0; i < sizeof(Int); ++i) bytes[i] = static_cast<unsigned char>(u >> (8 * i));
    raw(bytes, sizeof bytes);
  }
  void u8(std::uint8_t v) { integer(v); }
  void u32(std::uint32_t v) { integer(v); }
  void u64(std::uint64_t v) { integer(v); }
  void i64(std::int64_t v) { integer(v); }
  void blob(std::string_view bytes) {
    u32(static_cast<std::uint32_t>(bytes.size()));
    raw(bytes.data(), bytes.size());
  }
  /// Reserves a u32 length field; finish_blob(mark) fills it with the bytes appended since.
  std::size_t start_blob() {
    u32(0);
    return buffer_.size();
  }
  void finish_blob(std::size_t mark) {
    auto size = static_cast<std::uint32_t>(buffer_.size() - mark);
    for (std::size_t i = 0; i < 4; ++i) {
      buffer_[mark - 4 + i] = static_cast<typename Buffer::value_type>(static_cast<unsigned char>(size >> (8 * i)));
    }
  }

 private:
  Buffer& buffer_;
};

/// Reads protocol fields from untrusted bytes: every read is bounds-checked and throws malformed.
class reader {
 public:
  reader(const void* data, std::size_t size) : at_(static_cast<const char*>(data)), end_(at_ + size) {}
  explicit reader(std::string_view bytes) : reader(bytes.data(), bytes.size()) {}

  template <class Int>
  Int integer() {
    need(sizeof(Int));
    std::make_unsigned_t<Int> u = 0;
    for (std::size_t i = 0; i < sizeof(Int); ++i) {
      u |= static_cast<std::make_unsigned_t<Int>>(static_cast<unsigned char>(at_[i])) << (8 * i);
    }
    at_ += sizeof(Int);
    return static_cast<Int>(u);
  }
  std::uint8_t u8() { return integer<std::uint8_t>(); }
  std::uint32_t u32() { return integer<std::uint32_t>(); }
  std::uint64_t u64() { return integer<std::uint64_t>(); }
  std::int64_t i64() { return integer<std::int64_t>(); }
  std::string_view blob() {
    auto size = u32();
    need(size);
    std::string_view bytes(at_, size);
    at_ += size;
    return bytes;
  }
  /// A count of items that each take at least `min_item` bytes: rejects counts the remaining bytes cannot hold,
  /// so a hostile count never drives a large reserve().
  std::uint32_t count(std::size_t min_item) {
    auto n = u32();
    if (static_cast<std::size_t>(end_ - at_) / min_item < n) throw malformed{};
    return n;
  }
  bool done() const { return at_ == end_; }
  void expect_end() const {
    if (!done()) throw malformed{};
  }

 private:
  void need(std::size_t n) const {
    if (static_cast<std::size_t>(end_ - at_) < n) throw malformed{};
  }
  const char* at_;
  const char* end_;
};

}  // namespace mp::detail::manager::protocol
