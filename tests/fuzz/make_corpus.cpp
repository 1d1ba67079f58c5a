// Writes the seed corpus of fuzz_deserialize: one valid encoding per fuzzed type, prefixed by its type index.
// Usage: fuzz_make_corpus <dir>   (tests/fuzz/corpus/deserialize holds its output)
#include "fuzz_types.hpp"

#include <fstream>
#include <iostream>

namespace {

std::filesystem::path directory;
int written = 0;

void write(const std::string& name, std::uint8_t selector, const std::vector<std::byte>& bytes) {
  std::ofstream file(directory / name, std::ios::binary);
  file.put(static_cast<char>(selector));
  file.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  ++written;
}

template <class T>
void seed(const std::string& name, const T& value) {
  constexpr std::size_t index = fuzz::index_of<T>();
  static_assert(index < fuzz::type_count, "seed a type listed in fuzz::types");
  write(std::to_string(index) + "-" + name, static_cast<std::uint8_t>(index), mp::serialize(value));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " <corpus directory>\n";
    return 2;
  }
  directory = argv[1];
  std::filesystem::create_directories(directory);
  using namespace std::string_literals;
  seed("bool", true);
  seed("int32", std::int32_t{-123456});
  seed("uint64", std::uint64_t{1} << 40);
  seed("double", 3.25);
  seed("float", -1.5f);
  seed("enum", fuzz::Level::high);
  seed("byte", std::byte{0x7f});
  seed("char32", U'\U0001F600');
  seed("wchar", L'w');
  seed("string", "hello, fuzzer"s);
  seed("u16string", std::u16string(u"wide"));
  seed("vector-int", std::vector<std::int32_t>{1, 2, 3, -4});
  seed("vector-bool", std::vector<bool>{true, false, true});
  seed("vector-string", std::vector<std::string>{"a", "", "ccc"});
  seed("deque", std::deque<std::int16_t>{7, 8});
  seed("list", std::list<std::string>{"x", "yz"});
  seed("array-int", std::array<std::int32_t, 3>{1, 2, 3});
  seed("array-string", std::array<std::string, 2>{"p", "q"});
  seed("map", std::map<std::string, std::int32_t>{{"one", 1}, {"two", 2}});
  seed("unordered-map", std::unordered_map<std::int32_t, std::string>{{1, "a"}, {2, "b"}});
  seed("set", std::set<std::int32_t>{5, 6, 7});
  seed("unordered-set", std::unordered_set<std::string>{"s", "t"});
  seed("multimap", std::multimap<std::int32_t, std::int32_t>{{1, 1}, {1, 2}});
  seed("multiset", std::multiset<std::string>{"m", "m"});
  seed("pair", std::pair<std::int32_t, std::string>{9, "nine"});
  seed("tuple", std::tuple<bool, char, std::string>{true, 'c', "t"});
  seed("empty-tuple", std::tuple<>{});
  seed("optional", std::optional<std::string>{"maybe"});
  using Variant = std::variant<std::monostate, std::int32_t, std::string, std::vector<std::int32_t>>;
  seed("variant-vector", Variant{std::vector<std::int32_t>{1, 2}});
  seed("variant-string", Variant{"v"s});
  seed("milliseconds", std::chrono::milliseconds(250));
  seed("seconds-double", std::chrono::duration<double>(0.5));
  seed("path", std::filesystem::path("/tmp/a b/c.txt"));
  seed("point", fuzz::Point{1, 2.0, "ab"});
  seed("vector-point", std::vector<fuzz::Point>{{1, 2.0, "ab"}, {3, 4.0, "cd"}});
  const fuzz::Record record{"rec", {1, 2}, fuzz::Point{5, 6.0, "xy"}, {{"k", std::int64_t{1}}, {"l", "v"s}}};
  seed("record", record);
  seed("counter", fuzz::Counter{});
  seed("legacy", fuzz::Legacy{{u"line one", u""}});
  seed("node", fuzz::Node{"root", {fuzz::Node{"a", {}}, fuzz::Node{"b", {fuzz::Node{"c", {}}}}}});
  seed("vector-empty-tuple", std::vector<std::tuple<>>(3));
  seed("vector-empty-user", std::vector<fuzz::Empty>(3));
  using Nested = std::map<std::string, std::vector<std::optional<std::variant<std::int32_t, std::string>>>>;
  seed("nested", Nested{{"a", {std::nullopt, 1, "s"s}}, {"b", {}}});
  seed("set-empty-tuple", std::set<std::tuple<>>{std::tuple<>{}});
  seed("vector-vector-monostate", std::vector<std::vector<std::monostate>>{{{}, {}}, {}});
  seed("optional-array-bool", std::optional<std::array<bool, 4>>{std::array<bool, 4>{true, false, true, true}});
  seed("unordered-multimap", std::unordered_multimap<std::string, std::vector<bool>>{{"k", {true}}, {"k", {}}});
  seed("list-record", std::list<fuzz::Record>{record, fuzz::Record{}});

  std::vector<std::byte> several;  // selector 255: several values through the archives
  mp::detail::output_archive archive(several);
  archive(std::uint32_t{7}, "name"s, std::vector<fuzz::Record>{record});
  write("255-archive", 255, several);
  std::cout << "wrote " << written << " seeds to " << directory << "\n";
}
