// Tests for mp/serialize.hpp: round trips for every built-in family, user types, the wire layout that lets
// contiguous data move as one copy, a value crossing a real process boundary, and hostile input.
#include <catch2/catch.hpp>

#include <mp/serialize.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>

namespace {

template <class T>
T round_trip(const T& value) {
  const std::vector<std::byte> bytes = mp::serialize(value);
  return mp::deserialize<T>(bytes);
}

template <class T>
void check_round_trip(const T& value) {
  CAPTURE(mp::detail::type_name<T>());
  CHECK(round_trip(value) == value);
}

enum class Color : std::uint8_t { red = 1, green = 2, blue = 200 };
enum Plain { plain_a = -3, plain_b = 7 };

struct Point {  // trivially copyable: crosses as its bytes
  int x;
  double y;
  char tag[4];
  friend bool operator==(const Point&, const Point&) = default;
};

struct Employee {  // a user type through cereal's member convention
  std::string name;
  std::vector<int> scores;
  std::optional<Point> desk;
  std::map<std::string, double> bonuses;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(name, scores, desk, bonuses);
  }
  friend bool operator==(const Employee&, const Employee&) = default;
};

struct Team {  // user types nest in each other and in containers
  std::string title;
  std::vector<Employee> members;
  std::variant<std::monostate, int, Employee> lead;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(title, members, lead);
  }
  friend bool operator==(const Team&, const Team&) = default;
};

class Counter {  // cereal's save/load pair: a private field, a derived one recomputed on load
 public:
  Counter() = default;
  explicit Counter(int start) : count_(start), doubled_(2 * start) {}
  int count() const { return count_; }
  int doubled() const { return doubled_; }
  template <class Archive>
  void save(Archive& ar) const {
    ar(count_);
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(count_);
    doubled_ = 2 * count_;
  }

 private:
  int count_ = 0;
  int doubled_ = 0;
};

}  // namespace

namespace thirdparty {
struct Legacy {  // a type its user cannot edit: a free serialize found by argument-dependent lookup
  std::string id;
  std::list<int> values;
  friend bool operator==(const Legacy&, const Legacy&) = default;
};
template <class Archive>
void serialize(Archive& ar, Legacy& legacy) {
  ar(legacy.id, legacy.values);
}
}  // namespace thirdparty

TEST_CASE("Arithmetic values, enums and std::byte round-trip exactly", "[serialize]") {
  check_round_trip(true);
  check_round_trip(false);
  check_round_trip('x');
  check_round_trip(static_cast<signed char>(-5));
  check_round_trip(static_cast<unsigned char>(250));
  check_round_trip(u8'a');
  check_round_trip(u'\u263a');
  check_round_trip(U'\U0001F600');
  check_round_trip(L'w');
  check_round_trip(std::numeric_limits<std::int16_t>::min());
  check_round_trip(std::numeric_limits<std::uint16_t>::max());
  check_round_trip(std::numeric_limits<int>::min());
  check_round_trip(std::numeric_limits<unsigned>::max());
  check_round_trip(std::numeric_limits<std::int64_t>::min());
  check_round_trip(std::numeric_limits<std::uint64_t>::max());
  check_round_trip(3.5f);
  check_round_trip(-0.1);
  check_round_trip(std::numeric_limits<double>::denorm_min());
  check_round_trip(std::numeric_limits<double>::infinity());
  check_round_trip(1.0L / 3.0L);
  check_round_trip(Color::blue);
  check_round_trip(plain_a);
  check_round_trip(std::byte{0xAB});
  CHECK(std::isnan(round_trip(std::numeric_limits<double>::quiet_NaN())));
  CHECK(std::signbit(round_trip(-0.0)));
}

TEST_CASE("Fixed-width values take exactly their size on the wire", "[serialize]") {
  CHECK(mp::serialize(true).size() == 1);
  CHECK(mp::serialize(std::int32_t{7}).size() == 4);
  CHECK(mp::serialize(2.0).size() == 8);
  CHECK(mp::serialize(Point{1, 2.0, "abc"}).size() == sizeof(Point));
  const auto bytes = mp::serialize(std::uint32_t{0x01020304});
  std::uint32_t host = 0;
  std::memcpy(&host, bytes.data(), 4);
  CHECK(host == 0x01020304);  // the host's own representation, byte for byte
}

TEST_CASE("Strings round-trip, including empty ones, embedded NULs and wide strings", "[serialize]") {
  check_round_trip(std::string{});
  check_round_trip(std::string("hello, world"));
  check_round_trip(std::string("a\0b\0c", 5));
  check_round_trip(std::string(100000, 'z'));
  check_round_trip(std::wstring(L"wide \u00e9"));
  check_round_trip(std::u32string(U"\U0001F600 x"));
  CHECK(mp::serialize(std::string("abc")).size() == 8 + 3);
}

TEST_CASE("Sequence containers round-trip", "[serialize]") {
  check_round_trip(std::vector<int>{});
  check_round_trip(std::vector<int>{1, -2, 3});
  check_round_trip(std::vector<std::string>{"a", "", "ccc"});
  check_round_trip(std::vector<bool>{true, false, false, true, true});
  check_round_trip(std::vector<bool>{});
  check_round_trip(std::deque<double>{1.5, 2.5});
  check_round_trip(std::deque<std::string>{"x", "y"});
  check_round_trip(std::list<int>{4, 5, 6});
  check_round_trip(std::list<std::vector<char>>{{'a'}, {}, {'b', 'c'}});
  check_round_trip(std::array<double, 3>{1.0, 2.0, 3.0});
  check_round_trip(std::array<std::string, 2>{"p", "q"});
  check_round_trip(std::array<int, 0>{});
  check_round_trip(std::vector<Point>{{1, 2.0, "ab"}, {3, 4.0, "cd"}});
}

TEST_CASE("Associative containers round-trip", "[serialize]") {
  check_round_trip(std::map<std::string, int>{{"one", 1}, {"two", 2}});
  check_round_trip(std::map<int, std::vector<std::string>>{{1, {"a"}}, {2, {}}});
  check_round_trip(std::unordered_map<std::string, double>{{"pi", 3.14}, {"e", 2.71}});
  check_round_trip(std::set<int>{3, 1, 2});
  check_round_trip(std::set<std::string>{});
  check_round_trip(std::unordered_set<std::string>{"x", "y", "z"});
  check_round_trip(std::multiset<int>{1, 1, 2});
  check_round_trip(std::multimap<int, std::string>{{1, "a"}, {1, "b"}});
  check_round_trip(std::unordered_multimap<int, int>{{1, 2}, {1, 3}});
  check_round_trip(std::unordered_multiset<int>{5, 5});
  check_round_trip(std::map<std::string, int, std::greater<>>{{"a", 1}, {"b", 2}});
}

TEST_CASE("Pairs, tuples, optionals, variants and monostate round-trip", "[serialize]") {
  check_round_trip(std::pair<int, std::string>{7, "seven"});
  check_round_trip(std::tuple<>{});
  check_round_trip(std::tuple<int, std::string, double>{1, "two", 3.0});
  check_round_trip(std::optional<std::string>{});
  check_round_trip(std::optional<std::string>{"here"});
  check_round_trip(std::optional<int>{0});
  check_round_trip(std::variant<int, std::string>{42});
  check_round_trip(std::variant<int, std::string>{"text"});
  check_round_trip(std::variant<std::monostate, int>{});
  check_round_trip(std::variant<int, int>{std::in_place_index<1>, 5});
  CHECK(round_trip(std::variant<int, int>{std::in_place_index<1>, 5}).index() == 1);
  check_round_trip(std::monostate{});
}

TEST_CASE("Durations and filesystem paths round-trip", "[serialize]") {
  check_round_trip(std::chrono::milliseconds(250));
  check_round_trip(std::chrono::nanoseconds(-1));
  check_round_trip(std::chrono::duration<double>(1.25));
  check_round_trip(std::chrono::hours(24));
  check_round_trip(std::filesystem::path("/tmp/some dir/file.txt"));
  check_round_trip(std::filesystem::path{});
  check_round_trip(std::vector<std::filesystem::path>{"a", "b/c"});
}

TEST_CASE("Arbitrarily nested std types round-trip", "[serialize]") {
  using Nested = std::map<std::string, std::vector<std::optional<std::tuple<int, std::string, std::set<double>>>>>;
  Nested nested{{"first", {std::nullopt, std::tuple{1, std::string("x"), std::set<double>{1.5, 2.5}}}},
                {"second", {}}};
  check_round_trip(nested);

  using Deep = std::vector<std::vector<std::vector<std::variant<std::string, std::pair<int, std::list<int>>>>>>;
  Deep deep{{{"a", std::pair{1, std::list<int>{2, 3}}}, {}}, {}};
  check_round_trip(deep);

  std::unordered_map<int, std::array<std::deque<std::chrono::seconds>, 2>> timings{{1, {{{std::chrono::seconds(1)}, {}}}}};
  check_round_trip(timings);
}

TEST_CASE("User types round-trip through a member serialize, save/load, or a free serialize", "[serialize]") {
  SECTION("member serialize") {
    Employee ann{"Ann", {90, 85}, Point{1, 2.0, "d1"}, {{"q1", 100.0}}};
    Employee bob{"Bob", {}, std::nullopt, {}};
    check_round_trip(ann);
    check_round_trip(Team{"core", {ann, bob}, bob});
    check_round_trip(Team{"empty", {}, std::monostate{}});
    check_round_trip(std::vector<Team>{{"t", {ann}, 3}});
  }
  SECTION("save and load members") {
    const auto copy = round_trip(Counter(21));
    CHECK(copy.count() == 21);
    CHECK(copy.doubled() == 42);
  }
  SECTION("free serialize found by argument-dependent lookup") {
    check_round_trip(thirdparty::Legacy{"id-1", {1, 2, 3}});
    check_round_trip(std::map<int, thirdparty::Legacy>{{1, {"x", {}}}});
  }
}

TEST_CASE("A large std::vector<double> round-trips bit for bit", "[serialize]") {
  std::mt19937_64 random(12345);
  std::uniform_real_distribution<double> distribution(-1e300, 1e300);
  std::vector<double> values(1 << 20);
  for (double& value : values) value = distribution(random);
  values[7] = std::numeric_limits<double>::denorm_min();
  values[8] = -0.0;
  const auto bytes = mp::serialize(values);
  REQUIRE(bytes.size() == 8 + values.size() * sizeof(double));
  const auto copy = mp::deserialize<std::vector<double>>(bytes);
  REQUIRE(copy.size() == values.size());
  CHECK(std::memcmp(copy.data(), values.data(), values.size() * sizeof(double)) == 0);
}

TEST_CASE("Contiguous trivially copyable data is laid out as one block after its length", "[serialize]") {
  // The layout one memcpy produces: a length, then the elements' bytes exactly as they sit in memory.
  const std::vector<Point> points{{1, 2.0, "ab"}, {3, 4.0, "cd"}, {5, 6.0, "ef"}};
  const auto bytes = mp::serialize(points);
  REQUIRE(bytes.size() == 8 + points.size() * sizeof(Point));
  std::uint64_t length = 0;
  std::memcpy(&length, bytes.data(), 8);
  CHECK(length == 3);
  CHECK(std::memcmp(bytes.data() + 8, points.data(), points.size() * sizeof(Point)) == 0);

  const std::array<double, 4> block{1, 2, 3, 4};
  const auto array_bytes = mp::serialize(block);
  REQUIRE(array_bytes.size() == sizeof block);
  CHECK(std::memcmp(array_bytes.data(), block.data(), sizeof block) == 0);
}

TEST_CASE("serialize_into appends to a buffer and the archives carry several values in one buffer", "[serialize]") {
  std::vector<std::byte> buffer{std::byte{0xEE}};
  mp::serialize_into(buffer, std::string("abc"));
  mp::serialize_into(buffer, 17);
  CHECK(buffer.size() == 1 + 8 + 3 + 4);
  CHECK(buffer.front() == std::byte{0xEE});

  std::vector<std::byte> message;
  mp::detail::output_archive out(message);
  out(std::uint32_t{7}, std::string("name"), std::vector<int>{1, 2});
  out(Employee{"E", {1}, std::nullopt, {}});

  mp::detail::input_archive in(message);
  std::uint32_t id = 0;
  std::string name;
  std::vector<int> numbers{9, 9, 9};  // decoding replaces what a container held
  Employee employee;
  in(id, name, numbers);
  CHECK(in.remaining() > 0);
  in(employee);
  CHECK(in.remaining() == 0);
  CHECK(id == 7);
  CHECK(name == "name");
  CHECK(numbers == std::vector<int>{1, 2});
  CHECK(employee == Employee{"E", {1}, std::nullopt, {}});
}

TEST_CASE("serializable<T> tells which types can cross", "[serialize]") {
  STATIC_REQUIRE(mp::serializable<int>);
  STATIC_REQUIRE(mp::serializable<Point>);
  STATIC_REQUIRE(mp::serializable<Employee>);
  STATIC_REQUIRE(mp::serializable<Counter>);
  STATIC_REQUIRE(mp::serializable<thirdparty::Legacy>);
  STATIC_REQUIRE(mp::serializable<const std::map<std::string, std::vector<std::optional<Team>>>&>);
  STATIC_REQUIRE(mp::serializable<std::variant<std::monostate, std::chrono::seconds, std::filesystem::path>>);
  STATIC_REQUIRE_FALSE(mp::serializable<int*>);
  STATIC_REQUIRE_FALSE(mp::serializable<const char*>);
  STATIC_REQUIRE_FALSE(mp::serializable<int Point::*>);
  STATIC_REQUIRE_FALSE(mp::serializable<std::string_view>);
  STATIC_REQUIRE_FALSE(mp::serializable<std::span<int>>);
  STATIC_REQUIRE_FALSE(mp::serializable<std::unique_ptr<int>>);
  STATIC_REQUIRE_FALSE(mp::serializable<std::shared_ptr<Point>>);
  STATIC_REQUIRE_FALSE(mp::serializable<std::vector<void*>>);
  STATIC_REQUIRE_FALSE(mp::serializable<std::map<int, std::function<void()>>>);
  STATIC_REQUIRE_FALSE(mp::serializable<std::tuple<int, std::string_view>>);
  STATIC_REQUIRE_FALSE(mp::serializable<std::optional<std::reference_wrapper<int>>>);
}

TEST_CASE("A value serialized in a child process deserializes in the parent", "[serialize]") {
  const Team sent{"remote", {{"Ann", {1, 2, 3}, Point{4, 5.0, "xy"}, {{"k", 1.0}}}}, 7};
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::close(fds[0]);
    const auto bytes = mp::serialize(sent);
    const std::uint64_t size = bytes.size();
    bool ok = ::write(fds[1], &size, sizeof size) == sizeof size;
    ok = ok && ::write(fds[1], bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size());
    ::_exit(ok ? 0 : 1);
  }
  ::close(fds[1]);
  std::uint64_t size = 0;
  std::vector<std::byte> received;
  if (::read(fds[0], &size, sizeof size) == sizeof size) {
    received.resize(size);
    std::size_t got = 0;
    while (got < size) {
      const ssize_t n = ::read(fds[0], received.data() + got, size - got);
      if (n <= 0) break;
      got += static_cast<std::size_t>(n);
    }
    received.resize(got);
  }
  ::close(fds[0]);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  REQUIRE(received.size() == size);
  CHECK(mp::deserialize<Team>(received) == sent);
}
