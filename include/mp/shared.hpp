// Value, RawValue, Array, RawArray: typed data in shared memory (Python's multiprocessing.Value, RawValue, Array,
// RawArray), and SharedMemory: a named block any process can attach to (multiprocessing.shared_memory).
// Value/Array are handles: copies, including a child's arguments, see the same memory; value() and operator[] are
// references into it; get_lock() is their RLock; for arithmetic T, fetch_add/load/store are lock-free atomics.
// Process safety: plain reads and writes of value() race like any shared variable — guard them with get_lock() or
// use the atomic members. Value/Array live in anonymous memfd memory (small ones share 64 KiB chunks, no /dev/shm
// name; detail/shared_blocks.hpp); SharedMemory names are unlinked by unlink() or, failing that, once the creating
// process family is gone (docs/shared-memory.md).
#pragma once

#include <cstddef>
#include <initializer_list>
#include <memory>
#include <ranges>
#include <span>
#include <string>
#include <type_traits>
#include <utility>

#include <mp/detail/archive.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/shared_blocks.hpp>
#include <mp/detail/shared_state.hpp>
#include <mp/detail/shm_tracker.hpp>  // SharedMemory's; also stop_shm_tracker() for programs that must reap it
#include <mp/errors.hpp>
#include <mp/sync.hpp>

namespace mp {

/// A T in shared memory with an RLock (multiprocessing.Value). T: trivially copyable.
/// value(), and for lock-free T load/store/exchange/compare_exchange/fetch_add/fetch_sub: detail::value_access.
template <class T>
class Value : public detail::value_access<T>, public detail::block_lock<RLock> {
  static_assert(detail::shareable_v<T>,
                "mp::Value<T> needs a trivially copyable, non-pointer T: it lives in shared memory as raw bytes "
                "(use a plain struct, std::array, or a Manager value for other types)");

 public:
  /// A new value, initialised to `initial`.
  explicit Value(T initial = T{});
  /// mp's decoders only: an empty handle that load() fills in (no value of its own; see detail::for_load_t).
  explicit Value(detail::for_load_t tag) noexcept : detail::value_access<T>(tag), detail::block_lock<RLock>(tag) {}
  Value(const Value&) = default;
  Value& operator=(const Value&) = default;

  /// The RLock guarding the value (shared by every copy).
  using detail::block_lock<RLock>::get_lock;
  /// Its acquire/release, and the std Lockable spellings (std::lock_guard guard(value);).
  using detail::block_lock<RLock>::acquire;
  using detail::block_lock<RLock>::release;
  using detail::block_lock<RLock>::lock;
  using detail::block_lock<RLock>::unlock;
  using detail::block_lock<RLock>::try_lock;

  using detail::value_access<T>::load;
  /// How a Value crosses to a Process started by spawn or forkserver (its memory's descriptor travels along).
  void save(detail::output_archive& ar) const { this->block_.save(ar, "Value"); }
  void load(detail::input_archive& ar);
};

/// A T in shared memory without a lock (multiprocessing.RawValue).
template <class T>
class RawValue : public detail::value_access<T> {
  static_assert(detail::shareable_v<T>,
                "mp::RawValue<T> needs a trivially copyable, non-pointer T: it lives in shared memory as raw bytes");

 public:
  /// A new value, initialised to `initial`.
  explicit RawValue(T initial = T{})
      : detail::value_access<T>(detail::make_shared_state<detail::value_block<T>>("RawValue", initial)) {}
  /// mp's decoders only: an empty handle that load() fills in.
  explicit RawValue(detail::for_load_t tag) noexcept : detail::value_access<T>(tag) {}
  RawValue(const RawValue&) = default;
  RawValue& operator=(const RawValue&) = default;

  using detail::value_access<T>::load;
  /// How a RawValue crosses to a Process started by spawn or forkserver.
  void save(detail::output_archive& ar) const { this->block_.save(ar, "RawValue"); }
  void load(detail::input_archive& ar) { this->block_.load(ar, "RawValue"); }
};

/// n Ts in shared memory with an RLock (multiprocessing.Array). T: trivially copyable.
/// Elements, iteration, span(), to_vector() and lock-free load/store/fetch_add/fetch_sub: detail::array_access.
template <class T>
class Array : public detail::array_access<T>, public detail::block_lock<RLock> {
  static_assert(detail::shareable_v<T>,
                "mp::Array<T> needs a trivially copyable, non-pointer T: it lives in shared memory as raw bytes");

 public:
  /// An empty array (only useful as the value a spawned child decodes its argument into).
  Array() : Array(std::size_t{0}) {}
  /// n value-initialised elements (zeros for arithmetic T).
  explicit Array(std::size_t n) : Array(detail::array_of_size<T>(n, "Array")) {}
  /// mp's decoders only: an empty handle that load() fills in.
  explicit Array(detail::for_load_t tag) noexcept : detail::array_access<T>(tag), detail::block_lock<RLock>(tag) {}
  /// The listed elements: Array<int>{1, 2, 3}.
  Array(std::initializer_list<T> items) : Array(detail::array_from_range<T>(items, "Array")) {}
  /// A copy of range's elements.
  template <std::ranges::input_range R>
    requires(!std::is_same_v<std::remove_cvref_t<R>, Array> && std::convertible_to<std::ranges::range_value_t<R>, T>)
  explicit Array(R&& range) : Array(detail::array_from_range<T>(std::forward<R>(range), "Array")) {}
  Array(const Array&) = default;
  Array& operator=(const Array&) = default;

  /// The RLock guarding the elements (shared by every copy).
  using detail::block_lock<RLock>::get_lock;
  /// Its acquire/release, and the std Lockable spellings.
  using detail::block_lock<RLock>::acquire;
  using detail::block_lock<RLock>::release;
  using detail::block_lock<RLock>::lock;
  using detail::block_lock<RLock>::unlock;
  using detail::block_lock<RLock>::try_lock;

  using detail::array_access<T>::load;
  /// How an Array crosses to a Process started by spawn or forkserver.
  void save(detail::output_archive& ar) const { this->header_.save(ar, "Array"); }
  void load(detail::input_archive& ar);

 private:
  explicit Array(detail::shared_ref<detail::array_header> block);
};

/// n Ts in shared memory without a lock (multiprocessing.RawArray).
template <class T>
class RawArray : public detail::array_access<T> {
  static_assert(detail::shareable_v<T>,
                "mp::RawArray<T> needs a trivially copyable, non-pointer T: it lives in shared memory as raw bytes");

 public:
  /// An empty array (only useful as the value a spawned child decodes its argument into).
  RawArray() : RawArray(std::size_t{0}) {}
  /// n value-initialised elements (zeros for arithmetic T).
  explicit RawArray(std::size_t n) : detail::array_access<T>(detail::array_of_size<T>(n, "RawArray")) {}
  /// mp's decoders only: an empty handle that load() fills in.
  explicit RawArray(detail::for_load_t tag) noexcept : detail::array_access<T>(tag) {}
  /// The listed elements.
  RawArray(std::initializer_list<T> items) : detail::array_access<T>(detail::array_from_range<T>(items, "RawArray")) {}
  /// A copy of range's elements.
  template <std::ranges::input_range R>
    requires(!std::is_same_v<std::remove_cvref_t<R>, RawArray> &&
             std::convertible_to<std::ranges::range_value_t<R>, T>)
  explicit RawArray(R&& range) : detail::array_access<T>(detail::array_from_range<T>(std::forward<R>(range), "RawArray")) {}
  RawArray(const RawArray&) = default;
  RawArray& operator=(const RawArray&) = default;

  using detail::array_access<T>::load;
  /// How a RawArray crosses to a Process started by spawn or forkserver.
  void save(detail::output_archive& ar) const { this->header_.save(ar, "RawArray"); }
  void load(detail::input_archive& ar) { this->load_block(ar, "RawArray"); }
};

/// A named block of shared memory in /dev/shm that unrelated processes attach to by name
/// (multiprocessing.shared_memory.SharedMemory). Copies share one mapping; close() unmaps it for this process.
class SharedMemory {
 public:
  /// A new zero-filled block of `size` bytes named `name` ("/mp-<pid>-<n>" when empty; a leading '/' is added
  /// to the OS name if missing). mp::Error if size == 0 or the name exists. Unless `track` is false, the block is
  /// unlinked (with a warning) once this process and its children are all gone without unlink() having been called.
  MP_DECL static SharedMemory create(std::size_t size, std::string name = {}, bool track = true);
  /// Maps the existing block `name` (with or without the leading '/'). mp::Error if there is none.
  /// Attaching never unlinks, not even at exit (Python's gh-82300 trap).
  MP_DECL static SharedMemory attach(std::string name);

  /// A closed handle with no name (only useful as the value a spawned child decodes its argument into).
  SharedMemory() : state_(std::make_shared<mapping>()) {}
  SharedMemory(const SharedMemory&) = default;
  SharedMemory& operator=(const SharedMemory&) = default;

  /// Crosses to a Process started by spawn or forkserver by name: the child attaches (and never unlinks).
  MP_DECL void save(detail::output_archive& ar) const;
  MP_DECL void load(detail::input_archive& ar);

  /// The name as given to create/attach, or the generated one.
  const std::string& name() const noexcept { return state_->name; }
  /// The size in bytes.
  std::size_t size() const noexcept { return state_->size; }
  /// The bytes. mp::Error after close().
  std::span<std::byte> buf() { return {static_cast<std::byte*>(mapped("buf")), state_->size}; }
  std::span<const std::byte> buf() const { return {static_cast<const std::byte*>(mapped("buf")), state_->size}; }
  /// Unmaps the block in this process (every copy of this handle); the block itself lives on. Idempotent.
  void close() noexcept { state_->unmap(); }
  /// Removes the name: no process can attach() any more; mappings stay valid until closed. mp::Error if the name
  /// is already gone.
  MP_DECL void unlink();

 private:
  struct mapping {
    std::string name;
    std::string os_name;
    void* data = nullptr;  // nullptr once closed
    std::size_t size = 0;
    bool created_here = false;
    MP_DECL void unmap() noexcept;
    ~mapping() { unmap(); }
  };

  MP_DECL SharedMemory(std::string name, const std::string& os_name, void* data, std::size_t size);
  /// The mapping's address; mp::Error naming `call` once closed.
  MP_DECL void* mapped(const char* call) const;
  /// mmap of the block (on failure a block `created` here is unlinked again).
  MP_DECL static void* map(int fd, std::size_t size, const std::string& os_name, bool created);
  /// "/mp-<pid>-<n>".
  MP_DECL static std::string generate_name();
  /// The OS name: one leading '/', then 1..254 characters without '/'.
  MP_DECL static std::string posix_name(const std::string& name, const char* call);

  std::shared_ptr<mapping> state_;
};

// ---- definitions ----------------------------------------------------------------------------------------------

template <class T>
Value<T>::Value(T initial)
    : detail::value_access<T>(detail::make_shared_state<detail::value_block<T>>("Value", initial)),
      detail::block_lock<RLock>(this->block_.part(&this->block_->lock)) {}

template <class T>
void Value<T>::load(detail::input_archive& ar) {
  this->block_.load(ar, "Value");
  this->rebind(this->block_.part(&this->block_->lock));
}

template <class T>
Array<T>::Array(detail::shared_ref<detail::array_header> block)
    : detail::array_access<T>(std::move(block)), detail::block_lock<RLock>(this->header_.part(&this->header_->lock)) {}

template <class T>
void Array<T>::load(detail::input_archive& ar) {
  this->load_block(ar, "Array");
  this->rebind(this->header_.part(&this->header_->lock));
}

}  // namespace mp

#if MP_INCLUDE_DEFINITIONS
#include <mp/impl/shared.ipp>
#endif
