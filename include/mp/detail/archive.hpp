// The byte archives behind mp::serialize: output_archive appends values to a std::vector<std::byte>,
// input_archive decodes them from a std::span<const std::byte> with every read bounds-checked.
// Why a hand-written format: both ends are the same binary on the same machine, so host byte order and
// sizes are the format (no schema, no versioning), and contiguous trivially copyable data can move as one
// memcpy. The only cost of that freedom is hostile input, handled here: every length is checked against the
// bytes left before anything is allocated, and elements that decode from zero bytes are counted against a
// fixed budget so an absurd count can neither loop 2^64 times nor allocate without bound.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include <mp/detail/config.hpp>
#include <mp/detail/for_load.hpp>
#include <mp/detail/fresh_pages.hpp>
// type_name<T>() and is_specialization_v; std::filesystem::path is declared there without <filesystem> (see why).
#include <mp/detail/type_name.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

class output_archive;
class input_archive;

// ---------------------------------------------------------------------------------------------------------------
// Recognising the built-in families.

// is_specialization_v and is_std_array_v: type_name.hpp.

template <class T> inline constexpr bool is_std_span_v = false;
template <class T, std::size_t N> inline constexpr bool is_std_span_v<std::span<T, N>> = true;

// Sequences decoded element by element with emplace_back (std::vector<bool> is a family of its own).
template <class T>
inline constexpr bool is_sequence_v = (is_specialization_v<T, std::vector> && !std::is_same_v<T, std::vector<bool>>) ||
                                      is_specialization_v<T, std::deque> || is_specialization_v<T, std::list>;
template <class T>
inline constexpr bool is_set_v = is_specialization_v<T, std::set> || is_specialization_v<T, std::unordered_set> ||
                                 is_specialization_v<T, std::multiset> ||
                                 is_specialization_v<T, std::unordered_multiset>;
template <class T>
inline constexpr bool is_map_v = is_specialization_v<T, std::map> || is_specialization_v<T, std::unordered_map> ||
                                 is_specialization_v<T, std::multimap> ||
                                 is_specialization_v<T, std::unordered_multimap>;
template <class T>
inline constexpr bool is_multi_v =
    is_specialization_v<T, std::multiset> || is_specialization_v<T, std::unordered_multiset> ||
    is_specialization_v<T, std::multimap> || is_specialization_v<T, std::unordered_multimap>;

// The user's ways in, all cereal's spelling: one member serialize for both directions, a save/load pair, or a free
// serialize(Archive&, T&) found by argument-dependent lookup (for types the user cannot edit).
template <class T>
concept has_member_serialize = requires(T& value, output_archive& out, input_archive& in) {
  value.serialize(out);
  value.serialize(in);
};
template <class T>
concept has_member_save_load = requires(const T& cvalue, T& value, output_archive& out, input_archive& in) {
  cvalue.save(out);
  value.load(in);
};
template <class T>
concept has_free_serialize = requires(T& value, output_archive& out, input_archive& in) {
  serialize(out, value);
  serialize(in, value);
};

enum class family {
  pointer,        // raw pointers and member pointers: the address means nothing in another process
  view,           // string_view, span, reference_wrapper: refer to this process's memory
  smart_pointer,  // unique_ptr, shared_ptr, weak_ptr
  user_member,
  user_save_load,
  user_free,
  boolean,
  scalar,  // arithmetic (not bool), enums, std::byte: their bytes
  string,
  vector_bool,
  sequence,
  array,  // std::array and C arrays
  set,
  map,
  pair,
  tuple,
  optional,
  variant,
  monostate,
  duration,
  path,
  bitwise_class,  // any other trivially copyable class or union: its bytes
  unsupported,
};

// The order matters: a user's serialize wins over everything, and the std templates come before the trivially
// copyable rule, because std::optional<int> or std::variant<int, float> are trivially copyable but a hostile
// engaged flag or index must be validated rather than copied in.
template <class T>
consteval family family_of() {
  if constexpr (std::is_pointer_v<T> || std::is_member_pointer_v<T>) return family::pointer;
  else if constexpr (is_specialization_v<T, std::basic_string_view> || is_std_span_v<T> ||
                     is_specialization_v<T, std::reference_wrapper>)
    return family::view;
  else if constexpr (is_specialization_v<T, std::unique_ptr> || is_specialization_v<T, std::shared_ptr> ||
                     is_specialization_v<T, std::weak_ptr>)
    return family::smart_pointer;
  else if constexpr (has_member_serialize<T>) return family::user_member;
  else if constexpr (has_member_save_load<T>) return family::user_save_load;
  else if constexpr (has_free_serialize<T>) return family::user_free;
  else if constexpr (std::is_same_v<T, bool>) return family::boolean;
  else if constexpr (std::is_arithmetic_v<T> || std::is_enum_v<T>) return family::scalar;
  else if constexpr (is_specialization_v<T, std::basic_string>) return family::string;
  else if constexpr (std::is_same_v<T, std::vector<bool>>) return family::vector_bool;
  else if constexpr (is_sequence_v<T>) return family::sequence;
  else if constexpr (is_std_array_v<T> || std::is_bounded_array_v<T>) return family::array;
  else if constexpr (is_set_v<T>) return family::set;
  else if constexpr (is_map_v<T>) return family::map;
  else if constexpr (is_specialization_v<T, std::pair>) return family::pair;
  else if constexpr (is_specialization_v<T, std::tuple>) return family::tuple;
  else if constexpr (is_specialization_v<T, std::optional>) return family::optional;
  else if constexpr (is_specialization_v<T, std::variant>) return family::variant;
  else if constexpr (std::is_same_v<T, std::monostate>) return family::monostate;
  else if constexpr (is_specialization_v<T, std::chrono::duration>) return family::duration;
  else if constexpr (std::is_same_v<T, std::filesystem::path>) return family::path;
  else if constexpr ((std::is_class_v<T> || std::is_union_v<T>) && std::is_trivially_copyable_v<T>)
    return family::bitwise_class;
  else return family::unsupported;
}

template <class T> inline constexpr family family_v = family_of<std::remove_cv_t<T>>();

template <class T> struct array_traits;
template <class T, std::size_t N> struct array_traits<std::array<T, N>> { using element = T; static constexpr std::size_t size = N; };
template <class T, std::size_t N> struct array_traits<T[N]> { using element = T; static constexpr std::size_t size = N; };

// Whether a value may move as its raw bytes, alone or as a run of many (one memcpy for a whole vector):
// scalars, trivially copyable classes, and arrays/durations of those. bool is excluded: a hostile byte 2 in a
// bool is undefined behaviour, so bools are validated one by one.
template <class T>
consteval bool is_bitwise() {
  constexpr family f = family_v<T>;
  if constexpr (f == family::scalar || f == family::bitwise_class) return true;
  else if constexpr (f == family::array) return is_bitwise<typename array_traits<std::remove_cv_t<T>>::element>();
  else if constexpr (f == family::duration) return is_bitwise<typename T::rep>();
  else return false;
}
template <class T> inline constexpr bool is_bitwise_v = is_bitwise<T>();

/// How a caller holds an argument `A` that travels as `T` while serializing it (Pool::apply_async, a Manager custom
/// call): by reference when it already is a T (a big vector is not copied first, a handle's reference count is not
/// touched), else converted to T. The same bytes either way.
template <class A, class T>
using held_as_t = std::conditional_t<std::is_same_v<std::remove_cvref_t<A>, T>, const T&, T>;

// Whether T encodes as a length and one contiguous block (a string, a vector of bitwise values).
template <class T>
consteval bool is_single_block() {
  using U = std::remove_cv_t<T>;
  if constexpr (family_v<U> == family::string) return true;
  else if constexpr (family_v<U> == family::sequence && is_specialization_v<U, std::vector>)
    return is_bitwise<typename U::value_type>();
  else return false;
}
template <class T> inline constexpr bool is_single_block_v = is_single_block<T>();

// Whether every part of T can cross. User types count as serializable once they declare a serialize member: what
// it lists is checked when it is instantiated.
template <class T>
consteval bool is_serializable() {
  using U = std::remove_cv_t<T>;
  constexpr family f = family_v<U>;
  if constexpr (f == family::pointer || f == family::view || f == family::smart_pointer ||
                f == family::unsupported)
    return false;
  else if constexpr (f == family::string) return std::is_trivially_copyable_v<typename U::value_type>;
  else if constexpr (f == family::sequence || f == family::set) return is_serializable<typename U::value_type>();
  else if constexpr (f == family::array) return is_serializable<typename array_traits<U>::element>();
  else if constexpr (f == family::map)
    return is_serializable<typename U::key_type>() && is_serializable<typename U::mapped_type>();
  else if constexpr (f == family::pair)
    return is_serializable<typename U::first_type>() && is_serializable<typename U::second_type>();
  else if constexpr (f == family::tuple || f == family::variant)
    return []<template <class...> class Template, class... Ts>(std::type_identity<Template<Ts...>>) {
      return (is_serializable<Ts>() && ...);
    }(std::type_identity<U>{});
  else if constexpr (f == family::optional) return is_serializable<typename U::value_type>();
  else if constexpr (f == family::duration) return is_serializable<typename U::rep>();
  else return true;
}

// The fewest bytes one value of T can take on the wire (0 when it may take none, or is a user type whose encoding
// is not known statically). A container's length is checked against the bytes left divided by this.
template <class T>
consteval std::size_t min_wire_size() {
  using U = std::remove_cv_t<T>;
  constexpr family f = family_v<U>;
  if constexpr (is_bitwise_v<U>) return sizeof(U);
  else if constexpr (f == family::boolean) return 1;
  else if constexpr (f == family::string || f == family::vector_bool || f == family::sequence ||
                     f == family::set || f == family::map || f == family::path)
    return sizeof(std::uint64_t);
  else if constexpr (f == family::array)
    return array_traits<U>::size * min_wire_size<typename array_traits<U>::element>();
  else if constexpr (f == family::pair)
    return min_wire_size<typename U::first_type>() + min_wire_size<typename U::second_type>();
  else if constexpr (f == family::tuple)
    return []<class... Ts>(std::type_identity<std::tuple<Ts...>>) {
      return (std::size_t{0} + ... + min_wire_size<Ts>());
    }(std::type_identity<U>{});
  else if constexpr (f == family::optional) return 1;
  else if constexpr (f == family::variant) return sizeof(std::uint32_t);
  else if constexpr (f == family::duration) return min_wire_size<typename U::rep>();
  else return 0;  // monostate, user types
}

// Whether every value of T takes zero bytes on the wire (std::monostate, std::tuple<>, and compounds of them).
template <class T>
consteval bool is_always_empty() {
  using U = std::remove_cv_t<T>;
  constexpr family f = family_v<U>;
  if constexpr (f == family::monostate) return true;
  else if constexpr (f == family::pair)
    return is_always_empty<typename U::first_type>() && is_always_empty<typename U::second_type>();
  else if constexpr (f == family::tuple)
    return []<class... Ts>(std::type_identity<std::tuple<Ts...>>) {
      return (true && ... && is_always_empty<Ts>());
    }(std::type_identity<U>{});
  else if constexpr (f == family::array && !is_bitwise_v<U>)
    return array_traits<U>::size == 0 || is_always_empty<typename array_traits<U>::element>();
  else return false;
}

// The fewest bytes one element of a container takes on the wire.
template <class Container>
consteval std::size_t min_element_size() {
  constexpr family f = family_v<Container>;
  if constexpr (f == family::string) return sizeof(typename Container::value_type);
  else if constexpr (f == family::vector_bool) return 1;
  else if constexpr (f == family::map)
    return min_wire_size<typename Container::key_type>() + min_wire_size<typename Container::mapped_type>();
  else return min_wire_size<typename Container::value_type>();
}

// ---------------------------------------------------------------------------------------------------------------
// Compile errors for types that cannot cross. Each is a class template so the compiler's "in instantiation of
// ..." line names the offending type; the message names the fix.

template <class T> inline constexpr bool dependent_false_v = false;

template <class T>
struct pointer_cannot_cross_a_process_boundary {
  static_assert(dependent_false_v<T>,
                "mp::serialize: a raw pointer or member pointer cannot cross a process boundary (the address means "
                "nothing in the other process): send the pointed-to value, or an index, instead");
};
template <class T>
struct view_cannot_cross_a_process_boundary {
  static_assert(dependent_false_v<T>,
                "mp::serialize: std::string_view, std::span and std::reference_wrapper refer to this process's "
                "memory and cannot cross a process boundary: send a std::string, std::vector or the value itself");
};
template <class T>
struct smart_pointer_cannot_cross_a_process_boundary {
  static_assert(dependent_false_v<T>,
                "mp::serialize: std::unique_ptr / std::shared_ptr / std::weak_ptr cannot cross a process boundary: "
                "send the pointed-to value (std::optional<T> for a maybe-null one) instead");
};
template <class T>
struct type_cannot_cross_a_process_boundary {
  static_assert(dependent_false_v<T>,
                "mp::serialize: this type cannot cross a process boundary: it is not trivially copyable, not a "
                "supported std type, and has no serialize member; add a member "
                "`template <class Archive> void serialize(Archive& ar) { ar(field1, field2); }` listing its fields");
};
template <class T>
struct type_needs_a_default_constructor_to_be_deserialized {
  static_assert(dependent_false_v<T>,
                "mp::deserialize: this type has no default constructor: add one (its serialize member then fills in "
                "the fields), or a constructor from mp::for_load_t that makes the object to decode into");
};

template <class T>
void reject_unsupported() {
  constexpr family f = family_v<T>;
  if constexpr (f == family::pointer) (void)sizeof(pointer_cannot_cross_a_process_boundary<T>);
  else if constexpr (f == family::view) (void)sizeof(view_cannot_cross_a_process_boundary<T>);
  else if constexpr (f == family::smart_pointer) (void)sizeof(smart_pointer_cannot_cross_a_process_boundary<T>);
  else (void)sizeof(type_cannot_cross_a_process_boundary<T>);
}

template <class T>
void require_default_constructible() {
  if constexpr (!loadable_blank_v<T>) (void)sizeof(type_needs_a_default_constructor_to_be_deserialized<T>);
}

/// "1 byte", "12 bytes": sizes in error messages.
inline std::string byte_count(std::size_t n) { return std::to_string(n) + (n == 1 ? " byte" : " bytes"); }

// Lengths, optional flags and variant indexes have fixed widths on the wire.
using length_type = std::uint64_t;
using variant_index_type = std::uint32_t;

// ---------------------------------------------------------------------------------------------------------------

/// Appends values to a byte vector: `ar(a, b, c)`. Nothing but `out` allocates.
class output_archive {
 public:
  static constexpr bool is_loading = false;
  static constexpr bool is_saving = true;

  /// Appends to `out` (keeps what it holds).
  explicit output_archive(std::vector<std::byte>& out) noexcept : mode_(mode::append), out_(&out) {}
  /// Writes nothing and counts the bytes it would write (see measured()): mp::serialize sizes its buffer with it.
  struct measure_tag {};
  explicit output_archive(measure_tag) noexcept : mode_(mode::measure) {}
  /// Writes into memory already sized by a measuring pass (mp::serialize): no capacity checks per write.
  struct presized_tag {};
  output_archive(presized_tag, std::span<std::byte> space) noexcept
      : mode_(mode::presized), cursor_(space.data()), end_(space.data() + space.size()) {}
  /// Bytes a presized archive has not filled (0 when the measuring pass was right).
  std::size_t unfilled() const noexcept { return static_cast<std::size_t>(end_ - cursor_); }

  /// Appends each value in order.
  template <class... Ts>
  output_archive& operator()(const Ts&... values) {
    (save(values), ...);
    return *this;
  }

  /// Appends raw bytes (no length prefix).
  void write_bytes(const void* data, std::size_t size) {
    switch (mode_) {
      case mode::append: {
        const auto* first = static_cast<const std::byte*>(data);
        out_->insert(out_->end(), first, first + size);
        break;
      }
      case mode::measure:
        measured_ += size;
        break;
      case mode::presized:
        if (size > static_cast<std::size_t>(end_ - cursor_)) overflow_presized();
        if (size != 0) std::memcpy(cursor_, data, size);
        cursor_ += size;
        break;
    }
  }

  /// The buffer being appended to (only an archive constructed over one has it).
  std::vector<std::byte>& buffer() noexcept { return *out_; }
  /// Bytes a measuring archive has counted so far.
  std::size_t measured() const noexcept { return measured_; }
  /// True for a measuring archive (its values are counted, never read back).
  bool measuring() const noexcept { return mode_ == mode::measure; }

 private:
  template <class T>
  void save(const T& value);
  // A user serialize member that writes more on its second call than on its first would overrun the space the
  // measuring pass sized: refuse instead.
  [[noreturn]] static void overflow_presized();
  void save_length(std::size_t n) {
    const auto length = static_cast<length_type>(n);
    write_bytes(&length, sizeof length);
  }
  template <class Range>
  void save_range(const Range& range, std::size_t n) {
    save_length(n);
    for (const auto& element : range) save(element);
  }

  enum class mode : std::uint8_t { append, measure, presized };
  mode mode_;
  std::vector<std::byte>* out_ = nullptr;  // append mode
  std::byte* cursor_ = nullptr;            // presized mode: next byte to write
  std::byte* end_ = nullptr;               // presized mode: end of the space
  std::size_t measured_ = 0;
};

/// Decodes values from a byte span: `ar(a, b, c)`; every read is bounds-checked and throws SerializationError.
class input_archive {
 public:
  static constexpr bool is_loading = true;
  static constexpr bool is_saving = false;

  /// At most this many elements per archive may decode from zero bytes (std::tuple<>, std::monostate, an empty
  /// user struct): the one thing a length cannot be checked against.
  static constexpr std::size_t max_empty_elements = std::size_t{1} << 20;
  /// User types may nest in themselves (a tree of nodes); hostile bytes could nest them until the stack
  /// overflows, so decoding refuses more than this many levels of user types inside one another.
  static constexpr std::size_t max_user_depth = 1024;
  /// Elements that decode from zero bytes may occupy at most this much memory per archive (2^20 empty elements of
  /// a 4 KiB user type would otherwise be 4 GiB from a buffer of one length).
  static constexpr std::size_t max_empty_element_bytes = std::size_t{16} << 20;
  /// Containers reserve room for their announced length only while the reservations of the whole archive stay
  /// under this many times the buffer's size (plus reserve_floor): a hostile length then costs at most that much
  /// memory before the bytes run out, and honest containers beyond it grow as their elements actually decode.
  static constexpr std::size_t reserve_factor = 4;
  static constexpr std::size_t reserve_floor = std::size_t{64} << 10;

  /// Reads from `bytes`, which must outlive the archive.
  explicit input_archive(std::span<const std::byte> bytes) noexcept
      : bytes_(bytes), reserve_left_(reserve_factor * bytes.size() + reserve_floor) {}

  /// Decodes into each value in order (containers are cleared first).
  template <class... Ts>
  input_archive& operator()(Ts&... values) {
    (load(values), ...);
    return *this;
  }

  /// Bytes not yet decoded.
  std::size_t remaining() const noexcept { return bytes_.size() - position_; }
  /// Bytes decoded so far.
  std::size_t position() const noexcept { return position_; }

  /// Copies the next `size` bytes out; `what` names the value for the error message.
  void read_bytes(void* data, std::size_t size, std::string_view what = "bytes") {
    const auto view = take(size, what);
    if (size != 0) std::memcpy(data, view.data(), size);
  }

  /// The next `size` bytes, without copying them.
  std::span<const std::byte> take(std::size_t size, std::string_view what = "bytes") {
    if (size > remaining())
      fail(what, "needs " + byte_count(size) + " but only " + byte_count(remaining()) + " left");
    auto view = bytes_.subspan(position_, size);
    position_ += size;
    return view;
  }

  /// Throws SerializationError "deserialize <what>: <problem> (byte P of N[, inside <outer type>])".
  [[noreturn]] void fail(std::string_view what, const std::string& problem) const;

  /// Names the whole value being decoded in error messages about its parts (called by mp::deserialize<T>).
  void set_outer_name(std::string (*outer_name)()) noexcept { outer_name_ = outer_name; }

 private:
  template <class T>
  void load(T& value);
  // Copies `size` bytes for a value of type Named; the name is built only when the bytes are missing.
  template <class Named>
  void copy_checked(void* data, std::size_t size) {
    if (size > remaining())
      fail(type_name<Named>(), "needs " + byte_count(size) + " but only " + byte_count(remaining()) + " left");
    if (size != 0) std::memcpy(data, bytes_.data() + position_, size);
    position_ += size;
  }
  template <class T>
  void load_scalar(T& value) { copy_checked<T>(&value, sizeof(T)); }
  template <class Container>
  std::size_t load_length();
  template <class T>
  void load_user(T& value);
  template <class Container, class Element>
  void load_element(Element& element);
  // How many of n announced elements, each costing `bytes` of memory up front, a container may reserve now: all
  // of them while the archive's reservation budget allows, fewer after (the container then grows as elements
  // decode, so memory follows the bytes actually consumed). Charges the budget.
  std::size_t reservable(std::size_t n, std::size_t bytes) noexcept {
    const std::size_t count = std::min(n, reserve_left_ / bytes);
    reserve_left_ -= count * bytes;
    return count;
  }

  std::span<const std::byte> bytes_;
  std::size_t position_ = 0;
  std::size_t reserve_left_;        // bytes containers may still reserve ahead of decoding; see reserve_factor
  std::size_t empty_elements_ = 0;  // elements so far that decoded from zero bytes; see max_empty_elements
  std::size_t empty_bytes_ = 0;     // their memory; see max_empty_element_bytes
  std::size_t user_depth_ = 0;      // user types being decoded inside one another; see max_user_depth
  std::string (*outer_name_)() = nullptr;
};

// ---------------------------------------------------------------------------------------------------------------
// Saving.

template <class T>
void output_archive::save(const T& value) {
  using U = std::remove_cv_t<T>;
  constexpr family f = family_v<U>;
  if constexpr (f == family::user_member) const_cast<U&>(value).serialize(*this);
  else if constexpr (f == family::user_save_load) value.save(*this);
  else if constexpr (f == family::user_free) serialize(*this, const_cast<U&>(value));
  else if constexpr (f == family::boolean) {
    const auto byte = static_cast<std::uint8_t>(value ? 1 : 0);
    write_bytes(&byte, 1);
  } else if constexpr (is_bitwise_v<U>) write_bytes(&value, sizeof value);
  else if constexpr (f == family::string) {
    static_assert(std::is_trivially_copyable_v<typename U::value_type>,
                  "mp::serialize: a std::basic_string crosses only with a trivially copyable character type");
    save_length(value.size());
    write_bytes(value.data(), value.size() * sizeof(typename U::value_type));
  } else if constexpr (f == family::vector_bool) {
    save_length(value.size());
    for (bool b : value) save(b);
  } else if constexpr (f == family::sequence) {
    if constexpr (is_specialization_v<U, std::vector> && is_bitwise_v<typename U::value_type>) {
      save_length(value.size());
      write_bytes(value.data(), value.size() * sizeof(typename U::value_type));
    } else {
      save_range(value, value.size());
    }
  } else if constexpr (f == family::array) {
    for (const auto& element : value) save(element);
  } else if constexpr (f == family::set || f == family::map) {
    save_range(value, value.size());
  } else if constexpr (f == family::pair) {
    save(value.first);
    save(value.second);
  } else if constexpr (f == family::tuple) {
    std::apply([&](const auto&... elements) { (save(elements), ...); }, value);
  } else if constexpr (f == family::optional) {
    save(value.has_value());
    if (value) save(*value);
  } else if constexpr (f == family::variant) {
    if (value.valueless_by_exception())
      throw SerializationError("serialize " + type_name<U>() +
                               ": the variant is valueless (an exception interrupted its last assignment)");
    const auto index = static_cast<variant_index_type>(value.index());
    write_bytes(&index, sizeof index);
    std::visit([&](const auto& alternative) { save(alternative); }, value);
  } else if constexpr (f == family::monostate) {
  } else if constexpr (f == family::duration) {
    save(value.count());
  } else if constexpr (f == family::path) {
    save(value.native());
  } else {
    reject_unsupported<U>();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Loading.

// Reads a container length and checks it against the bytes left: each element takes at least
// min_wire_size<Element>() bytes, so a longer length cannot be honest and is refused before anything is allocated.
template <class Container>
std::size_t input_archive::load_length() {
  length_type length = 0;
  if (sizeof length > remaining())
    fail(type_name<Container>(), "needs " + byte_count(sizeof length) + " for the length but only " +
                                     byte_count(remaining()) + " left");
  std::memcpy(&length, bytes_.data() + position_, sizeof length);
  position_ += sizeof length;
  constexpr std::size_t min_size = min_element_size<Container>();
  if constexpr (min_size > 0) {
    if (length > remaining() / min_size) {
      std::string problem = "length " + std::to_string(length) + " exceeds the " + byte_count(remaining()) + " left";
      if constexpr (min_size > 1) problem += ", at least " + std::to_string(min_size) + " bytes per element";
      fail(type_name<Container>(), problem);
    }
  } else if constexpr (is_always_empty<typename Container::value_type>()) {
    // Elements that never take a byte: the length is checked against the empty-element budgets up front.
    const std::size_t left = std::min(max_empty_elements - empty_elements_,
                                      (max_empty_element_bytes - empty_bytes_) / sizeof(typename Container::value_type));
    if (length > left)
      fail(type_name<Container>(), "length " + std::to_string(length) + " of elements that take no bytes exceeds the " +
                                       std::to_string(left) + " such elements a buffer may still hold");
  } else {
    // Elements whose encoding is not known statically (user types): each takes at least one byte or is charged to
    // the empty-element budget, so no honest length exceeds the bytes left plus what that budget still allows.
    const std::size_t empty_left = max_empty_elements - empty_elements_;
    if (length > remaining() + empty_left)
      fail(type_name<Container>(), "length " + std::to_string(length) + " exceeds the " + byte_count(remaining()) +
                                       " left plus the " + std::to_string(empty_left) +
                                       " elements that take no bytes a buffer may still hold");
  }
  return static_cast<std::size_t>(length);
}

template <class T>
void input_archive::load_user(T& value) {
  if (user_depth_ >= max_user_depth)
    fail(type_name<T>(), "user types nest more than " + std::to_string(max_user_depth) +
                             " levels deep; the buffer is corrupt or hostile");
  struct leave {
    std::size_t& depth;
    ~leave() { --depth; }
  } guard{++user_depth_};
  constexpr family f = family_v<T>;
  if constexpr (f == family::user_member) value.serialize(*this);
  else if constexpr (f == family::user_save_load) value.load(*this);
  else serialize(*this, value);
}

// Decodes one element of a Container; elements that consume no bytes are charged to the archive's budget, which
// bounds the loop for a hostile length of std::tuple<> or empty user structs.
template <class Container, class Element>
void input_archive::load_element(Element& element) {
  const std::size_t before = position_;
  load(element);
  if (position_ != before) return;
  empty_bytes_ += sizeof(Element);
  if (++empty_elements_ > max_empty_elements || empty_bytes_ > max_empty_element_bytes)
    fail(type_name<Container>(), "more than " + std::to_string(max_empty_elements) + " elements (or " +
                                     byte_count(max_empty_element_bytes) +
                                     ") that take no bytes; the buffer is corrupt or hostile");
}

template <class T>
void input_archive::load(T& value) {
  using U = std::remove_cv_t<T>;
  static_assert(!std::is_const_v<T>, "mp::deserialize cannot decode into a const object");
  constexpr family f = family_v<U>;
  if constexpr (f == family::user_member || f == family::user_save_load || f == family::user_free) load_user(value);
  else if constexpr (f == family::boolean) {
    std::uint8_t byte = 0;
    copy_checked<bool>(&byte, 1);
    if (byte > 1) {
      position_ -= 1;
      fail("bool", "byte value " + std::to_string(byte) + " is neither 0 nor 1");
    }
    value = byte == 1;
  } else if constexpr (is_bitwise_v<U>) {
    load_scalar(value);
  } else if constexpr (f == family::string) {
    using element = typename U::value_type;
    const std::size_t n = load_length<U>();
    if constexpr (std::is_same_v<element, char>) {
      // char may alias any bytes: assign copies once, without the zero-fill of resize(). n was checked.
      assign_on_fresh_pages(value, reinterpret_cast<const char*>(bytes_.data() + position_), n);
      position_ += n;
    } else {
      value.resize(n);
      copy_checked<U>(value.data(), n * sizeof(element));
    }
  } else if constexpr (f == family::vector_bool) {
    const std::size_t n = load_length<U>();
    value.clear();
    value.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      bool b = false;
      load(b);
      value.push_back(b);
    }
  } else if constexpr (f == family::sequence) {
    using element = typename U::value_type;
    require_default_constructible<element>();
    const std::size_t n = load_length<U>();
    value.clear();
    if constexpr (is_specialization_v<U, std::vector> && is_bitwise_v<element>) {
      const std::byte* first = bytes_.data() + position_;
      if (n * sizeof(element) >= fresh_pages_threshold && value.capacity() < n) {
        // A big vector on fresh memory: its pages come faster asked for at once (fresh_pages.hpp).
        value.reserve(n);
        prepare_fresh_pages(value.data(), n * sizeof(element));
      }
      if (reinterpret_cast<std::uintptr_t>(first) % alignof(element) == 0) {
        // Aligned (the usual case): assign copies with one memmove into uninitialised storage, sparing the
        // zero-fill resize() would do first. n was checked against the bytes left by load_length.
        const auto* elements = reinterpret_cast<const element*>(first);
        value.assign(elements, elements + n);
        position_ += n * sizeof(element);
      } else {
        value.resize(n);
        copy_checked<U>(value.data(), n * sizeof(element));
      }
    } else {
      // n was checked against the bytes left, but an element may be far bigger in memory than on the wire (a
      // user type holding a std::array): reserve within the archive's budget, not n * sizeof(element).
      if constexpr (is_specialization_v<U, std::vector>) value.reserve(reservable(n, sizeof(element)));
      // Handles among the elements start empty (for_load.hpp), not as shared objects of their own.
      for (std::size_t i = 0; i < n; ++i) load_element<U>(emplace_back_blank(value));
    }
  } else if constexpr (f == family::array) {
    using element = typename array_traits<U>::element;
    if constexpr (is_bitwise_v<element>) {
      load_scalar(value);
    } else {
      for (auto& element_value : value) load(element_value);
    }
  } else if constexpr (f == family::set) {
    using key = typename U::key_type;
    require_default_constructible<key>();
    const std::size_t n = load_length<U>();
    value.clear();
    // A hash container's reserve allocates its bucket array (a pointer or two per element) at once.
    if constexpr (requires { value.reserve(n); }) value.reserve(reservable(n, 2 * sizeof(void*)));
    for (std::size_t i = 0; i < n; ++i) {
      key k{};
      load_element<U>(k);
      if constexpr (is_multi_v<U>) {
        value.emplace_hint(value.end(), std::move(k));
      } else {
        const std::size_t size_before = value.size();
        value.emplace_hint(value.end(), std::move(k));
        if (value.size() == size_before) fail(type_name<U>(), "element " + std::to_string(i) + " repeats an earlier one");
      }
    }
  } else if constexpr (f == family::map) {
    using key = typename U::key_type;
    using mapped = typename U::mapped_type;
    require_default_constructible<key>();
    require_default_constructible<mapped>();
    const std::size_t n = load_length<U>();
    value.clear();
    if constexpr (requires { value.reserve(n); }) value.reserve(reservable(n, 2 * sizeof(void*)));
    for (std::size_t i = 0; i < n; ++i) {
      std::pair<key, mapped> entry = blank_for_load<std::pair<key, mapped>>::make();
      load_element<U>(entry);
      if constexpr (is_multi_v<U>) {
        value.emplace_hint(value.end(), std::move(entry.first), std::move(entry.second));
      } else {
        const std::size_t size_before = value.size();
        value.emplace_hint(value.end(), std::move(entry.first), std::move(entry.second));
        if (value.size() == size_before) fail(type_name<U>(), "key of entry " + std::to_string(i) + " repeats an earlier one");
      }
    }
  } else if constexpr (f == family::pair) {
    load(value.first);
    load(value.second);
  } else if constexpr (f == family::tuple) {
    std::apply([&](auto&... elements) { (load(elements), ...); }, value);
  } else if constexpr (f == family::optional) {
    using element = typename U::value_type;
    require_default_constructible<element>();
    std::uint8_t flag = 0;
    copy_checked<U>(&flag, 1);
    if (flag > 1) {
      position_ -= 1;
      fail(type_name<U>(), "engaged flag " + std::to_string(flag) + " is neither 0 nor 1");
    }
    if (flag == 0) {
      value.reset();
    } else {
      if constexpr (std::is_constructible_v<element, for_load_t>) load(value.emplace(for_load));
      else if constexpr (blank_for_load<element>::handle) load(value.emplace(blank_for_load<element>::make()));
      else load(value.emplace());
    }
  } else if constexpr (f == family::variant) {
    variant_index_type index = 0;
    copy_checked<U>(&index, sizeof index);
    constexpr std::size_t alternatives = std::variant_size_v<U>;
    if (index >= alternatives) {
      position_ -= sizeof index;
      fail(type_name<U>(), "alternative index " + std::to_string(index) + " is out of range (the variant has " +
                               std::to_string(alternatives) + " alternatives)");
    }
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      using loader = void (*)(input_archive&, U&);
      static constexpr loader loaders[] = {+[](input_archive& archive, U& variant) {
        using alternative = std::variant_alternative_t<I, U>;
        require_default_constructible<alternative>();
        if constexpr (std::is_constructible_v<alternative, for_load_t>)
          archive.load(variant.template emplace<I>(for_load));
        else if constexpr (blank_for_load<alternative>::handle)
          archive.load(variant.template emplace<I>(blank_for_load<alternative>::make()));
        else
          archive.load(variant.template emplace<I>());
      }...};
      loaders[index](*this, value);
    }(std::make_index_sequence<alternatives>{});
  } else if constexpr (f == family::monostate) {
  } else if constexpr (f == family::duration) {
    typename U::rep count{};
    load(count);
    value = U(count);
  } else if constexpr (f == family::path) {
    typename U::string_type native;
    load(native);
    value = U(std::move(native));
  } else {
    reject_unsupported<U>();
  }
}

template <class T>
inline constexpr bool is_serializable_v = is_serializable<std::remove_cv_t<T>>();

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/archive.ipp>
#endif
