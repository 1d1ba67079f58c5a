// A std::string_view refers to this process's memory: decoding one is refused at compile time.
// expect: view_cannot_cross_a_process_boundary<std::basic_string_view<char
// expect: send a std::string
#include <mp/serialize.hpp>

#include <string_view>
#include <vector>

int main() {
  std::vector<std::byte> bytes;
  return static_cast<int>(mp::deserialize<std::string_view>(bytes).size());
}
