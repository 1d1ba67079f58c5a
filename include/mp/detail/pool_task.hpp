// pool_task: how a callable and its arguments cross to a worker, and how results come back.
// A task message is {trampoline address, callable state, arguments or items}. The trampoline is a function
// template instantiated for <F, item types, R> in the caller's translation unit; the worker, a fork of the same
// binary, calls it through that address: it rebuilds F, decodes the inputs, runs, and encodes the results.
// Under spawn and forkserver the worker is a fork of a fresh copy of the program, whose modules ASLR loaded
// elsewhere: the parent still sends its raw addresses (the fork path pays nothing), and such a worker translates
// them through the parent's module table (pool_worker_code_map; code_address.hpp).
// F's state crosses as its bytes when F is trivially copyable (function pointers, captureless lambdas, lambdas
// capturing numbers or trivially copyable structs), through its serialize member otherwise; anything else is a
// compile error naming the type and the fix. Arguments, items and results go through mp's archives (one memcpy
// for a run of trivially copyable values).
//
// Result body: u64 count of successful outputs, the outputs, then u8 "failed" and, if set, the failing output's
// exception as (type, message). A chunk stops at its first exception, so the parent knows the failing position.
#pragma once

#include <algorithm>
#include <array>
#include <iterator>
#include <memory>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <mp/detail/archive.hpp>
#include <mp/detail/code_address.hpp>
#include <mp/detail/type_name.hpp>

namespace mp::detail {

/// The worker-side entry of one task kind: decodes `payload` and appends the result body to `out`.
using pool_trampoline = void (*)(std::span<const std::byte> payload, std::vector<std::byte>& out);

// Header of a task message (inbox) and of a result message (outbox); `length` counts the bytes after itself.
struct pool_task_header {
  std::uint64_t length;
  std::uint64_t chunk_id;
  std::uint64_t trampoline;  // 0: "stop" (the worker exits)
  std::uint64_t timeout_ns;  // 0: none
};
struct pool_result_header {
  std::uint64_t length;
  std::uint64_t chunk_id;  // 0: the initializer failed (the body holds only the failure)
};

template <class T> inline constexpr bool pool_dependent_false = false;

template <class F>
struct callable_cannot_cross_to_a_pool_worker {
  static_assert(pool_dependent_false<F>,
                "mp::Pool: this callable cannot be sent to a worker process: its state (the lambda's captures or the "
                "function object's members) is neither trivially copyable nor serializable. Capture only numbers "
                "and trivially copyable structs, pass other data as arguments (they are serialized), or give the "
                "function object a member `template <class Archive> void serialize(Archive& ar) { ar(fields...); }`");
};
template <class T>
struct argument_cannot_cross_to_a_pool_worker {
  static_assert(pool_dependent_false<T>,
                "mp::Pool: an argument, item or result type cannot cross a process boundary: use a type mp::serialize "
                "supports (numbers, std::string, std::vector, std::tuple, ...) or add a serialize member to it");
};

/// Whether F's state can reach a worker.
template <class F>
inline constexpr bool pool_callable_crosses =
    std::is_trivially_copyable_v<F> || (has_member_serialize<F> && std::is_default_constructible_v<F>);

template <class T>
inline constexpr bool pool_value_crosses = std::is_void_v<T> || is_serializable<std::remove_cvref_t<T>>();

template <class F>
constexpr void pool_check_callable() {
  if constexpr (!pool_callable_crosses<F>) (void)sizeof(callable_cannot_cross_to_a_pool_worker<F>);
}
template <class T>
constexpr void pool_check_value() {
  if constexpr (!pool_value_crosses<T>) (void)sizeof(argument_cannot_cross_to_a_pool_worker<T>);
}

template <class F>
inline constexpr bool pool_is_function_pointer_v = std::is_pointer_v<F> && std::is_function_v<std::remove_pointer_t<F>>;

/// In a worker of a Pool started by spawn or forkserver: the parent's code addresses -> this process's. nullptr in
/// the parent and in workers of a fork Pool (same addresses); a fork Pool's factory resets it, so a Pool created
/// inside such a worker does not translate twice.
inline const code_translator*& pool_worker_code_map() noexcept {
  static const code_translator* map = nullptr;
  return map;
}

/// A code address from the parent (a trampoline, a function pointer's value) as this process can call it.
inline std::uintptr_t pool_local_code(std::uint64_t address) {
  if (const code_translator* map = pool_worker_code_map(); map != nullptr && address != 0) return map->translate(address);
  return static_cast<std::uintptr_t>(address);
}

/// Appends F's state.
template <class F>
void pool_encode_callable(std::vector<std::byte>& out, const F& f) {
  if constexpr (std::is_trivially_copyable_v<F>) {
    const auto* p = reinterpret_cast<const std::byte*>(std::addressof(f));
    out.insert(out.end(), p, p + sizeof(F));
  } else {
    output_archive ar(out);
    const_cast<F&>(f).serialize(ar);  // cereal's one-member convention takes a non-const object
  }
}

/// Rebuilds F from the bytes pool_encode_callable wrote.
template <class F>
F pool_decode_callable(input_archive& ar) {
  if constexpr (pool_is_function_pointer_v<F>) {
    std::uint64_t address = 0;
    static_assert(sizeof(F) == sizeof address);
    ar.read_bytes(&address, sizeof address, "callable");
    return reinterpret_cast<F>(pool_local_code(address));
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

/// Appends the failure of the current exception (call inside a catch block).
inline void pool_encode_current_exception(std::vector<std::byte>& out) {
  const exception_description d = describe_current_exception();
  const std::uint8_t failed = 1;
  output_archive ar(out);
  ar(failed, d.type, d.message);
}

/// Encodes a run of results; R may be void (nothing is written per item).
template <class R>
struct pool_result_writer {
  std::vector<std::byte>& out;
  std::size_t count_at;
  std::uint64_t ok = 0;

  explicit pool_result_writer(std::vector<std::byte>& o) : out(o), count_at(o.size()) { out.resize(out.size() + 8); }
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
      output_archive ar(out);
      ar(call());
    }
    ++ok;
  }
  void finish_ok() {
    std::memcpy(out.data() + count_at, &ok, sizeof ok);
    out.push_back(std::byte{0});
  }
  void finish_failed() {
    std::memcpy(out.data() + count_at, &ok, sizeof ok);
    pool_encode_current_exception(out);
  }
};

/// Decodes the next value of type T (bitwise types by one memcpy).
template <class T>
T pool_load(input_archive& ar) {
  if constexpr (is_bitwise_v<T>) {
    std::array<std::byte, sizeof(T)> bytes;
    ar.read_bytes(bytes.data(), sizeof(T), "item");
    return std::bit_cast<T>(bytes);
  } else {
    T value{};
    ar(value);
    return value;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Trampolines. Payload layouts:
//   apply:    F state, then std::tuple<Args...>
//   map:      F state, u64 n, n items (T); starmap the same with T a tuple unpacked into the call

/// apply(f, args...) in the worker.
template <class F, class R, class... Args>
void pool_apply_trampoline(std::span<const std::byte> payload, std::vector<std::byte>& out) {
  pool_result_writer<R> writer(out);
  try {
    input_archive ar(payload);
    F f = pool_decode_callable<F>(ar);
    std::tuple<Args...> args;
    if constexpr (sizeof...(Args) > 0) ar(args);
    writer.add([&]() -> R { return std::apply(f, std::move(args)); });
    writer.finish_ok();
  } catch (...) {
    writer.finish_failed();
  }
}

/// map / starmap over one chunk in the worker; stops at the first exception.
template <class F, class T, class R, bool Star>
void pool_map_trampoline(std::span<const std::byte> payload, std::vector<std::byte>& out) {
  pool_result_writer<R> writer(out);
  std::size_t results_at = out.size();  // bitwise results: written in place, trimmed to `ok` on failure
  try {
    input_archive ar(payload);
    F f = pool_decode_callable<F>(ar);
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
        T item = pool_load<T>(ar);
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

/// The trampoline's address as it travels in a task header: the parent's own (see pool_local_code).
inline std::uint64_t pool_trampoline_address(pool_trampoline t) noexcept {
  return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(t));
}
/// In the worker; ProcessError if the address cannot be translated (spawn and forkserver only).
inline pool_trampoline pool_trampoline_from(std::uint64_t address) {
  return reinterpret_cast<pool_trampoline>(pool_local_code(address));
}

/// Starts a task message: a header to be patched at dispatch, then F's state.
template <class F>
std::vector<std::byte> pool_begin_message(pool_trampoline t, const F& f, std::size_t reserve = 0) {
  std::vector<std::byte> message;
  message.reserve(sizeof(pool_task_header) + sizeof(F) + reserve);
  message.resize(sizeof(pool_task_header));
  pool_task_header header{0, 0, pool_trampoline_address(t), 0};
  std::memcpy(message.data(), &header, sizeof header);
  pool_encode_callable(message, f);
  return message;
}

/// Appends up to n items from [it, end) as a chunk (u64 count, then the items), advancing it; returns the count.
template <class T, class It, class S>
std::uint64_t pool_append_items(std::vector<std::byte>& message, It& it, const S& end, std::uint64_t n) {
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
      const T item = static_cast<T>(*it);
      if constexpr (is_bitwise_v<T>) ar.write_bytes(&item, sizeof(T));
      else ar(item);
    }
  }
  std::memcpy(message.data() + count_at, &count, sizeof count);
  return count;
}

}  // namespace mp::detail
