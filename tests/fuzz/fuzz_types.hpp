// The types tests/fuzz/fuzz_deserialize.cpp decodes: one or more of every built-in family, user types of each
// convention, and the corner cases (empty elements, self-nesting). The first input byte picks one by index.
#pragma once

#include <mp/serialize.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <tuple>
#include <type_traits>
#include <utility>

namespace fuzz {

enum class Level : std::int16_t { low = -1, mid = 0, high = 1 };

struct Point {  // trivially copyable: its bytes
  std::int32_t x;
  double y;
  char tag[3];
};

struct Record {  // member serialize
  std::string name;
  std::vector<std::int32_t> values;
  std::optional<Point> where;
  std::map<std::string, std::variant<std::int64_t, std::string>> attributes;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(name, values, where, attributes);
  }
};

class Counter {  // save/load pair
 public:
  template <class Archive>
  void save(Archive& ar) const {
    ar(count_, history_);
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(count_, history_);
  }

 private:
  std::uint64_t count_ = 0;
  std::deque<bool> history_;
};

struct Legacy {  // free serialize found by argument-dependent lookup
  std::list<std::u16string> lines;
};
template <class Archive>
void serialize(Archive& ar, Legacy& legacy) {
  ar(legacy.lines);
}

struct Empty {  // a user type that takes no bytes
  template <class Archive>
  void serialize(Archive&) {}
};

struct Node {  // a user type nested in itself
  std::string label;
  std::vector<Node> children;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(label, children);
  }
};

using types = std::tuple<
    bool, std::int32_t, std::uint64_t, double, float, Level, std::byte, char32_t, wchar_t,            // 0-8
    std::string, std::u16string, std::vector<std::int32_t>, std::vector<bool>, std::vector<std::string>,  // 9-13
    std::deque<std::int16_t>, std::list<std::string>, std::array<std::int32_t, 3>,                     // 14-16
    std::array<std::string, 2>, std::map<std::string, std::int32_t>,                                   // 17-18
    std::unordered_map<std::int32_t, std::string>, std::set<std::int32_t>, std::unordered_set<std::string>,  // 19-21
    std::multimap<std::int32_t, std::int32_t>, std::multiset<std::string>, std::pair<std::int32_t, std::string>,  // 22-24
    std::tuple<bool, char, std::string>, std::tuple<>, std::optional<std::string>,                     // 25-27
    std::variant<std::monostate, std::int32_t, std::string, std::vector<std::int32_t>>,                // 28
    std::chrono::milliseconds, std::chrono::duration<double>, std::filesystem::path, Point,            // 29-32
    std::vector<Point>, Record, Counter, Legacy, Node, std::vector<std::tuple<>>, std::vector<Empty>,  // 33-39
    std::map<std::string, std::vector<std::optional<std::variant<std::int32_t, std::string>>>>,        // 40
    std::set<std::tuple<>>, std::vector<std::vector<std::monostate>>, std::optional<std::array<bool, 4>>,  // 41-43
    std::unordered_multimap<std::string, std::vector<bool>>, std::list<Record>>;                        // 44-45

inline constexpr std::size_t type_count = std::tuple_size_v<types>;

/// Calls f(std::type_identity<T>{}) for the type at `index` (taken modulo type_count).
template <class F>
void visit_type(std::size_t index, F&& f) {
  index %= type_count;
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    ((I == index ? (f(std::type_identity<std::tuple_element_t<I, types>>{}), 0) : 0), ...);
  }(std::make_index_sequence<type_count>{});
}

/// The index of T in `types`.
template <class T>
constexpr std::size_t index_of() {
  return []<std::size_t... I>(std::index_sequence<I...>) {
    std::size_t found = type_count;
    ((std::is_same_v<T, std::tuple_element_t<I, types>> ? (found = I, 0) : 0), ...);
    return found;
  }(std::make_index_sequence<type_count>{});
}

}  // namespace fuzz
