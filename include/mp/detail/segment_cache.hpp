// segment_cache: a reader's mappings of the recycled segments (segment_pool.hpp) it receives, kept between items.
//
// Why: a writer recycles a few segments, and each arrives again and again as a fresh descriptor. Mapping it afresh
// per item costs its page tables (mmap with MAP_POPULATE fills them at ~2.4 GB/s on this project's VM, a fault
// per page without) and a munmap with its TLB flush, per item and per side: for a 1 MiB Pool argument that was
// most of the cost. The cache keys each mapping by the open file behind the descriptor (st_dev, st_ino: the same
// for every dup in every process), so a recycled segment is found again by one fstat and read through the
// mapping, already populated, that the first item made.
// Safety: a cached mapping keeps its segment alive, so its inode number cannot be reused by another file while
// cached. The item is read only while its lease lives; the lease sets the header's `consumed` word when it ends,
// exactly as segment_reader does, and the writer reuses the pages only after that. One lease at a time per cache.
// Bounds: at most `most` mappings and `budget` bytes, least recently used dropped first (a segment its writer has
// dropped lives on until then). A forked child drops its parent's mappings on first use (never shared).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include <mp/detail/config.hpp>
#include <mp/detail/segment_pool.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail {

class segment_cache;

/// One item being read out of a cached mapping: bytes() until the lease ends, which marks the item consumed.
class segment_lease {
 public:
  segment_lease() = default;
  segment_lease(segment_lease&& other) noexcept : header_(other.header_), bytes_(other.bytes_) {
    other.header_ = nullptr;
  }
  segment_lease& operator=(segment_lease&& other) noexcept {
    if (this != &other) {
      release();
      header_ = other.header_;
      bytes_ = other.bytes_;
      other.header_ = nullptr;
    }
    return *this;
  }
  segment_lease(const segment_lease&) = delete;
  segment_lease& operator=(const segment_lease&) = delete;
  ~segment_lease() { release(); }
  std::span<const std::byte> bytes() const noexcept { return bytes_; }
  explicit operator bool() const noexcept { return header_ != nullptr; }
  /// Marks the item consumed now (the writer may reuse the segment).
  void release() noexcept {
    if (header_ != nullptr) mark_consumed(*header_);
    header_ = nullptr;
  }

 private:
  friend class segment_cache;
  segment_lease(segment_header* header, std::span<const std::byte> bytes) noexcept : header_(header), bytes_(bytes) {}
  segment_header* header_ = nullptr;
  std::span<const std::byte> bytes_;
};

class segment_cache {
 public:
  segment_cache(std::size_t most, std::size_t budget) noexcept : most_(most), budget_(budget) {}
  segment_cache(const segment_cache&) = delete;
  segment_cache& operator=(const segment_cache&) = delete;
  MP_DECL ~segment_cache();

  /// The item of `size` bytes in the segment behind `fd` (closed here: a mapping keeps the segment), mapped once
  /// per segment; SerializationError (naming `what`) if the descriptor is not a segment that holds it.
  MP_DECL segment_lease open(unique_fd fd, std::size_t size, const char* what);
  /// Unmaps every cached segment (no lease may be alive).
  MP_DECL void clear() noexcept;
  std::size_t size() const noexcept { return entries_.size(); }

 private:
  struct entry {
    std::uint64_t dev = 0, ino = 0;
    std::byte* data = nullptr;
    std::size_t mapped = 0;
  };
  MP_DECL void drop(std::size_t index) noexcept;
  std::vector<entry> entries_;  // least recently used first
  std::size_t most_;
  std::size_t budget_;
  int pid_ = 0;
};

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/segment_cache.ipp>
#endif
