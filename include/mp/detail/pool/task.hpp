// task: the pool's codec, both directions — how a callable and its arguments cross to a worker, how the worker
// writes a chunk's results, and how the parent reads them back (read_results: the one reader).
// A task message is {trampoline address, callable state, arguments or items}. The trampoline is a function
// template instantiated for <F, item types, R> in the caller's translation unit; the worker, a fork of the same
// binary, calls it through that address: it rebuilds F, decodes the inputs, runs, and encodes the results.
// Under spawn and forkserver the worker is a fork of a fresh copy of the program, whose modules ASLR loaded
// elsewhere: the parent still sends its raw addresses (the fork path pays nothing), and such a worker translates
// them through the parent's module table (worker_code_map; code_address.hpp).
// F's state crosses as its bytes when F is trivially copyable (function pointers, captureless lambdas, lambdas
// capturing numbers or trivially copyable structs), through its serialize member otherwise; anything else is a
// compile error naming the type and the fix. Arguments, items and results go through mp's archives (one memcpy
// for a run of trivially copyable values).
//
// Task message (inbox):   task_header, then the handle section if the task carries handles other than the
//                         previous task's (handles.hpp; task_header::handles bytes), then the payload: F's state, then an apply's
//                         std::tuple<Args...> or a chunk (u64 n, n items).
// Result message (outbox): result_header, then the body: u64 count of successful outputs, the outputs, then u8
//                         "failed" and, if set, the failing output's exception as (type, message, i32 pid,
//                         traceback). A chunk stops at its first exception, so the parent knows the failing position.
//                         A big body (blob_threshold and up) is written into a recycled segment instead (result_blob),
//                         whose descriptor the worker sends on its socket; the message is then the header alone.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <iterator>
#include <memory>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <mp/detail/archive.hpp>
#include <mp/detail/code_address.hpp>
#include <mp/detail/segment_pool.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/fresh_pages.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail::pool {

/// Worker: the recycled segment (segment_pool.hpp) a big result body is serialized straight into, instead of the
/// result buffer; send_result sends its descriptor on the worker's socket before the result header.
class result_blob {
 public:
  /// Room for a body of `size` bytes in one of this thread's result segments, marked busy; empty if none can be had
  /// now (no memory or memfd: the body then stays in the buffer and streams through the ring).
  MP_DECL std::span<std::byte> acquire(std::size_t size) noexcept;
  /// Gives the acquired segment back unsent (free for the next result).
  MP_DECL void abandon() noexcept;
  /// Whether a body was written into an acquired segment (then send_result sends it, and release() forgets it).
  bool holds() const noexcept { return segment_ != nullptr; }
  int fd() const noexcept { return segment_->fd.get(); }
  std::size_t size() const noexcept { return size_; }
  void release() noexcept { segment_ = nullptr, size_ = 0; }

 private:
  pooled_segment* segment_ = nullptr;  // thread_segment_pool()'s, busy until the parent decoded the result
  std::size_t size_ = 0;
};

/// Worker: where a trampoline writes its result body: the buffer, or a big body into `blob` when the worker has one
/// (never in an MPI rank, or for the initializer). Converts from the buffer alone.
struct result_sink {
  result_sink(std::vector<std::byte>& b, result_blob* big = nullptr) noexcept : buffer(b), blob(big) {}
  std::vector<std::byte>& buffer;
  result_blob* blob;
};

/// The worker-side entry of one task kind: decodes `payload` and writes the result body to `out`.
using trampoline_fn = void (*)(std::span<const std::byte> payload, result_sink out);

// Header of a task message (inbox) and of a result message (outbox); `length` counts the bytes after itself.
struct task_header {
  std::uint64_t length;
  std::uint64_t chunk_id;
  std::uint64_t trampoline;  // 0: "stop" (the worker exits)
  std::uint64_t timeout_ns;  // 0: none
  std::uint64_t handles;     // bytes of the handle section before the payload (0: none; or reuse_handles)
  std::uint64_t blob;        // 0, or the payload's size: it is a segment (segment_pool.hpp) sent with the handles
};
struct result_header {
  std::uint64_t length;
  std::uint64_t chunk_id;  // 0: the initializer failed (the body holds only the failure)
  std::uint64_t blob;      // 0, or the body's size: it is a blob segment the worker sent on its socket first
};

/// task_header::handles of a task carrying the same handles as the previous one to that worker (the usual case):
/// no section, so the task crosses the ring in as many bytes as one without handles.
inline constexpr std::uint64_t reuse_handles = ~std::uint64_t{0};

/// The message that tells a worker to exit.
inline constexpr task_header stop_message{sizeof(task_header) - sizeof(std::uint64_t), 0, 0, 0, 0, 0};

// ---------------------------------------------------------------------------------------------------------------
// What may cross: checked at compile time, with messages that name the fix.

template <class F>
struct callable_cannot_cross_to_a_pool_worker {
  static_assert(dependent_false_v<F>,
                "mp::Pool: this callable cannot be sent to a worker process: its state (the lambda's captures or the "
                "function object's members) is neither trivially copyable nor serializable. Capture only numbers "
                "and trivially copyable structs, pass other data as arguments (they are serialized), or give the "
                "function object a member `template <class Archive> void serialize(Archive& ar) { ar(fields...); }`");
};
template <class T>
struct argument_cannot_cross_to_a_pool_worker {
  static_assert(dependent_false_v<T>,
                "mp::Pool: an argument, item or result type cannot cross a process boundary: use a type mp::serialize "
                "supports (numbers, std::string, std::vector, std::tuple, ...) or add a serialize member to it");
};

/// Whether F's state can reach a worker.
template <class F>
inline constexpr bool callable_crosses =
    std::is_trivially_copyable_v<F> || (has_member_serialize<F> && std::is_default_constructible_v<F>);

template <class T>
inline constexpr bool value_crosses = std::is_void_v<T> || is_serializable<std::remove_cvref_t<T>>();

template <class F>
constexpr void check_callable() {
  if constexpr (!callable_crosses<F>) (void)sizeof(callable_cannot_cross_to_a_pool_worker<F>);
}
template <class T>
constexpr void check_value() {
  if constexpr (!value_crosses<T>) (void)sizeof(argument_cannot_cross_to_a_pool_worker<T>);
}

/// Arguments as they travel: string literals and char pointers become std::string.
template <class A>
using arg_t = std::conditional_t<std::is_same_v<std::decay_t<A>, const char*> || std::is_same_v<std::decay_t<A>, char*>,
                                 std::string, std::decay_t<A>>;
/// How apply_async holds an argument while serializing it (held_as_t, archive.hpp).
template <class A>
using held_arg_t = held_as_t<A, arg_t<A>>;

/// What apply(f, args...) returns.
template <class F, class... Args>
using apply_result_t = std::remove_cvref_t<std::invoke_result_t<F&, Args&&...>>;

/// Stands for the result of a call that does not compile, so the static_assert below names the problem.
struct not_callable {};

/// What f returns for one item of map (Star: starmap, the item's elements unpacked into the call).
template <class F, class T, bool Star>
struct item_result {
  using type = not_callable;
};
template <class F, class T>
  requires std::is_invocable_v<F&, T&&>
struct item_result<F, T, false> {
  using type = std::remove_cvref_t<std::invoke_result_t<F&, T&&>>;
};
template <class F, class T>
  requires requires { std::apply(std::declval<F&>(), std::declval<T&&>()); }
struct item_result<F, T, true> {
  using type = std::remove_cvref_t<decltype(std::apply(std::declval<F&>(), std::declval<T&&>()))>;
};
template <class E>
constexpr void check_callable_with_items() {
  static_assert(!std::is_same_v<E, not_callable>,
                "mp::Pool::map/imap/starmap: the function cannot be called with the range's items (for starmap: with "
                "the elements of each tuple); check the parameter types against the range's value type");
}

// ---------------------------------------------------------------------------------------------------------------
// Code addresses.

template <class F>
inline constexpr bool is_function_pointer_v = std::is_pointer_v<F> && std::is_function_v<std::remove_pointer_t<F>>;

/// In a worker of a Pool started by spawn or forkserver: the parent's code addresses -> this process's. nullptr in
/// the parent and in workers of a fork Pool (same addresses); a fork Pool's factory resets it, so a Pool created
/// inside such a worker does not translate twice.
inline const code_translator*& worker_code_map() noexcept {
  static const code_translator* map = nullptr;
  return map;
}

/// A code address from the parent (a trampoline, a function pointer's value) as this process can call it.
inline std::uintptr_t local_code(std::uint64_t address) {
  if (const code_translator* map = worker_code_map(); map != nullptr && address != 0) return map->translate(address);
  return static_cast<std::uintptr_t>(address);
}

/// The trampoline's address as it travels in a task header: the parent's own (see local_code).
inline std::uint64_t trampoline_address(trampoline_fn t) noexcept {
  return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(t));
}
/// In the worker; ProcessError if the address cannot be translated (spawn and forkserver only).
inline trampoline_fn trampoline_from(std::uint64_t address) {
  return reinterpret_cast<trampoline_fn>(local_code(address));
}

// ---------------------------------------------------------------------------------------------------------------
// Parent -> worker: the task payload.

/// Appends F's state.
template <class F>
void encode_callable(std::vector<std::byte>& out, const F& f) {
  if constexpr (std::is_trivially_copyable_v<F>) {
    const auto* p = reinterpret_cast<const std::byte*>(std::addressof(f));
    out.insert(out.end(), p, p + sizeof(F));
  } else {
    output_archive ar(out);
    const_cast<F&>(f).serialize(ar);  // cereal's one-member convention takes a non-const object
  }
}

/// Rebuilds F from the bytes encode_callable wrote.
template <class F>
F decode_callable(input_archive& ar) {
  if constexpr (is_function_pointer_v<F>) {
    std::uint64_t address = 0;
    static_assert(sizeof(F) == sizeof address);
    ar.read_bytes(&address, sizeof address, "callable");
    return reinterpret_cast<F>(local_code(address));
  } else if constexpr (std::is_trivially_copyable_v<F>) {
    std::array<std::byte, sizeof(F)> bytes;
    ar.read_bytes(bytes.data(), sizeof(F), "callable");
    return std::bit_cast<F>(bytes);
  } else {
    F f{};
    f.serialize(ar);
    return f;
  }
}

/// Appends up to n items from [it, end) as a chunk (u64 count, then the items), advancing it; returns the count.
template <class T, class It, class S>
std::uint64_t append_items(std::vector<std::byte>& message, It& it, const S& end, std::uint64_t n) {
  const std::size_t count_at = message.size();
  message.resize(count_at + sizeof n);
  std::uint64_t count = 0;
  if constexpr (is_bitwise_v<T> && std::contiguous_iterator<It> && std::sized_sentinel_for<S, It> &&
                std::is_same_v<std::remove_cvref_t<std::iter_reference_t<It>>, T>) {
    count = std::min<std::uint64_t>(n, static_cast<std::uint64_t>(end - it));
    const std::size_t bytes = count * sizeof(T);
    const std::size_t start = message.size();
    message.resize(start + bytes);
    if (bytes != 0) std::memcpy(message.data() + start, std::to_address(it), bytes);
    it += static_cast<std::iter_difference_t<It>>(count);
  } else {
    output_archive ar(message);
    for (; count < n && it != end; ++count, ++it) {
      if constexpr (!is_bitwise_v<T> && std::is_same_v<std::remove_cvref_t<std::iter_reference_t<It>>, T>) {
        ar(*it);  // no copy of the item first
      } else {
        const T item = static_cast<T>(*it);
        if constexpr (is_bitwise_v<T>) ar.write_bytes(&item, sizeof(T));
        else ar(item);
      }
    }
  }
  std::memcpy(message.data() + count_at, &count, sizeof count);
  return count;
}

/// The number of items in a chunk append_items wrote.
inline std::uint64_t chunk_length(std::span<const std::byte> chunk) noexcept {
  std::uint64_t count = 0;
  if (chunk.size() >= sizeof count) std::memcpy(&count, chunk.data(), sizeof count);
  return count;
}

/// Decodes the next value of type T (bitwise types by one memcpy).
template <class T>
T load(input_archive& ar) {
  if constexpr (is_bitwise_v<T>) {
    std::array<std::byte, sizeof(T)> bytes;
    ar.read_bytes(bytes.data(), sizeof(T), "item");
    return std::bit_cast<T>(bytes);
  } else {
    T value = blank_for_load<T>::make();  // a handle (a Queue, ...) decodes into an empty one, not a new object
    ar(value);
    return value;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Worker -> parent: the result message. The worker writes it (result_writer, encode_failed_chunk), the parent reads
// it (split_result, read_results).

/// Worker: starts a result message in `out`, leaving room for its header.
inline void begin_result(std::vector<std::byte>& out) { out.resize(sizeof(result_header)); }
/// Worker: fills in the header of the result message in `out` once its body is written.
inline void end_result(std::vector<std::byte>& out, std::uint64_t chunk_id) noexcept {
  const result_header header{out.size() - sizeof(std::uint64_t), chunk_id, 0};
  std::memcpy(out.data(), &header, sizeof header);
}

/// Worker: appends the failure of the current exception (call inside a catch block).
MP_DECL void encode_current_exception(std::vector<std::byte>& out);
/// Worker: the body of a chunk that could not even start (its trampoline could not be found, or the initializer
/// threw): no outputs, then the current exception (call inside a catch block).
MP_DECL void encode_failed_chunk(std::vector<std::byte>& out);

/// Worker: room for `more` bytes in the result buffer at once, and for the body's tail (the "failed" flag: a
/// buffer grown by one byte past an exact fit would be copied whole into a fresh one). A big result then lands in
/// pages advised huge (fresh_pages.hpp) rather than growing the buffer by doubling, a fault per fresh 4 KiB page.
inline void reserve_result(std::vector<std::byte>& out, std::size_t more) {
  more += 64;
  if (out.capacity() - out.size() >= more) return;
  out.reserve(std::max(out.size() + more, 2 * out.capacity()));
  advise_huge_pages(out.data(), out.capacity());
}

/// A result of this many serialized bytes or more is held, not serialized, until its chunk ends (and so is every
/// result after it): if the body then goes into a segment (result_blob), the results are serialized there, one
/// copy; smaller ones are copied into the buffer first (and from there into a segment if the body is big).
inline constexpr std::size_t result_hold_bytes = std::size_t{64} << 10;

/// Results the writer may hold (result_hold_bytes): not void, not bitwise (written in place anyway), movable.
template <class R>
inline constexpr bool result_may_be_held = !std::is_void_v<R> && !is_bitwise_v<R> && std::is_move_constructible_v<R>;
template <class R, bool = result_may_be_held<R>>
struct held_results {};
template <class R>
struct held_results<R, true> {
  std::vector<R> values;
  std::size_t bytes = 0;  // as measured
  std::size_t from = 0;   // where they go in the buffer: the results before them end there
};

/// Encodes a run of results; R may be void (nothing is written per item).
template <class R>
struct result_writer {
  result_blob* blob;
  std::vector<std::byte>& out;
  std::size_t count_at;
  std::uint64_t ok = 0;
  [[no_unique_address]] held_results<R> held;

  explicit result_writer(result_sink sink) : blob(sink.blob), out(sink.buffer), count_at(out.size()) {
    out.resize(out.size() + 8);
  }
  template <class Call>
  void add(Call&& call) {
    if constexpr (std::is_void_v<R>) {
      call();
    } else if constexpr (is_bitwise_v<R>) {
      const R r = call();
      const std::size_t at = out.size();
      out.resize(at + sizeof(R));
      std::memcpy(out.data() + at, &r, sizeof(R));
    } else {
      auto r = call();
      std::size_t size = 0;
      bool exports = false;
      {
        fd_outbox measuring;  // handles in a result are only measured here; the archive below exports them
        fd_outbox_scope scope(measuring);
        output_archive measure(output_archive::measure_tag{});
        measure(r);
        size = measure.measured();
        exports = !measuring.fds.empty();
      }
      if constexpr (result_may_be_held<R>) {
        // Results stay in order: once one is held, all after it are. One with handles is never the first held, so
        // that its failure to serialize (no handle crosses back) still ends the chunk where it happened.
        if (blob != nullptr && (!held.values.empty() || (size >= result_hold_bytes && !exports))) {
          if (held.values.empty()) held.from = out.size();
          held.values.push_back(std::move(r));
          held.bytes += size;
          ++ok;
          return;
        }
      }
      reserve_result(out, size);
      output_archive ar(out);
      ar(r);
    }
    ++ok;
  }
  void finish_ok() {
    if constexpr (result_may_be_held<R>) {
      if (!held.values.empty()) return finish_held({std::byte{0}});
    }
    std::memcpy(out.data() + count_at, &ok, sizeof ok);
    out.push_back(std::byte{0});
  }
  /// Call inside a catch block: the current exception ends the chunk.
  void finish_failed() {
    if constexpr (result_may_be_held<R>) {
      if (!held.values.empty()) {
        std::vector<std::byte> failure;
        encode_current_exception(failure);
        return finish_held(std::move(failure));
      }
    }
    std::memcpy(out.data() + count_at, &ok, sizeof ok);
    encode_current_exception(out);
  }

 private:
  // The held results, then `tail` (the "failed" flag and the failure, if any): serialized straight into a segment
  // when the body is big, else appended to the buffer. A held result that fails to serialize now (a serialize
  // member that writes otherwise than it measured) ends the chunk there, with that failure, as it would have when
  // it was made. (Called again by finish_failed if it threw, e.g. out of memory: it starts over.)
  void finish_held(const std::vector<std::byte>& tail) {
    out.resize(held.from);
    std::memcpy(out.data() + count_at, &ok, sizeof ok);
    const std::size_t before = out.size() - count_at;
    const std::size_t body = before + held.bytes + tail.size();
    if (body >= blob_threshold) {
      const std::span<std::byte> space = blob->acquire(body);
      if (!space.empty()) {
        try {
          std::memcpy(space.data(), out.data() + count_at, before);
          output_archive ar(output_archive::presized_tag{}, space.subspan(before, held.bytes));
          for (const R& r : held.values) ar(r);
          if (ar.unfilled() == 0) {
            std::memcpy(space.data() + before + held.bytes, tail.data(), tail.size());
            out.resize(count_at);
            return;
          }
        } catch (...) {
        }
        blob->abandon();  // measured otherwise than written: the buffer takes the body as it comes
      }
    }
    reserve_result(out, held.bytes + tail.size());
    std::uint64_t written = ok - held.values.size();
    for (const R& r : held.values) {
      const std::size_t at = out.size();
      try {
        output_archive ar(out);
        ar(r);
      } catch (...) {
        out.resize(at);
        std::memcpy(out.data() + count_at, &written, sizeof written);
        encode_current_exception(out);
        return;
      }
      ++written;
    }
    out.insert(out.end(), tail.begin(), tail.end());
  }
};

/// Parent: a whole result message, as drained from an outbox: its chunk id and its body (or the size of the blob
/// that holds it).
struct result_message {
  std::uint64_t chunk_id;
  std::span<const std::byte> body;
  std::uint64_t blob;
};
inline result_message split_result(std::span<const std::byte> message) noexcept {
  result_header header{};
  std::memcpy(&header, message.data(), sizeof header);
  return {header.chunk_id, message.subspan(sizeof header), header.blob};
}

/// Bytes of big Pool payloads (arguments, and results per worker) kept in recycled segments (segment_pool.hpp).
inline constexpr std::size_t pool_segment_budget = std::size_t{256} << 20;
/// A worker keeps its result buffer up to this capacity: serializing the next big result into it then touches no
/// fresh page and moves nothing when it grows.
inline constexpr std::size_t pool_result_keep = std::size_t{64} << 20;

/// Appends `values` to `message` (already holding the callable's state); if the two reach blob_threshold, writes
/// both into a recycled segment of `segments` instead — one copy, serialized in place — and returns a descriptor of
/// it with `message` cleared and `size` set (`most`: segments kept, payload_segments_kept()). Handles in `values` export their descriptors as always.
template <class T>
unique_fd encode_payload(std::vector<std::byte>& message, const T& values, std::size_t& size,
                         shared_segment_pool& segments, std::size_t most) {
  output_archive measure(output_archive::measure_tag{});
  measure(values);
  const std::size_t total = message.size() + measure.measured();
  if (total < blob_threshold) {
    if (total <= 4096) {
      // Each value copied in place, not a vector insert per value (a handle is several); zeroing first costs less.
      const std::size_t at = message.size();
      message.resize(total);
      output_archive ar(output_archive::presized_tag{}, std::span<std::byte>(message).subspan(at));
      ar(values);
    } else {
      message.reserve(total);  // one allocation, not a growth series value by value
      output_archive ar(message);
      ar(values);
    }
    size = 0;
    return {};
  }
  unique_fd fd = segments.write(total, pool_segment_budget, most, "mp-pool-task", [&](std::span<std::byte> bytes) {
    std::memcpy(bytes.data(), message.data(), message.size());
    output_archive ar(output_archive::presized_tag{}, bytes.subspan(message.size()));
    ar(values);
  });
  message.clear();
  size = total;
  return fd;
}

/// For a chunk of n items from `it` (a copy: not advanced): the bytes they serialize to.
template <class T, class It>
std::size_t measure_items(It it, std::uint64_t n) {
  output_archive measure(output_archive::measure_tag{});
  for (std::uint64_t i = 0; i < n; ++i, ++it) {
    if constexpr (std::is_same_v<std::remove_cvref_t<std::iter_reference_t<It>>, T>) measure(*it);
    else measure(static_cast<T>(*it));
  }
  return measure.measured();
}

/// A chunk of n items (u64 n, then the items) after `prefix` in a recycled segment of `segments` holding `size`
/// bytes (measured: prefix + 8 + measure_items), advancing `it`; returns a
/// descriptor of it.
template <class T, class It>
unique_fd blob_chunk(std::span<const std::byte> prefix, It& it, std::uint64_t n, std::size_t size,
                     shared_segment_pool& segments, std::size_t most) {
  return segments.write(size, pool_segment_budget, most, "mp-pool-task", [&](std::span<std::byte> bytes) {
    std::memcpy(bytes.data(), prefix.data(), prefix.size());
    output_archive ar(output_archive::presized_tag{}, bytes.subspan(prefix.size()));
    ar.write_bytes(&n, sizeof n);
    for (std::uint64_t i = 0; i < n; ++i, ++it) {
      if constexpr (std::is_same_v<std::remove_cvref_t<std::iter_reference_t<It>>, T>) ar(*it);
      else ar(static_cast<T>(*it));
    }
  });
}

/// Parent: the failure ending a result body as the exception it stands for, Remote<E> or RemoteError (remote_error.hpp).
MP_DECL std::exception_ptr read_remote_error(input_archive& ar);

/// Parent: reads the failure that ends a result body; null if the chunk succeeded.
inline std::exception_ptr read_failure(input_archive& ar) {
  std::uint8_t failed = 0;
  ar.read_bytes(&failed, 1, "failure flag");
  if (failed == 0) return nullptr;
  return read_remote_error(ar);
}

/// What a result body held: how many outputs succeeded, and the failure that ended the chunk (null if none).
struct result_outcome {
  std::uint64_t count = 0;
  std::exception_ptr failure;
};

/// Parent: reads a result body of R outputs, the inverse of result_writer. More than `most` outputs (the items in
/// the chunk) is a corrupt body. `place(count)` is called once, with count != 0 and never for void R, and returns
/// where the outputs go: an R* with room for them (bitwise R: one memcpy), or an output iterator.
template <class R, class Place>
result_outcome read_results(input_archive& ar, std::uint64_t most, const char* what, Place&& place) {
  result_outcome outcome;
  ar.read_bytes(&outcome.count, sizeof outcome.count, "result count");
  if (outcome.count > most) ar.fail(what, "more results than items in the chunk");
  if constexpr (!std::is_void_v<R>) {
    if (outcome.count != 0) {
      auto out = place(outcome.count);
      if constexpr (is_bitwise_v<R> && std::is_same_v<decltype(out), R*>) {
        const auto bytes = ar.take(outcome.count * sizeof(R), what);
        std::memcpy(out, bytes.data(), bytes.size());
      } else {
        for (std::uint64_t i = 0; i < outcome.count; ++i) *out++ = load<R>(ar);
      }
    }
  }
  outcome.failure = read_failure(ar);
  return outcome;
}

// ---------------------------------------------------------------------------------------------------------------
// Trampolines: run in the worker; payload layouts in the header comment.

/// apply(f, args...) in the worker.
template <class F, class R, class... Args>
void apply_trampoline(std::span<const std::byte> payload, result_sink out) {
  result_writer<R> writer(out);
  try {
    input_archive ar(payload);
    F f = decode_callable<F>(ar);
    auto args = blank_for_load<std::tuple<Args...>>::make();
    if constexpr (sizeof...(Args) > 0) ar(args);
    writer.add([&]() -> R { return std::apply(f, std::move(args)); });
    writer.finish_ok();
  } catch (...) {
    writer.finish_failed();
  }
}

/// The initializer bound by mp::task(f, args...) in a fresh worker: F's state, then std::tuple<Args...>. Throws
/// what f throws (the worker reports it as an initializer failure).
template <class F, class... Args>
void initializer_trampoline(std::span<const std::byte> payload, result_sink) {
  input_archive ar(payload);
  F f = decode_callable<F>(ar);
  auto args = blank_for_load<std::tuple<Args...>>::make();
  if constexpr (sizeof...(Args) > 0) ar(args);
  std::apply(f, std::move(args));
}

/// map / starmap over one chunk in the worker; stops at the first exception.
template <class F, class T, class R, bool Star>
void map_trampoline(std::span<const std::byte> payload, result_sink sink) {
  result_writer<R> writer(sink);
  std::vector<std::byte>& out = sink.buffer;
  std::size_t results_at = out.size();  // bitwise results: written in place, trimmed to `ok` on failure
  try {
    input_archive ar(payload);
    F f = decode_callable<F>(ar);
    std::uint64_t n = 0;
    ar.read_bytes(&n, sizeof n, "chunk length");
    auto call = [&](T&& item) -> R {
      if constexpr (Star) return std::apply(f, std::move(item));
      else return std::invoke(f, std::move(item));
    };
    if constexpr (!std::is_void_v<R> && is_bitwise_v<R> && is_bitwise_v<T>) {
      // The hot path of map over numbers: no per-item bounds check or vector growth.
      const auto items = ar.take(n * sizeof(T), "chunk items");
      out.resize(results_at + n * sizeof(R));
      for (std::uint64_t i = 0; i < n; ++i) {
        T item;
        std::memcpy(&item, items.data() + i * sizeof(T), sizeof(T));
        const R r = call(std::move(item));
        std::memcpy(out.data() + results_at + i * sizeof(R), &r, sizeof(R));
        ++writer.ok;
      }
    } else {
      for (std::uint64_t i = 0; i < n; ++i) {
        T item = load<T>(ar);
        writer.add([&]() -> R { return call(std::move(item)); });
      }
    }
    writer.finish_ok();
  } catch (...) {
    if constexpr (!std::is_void_v<R> && is_bitwise_v<R> && is_bitwise_v<T>)
      out.resize(std::min(out.size(), results_at + writer.ok * sizeof(R)));
    writer.finish_failed();
  }
}

}  // namespace mp::detail::pool

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/pool/task.ipp>
#endif
