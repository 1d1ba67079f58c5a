// What crosses a process boundary: mp::serialize turns a value into bytes, mp::deserialize<T> turns them back.
// Python's counterpart is pickle, which multiprocessing uses for every argument, result and queue item.
// Built in: arithmetic, enums, std::byte, strings, std containers, pair/tuple/optional/variant, chrono durations,
// filesystem paths (include <filesystem> yourself), trivially copyable structs, and user types with a member
// `template <class Archive> void serialize(Archive& ar) { ar(a, b, c); }`. The format is the host's (same binary,
// same machine): see docs/serialization.md.
// Process safety: pure functions over values; bytes from another process are untrusted and fully checked —
// bad bytes throw mp::SerializationError, never crash, hang or allocate without bound.
#pragma once

#include <algorithm>
#include <cstddef>
#include <span>
#include <type_traits>
#include <vector>

#include <mp/detail/archive.hpp>
#include <mp/detail/type_name.hpp>
#include <mp/errors.hpp>

namespace mp {

/// True when every part of T can cross a process boundary (user types: when they declare a serialize member).
template <class T>
concept serializable = detail::is_serializable_v<std::remove_cvref_t<T>>;

/// The tag of the constructor mp's decoders call instead of the default one, when a type has it, to make the
/// object a value is decoded into. Every mp handle (Queue, Value, Lock, ...) has one: it makes an empty handle for
/// load() to fill in, where a default-constructed handle would make a shared object of its own only to drop it.
/// A struct holding handles can declare one too, so that decoding it (a Pool task's argument, a map item) makes no
/// shared object per task; its serialize must then fill in every handle member it made empty:
///   struct Job {
///     mp::Queue<int> out;  mp::Lock lock;  int n = 0;
///     Job() = default;
///     explicit Job(mp::for_load_t tag) : out(tag), lock(tag) {}
///     template <class Archive> void serialize(Archive& ar) { ar(out, lock, n); }
///   };
using for_load_t = detail::for_load_t;
inline constexpr for_load_t for_load{};


/// How many bytes serialize(value) returns (computed without writing them).
template <class T>
[[nodiscard]] std::size_t serialized_size(const T& value) {
  detail::output_archive archive(detail::output_archive::measure_tag{});
  archive(value);
  return archive.measured();
}

/// Appends the bytes of `value` to `out`; nothing but `out` allocates (it grows at most once).
template <class T>
void serialize_into(std::vector<std::byte>& out, const T& value) {
  if constexpr (detail::is_bitwise_v<T>) {
    detail::output_archive archive(out);
    archive(value);
  } else if constexpr (detail::is_single_block_v<T>) {
    // A length and one block (a string, a vector of numbers): appending after one reserve beats zero-filling.
    const std::size_t size = serialized_size(value);
    if (out.capacity() - out.size() < size) out.reserve(std::max(out.size() + size, 2 * out.capacity()));
    detail::output_archive archive(out);
    archive(value);
  } else {
    // Two passes: measure, grow `out` once, then copy into place with no capacity check per field.
    const std::size_t old_size = out.size();
    out.resize(old_size + serialized_size(value));
    detail::output_archive archive(detail::output_archive::presized_tag{}, std::span(out).subspan(old_size));
    archive(value);
    out.resize(out.size() - archive.unfilled());  // only a serialize member that wrote less the second time
  }
}

/// The bytes of `value`, for deserialize<T> in this or another process running the same binary.
template <class T>
[[nodiscard]] std::vector<std::byte> serialize(const T& value) {
  std::vector<std::byte> out;
  serialize_into(out, value);
  return out;
}

/// Decodes a T from exactly `bytes`; throws SerializationError if they are truncated, hostile, of another type,
/// or not all consumed.
template <class T>
[[nodiscard]] T deserialize(std::span<const std::byte> bytes) {
  static_assert(std::is_object_v<T> && !std::is_const_v<T> && !std::is_volatile_v<T>,
                "mp::deserialize<T>: T must be a plain (non-const, non-reference) value type");
  static_assert(!std::is_array_v<T>, "mp::deserialize<T>: a C array cannot be returned; use std::array");
  detail::require_default_constructible<T>();
  T value = detail::blank_for_load<T>::make();
  detail::input_archive archive(bytes);
  archive.set_outer_name(&detail::type_name<T>);
  archive(value);
  if (archive.remaining() != 0)
    archive.fail(detail::type_name<T>(), detail::byte_count(archive.remaining()) +
                                             " left over after the value: the buffer holds another type or more "
                                             "than one value");
  return value;
}

}  // namespace mp
