// libFuzzer target for mp::deserialize of user types holding strings and arrays inside containers (issue 19's
// finding 1: std::vector<Sample>, Sample = std::string + std::array<double, 512>, once reserved 4.2 GB from 1 MiB of
// crafted bytes). The first byte picks a type, the rest is the buffer. Decoding must throw mp::SerializationError
// or give a value that re-encodes and decodes to the same bytes; anything else (a crash, a sanitizer report,
// another exception, an allocation past -malloc_limit_mb, a hang) is a finding.
// Seeds: MP_FUZZ_WRITE_SEEDS=<dir> fuzz_user_types writes one valid encoding per type into <dir> and exits
// (tests/fuzz/corpus/user_types holds them and inputs kept from longer runs).
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <list>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include <mp/serialize.hpp>

namespace {

struct Sample {  // the type: a string and 4 KiB of doubles
  std::string name;
  std::array<double, 512> values{};
  template <class Archive>
  void serialize(Archive& ar) {
    ar(name, values);
  }
  bool operator==(const Sample&) const = default;
};

struct Labelled {  // arrays of strings and small user types inside
  std::array<std::string, 3> labels;
  std::vector<std::array<std::int16_t, 8>> rows;
  std::optional<Sample> best;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(labels, rows, best);
  }
  bool operator==(const Labelled&) const = default;
};

class Batch {  // save/load pair holding containers of the others
 public:
  Batch() = default;
  Batch(std::map<std::string, std::vector<Sample>> groups, std::deque<Labelled> queue)
      : groups_(std::move(groups)), queue_(std::move(queue)) {}
  template <class Archive>
  void save(Archive& ar) const {
    ar(groups_, queue_);
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(groups_, queue_);
  }
  bool operator==(const Batch&) const = default;

 private:
  std::map<std::string, std::vector<Sample>> groups_;
  std::deque<Labelled> queue_;
};

using types = std::tuple<
    std::vector<Sample>, std::map<std::int32_t, Sample>, std::unordered_map<std::string, Sample>,   // 0-2
    std::optional<Sample>, std::variant<std::int32_t, Sample, std::vector<Sample>>,                 // 3-4
    std::deque<Sample>, std::list<Sample>, std::vector<std::vector<Sample>>, std::array<Sample, 3>,  // 5-8
    std::vector<Labelled>, std::unordered_map<std::int64_t, Labelled>, Batch,                        // 9-11
    std::vector<std::optional<std::variant<Sample, Labelled>>>, std::map<std::string, Batch>,       // 12-13
    std::pair<Sample, std::vector<std::array<std::string, 2>>>>;                                     // 14
constexpr std::size_t type_count = std::tuple_size_v<types>;

template <class F>
void visit_type(std::size_t index, F&& f) {
  index %= type_count;
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    ((I == index ? (f(std::type_identity<std::tuple_element_t<I, types>>{}), 0) : 0), ...);
  }(std::make_index_sequence<type_count>{});
}

template <class T>
void decode(std::span<const std::byte> bytes) {
  T value;
  try {
    value = mp::deserialize<T>(bytes);
  } catch (const mp::SerializationError&) {
    return;
  }
  // What decoded survives a round trip (bytes, not values: a decoded double may be a NaN). Unordered maps may
  // iterate in another order after a rebuild: for them only the sizes are compared.
  const auto encoded = mp::serialize(value);
  const auto again = mp::serialize(mp::deserialize<T>(encoded));
  constexpr bool unordered = mp::detail::is_specialization_v<T, std::unordered_map>;
  if (unordered ? again.size() != encoded.size() : again != encoded) std::abort();
}

Sample sample(const std::string& name, double base) {
  Sample s{name, {}};
  for (std::size_t i = 0; i < s.values.size(); i += 97) s.values[i] = base + static_cast<double>(i);
  return s;
}

// One valid encoding per type, each prefixed by its index.
void write_seeds(const std::filesystem::path& directory) {
  std::filesystem::create_directories(directory);
  const Sample a = sample("a", 1), b = sample("", -2);
  const Labelled l{{"x", "", "zz"}, {{1, 2, 3, 4, 5, 6, 7, 8}}, b};
  const Batch batch({{"g", {a, b}}, {"empty", {}}}, {l, Labelled{}});
  const auto values = std::make_tuple(
      std::vector<Sample>{a, b}, std::map<std::int32_t, Sample>{{1, a}, {-7, b}},
      std::unordered_map<std::string, Sample>{{"k", a}}, std::optional<Sample>(a),
      std::variant<std::int32_t, Sample, std::vector<Sample>>(std::vector<Sample>{b}), std::deque<Sample>{a},
      std::list<Sample>{b, a}, std::vector<std::vector<Sample>>{{a}, {}, {b}}, std::array<Sample, 3>{a, b, a},
      std::vector<Labelled>{l}, std::unordered_map<std::int64_t, Labelled>{{5, l}}, batch,
      std::vector<std::optional<std::variant<Sample, Labelled>>>{std::nullopt, a, l},
      std::map<std::string, Batch>{{"b", batch}},
      std::pair<Sample, std::vector<std::array<std::string, 2>>>{a, {{"p", "q"}}});
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    ((void)[&] {
      const auto bytes = mp::serialize(std::get<I>(values));
      std::ofstream file(directory / ("seed-" + std::to_string(I)), std::ios::binary);
      file.put(static_cast<char>(I));
      file.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    }(), ...);
  }(std::make_index_sequence<type_count>{});
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* directory = std::getenv("MP_FUZZ_WRITE_SEEDS")) {
    write_seeds(directory);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data) + 1, size - 1);
  visit_type(data[0], [&]<class T>(std::type_identity<T>) { decode<T>(bytes); });
  return 0;
}
