// mp::serialize / mp::deserialize throughput against hand-written baselines measured in the same run:
//   vector<double>      serialize and deserialize of 1M doubles vs new[] + one memcpy of the same 8 MB
//   vector<Point>       1M trivially copyable structs (one memcpy) vs memcpy
//   vector<string>      100k strings of 24 chars vs a hand loop writing length + chars into a reserved buffer
//   map<string, int>    100k entries vs the same hand loop over the map
//   vector<Record>      10k user types with a serialize member (string, vector<int>, optional<double>)
// Every figure is the best of several trials (the machine is shared). Usage: serialize_benchmark [--quick]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <mp/serialize.hpp>

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_of(const std::function<void()>& run, int trials) {
  double best = 1e300;
  for (int t = 0; t < trials; ++t) {
    const auto start = clock_type::now();
    run();
    best = std::min(best, std::chrono::duration<double>(clock_type::now() - start).count());
  }
  return best;
}

template <class T>
void keep(T&& value) {
  asm volatile("" : : "g"(&value) : "memory");
}

struct Point {
  std::int32_t x, y;
  double weight;
};

struct Record {
  std::string name;
  std::vector<int> values;
  std::optional<double> score;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(name, values, score);
  }
};

// Baseline: length + bytes per string into a buffer reserved once, the least any encoder can do.
void hand_write_strings(std::vector<std::byte>& out, const std::vector<std::string>& strings) {
  std::size_t total = 8;
  for (const auto& s : strings) total += 8 + s.size();
  out.resize(total);
  std::byte* p = out.data();
  const std::uint64_t n = strings.size();
  std::memcpy(p, &n, 8);
  p += 8;
  for (const auto& s : strings) {
    const std::uint64_t size = s.size();
    std::memcpy(p, &size, 8);
    std::memcpy(p + 8, s.data(), s.size());
    p += 8 + s.size();
  }
}

void hand_write_map(std::vector<std::byte>& out, const std::map<std::string, int>& map) {
  std::size_t total = 8;
  for (const auto& [k, v] : map) total += 8 + k.size() + sizeof v;
  out.resize(total);
  std::byte* p = out.data();
  const std::uint64_t n = map.size();
  std::memcpy(p, &n, 8);
  p += 8;
  for (const auto& [k, v] : map) {
    const std::uint64_t size = k.size();
    std::memcpy(p, &size, 8);
    std::memcpy(p + 8, k.data(), k.size());
    std::memcpy(p + 8 + k.size(), &v, sizeof v);
    p += 8 + k.size() + sizeof v;
  }
}

void row(const char* what, double mp_seconds, double baseline_seconds, const char* baseline) {
  std::printf("%-34s %10.3f ms %10.3f ms  %6.2fx  (%s)\n", what, mp_seconds * 1e3, baseline_seconds * 1e3,
              mp_seconds / baseline_seconds, baseline);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const int trials = quick ? 3 : 15;
  std::printf("%-34s %13s %13s %8s\n", "case", "mp", "baseline", "ratio");

  {
    std::vector<double> values(1'000'000);
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<double>(i) * 0.5;
    std::vector<std::byte> bytes;
    const double ser = seconds_of([&] { auto encoded = mp::serialize(values); keep(encoded); }, trials);
    bytes = mp::serialize(values);
    const double de = seconds_of([&] { auto copy = mp::deserialize<std::vector<double>>(bytes); keep(copy); }, trials);
    const double base = seconds_of([&] {
      const std::size_t size = values.size() * sizeof(double);
      std::unique_ptr<std::byte[]> raw(new std::byte[size]);  // no zero-fill: the least a copy can cost
      std::memcpy(raw.get(), values.data(), size);
      keep(raw);
    }, trials);
    row("serialize vector<double> 1M", ser, base, "malloc + memcpy 8 MB");
    row("deserialize vector<double> 1M", de, base, "malloc + memcpy 8 MB");
  }
  {
    std::vector<Point> points(1'000'000, Point{1, 2, 3.0});
    std::vector<std::byte> bytes;
    const double ser = seconds_of([&] { auto encoded = mp::serialize(points); keep(encoded); }, trials);
    bytes = mp::serialize(points);
    const double de = seconds_of([&] { auto copy = mp::deserialize<std::vector<Point>>(bytes); keep(copy); }, trials);
    const double base = seconds_of([&] {
      const std::size_t size = points.size() * sizeof(Point);
      std::unique_ptr<std::byte[]> raw(new std::byte[size]);
      std::memcpy(raw.get(), points.data(), size);
      keep(raw);
    }, trials);
    row("serialize vector<Point> 1M", ser, base, "malloc + memcpy 16 MB");
    row("deserialize vector<Point> 1M", de, base, "malloc + memcpy 16 MB");
  }
  {
    std::vector<std::string> strings(100'000);
    for (std::size_t i = 0; i < strings.size(); ++i) strings[i] = "string number " + std::to_string(1'000'000'000 + i);
    std::vector<std::byte> bytes;
    const double ser = seconds_of([&] { auto encoded = mp::serialize(strings); keep(encoded); }, trials);
    bytes = mp::serialize(strings);
    const double base = seconds_of([&] { std::vector<std::byte> out; hand_write_strings(out, strings); keep(out); }, trials);
    const double de = seconds_of([&] { auto copy = mp::deserialize<std::vector<std::string>>(bytes); keep(copy); }, trials);
    const double copy_base = seconds_of([&] { auto copy = strings; keep(copy); }, trials);
    row("serialize vector<string> 100k", ser, base, "hand loop, one exact resize");
    row("deserialize vector<string> 100k", de, copy_base, "copy of the vector<string>");
  }
  {
    std::map<std::string, int> map;
    for (int i = 0; i < 100'000; ++i) map.emplace("key-" + std::to_string(1'000'000 + i), i);
    std::vector<std::byte> bytes;
    const double ser = seconds_of([&] { auto encoded = mp::serialize(map); keep(encoded); }, trials);
    bytes = mp::serialize(map);
    const double base = seconds_of([&] { std::vector<std::byte> out; hand_write_map(out, map); keep(out); }, trials);
    const double de = seconds_of([&] { auto copy = mp::deserialize<std::map<std::string, int>>(bytes); keep(copy); }, trials);
    const double copy_base = seconds_of([&] { auto copy = map; keep(copy); }, trials);
    row("serialize map<string,int> 100k", ser, base, "hand loop, one exact resize");
    row("deserialize map<string,int> 100k", de, copy_base, "copy of the map");
  }
  {
    std::vector<Record> records(10'000);
    for (std::size_t i = 0; i < records.size(); ++i)
      records[i] = Record{"record " + std::to_string(i), std::vector<int>(16, static_cast<int>(i)), 1.5};
    std::vector<std::byte> bytes;
    const double ser = seconds_of([&] { auto encoded = mp::serialize(records); keep(encoded); }, trials);
    bytes = mp::serialize(records);
    const double de = seconds_of([&] { auto copy = mp::deserialize<std::vector<Record>>(bytes); keep(copy); }, trials);
    const double copy_base = seconds_of([&] { auto copy = records; keep(copy); }, trials);
    row("serialize vector<Record> 10k", ser, copy_base, "copy of the vector<Record>");
    row("deserialize vector<Record> 10k", de, copy_base, "copy of the vector<Record>");
  }
}
