// The Python built-ins the lesson's demos lean on, in C++: range(n), and printing a list or dict the way Python's
// print() shows it ("[0, 1, 4]", "{'count': 3}", "['Process-2', 'Process-3']").
//
// Output style of every demo: std::cout, each line ended with std::endl. The flush matters: several processes
// write to one pipe under ctest, and a line left in a buffer would come out later than it was printed, so the
// order the .expected files check would be the buffers' order instead of the program's.
#pragma once

#include <cstddef>
#include <map>
#include <numeric>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace lesson {

/// Python's range(n) (as a list): 0, 1, …, n-1.
inline std::vector<int> range(int n) {
  std::vector<int> values(static_cast<std::size_t>(n > 0 ? n : 0));
  std::iota(values.begin(), values.end(), 0);
  return values;
}

/// Python's repr of one item: strings in single quotes, anything else as operator<< prints it.
inline std::string repr(std::string_view text) { return "'" + std::string(text) + "'"; }
inline std::string repr(const std::string& text) { return repr(std::string_view(text)); }
inline std::string repr(const char* text) { return repr(std::string_view(text)); }
inline std::string repr(bool value) { return value ? "True" : "False"; }
template <class T>
std::string repr(const std::vector<T>& items);
template <class K, class V>
std::string repr(const std::map<K, V>& items);
template <class T>
std::string repr(const T& value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

/// Python's repr of a list: "[0, 1, 4]", "['a', 'b']".
template <class T>
std::string repr(const std::vector<T>& items) {
  std::string text = "[";
  for (std::size_t i = 0; i < items.size(); ++i) text += (i ? ", " : "") + repr(items[i]);
  return text + "]";
}

/// Python's repr of a dict: "{'count': 3}".
template <class K, class V>
std::string repr(const std::map<K, V>& items) {
  std::string text = "{";
  for (const auto& [key, value] : items) text += (text.size() > 1 ? ", " : "") + repr(key) + ": " + repr(value);
  return text + "}";
}

}  // namespace lesson
