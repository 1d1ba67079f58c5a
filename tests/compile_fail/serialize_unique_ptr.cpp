// Smart pointers cannot cross: the fix is to send the value, or a std::optional for a maybe-null one.
// expect: smart_pointer_cannot_cross_a_process_boundary<std::unique_ptr<int
// expect: std::optional<T> for a maybe-null one
#include <mp/serialize.hpp>

#include <memory>
#include <optional>

int main() {
  std::optional<std::unique_ptr<int>> p;
  return static_cast<int>(mp::serialize(p).size());
}
