// The offending type is named even deep inside containers.
// expect: type_cannot_cross_a_process_boundary<Gadget>
// expect: add a member `template <class Archive> void serialize
#include <mp/serialize.hpp>

#include <map>
#include <string>
#include <vector>

struct Gadget {
  std::vector<int> parts;
  virtual ~Gadget() = default;
};

int main() {
  std::map<std::string, std::vector<Gadget>> gadgets;
  return static_cast<int>(mp::serialize(gadgets).size());
}
