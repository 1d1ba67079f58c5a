// Tests for detail/fresh_pages.hpp: a big buffer on fresh memory is populated at once, resident (reused) memory
// is left alone, and neither touches a byte outside the buffer's whole pages. Its effect on speed is measured by
// compare_mp (--big, the Pool results rows); here, what the advice does to the pages.
#include <catch2/catch.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <string>
#include <vector>

#include <mp/detail/fresh_pages.hpp>
#include <mp/serialize.hpp>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

namespace {

constexpr std::size_t page = 4096;

// Pages of [data, data + bytes) in memory now.
std::size_t resident_pages(const std::byte* data, std::size_t bytes) {
  std::vector<unsigned char> flags(bytes / page);
  REQUIRE(::mincore(const_cast<std::byte*>(data), bytes, flags.data()) == 0);
  std::size_t n = 0;
  for (unsigned char f : flags) n += f & 1;
  return n;
}

// A fresh anonymous mapping, unmapped at the end of the scope.
struct fresh_mapping {
  std::size_t bytes;
  std::byte* data;
  explicit fresh_mapping(std::size_t n)
      : bytes(n),
        data(static_cast<std::byte*>(::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))) {
    REQUIRE(data != MAP_FAILED);
    // Small pages only, whatever the machine's THP setting: the checks count 4 KiB pages.
    ::madvise(data, n, MADV_NOHUGEPAGE);
  }
  ~fresh_mapping() { ::munmap(data, bytes); }
};

// MADV_POPULATE_WRITE needs Linux 5.14: older kernels decline the advice, which only costs speed.
bool kernel_populates() {
  fresh_mapping probe(page);
  return ::madvise(probe.data, page, MADV_POPULATE_WRITE) == 0;
}

}  // namespace

TEST_CASE("a buffer on fresh memory is populated whole, and nothing outside its whole pages is",
          "[fresh_pages]") {
  if (!kernel_populates()) {
    WARN("this kernel has no MADV_POPULATE_WRITE: nothing to check");
    return;
  }
  fresh_mapping mapping(std::size_t{2} << 20);
  REQUIRE(resident_pages(mapping.data, mapping.bytes) == 0);
  // Of n pages, a buffer from the middle of page 1 to the middle of page n-2: its whole pages are 2 to n-3.
  std::byte* const buffer = mapping.data + page + page / 2;
  const std::size_t bytes = mapping.bytes - 3 * page;
  mp::detail::prepare_fresh_pages(buffer, bytes);
  const std::size_t whole_pages = mapping.bytes / page - 4;
  CHECK(resident_pages(mapping.data + 2 * page, whole_pages * page) == whole_pages);
  CHECK(resident_pages(mapping.data, 2 * page) == 0);  // the partial first page and the one before
  CHECK(resident_pages(mapping.data + mapping.bytes - 2 * page, 2 * page) == 0);  // the partial last and the one after
  CHECK(resident_pages(mapping.data, mapping.bytes) == whole_pages);
  // Populated pages read as zeros: nothing was written.
  const std::vector<std::byte> zeros(bytes);
  CHECK(std::memcmp(buffer, zeros.data(), bytes) == 0);
}

TEST_CASE("memory whose first page is resident is left to fault as it is touched", "[fresh_pages]") {
  fresh_mapping mapping(std::size_t{1} << 20);
  mapping.data[0] = std::byte{7};  // the first page resident, the rest not: reused memory looks like this
  mp::detail::prepare_fresh_pages(mapping.data, mapping.bytes);
  CHECK(resident_pages(mapping.data, mapping.bytes) == 1);
  CHECK(mapping.data[0] == std::byte{7});
}

TEST_CASE("buffers below one whole page and below the threshold are left alone", "[fresh_pages]") {
  fresh_mapping mapping(4 * page);
  mp::detail::prepare_fresh_pages(mapping.data + 1, page);  // no whole page inside
  CHECK(resident_pages(mapping.data, mapping.bytes) == 0);
  // Decoding a vector smaller than the threshold asks nothing (it fits in pages the allocator reuses anyway).
  STATIC_REQUIRE(mp::detail::fresh_pages_threshold >= 64 * page);
}

TEST_CASE("big strings and vectors decode intact on fresh and on reused memory", "[fresh_pages]") {
  for (std::size_t size : {mp::detail::fresh_pages_threshold, std::size_t{1} << 20, std::size_t{5} << 20}) {
    std::string text(size, 'a');
    std::vector<int> numbers(size / sizeof(int));
    for (std::size_t i = 0; i < text.size(); ++i) text[i] = static_cast<char>('a' + i % 26);
    for (std::size_t i = 0; i < numbers.size(); ++i) numbers[i] = static_cast<int>(i * 7);
    const auto text_bytes = mp::serialize(text);
    const auto number_bytes = mp::serialize(numbers);
    for (int round = 0; round < 3; ++round) {  // the second and third rounds reuse what the first freed
      CHECK(mp::deserialize<std::string>(text_bytes) == text);
      CHECK(mp::deserialize<std::vector<int>>(number_bytes) == numbers);
    }
  }
}
