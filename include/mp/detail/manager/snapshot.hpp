// snapshot: iteration over a manager container (for (auto x : list_proxy), for (auto& [k, v] : dict_proxy)): the
// container is copied in one round trip when begin() is called, and the loop runs over that copy, as Python's
// iteration of a list(proxy). Changes made meanwhile by other processes are not seen by the loop.
// (No .ipp: a small template.)
#pragma once

#include <cstddef>
#include <iterator>
#include <memory>
#include <utility>
#include <vector>

namespace mp::detail::manager {

/// An input iterator over a shared copy of a container's items; compares equal to std::default_sentinel at the end.
template <class T>
class snapshot_iterator {
 public:
  using iterator_concept = std::input_iterator_tag;
  using iterator_category = std::input_iterator_tag;
  using value_type = T;
  using difference_type = std::ptrdiff_t;
  using reference = const T&;
  using pointer = const T*;

  snapshot_iterator() = default;
  explicit snapshot_iterator(std::vector<T> items) : items_(std::make_shared<const std::vector<T>>(std::move(items))) {}

  const T& operator*() const { return (*items_)[at_]; }
  const T* operator->() const { return &(*items_)[at_]; }
  snapshot_iterator& operator++() { return ++at_, *this; }
  snapshot_iterator operator++(int) {
    auto before = *this;
    ++at_;
    return before;
  }
  friend bool operator==(const snapshot_iterator& it, std::default_sentinel_t) {
    return !it.items_ || it.at_ >= it.items_->size();
  }

 private:
  std::shared_ptr<const std::vector<T>> items_;
  std::size_t at_ = 0;
};

}  // namespace mp::detail::manager
