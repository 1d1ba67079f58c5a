// heap/small_blocks: definitions (see small_blocks.hpp).
#pragma once

#include <cstring>
#include <new>

#include <mp/detail/heap/small_blocks.hpp>

namespace mp::detail::heap {

MP_DECL std::size_t small_blocks::bitmap_bytes(const void* buffer, std::size_t bytes) noexcept {
  const auto first = reinterpret_cast<std::uintptr_t>(buffer) / slab_bytes;
  const auto last = (reinterpret_cast<std::uintptr_t>(buffer) + (bytes < covered_bytes ? bytes : covered_bytes)) /
                    slab_bytes;
  const std::size_t pages = static_cast<std::size_t>(last - first) + 1;
  return (pages + 63) / 64 * 8;
}

MP_DECL void small_blocks::init(void* bitmap, const void* buffer, std::size_t bytes) noexcept {
  const std::size_t size = bitmap_bytes(buffer, bytes);
  std::memset(bitmap, 0, size);
  bitmap_ = offset_of(bitmap);
  pages_ = size * 8;
}

MP_DECL void* small_blocks::take_from_new(void* memory, std::size_t bytes, std::size_t cost) noexcept {
  const std::size_t page = page_of(memory);
  if (page >= pages_) return nullptr;
  const std::size_t cls = class_of(bytes);
  const auto size = static_cast<std::int64_t>((cls + 1) * granule);
  // Not journaled: nothing refers to the slab until the bitmap and the list do (a death before leaks its 4 KiB).
  slab& s = *::new (memory) slab{0, static_cast<std::int64_t>(header_bytes), 0, size, 0, 0, 0,
                                  static_cast<std::int64_t>(cost)};
  journal_.set(bitmap()[page / 64], bitmap()[page / 64] | bit_of(page));
  journal_.set(free_bytes_, free_bytes_ + s.cost);  // a spare for an instant: take_from counts it as in use
  link(s);
  journal_.set(spare_[cls], offset_of(&s));  // this size had no slab with room, so no spare either
  return take_from(s);
}

MP_DECL void* small_blocks::take_spare() noexcept {
  for (std::int64_t& spare : spare_) {
    if (spare == 0) continue;
    slab& s = at(spare);
    unlink(s);
    const std::size_t page = page_of(&s);
    journal_.set(bitmap()[page / 64], bitmap()[page / 64] & ~bit_of(page));
    journal_.set(free_bytes_, free_bytes_ - s.cost);
    journal_.set(spare, 0);
    return &s;
  }
  return nullptr;
}

MP_DECL void* small_blocks::give_back(void* p) noexcept {
  slab& s = slab_of(p);
  char* const base = reinterpret_cast<char*>(&s);
  // Not journaled: the block is the caller's until s.free points to it.
  *static_cast<std::int64_t*>(p) = s.free;
  journal_.set(s.free, static_cast<std::int64_t>(static_cast<char*>(p) - base));
  journal_.set(s.live, s.live - 1);
  journal_.set(free_bytes_, free_bytes_ + s.size);
  if (s.live == 0) {
    std::int64_t& spare = spare_[class_of(static_cast<std::size_t>(s.size))];
    if (spare == 0) {  // kept, with room, as its size's spare
      journal_.set(spare, offset_of(&s));
      journal_.set(free_bytes_, free_bytes_ - capacity(s.size) + s.cost);
      if (s.listed == 0) link(s);
      return nullptr;
    }
    if (s.listed != 0) unlink(s);
    const std::size_t page = page_of(base);
    journal_.set(bitmap()[page / 64], bitmap()[page / 64] & ~bit_of(page));
    journal_.set(free_bytes_, free_bytes_ - capacity(s.size));
    return base;
  }
  if (s.listed == 0) link(s);
  return nullptr;
}

MP_DECL void small_blocks::link(slab& s) noexcept {
  std::int64_t& head = room_[class_of(static_cast<std::size_t>(s.size))];
  const std::int64_t self = offset_of(&s);
  journal_.set(s.next, head);
  journal_.set(s.prev, 0);
  if (head != 0) journal_.set(at(head).prev, self);
  journal_.set(head, self);
  journal_.set(s.listed, 1);
}

MP_DECL void small_blocks::unlink(slab& s) noexcept {
  if (s.prev != 0) journal_.set(at(s.prev).next, s.next);
  else journal_.set(room_[class_of(static_cast<std::size_t>(s.size))], s.next);
  if (s.next != 0) journal_.set(at(s.next).prev, s.prev);
  journal_.set(s.listed, 0);
}

}  // namespace mp::detail::heap
