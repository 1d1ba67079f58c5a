// small_vector: a vector of trivially copyable values whose first N live inside the object — the lists a Pool task
// builds for its handles (a descriptor or two, detail/handle_transfer.hpp and pool/handles.hpp) then cost no heap
// allocation per task. Past N it moves to the heap and grows by doubling.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <type_traits>

namespace mp::detail {

template <class T, std::size_t N>
class small_vector {
  static_assert(std::is_trivially_copyable_v<T> && std::is_default_constructible_v<T> && N > 0);

 public:
  small_vector() noexcept {}  // inline_ stays uninitialized: a value starts its life when it is added
  small_vector(const small_vector& other) { append(other.data(), other.size()); }
  small_vector& operator=(const small_vector& other) {
    if (this != &other) {
      size_ = 0;
      append(other.data(), other.size());
    }
    return *this;
  }
  ~small_vector() = default;

  T* data() noexcept { return heap_ ? heap_.get() : inline_; }
  const T* data() const noexcept { return heap_ ? heap_.get() : inline_; }
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  T* begin() noexcept { return data(); }
  T* end() noexcept { return data() + size_; }
  const T* begin() const noexcept { return data(); }
  const T* end() const noexcept { return data() + size_; }
  T& operator[](std::size_t i) noexcept { return data()[i]; }
  const T& operator[](std::size_t i) const noexcept { return data()[i]; }
  T& back() noexcept { return data()[size_ - 1]; }

  void push_back(const T& value) {
    if (size_ == capacity_) grow(size_ + 1);
    std::construct_at(data() + size_, value);
    ++size_;
  }
  /// Grows or shrinks to `n` values; new ones are `fill`.
  void resize(std::size_t n, const T& fill = T{}) {
    if (n > capacity_) grow(n);
    for (std::size_t i = size_; i < n; ++i) std::construct_at(data() + i, fill);
    size_ = n;
  }
  void clear() noexcept { size_ = 0; }
  /// Adds n values copied from `values`.
  void append(const T* values, std::size_t n) {
    if (size_ + n > capacity_) grow(size_ + n);
    if (n != 0) std::memcpy(data() + size_, values, n * sizeof(T));
    size_ += n;
  }

 private:
  void grow(std::size_t least) {
    const std::size_t capacity = std::max(least, 2 * capacity_);
    std::unique_ptr<T[]> bigger(new T[capacity]);
    if (size_ != 0) std::memcpy(bigger.get(), data(), size_ * sizeof(T));
    heap_ = std::move(bigger);
    capacity_ = capacity;
  }

  std::size_t size_ = 0;
  std::size_t capacity_ = N;
  std::unique_ptr<T[]> heap_;  // null while the values fit in inline_
  union {
    T inline_[N];  // not zeroed at construction (T is trivially destructible: nothing to end either)
  };
};

}  // namespace mp::detail
