// libFuzzer target for mp::deserialize: the first byte picks a type (tests/fuzz/fuzz_types.hpp), the rest is the
// buffer. Decoding must either throw mp::SerializationError or give a value that re-encodes and decodes to the
// same bytes; anything else (a crash, a sanitizer report, another exception, a hang) is a finding.
#include "fuzz_types.hpp"

#include <cstdlib>

namespace {

template <class T>
void decode(std::span<const std::byte> bytes) {
  T value;
  try {
    value = mp::deserialize<T>(bytes);
  } catch (const mp::SerializationError&) {
    return;
  }
  // What decoded must survive a round trip. Unordered containers may iterate in another order after a
  // rebuild, so for them only the sizes are compared.
  const auto encoded = mp::serialize(value);
  const auto again = mp::serialize(mp::deserialize<T>(encoded));
  constexpr bool unordered = mp::detail::is_specialization_v<T, std::unordered_map> ||
                             mp::detail::is_specialization_v<T, std::unordered_set> ||
                             mp::detail::is_specialization_v<T, std::unordered_multimap>;
  if (unordered ? again.size() != encoded.size() : again != encoded) std::abort();
}

// Several values in one buffer through the archives, as the queue and pool headers use them.
void decode_archive(std::span<const std::byte> bytes) {
  try {
    mp::detail::input_archive archive(bytes);
    std::uint32_t id = 0;
    std::string name;
    std::vector<fuzz::Record> records;
    archive(id, name);
    const std::size_t left = archive.remaining();
    archive(records);
    if (archive.remaining() > left) std::abort();
  } catch (const mp::SerializationError&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data) + 1, size - 1);
  if (data[0] == 255) {
    decode_archive(bytes);
  } else {
    fuzz::visit_type(data[0], [&]<class T>(std::type_identity<T>) { decode<T>(bytes); });
  }
  return 0;
}
