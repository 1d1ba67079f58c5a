// A raw pointer cannot cross: its address means nothing in another process.
// expect: pointer_cannot_cross_a_process_boundary<const int ?\*>
// expect: send the pointed-to value
#include <mp/serialize.hpp>

#include <vector>

int main() {
  static const int x = 1;
  std::vector<const int*> pointers{&x};
  return static_cast<int>(mp::serialize(pointers).size());
}
