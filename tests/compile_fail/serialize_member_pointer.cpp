// A member pointer cannot cross either.
// expect: pointer_cannot_cross_a_process_boundary<int Point::\*>
// expect: raw pointer or member pointer cannot cross a process boundary
#include <mp/serialize.hpp>

struct Point {
  int x;
  int y;
};

int main() { return static_cast<int>(mp::serialize(&Point::y).size()); }
