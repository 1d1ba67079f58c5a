// SharedHeap: a heap in shared memory whose containers every process uses in place, at memory speed, with no server
// in between — mp::shm::vector, string, map, unordered_map, set, deque (nestable), found by name. ShareableList: a
// fixed-length list in one (Python's multiprocessing.shared_memory.ShareableList). Python's SharedMemoryManager
// frees blocks when its server stops; a SharedHeap has no name to free: the kernel frees it with its last user.
// Process safety: the heap's own bookkeeping (allocation, names) is locked inside and survives a process killed at
// any instant — or, if the process died while writing it, every later use throws an mp::Error naming the cause.
// The *contents* of containers are like any variable shared between threads: guard every access with an mp::Lock.
// A SharedHeap is a handle: copies, and children given it as an argument, share one heap (docs/shared-memory.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <ranges>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <boost/container/deque.hpp>
#include <boost/container/map.hpp>
#include <boost/container/scoped_allocator.hpp>
#include <boost/container/set.hpp>
#include <boost/container/string.hpp>
#include <boost/container/vector.hpp>
#include <boost/unordered_map.hpp>

#include <mp/detail/archive.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/heap/allocator.hpp>
#include <mp/detail/heap/directory.hpp>
#include <mp/detail/heap/segment.hpp>
#include <mp/detail/heap/storable.hpp>
#include <mp/errors.hpp>

namespace mp {

/// Containers whose elements live in a SharedHeap. Each takes the heap's allocator (heap.allocator<T>(), or
/// implicitly in find_or_construct) and hands it to the containers nested in it: shm::map<shm::string,
/// shm::vector<int>> needs only the outer one. An element type that cannot live in shared memory (a raw pointer,
/// std::string, std::vector, ...) is a compile error that names the shm:: replacement.
namespace shm {
/// The allocator of heap containers: memory from one SharedHeap, passed down to nested containers.
template <class T>
using allocator = boost::container::scoped_allocator_adaptor<detail::heap::allocator<detail::heap::checked_t<T>>>;
template <class T>
using vector = boost::container::vector<T, allocator<T>>;
using string = boost::container::basic_string<char, std::char_traits<char>, allocator<char>>;
/// Ordered by std::less<>: m.find("key") works on a map keyed by shm::string without building one.
template <class K, class V, class Compare = std::less<>>
using map = boost::container::map<K, V, Compare, allocator<std::pair<const K, V>>>;
template <class K, class V, class Hash = boost::hash<K>, class Equal = std::equal_to<K>>
using unordered_map = boost::unordered_map<K, V, Hash, Equal, allocator<std::pair<const K, V>>>;
template <class T, class Compare = std::less<>>
using set = boost::container::set<T, Compare, allocator<T>>;
template <class T>
using deque = boost::container::deque<T, allocator<T>>;
}  // namespace shm

/// A heap in shared memory (Boost.Interprocess managed memory on an anonymous memfd). Copies are handles to one heap.
class SharedHeap {
 public:
  /// A new heap of `bytes` bytes (the kernel supplies pages as they are first used). mp::Error if too small.
  MP_DECL explicit SharedHeap(std::size_t bytes);
  /// No heap: only the value a spawned child decodes its argument into. Every other use throws mp::Error.
  SharedHeap() noexcept = default;

  /// The object named `name`, constructed from args if there is none (with the heap's allocator appended when T
  /// is a heap container). mp::Error if it exists with another type, or the heap is out of memory.
  template <class T, class... A>
  T& find_or_construct(std::string_view name, A&&... args);
  /// The object named `name`, or nullptr. mp::Error if it has another type.
  template <class T>
  T* find(std::string_view name);
  /// Destroys the object named `name` and frees its memory; false if there is none.
  template <class T>
  bool destroy(std::string_view name);
  /// The allocator that builds containers in this heap: shm::vector<int> v(heap.allocator<int>()).
  template <class T>
  shm::allocator<T> allocator() const;

  /// Bytes not allocated (possibly in pieces smaller than a request).
  MP_DECL std::size_t free_memory() const;
  /// Bytes of the heap, as created.
  MP_DECL std::size_t size() const;

  /// How a SharedHeap crosses to a Process started by spawn or forkserver (its memfd travels with the arguments).
  MP_DECL void save(detail::output_archive& ar) const;
  MP_DECL void load(detail::input_archive& ar);

 private:
  MP_DECL detail::heap::segment& segment() const;
  std::shared_ptr<detail::heap::segment> segment_;
};

namespace detail::heap {
template <class T>
struct list_item : checked<T> {};
template <>
struct list_item<std::string> {
  using type = shm::string;
};
}  // namespace detail::heap

/// A fixed-length list in shared memory (multiprocessing.shared_memory.ShareableList): every process holding a copy
/// reads and assigns the same items. T: anything a SharedHeap can hold, or std::string (items are shm::strings, which
/// may grow while the list's heap has room). Guard items with an mp::Lock when processes write concurrently.
template <class T>
class ShareableList {
 public:
  /// What an item is in shared memory: shm::string for std::string, else T.
  using item_type = typename detail::heap::list_item<T>::type;

  /// A list of the given items (Python: ShareableList([1, 2, 3])).
  ShareableList(std::initializer_list<T> items) { fill(items.begin(), items.end(), items.size()); }
  /// A list of the range's items.
  template <std::ranges::input_range R>
    requires(!std::is_same_v<std::remove_cvref_t<R>, ShareableList>)
  explicit ShareableList(R&& items) {
    if constexpr (std::ranges::forward_range<R>) {
      fill(std::ranges::begin(items), std::ranges::end(items), static_cast<std::size_t>(std::ranges::distance(items)));
    } else {
      const std::vector<T> copy(std::ranges::begin(items), std::ranges::end(items));
      fill(copy.begin(), copy.end(), copy.size());
    }
  }
  /// No list: only the value a spawned child decodes its argument into.
  ShareableList() noexcept = default;

  std::size_t size() const noexcept { return items_ == nullptr ? 0 : items_->size(); }
  /// Item i in shared memory (unchecked); at(i) throws mp::Error naming the index and the size.
  item_type& operator[](std::size_t i) { return (*items_)[i]; }
  const item_type& operator[](std::size_t i) const { return (*items_)[i]; }
  item_type& at(std::size_t i);
  const item_type& at(std::size_t i) const;
  /// A private copy of item i, as a T.
  T get(std::size_t i) const;
  /// Assigns item i (Python: sl[i] = value).
  void set(std::size_t i, const T& value);
  /// How many items equal `value` (Python's count).
  std::size_t count(const T& value) const;
  /// The position of the first item equal to `value`; mp::Error (Python's ValueError) if none.
  std::size_t index(const T& value) const;
  auto begin() { return items_->begin(); }
  auto end() { return items_->end(); }
  auto begin() const { return items_->cbegin(); }
  auto end() const { return items_->cend(); }
  /// The heap the items live in.
  const SharedHeap& heap() const noexcept { return heap_; }

  /// How a ShareableList crosses to a Process started by spawn or forkserver.
  void save(detail::output_archive& ar) const { heap_.save(ar); }
  void load(detail::input_archive& ar);

 private:
  template <class It, class End>
  void fill(It first, End last, std::size_t n);
  static bool same(const item_type& item, const T& value) {
    if constexpr (std::is_same_v<T, std::string>) return std::string_view(item.data(), item.size()) == value;
    else return item == value;
  }

  static constexpr std::string_view items_name = "mp::ShareableList";
  SharedHeap heap_;
  shm::vector<item_type>* items_ = nullptr;  // in heap_, under items_name
};

// ---- definitions ------------------------------------------------------------------------------------------------

template <class T, class... A>
T& SharedHeap::find_or_construct(std::string_view name, A&&... args) {
  (void)sizeof(detail::heap::checked_t<T>);
  return detail::heap::find_or_construct<T>(segment(), name, std::forward<A>(args)...);
}

template <class T>
T* SharedHeap::find(std::string_view name) {
  (void)sizeof(detail::heap::checked_t<T>);
  return detail::heap::find<T>(segment(), name);
}

template <class T>
bool SharedHeap::destroy(std::string_view name) {
  return detail::heap::destroy<T>(segment(), name);
}

template <class T>
shm::allocator<T> SharedHeap::allocator() const {
  return shm::allocator<T>(detail::heap::allocator<T>(segment().manager()));
}

namespace detail::heap {
/// Heap bytes for a ShareableList of n items of `item_size` bytes (the heap's bookkeeping and the vector), to which
/// list_string_bytes adds each string's characters, twice over: room for strings to grow into.
constexpr std::size_t list_heap_bytes(std::size_t n, std::size_t item_size) { return 4096 + 2 * n * item_size; }
constexpr std::size_t list_string_bytes(std::size_t length) { return 2 * (length + 32); }
[[noreturn]] MP_DECL void throw_list_index(std::size_t i, std::size_t size);
[[noreturn]] MP_DECL void throw_not_in_list();
[[noreturn]] MP_DECL void throw_list_missing();
}  // namespace detail::heap

template <class T>
template <class It, class End>
void ShareableList<T>::fill(It first, End last, std::size_t n) {
  std::size_t bytes = detail::heap::list_heap_bytes(n, sizeof(item_type));
  if constexpr (std::is_same_v<T, std::string>) {
    for (It it = first; it != last; ++it) bytes += detail::heap::list_string_bytes(it->size());
  }
  heap_ = SharedHeap(bytes);
  items_ = &heap_.find_or_construct<shm::vector<item_type>>(items_name);
  items_->reserve(n);
  for (; first != last; ++first) {
    if constexpr (std::is_same_v<T, std::string>) items_->emplace_back(first->data(), first->size());
    else items_->emplace_back(*first);
  }
}

template <class T>
auto ShareableList<T>::at(std::size_t i) -> item_type& {
  if (i >= size()) detail::heap::throw_list_index(i, size());
  return (*items_)[i];
}

template <class T>
auto ShareableList<T>::at(std::size_t i) const -> const item_type& {
  if (i >= size()) detail::heap::throw_list_index(i, size());
  return (*items_)[i];
}

template <class T>
T ShareableList<T>::get(std::size_t i) const {
  const item_type& item = at(i);
  if constexpr (std::is_same_v<T, std::string>) return std::string(item.data(), item.size());
  else return item;
}

template <class T>
void ShareableList<T>::set(std::size_t i, const T& value) {
  item_type& item = at(i);
  if constexpr (std::is_same_v<T, std::string>) item.assign(value.data(), value.size());
  else item = value;
}

template <class T>
std::size_t ShareableList<T>::count(const T& value) const {
  std::size_t n = 0;
  for (std::size_t i = 0; i < size(); ++i) n += same((*items_)[i], value) ? 1 : 0;
  return n;
}

template <class T>
std::size_t ShareableList<T>::index(const T& value) const {
  for (std::size_t i = 0; i < size(); ++i) {
    if (same((*items_)[i], value)) return i;
  }
  detail::heap::throw_not_in_list();
}

template <class T>
void ShareableList<T>::load(detail::input_archive& ar) {
  heap_.load(ar);
  items_ = heap_.find<shm::vector<item_type>>(items_name);
  if (items_ == nullptr) detail::heap::throw_list_missing();
}

}  // namespace mp

#if MP_INCLUDE_DEFINITIONS
#include <mp/impl/shared_heap.ipp>
#endif
