// A user serialize member that lists a pointer field is caught when it is instantiated, naming the field's type.
// expect: pointer_cannot_cross_a_process_boundary<(char ?\*|char\*)>
// expect: send the pointed-to value
#include <mp/serialize.hpp>

struct Message {
  char* text = nullptr;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(text);
  }
};

int main() { return static_cast<int>(mp::serialize(Message{}).size()); }
