// for_load: the empty handles a decoder fills in. A default-constructed Queue (or Lock, Value, ...) makes a shared
// object of its own (a ring and a mailbox, a piece of a fresh shared-memory chunk) that load() then drops: once per
// task in a Pool worker, for every handle among the arguments — at the top level, in a tuple, or as an element of
// a container the archive builds (a std::vector<mp::Value<int>>, a map's values, an optional, a variant). Every
// handle type has a constructor from for_load_t that makes an empty handle instead, and the decoders (archive.hpp,
// the Pool's trampolines) build such values through blank_for_load.
#pragma once

#include <array>
#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

namespace mp::detail {

/// The tag of a handle's constructor that makes an empty handle for load() to fill in (see the file comment).
struct for_load_t {
  explicit for_load_t() = default;
};
inline constexpr for_load_t for_load{};

/// A value to decode a T into (by mp::serialize's load): T(for_load) for a handle type that has that constructor;
/// a tuple, pair or std::array of such, element by element; anything else value-initialized (T{}). `handle`: T
/// holds a handle that way (then T need not be default-constructible: an Array or a Barrier has no default).
template <class T>
struct blank_for_load {
  static constexpr bool handle = std::is_constructible_v<T, for_load_t>;
  static T make() {
    if constexpr (handle) return T(for_load);
    else return T{};
  }
};
template <class... Ts>
struct blank_for_load<std::tuple<Ts...>> {
  static constexpr bool handle = (blank_for_load<Ts>::handle || ...);
  static std::tuple<Ts...> make() {
    if constexpr (handle) return std::tuple<Ts...>(blank_for_load<Ts>::make()...);
    else return std::tuple<Ts...>{};
  }
};
template <class A, class B>
struct blank_for_load<std::pair<A, B>> {
  static constexpr bool handle = blank_for_load<A>::handle || blank_for_load<B>::handle;
  static std::pair<A, B> make() {
    if constexpr (handle) return std::pair<A, B>(blank_for_load<A>::make(), blank_for_load<B>::make());
    else return std::pair<A, B>{};
  }
};
template <class T, std::size_t N>
struct blank_for_load<std::array<T, N>> {
  static constexpr bool handle = N != 0 && blank_for_load<T>::handle;
  static std::array<T, N> make() {
    if constexpr (handle) {
      return [&]<std::size_t... I>(std::index_sequence<I...>) {
        return std::array<T, N>{((void)I, blank_for_load<T>::make())...};
      }(std::make_index_sequence<N>{});
    } else {
      return std::array<T, N>{};
    }
  }
};

/// Whether a decoder can make a T to load into: default-constructible, or a handle (or holds handles) blank_for_load
/// makes.
template <class T>
inline constexpr bool loadable_blank_v = std::is_default_constructible_v<T> || blank_for_load<T>::handle;

/// Appends a blank element to a sequence the archive is decoding and returns it.
template <class Container>
typename Container::value_type& emplace_back_blank(Container& c) {
  using T = typename Container::value_type;
  if constexpr (std::is_constructible_v<T, for_load_t>) return c.emplace_back(for_load);
  else if constexpr (blank_for_load<T>::handle) return c.emplace_back(blank_for_load<T>::make());
  else return c.emplace_back();
}

}  // namespace mp::detail
