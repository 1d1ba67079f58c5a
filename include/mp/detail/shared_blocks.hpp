// shared_blocks: the layout of Value's and Array's blocks in shared memory, and the typed access mp/shared.hpp
// builds its classes from — value_access (Value, RawValue), array_access (Array, RawArray) and block_lock (the RLock
// of a Value or an Array, and the forwarding that makes the object itself Lockable).
// Where: a block is a piece of a 64 KiB chunk shared with other small objects, or a mapping of its own when large
// (detail/shared_state.hpp). Its lock comes first; the value, or an Array's first element, starts on a 64-byte
// boundary of its own (or a stricter one if T needs it), so a waiter spinning on the lock word does not steal the
// cache line the holder is writing.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstring>
#include <memory>
#include <new>
#include <ranges>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <mp/detail/archive.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/shared_state.hpp>
#include <mp/detail/sync_state.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

template <class T>
inline constexpr bool shareable_v = std::is_trivially_copyable_v<T> && !std::is_pointer_v<T>;

// Lock-free in every process: std::atomic_ref of a type that is not always lock-free falls back on a lock table
// private to each process, which would not exclude the other processes.
template <class T>
concept atomic_shareable = std::atomic_ref<T>::is_always_lock_free;

template <class T>
concept atomic_arithmetic = atomic_shareable<T> && std::is_arithmetic_v<T> && !std::is_same_v<T, bool>;

template <class T>
struct value_block {
  explicit value_block(const T& initial) : value(initial) {}
  lock_state lock;  // unused by RawValue
  // Its own cache line: a waiter spinning on the lock word must not steal the line the holder is writing.
  alignas(64) alignas(T) alignas(std::atomic_ref<T>::required_alignment) T value;
};

// An Array's block: this header, then the elements at elements_offset<T>.
struct array_header {
  lock_state lock;  // unused by RawArray
  std::size_t size;
};

// The elements start on a cache line of their own (see value_block), or later if T needs more alignment.
template <class T>
inline constexpr std::size_t elements_alignment = alignof(T) > 64 ? alignof(T) : 64;
template <class T>
inline constexpr std::size_t elements_offset =
    (sizeof(array_header) + elements_alignment<T> - 1) / elements_alignment<T> * elements_alignment<T>;

/// Throws mp::Error: an array of n elements of `element_size` bytes is too large (`label`: Array or RawArray).
[[noreturn]] MP_DECL void throw_array_too_large(const char* label, std::size_t n, std::size_t element_size);
/// Throws mp::Error: `kind`::at(index) out of range for `size`.
[[noreturn]] MP_DECL void throw_index(const char* kind, std::size_t index, std::size_t size);
/// Throws SerializationError: an arriving `what` of `size` elements does not fit the block that arrived with it.
[[noreturn]] MP_DECL void throw_array_does_not_fit(const char* what, std::size_t size);

// Builds the block of an n-element array; fill(T* elements) constructs every element.
template <class T, class Fill>
shared_ref<array_header> make_array_block(std::size_t n, const char* label, Fill&& fill) {
  if (n > (std::size_t{1} << 48) / sizeof(T)) throw_array_too_large(label, n, sizeof(T));
  auto [block, memory] = make_shared_bytes(elements_offset<T> + n * sizeof(T), elements_alignment<T>, label);
  auto* header = ::new (memory) array_header{};
  header->size = n;
  fill(reinterpret_cast<T*>(static_cast<std::byte*>(memory) + elements_offset<T>));
  return shared_ref<array_header>(std::move(block), header);
}

// The block of n value-initialised elements (zeros for arithmetic T).
template <class T>
shared_ref<array_header> array_of_size(std::size_t n, const char* label) {
  return make_array_block<T>(n, label, [n](T* elements) { std::uninitialized_value_construct_n(elements, n); });
}

template <class T, class R>
shared_ref<array_header> array_from_range(R&& range, const char* label) {
  if constexpr (std::ranges::sized_range<R> && std::ranges::forward_range<R>) {
    const auto n = static_cast<std::size_t>(std::ranges::size(range));
    return make_array_block<T>(n, label, [&](T* elements) {
      std::size_t i = 0;
      for (auto&& item : range) ::new (elements + i++) T(static_cast<T>(item));
    });
  } else {
    std::vector<T> items;
    for (auto&& item : range) items.push_back(static_cast<T>(item));
    return make_array_block<T>(items.size(), label, [&](T* elements) {
      if (!items.empty()) std::memcpy(static_cast<void*>(elements), items.data(), items.size() * sizeof(T));
    });
  }
}

/// The lock part of Value and Array: the RLock in the object's block (Lock is mp::RLock, which a detail header
/// cannot name), and its acquire/release under the object's own name, so `std::lock_guard guard(value);` works.
template <class Lock>
class block_lock {
 public:
  /// The RLock guarding the object (shared by every copy).
  Lock& get_lock() noexcept { return lock_; }
  /// Its acquire/release, and the std Lockable spellings.
  void acquire() { lock_.acquire(); }
  void release() { lock_.release(); }
  void lock() { lock_.lock(); }
  void unlock() { lock_.unlock(); }
  bool try_lock() { return lock_.try_lock(); }

 protected:
  explicit block_lock(shared_ref<lock_state> state) noexcept : lock_(std::move(state)) {}
  explicit block_lock(for_load_t tag) noexcept : lock_(tag) {}
  /// After the block arrived in a spawned child: the lock in it.
  void rebind(shared_ref<lock_state> state) noexcept { lock_ = Lock(std::move(state)); }

 private:
  Lock lock_;
};

// The typed, lock-free part shared by Value and RawValue.
template <class T>
class value_access {
 public:
  /// Python's .value: a reference into shared memory.
  T& value() noexcept { return block_->value; }
  const T& value() const noexcept { return block_->value; }

  /// Atomic read / write / swap (lock-free, no lock needed), for types the CPU accesses atomically.
  T load() const noexcept requires atomic_shareable<T> { return ref().load(); }
  void store(T desired) noexcept requires atomic_shareable<T> { ref().store(desired); }
  T exchange(T desired) noexcept requires atomic_shareable<T> { return ref().exchange(desired); }
  bool compare_exchange(T& expected, T desired) noexcept requires atomic_shareable<T> {
    return ref().compare_exchange_strong(expected, desired);
  }
  /// Atomic add / subtract, returning the previous value: the lock-free fix for `value() += 1` races.
  T fetch_add(T delta) noexcept requires atomic_arithmetic<T> { return ref().fetch_add(delta); }
  T fetch_sub(T delta) noexcept requires atomic_arithmetic<T> { return ref().fetch_sub(delta); }

 protected:
  explicit value_access(shared_ref<value_block<T>> block) noexcept : block_(std::move(block)) {}
  explicit value_access(for_load_t) noexcept {}
  std::atomic_ref<T> ref() const noexcept { return std::atomic_ref<T>(block_->value); }
  shared_ref<value_block<T>> block_;
};

// The typed part shared by Array and RawArray.
template <class T>
class array_access {
 public:
  /// Element i (unchecked, as std::vector); at(i) checks.
  T& operator[](std::size_t i) noexcept { return data_[i]; }
  const T& operator[](std::size_t i) const noexcept { return data_[i]; }
  /// Element i; mp::Error naming the index and the size if out of range.
  T& at(std::size_t i) {
    if (i >= size()) throw_index("Array", i, size());
    return data_[i];
  }
  const T& at(std::size_t i) const {
    if (i >= size()) throw_index("Array", i, size());
    return data_[i];
  }
  std::size_t size() const noexcept { return header_->size; }
  bool empty() const noexcept { return size() == 0; }
  T* data() noexcept { return data_; }
  const T* data() const noexcept { return data_; }
  T* begin() noexcept { return data_; }
  T* end() noexcept { return data_ + size(); }
  const T* begin() const noexcept { return data_; }
  const T* end() const noexcept { return data_ + size(); }
  std::span<T> span() noexcept { return {data_, size()}; }
  std::span<const T> span() const noexcept { return {data_, size()}; }
  /// A private copy of the elements (Python's a[:]).
  std::vector<T> to_vector() const { return std::vector<T>(begin(), end()); }

  /// Atomic element access (lock-free), as Value's.
  T load(std::size_t i) const noexcept requires atomic_arithmetic<T> { return ref(i).load(); }
  void store(std::size_t i, T desired) noexcept requires atomic_arithmetic<T> { ref(i).store(desired); }
  T fetch_add(std::size_t i, T delta) noexcept requires atomic_arithmetic<T> { return ref(i).fetch_add(delta); }
  T fetch_sub(std::size_t i, T delta) noexcept requires atomic_arithmetic<T> { return ref(i).fetch_sub(delta); }

 protected:
  explicit array_access(shared_ref<array_header> header) : header_(std::move(header)) { bind(); }
  explicit array_access(for_load_t) noexcept {}
  // In a spawned child: the header's block arrives through the archive; the elements follow it.
  void load_block(input_archive& ar, const char* what) {
    header_.load(ar, what);
    // The header's size came from another process: the elements must fit in what was mapped.
    const std::size_t room = header_.available();
    if (room < elements_offset<T> || (room - elements_offset<T>) / sizeof(T) < header_->size) {
      throw_array_does_not_fit(what, header_->size);
    }
    bind();
  }
  void bind() noexcept { data_ = reinterpret_cast<T*>(reinterpret_cast<std::byte*>(header_.get()) + elements_offset<T>); }
  std::atomic_ref<T> ref(std::size_t i) const noexcept { return std::atomic_ref<T>(data_[i]); }
  shared_ref<array_header> header_;
  T* data_ = nullptr;  // the elements, right after header_ in the same block
};

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/shared_blocks.ipp>
#endif
