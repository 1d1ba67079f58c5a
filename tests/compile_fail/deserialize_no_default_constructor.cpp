// Decoding builds the value first and then fills it in, so a user type needs a default constructor.
// expect: type_needs_a_default_constructor_to_be_deserialized<Account>
// expect: has no default constructor: add one
#include <mp/serialize.hpp>

#include <string>

struct Account {
  explicit Account(std::string owner) : owner(std::move(owner)) {}
  std::string owner;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(owner);
  }
};

int main() {
  std::vector<std::byte> bytes;
  return static_cast<int>(mp::deserialize<Account>(bytes).owner.size());
}
