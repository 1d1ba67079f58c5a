// fresh_pages: a large buffer just allocated and about to be written whole (a big vector being decoded) costs its
// first touch of every page: on this project's VM ~12.5 us per 4 KiB page (~330 MB/s), far below the copy that
// fills it (~15 GB/s). Asking the kernel for huge pages on it (MADV_HUGEPAGE, honoured under THP "madvise", the
// default of many distributions) and to populate it at once (MADV_POPULATE_WRITE, Linux 5.14) filled 64 MiB at
// 7.7-8 GB/s there instead; populating alone copied 256 KiB-1 MiB into fresh vectors 1.4-1.5x faster. Memory the
// allocator hands out again is resident already, and the advice would only walk its page tables (a quarter of a
// warm 1 MiB copy): one page's residency (mincore) decides. Advice only: where the kernel declines (no free huge
// pages, an older kernel), the buffer fills as before.
#pragma once

#include <cstddef>

#include <mp/detail/config.hpp>

namespace mp::detail {

/// Buffers from this many bytes up are worth the residency probe and the advice (below, the faults cost little in
/// all); huge pages are asked for from huge_pages_threshold up.
inline constexpr std::size_t fresh_pages_threshold = std::size_t{256} << 10;
inline constexpr std::size_t huge_pages_threshold = std::size_t{4} << 20;

/// Advises the kernel that the whole pages inside [data, data + bytes), memory this process just allocated and is
/// about to write whole, should be populated now (and be huge pages where possible, from huge_pages_threshold up),
/// unless its first whole page is resident already (reused memory). Errors are ignored.
MP_DECL void prepare_fresh_pages(void* data, std::size_t bytes) noexcept;

/// Advises huge pages only (no population) on the 2 MiB-aligned pages wholly inside [data, data + bytes): for a big
/// buffer filled in part or over time (a worker's result buffer, map's staged chunks), never memory it does not own.
/// A no-op below two huge pages. Errors are ignored.
MP_DECL void advise_huge_pages(void* data, std::size_t bytes) noexcept;

/// to = the n chars at bytes. A big copy that needs a bigger buffer gets a new one (nothing of the old copied) whose
/// pages are asked for at once (prepare_fresh_pages): a big string being decoded or stored.
template <class String>
void assign_on_fresh_pages(String& to, const char* bytes, std::size_t n) {
  if (n >= fresh_pages_threshold && to.capacity() < n) {
    to.clear();
    to.reserve(n);
    prepare_fresh_pages(to.data(), n);
  }
  to.assign(bytes, n);
}

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/fresh_pages.ipp>
#endif
