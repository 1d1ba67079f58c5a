// heap/offset_pointer: the pointer type of every heap container (heap/allocator.hpp): the distance from where the
// pointer is stored to what it points at, so a container in the heap works at whatever address each process maps it.
// Why not boost::interprocess::offset_ptr, which does the same: its conversions are branch-free masks (~5 dependent
// instructions each way), and a tree walk converts at every step (the child's offset to an address, that address to
// an offset from the walk's local variable, and back to an address): shm::map<int, int> set+find ran ~545
// instructions per operation, 3.5x the time of the same Boost map over raw pointers. Here a copy adds the distance
// between the two pointers' own addresses (folded by the compiler when both are locals), a null check is a
// predicted branch, and the compiler is told that a non-null pointer stays non-null when copied or moved along an
// array (not_null), so it drops the checks a walk or a loop would repeat: ~255 instructions per set+find, and a
// loop over a shm::vector compiles to the loop over a T*.
// Encoding (offset_ptr's): offset 1 is null. No pointer needs it: it would point one byte past its own address,
// inside itself. Pointers are 8-byte aligned, so the offset to an object aligned to 2^k has bits 1..k-1 free:
// Boost.Intrusive's compact tree nodes keep the red-black colour there (pointer_plus_bits below), as with offset_ptr.
#pragma once

#include <bit>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <type_traits>

namespace mp::detail::heap {

template <class T>
class offset_pointer {
 public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  using difference_type = std::ptrdiff_t;
  using pointer = T*;
  using reference = std::add_lvalue_reference_t<T>;  // void& is void: only the non-void pointers dereference
  using iterator_category = std::random_access_iterator_tag;
  template <class U>
  using rebind = offset_pointer<U>;

  offset_pointer() noexcept = default;
  offset_pointer(std::nullptr_t) noexcept {}
  template <class U>
    requires std::is_convertible_v<U*, T*>
  offset_pointer(U* p) noexcept : offset_(encode(static_cast<T*>(p))) {}
  offset_pointer(const offset_pointer& other) noexcept : offset_(moved(other)) {}
  template <class U>
    requires std::is_convertible_v<U*, T*>
  offset_pointer(const offset_pointer<U>& other) noexcept {
    *this = other;
  }

  offset_pointer& operator=(const offset_pointer& other) noexcept {
    offset_ = moved(other);
    return *this;
  }
  offset_pointer& operator=(T* p) noexcept {
    offset_ = encode(p);
    return *this;
  }
  template <class U>
    requires std::is_convertible_v<U*, T*>
  offset_pointer& operator=(const offset_pointer<U>& other) noexcept {
    // The same address (adding const, or to void): restate the offset; to a base class: convert the address.
    if constexpr (std::is_void_v<T> || std::is_same_v<std::remove_cv_t<U>, std::remove_cv_t<T>>) {
      assign_from(&other, other.raw_offset());
    } else {
      offset_ = encode(static_cast<T*>(other.get()));
    }
    return *this;
  }

  T* get() const noexcept {
    if (__builtin_expect(offset_ == null_offset, 0)) return nullptr;
    return unchecked();
  }
  T* operator->() const noexcept { return get(); }
  // Dereferencing a null pointer is undefined, as for T*: no null check (a vector's loop stays as tight as over a T*).
  template <class U = T>
    requires(!std::is_void_v<U>)
  U& operator*() const noexcept {
    return *unchecked();
  }
  template <class U = T>
    requires(!std::is_void_v<U>)
  U& operator[](difference_type i) const noexcept {
    return unchecked()[i];
  }
  explicit operator bool() const noexcept { return offset_ != null_offset; }

  /// Boost.Intrusive's pointer_traits: a pointer to r, and the casts between pointers of related types.
  template <class U = T>
    requires(!std::is_void_v<U>)
  static offset_pointer pointer_to(U& r) noexcept {
    return offset_pointer(&r);
  }
  template <class U>
  static offset_pointer static_cast_from(const offset_pointer<U>& p) noexcept {
    return offset_pointer(static_cast<T*>(p.get()));
  }
  template <class U>
  static offset_pointer const_cast_from(const offset_pointer<U>& p) noexcept {
    return offset_pointer(const_cast<T*>(p.get()));
  }
  template <class U>
  static offset_pointer dynamic_cast_from(const offset_pointer<U>& p) noexcept {
    return offset_pointer(dynamic_cast<T*>(p.get()));
  }

  // Arithmetic on a non-null pointer (as on a T*): the offset moves by the same bytes as the address.
  offset_pointer& operator+=(difference_type n) noexcept {
    // null + 0 is null (an empty vector's end()); any other arithmetic on null is undefined, as on a T*.
    if (n != 0) offset_ = not_null(offset_ + n * static_cast<difference_type>(sizeof(T)));
    return *this;
  }
  offset_pointer& operator-=(difference_type n) noexcept { return *this += -n; }
  offset_pointer& operator++() noexcept { return *this += 1; }
  offset_pointer& operator--() noexcept { return *this -= 1; }
  offset_pointer operator++(int) noexcept {
    offset_pointer old(*this);
    ++*this;
    return old;
  }
  offset_pointer operator--(int) noexcept {
    offset_pointer old(*this);
    --*this;
    return old;
  }
  friend offset_pointer operator+(offset_pointer p, difference_type n) noexcept { return p += n; }
  friend offset_pointer operator+(difference_type n, offset_pointer p) noexcept { return p += n; }
  friend offset_pointer operator-(offset_pointer p, difference_type n) noexcept { return p -= n; }
  friend difference_type operator-(const offset_pointer& a, const offset_pointer& b) noexcept {
    return a.get() - b.get();
  }

  friend bool operator==(const offset_pointer& a, const offset_pointer& b) noexcept { return a.get() == b.get(); }
  friend bool operator==(const offset_pointer& a, std::nullptr_t) noexcept { return !a; }
  friend bool operator==(const offset_pointer& a, T* b) noexcept { return a.get() == b; }
  friend std::strong_ordering operator<=>(const offset_pointer& a, const offset_pointer& b) noexcept {
    return a.get() <=> b.get();
  }
  friend std::strong_ordering operator<=>(const offset_pointer& a, T* b) noexcept { return a.get() <=> b; }

  /// The stored offset (pointer_plus_bits keeps bits in it).
  std::ptrdiff_t& raw_offset() noexcept { return offset_; }
  std::ptrdiff_t raw_offset() const noexcept { return offset_; }
  static constexpr std::ptrdiff_t null_offset = 1;

  /// Offset `offset`, as stored at `from`, restated for this pointer's address.
  void assign_from(const void* from, std::ptrdiff_t offset) noexcept {
    offset_ = offset == null_offset
                  ? null_offset
                  : not_null(offset + static_cast<std::ptrdiff_t>(reinterpret_cast<std::uintptr_t>(from) - address()));
  }

 private:
  std::uintptr_t address() const noexcept { return reinterpret_cast<std::uintptr_t>(this); }
  T* unchecked() const noexcept { return reinterpret_cast<T*>(address() + static_cast<std::uintptr_t>(offset_)); }
  std::ptrdiff_t encode(const volatile void* p) const noexcept {
    if (p == nullptr) return null_offset;
    return not_null(static_cast<std::ptrdiff_t>(reinterpret_cast<std::uintptr_t>(p) - address()));
  }
  // other's offset restated for this pointer's address: no round trip through an address.
  std::ptrdiff_t moved(const offset_pointer& other) const noexcept {
    if (other.offset_ == null_offset) return null_offset;
    return not_null(other.offset_ + static_cast<std::ptrdiff_t>(other.address() - address()));
  }
  // The offset of a pointer to an object is never the null marker (see the top): telling the compiler lets it drop
  // the null check of the copy's next use — a tree walk's local pointer, a loop's iterator.
  static std::ptrdiff_t not_null(std::ptrdiff_t offset) noexcept {
    if (offset == null_offset) __builtin_unreachable();
    return offset;
  }

  std::ptrdiff_t offset_ = null_offset;
};

}  // namespace mp::detail::heap

namespace boost::intrusive {

template <class VoidPointer, std::size_t Alignment>
struct max_pointer_plus_bits;
template <class Pointer, std::size_t NumBits>
struct pointer_plus_bits;

// Bits 1..k-1 of the offset between two addresses aligned to 2^k are zero (bit 0 is the null marker).
template <std::size_t Alignment>
struct max_pointer_plus_bits<mp::detail::heap::offset_pointer<void>, Alignment> {
  static constexpr std::size_t value = std::countr_zero(Alignment) - 1;
};

template <class T, std::size_t NumBits>
struct pointer_plus_bits<mp::detail::heap::offset_pointer<T>, NumBits> {
  using pointer = mp::detail::heap::offset_pointer<T>;
  static constexpr std::ptrdiff_t mask = ((std::ptrdiff_t{1} << NumBits) - 1) << 1;

  // By reference, always: a copy of a null pointer with bits set would read as non-null.
  static pointer get_pointer(const pointer& n) noexcept {
    pointer p;
    p.assign_from(&n, n.raw_offset() & ~mask);
    return p;
  }
  static void set_pointer(pointer& n, const pointer& p) noexcept {
    const std::ptrdiff_t bits = n.raw_offset() & mask;
    n = p;
    n.raw_offset() |= bits;
  }
  static std::size_t get_bits(const pointer& n) noexcept {
    return static_cast<std::size_t>((n.raw_offset() & mask) >> 1);
  }
  static void set_bits(pointer& n, std::size_t b) noexcept {
    n.raw_offset() = (n.raw_offset() & ~mask) | (static_cast<std::ptrdiff_t>(b) << 1);
  }
};

}  // namespace boost::intrusive
