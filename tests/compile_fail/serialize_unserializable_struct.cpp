// A struct with a std::string member and no serialize member cannot cross: the error names it and the fix.
// expect: type_cannot_cross_a_process_boundary<Widget>
// expect: add a member `template <class Archive> void serialize\(Archive& ar\)
#include <mp/serialize.hpp>

#include <string>

struct Widget {
  std::string label;
  int size = 0;
};

int main() { return static_cast<int>(mp::serialize(Widget{}).size()); }
