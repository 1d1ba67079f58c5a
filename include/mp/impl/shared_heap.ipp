// mp/shared_heap.hpp: definitions (see shared_heap.hpp).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include <mp/detail/handle_transfer.hpp>
#include <mp/shared_heap.hpp>

namespace mp {

MP_DECL SharedHeap::SharedHeap(std::size_t bytes)
    : segment_(std::make_shared<detail::heap::segment>(detail::heap::segment::create(bytes))) {}

MP_DECL std::size_t SharedHeap::free_memory() const { return segment().manager().get_free_memory(); }

MP_DECL std::size_t SharedHeap::size() const { return segment().manager().get_size(); }

MP_DECL void SharedHeap::save(detail::output_archive& ar) const {
  ar(detail::export_fd(ar, segment_ ? segment_->fd() : -1, "SharedHeap", segment_ ? segment_->identity() : detail::fd_identity{}));
}

MP_DECL void SharedHeap::load(detail::input_archive& ar) {
  std::uint32_t index = 0;
  ar(index);
  segment_ = detail::import_shared<detail::heap::segment>(index, "SharedHeap", [](detail::unique_fd fd) {
    return std::make_shared<detail::heap::segment>(detail::heap::segment::open(std::move(fd), "SharedHeap"));
  });
}

MP_DECL detail::heap::segment& SharedHeap::segment() const {
  if (!segment_) {
    throw Error("SharedHeap: this handle refers to no heap (it was default-constructed); create one with "
                "SharedHeap(bytes), or receive one as a Process argument");
  }
  return *segment_;
}

namespace detail::heap {

MP_DECL void throw_list_index(std::size_t i, std::size_t size) {
  throw Error("ShareableList::at: index " + std::to_string(i) + " is out of range for size " + std::to_string(size));
}

MP_DECL void throw_not_in_list() { throw Error("ShareableList::index: the value is not in the list (ValueError)"); }

MP_DECL void throw_list_missing() {
  throw SerializationError("mp::deserialize: the SharedHeap that arrived holds no ShareableList");
}

}  // namespace detail::heap

}  // namespace mp
