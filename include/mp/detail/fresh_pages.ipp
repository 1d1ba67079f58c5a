// fresh_pages: definitions (see fresh_pages.hpp).
#pragma once

#include <sys/mman.h>

#include <cstdint>

#include <mp/detail/fresh_pages.hpp>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older C libraries lack the name
#endif

namespace mp::detail {

MP_DECL void prepare_fresh_pages(void* data, std::size_t bytes) noexcept {
  const std::uintptr_t page = 4096;
  const auto start = reinterpret_cast<std::uintptr_t>(data);
  const std::uintptr_t first = (start + page - 1) & ~(page - 1);
  const std::uintptr_t last = (start + bytes) & ~(page - 1);
  if (last <= first) return;
  // Plain calls, not the syscall seam: a probe and advice whose failure changes nothing but speed.
  unsigned char resident = 0;
  if (::mincore(reinterpret_cast<void*>(first), page, &resident) == 0 && (resident & 1) != 0) return;
  if (bytes >= huge_pages_threshold) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  ::madvise(reinterpret_cast<void*>(first), last - first, MADV_POPULATE_WRITE);
}

MP_DECL void advise_huge_pages(void* data, std::size_t bytes) noexcept {
  const std::uintptr_t huge_page = std::uintptr_t{2} << 20;
  if (bytes < 2 * huge_page) return;
  const auto start = reinterpret_cast<std::uintptr_t>(data);
  const std::uintptr_t first = (start + huge_page - 1) & ~(huge_page - 1);
  const std::uintptr_t last = (start + bytes) & ~(huge_page - 1);
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
}

}  // namespace mp::detail
