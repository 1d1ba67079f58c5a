// Value, RawValue, Array, RawArray: typed data in shared memory (Python's multiprocessing.Value, RawValue, Array,
// RawArray), and SharedMemory: a named block any process can attach to (multiprocessing.shared_memory).
// Value/Array are handles: copies, including a child's arguments, see the same memory; value() and operator[] are
// references into it; get_lock() is their RLock; for arithmetic T, fetch_add/load/store are lock-free atomics.
// Process safety: plain reads and writes of value() race like any shared variable — guard them with get_lock() or
// use the atomic members. Value/Array have no /dev/shm name (memfd); SharedMemory names are unlinked by unlink() or,
// failing that, once the creating process family is gone (docs/shared-memory.md).
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <new>
#include <ranges>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <mp/detail/archive.hpp>
#include <mp/detail/shared_state.hpp>
#include <mp/detail/shm_tracker.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/detail/unique_fd.hpp>
#include <mp/errors.hpp>
#include <mp/sync.hpp>

namespace mp {

namespace detail {

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

// Builds the block of an n-element array; fill(T* elements) constructs every element.
template <class T, class Fill>
shared_ref<array_header> make_array_block(std::size_t n, const char* label, Fill&& fill) {
  if (n > (std::size_t{1} << 48) / sizeof(T)) {
    throw Error(std::string(label) + ": " + std::to_string(n) + " elements of " + std::to_string(sizeof(T)) +
                " bytes is too large for shared memory");
  }
  auto [block, memory] = make_shared_bytes(elements_offset<T> + n * sizeof(T), elements_alignment<T>, label);
  auto* header = ::new (memory) array_header{};
  header->size = n;
  fill(reinterpret_cast<T*>(static_cast<std::byte*>(memory) + elements_offset<T>));
  return shared_ref<array_header>(std::move(block), header);
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

[[noreturn]] inline void throw_index(const char* kind, std::size_t index, std::size_t size) {
  throw Error(std::string(kind) + "::at: index " + std::to_string(index) + " is out of range for size " +
              std::to_string(size));
}

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
  // In a spawned child: the header's block arrives through the archive; the elements follow it.
  void load_block(input_archive& ar, const char* what) {
    header_.load(ar, what);
    // The header's size came from another process: the elements must fit in what was mapped.
    const std::size_t room = header_.available();
    if (room < elements_offset<T> || (room - elements_offset<T>) / sizeof(T) < header_->size) {
      throw SerializationError(std::string("mp::deserialize: an ") + what + " of " + std::to_string(header_->size) +
                               " elements does not fit the shared block that arrived");
    }
    bind();
  }
  void bind() noexcept { data_ = reinterpret_cast<T*>(reinterpret_cast<std::byte*>(header_.get()) + elements_offset<T>); }
  std::atomic_ref<T> ref(std::size_t i) const noexcept { return std::atomic_ref<T>(data_[i]); }
  shared_ref<array_header> header_;
  T* data_ = nullptr;  // the elements, right after header_ in the same block
};

}  // namespace detail

/// A T in shared memory with an RLock (multiprocessing.Value). T: trivially copyable.
template <class T>
class Value : public detail::value_access<T> {
  static_assert(detail::shareable_v<T>,
                "mp::Value<T> needs a trivially copyable, non-pointer T: it lives in shared memory as raw bytes "
                "(use a plain struct, std::array, or a Manager value for other types)");

 public:
  /// A new value, initialised to `initial`.
  explicit Value(T initial = T{})
      : detail::value_access<T>(detail::make_shared_state<detail::value_block<T>>("Value", initial)),
        lock_(this->block_.part(&this->block_->lock)) {}
  Value(const Value&) = default;
  Value& operator=(const Value&) = default;

  /// The RLock guarding the value (shared by every copy).
  RLock& get_lock() noexcept { return lock_; }
  /// Its acquire/release, and the std Lockable spellings (std::lock_guard guard(value);).
  void acquire() { lock_.acquire(); }
  void release() { lock_.release(); }
  void lock() { lock_.lock(); }
  void unlock() { lock_.unlock(); }
  bool try_lock() { return lock_.try_lock(); }

  using detail::value_access<T>::load;
  /// How a Value crosses to a Process started by spawn or forkserver (its memory's descriptor travels along).
  void save(detail::output_archive& ar) const { this->block_.save(ar, "Value"); }
  void load(detail::input_archive& ar) {
    this->block_.load(ar, "Value");
    lock_ = RLock(this->block_.part(&this->block_->lock));
  }

 private:
  RLock lock_;
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
  RawValue(const RawValue&) = default;
  RawValue& operator=(const RawValue&) = default;

  using detail::value_access<T>::load;
  /// How a RawValue crosses to a Process started by spawn or forkserver.
  void save(detail::output_archive& ar) const { this->block_.save(ar, "RawValue"); }
  void load(detail::input_archive& ar) { this->block_.load(ar, "RawValue"); }
};

/// n Ts in shared memory with an RLock (multiprocessing.Array). T: trivially copyable.
template <class T>
class Array : public detail::array_access<T> {
  static_assert(detail::shareable_v<T>,
                "mp::Array<T> needs a trivially copyable, non-pointer T: it lives in shared memory as raw bytes");

 public:
  /// An empty array (only useful as the value a spawned child decodes its argument into).
  Array() : Array(std::size_t{0}) {}
  /// n value-initialised elements (zeros for arithmetic T).
  explicit Array(std::size_t n) : Array(detail::make_array_block<T>(n, "Array", fill_default(n))) {}
  /// The listed elements: Array<int>{1, 2, 3}.
  Array(std::initializer_list<T> items) : Array(detail::array_from_range<T>(items, "Array")) {}
  /// A copy of range's elements.
  template <std::ranges::input_range R>
    requires(!std::is_same_v<std::remove_cvref_t<R>, Array> && std::convertible_to<std::ranges::range_value_t<R>, T>)
  explicit Array(R&& range) : Array(detail::array_from_range<T>(std::forward<R>(range), "Array")) {}
  Array(const Array&) = default;
  Array& operator=(const Array&) = default;

  /// The RLock guarding the elements (shared by every copy).
  RLock& get_lock() noexcept { return lock_; }
  void acquire() { lock_.acquire(); }
  void release() { lock_.release(); }
  void lock() { lock_.lock(); }
  void unlock() { lock_.unlock(); }
  bool try_lock() { return lock_.try_lock(); }

  using detail::array_access<T>::load;
  /// How an Array crosses to a Process started by spawn or forkserver.
  void save(detail::output_archive& ar) const { this->header_.save(ar, "Array"); }
  void load(detail::input_archive& ar) {
    this->load_block(ar, "Array");
    lock_ = RLock(this->header_.part(&this->header_->lock));
  }

 private:
  explicit Array(detail::shared_ref<detail::array_header> block)
      : detail::array_access<T>(std::move(block)), lock_(this->header_.part(&this->header_->lock)) {}
  static auto fill_default(std::size_t n) {
    return [n](T* elements) { std::uninitialized_value_construct_n(elements, n); };
  }
  RLock lock_;
};

/// n Ts in shared memory without a lock (multiprocessing.RawArray).
template <class T>
class RawArray : public detail::array_access<T> {
  static_assert(detail::shareable_v<T>,
                "mp::RawArray<T> needs a trivially copyable, non-pointer T: it lives in shared memory as raw bytes");

 public:
  /// An empty array (only useful as the value a spawned child decodes its argument into).
  RawArray() : RawArray(std::size_t{0}) {}
  explicit RawArray(std::size_t n)
      : detail::array_access<T>(detail::make_array_block<T>(
            n, "RawArray", [n](T* elements) { std::uninitialized_value_construct_n(elements, n); })) {}
  RawArray(std::initializer_list<T> items)
      : detail::array_access<T>(detail::array_from_range<T>(items, "RawArray")) {}
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
  static SharedMemory create(std::size_t size, std::string name = {}, bool track = true) {
    if (size == 0) throw Error("SharedMemory::create: size must be > 0, got 0");
    const bool generated = name.empty();
    for (int attempt = 0;; ++attempt) {
      if (generated) name = generate_name();
      const std::string os_name = posix_name(name, "create");
      const int fd = detail::retry_on_eintr([&] { return ::shm_open(os_name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600); });
      if (fd < 0) {
        const int err = detail::last_errno();
        if (err == EEXIST && generated && attempt < 100) continue;  // a stale leftover of an earlier pid
        if (err == EEXIST) {
          throw Error("SharedMemory::create: a block named " + os_name +
                      " already exists (attach() to it, or choose another name)");
        }
        detail::throw_errno("shm_open", os_name, err);
      }
      detail::unique_fd owner(fd);
      if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
        const int err = detail::last_errno();
        ::shm_unlink(os_name.c_str());
        detail::throw_errno("ftruncate", os_name, err);
      }
      SharedMemory block(std::move(name), os_name, map(owner.get(), size, os_name, true), size);
      if (track) detail::shm_tracker::instance().track(os_name);
      block.state_->created_here = true;
      return block;
    }
  }

  /// Maps the existing block `name` (with or without the leading '/'). mp::Error if there is none.
  /// Attaching never unlinks, not even at exit (Python's gh-82300 trap).
  static SharedMemory attach(std::string name) {
    const std::string os_name = posix_name(name, "attach");
    const int fd = detail::retry_on_eintr([&] { return ::shm_open(os_name.c_str(), O_RDWR, 0); });
    if (fd < 0) {
      const int err = detail::last_errno();
      if (err == ENOENT) {
        throw Error("SharedMemory::attach: no block named " + os_name + " (not created yet, or already unlinked)");
      }
      detail::throw_errno("shm_open", os_name, err);
    }
    detail::unique_fd owner(fd);
    struct stat st {};
    detail::sys("fstat", os_name, [&] { return ::fstat(fd, &st); });
    const auto size = static_cast<std::size_t>(st.st_size);
    if (size == 0) throw Error("SharedMemory::attach: the block " + os_name + " has size 0 (nothing to map)");
    return SharedMemory(std::move(name), os_name, map(fd, size, os_name, false), size);
  }

  /// A closed handle with no name (only useful as the value a spawned child decodes its argument into).
  SharedMemory() : state_(std::make_shared<mapping>()) {}
  SharedMemory(const SharedMemory&) = default;
  SharedMemory& operator=(const SharedMemory&) = default;

  /// Crosses to a Process started by spawn or forkserver by name: the child attaches (and never unlinks).
  void save(detail::output_archive& ar) const {
    if (state_->name.empty()) throw SerializationError("mp::serialize: a SharedMemory without a name cannot cross");
    ar(state_->name);
  }
  void load(detail::input_archive& ar) {
    std::string name;
    ar(name);
    *this = attach(std::move(name));
  }

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
  void unlink() {
    if (::shm_unlink(state_->os_name.c_str()) != 0) {
      const int err = detail::last_errno();
      if (err == ENOENT) {
        throw Error("SharedMemory::unlink: no block named " + state_->os_name + " (already unlinked?)");
      }
      detail::throw_errno("shm_unlink", state_->os_name, err);
    }
    if (state_->created_here) detail::shm_tracker::instance().untrack(state_->os_name);
  }

 private:
  struct mapping {
    std::string name;
    std::string os_name;
    void* data = nullptr;  // nullptr once closed
    std::size_t size = 0;
    bool created_here = false;
    void unmap() noexcept {
      if (data != nullptr) ::munmap(data, size);
      data = nullptr;
    }
    ~mapping() { unmap(); }
  };

  SharedMemory(std::string name, const std::string& os_name, void* data, std::size_t size)
      : state_(std::make_shared<mapping>()) {
    state_->name = std::move(name);
    state_->os_name = os_name;
    state_->data = data;
    state_->size = size;
  }

  void* mapped(const char* call) const {
    if (state_->data == nullptr) {
      throw Error(std::string("SharedMemory::") + call + ": " + state_->os_name + " is closed in this process");
    }
    return state_->data;
  }

  static void* map(int fd, std::size_t size, const std::string& os_name, bool created) {
    void* data = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (data == MAP_FAILED) {
      const int err = detail::last_errno();
      if (created) ::shm_unlink(os_name.c_str());
      detail::throw_errno("mmap", os_name, err);
    }
    return data;
  }

  static std::string generate_name() {
    static std::atomic<unsigned> counter{0};
    return "/mp-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
  }

  // The OS name: one leading '/', then 1..254 characters without '/'.
  static std::string posix_name(const std::string& name, const char* call) {
    const std::string os_name = (!name.empty() && name.front() == '/') ? name : "/" + name;
    if (os_name.size() < 2 || os_name.size() > 255 || os_name.find('/', 1) != std::string::npos) {
      throw Error(std::string("SharedMemory::") + call + ": invalid name \"" + name +
                  "\" (use 1-254 characters without '/', optionally after one leading '/')");
    }
    return os_name;
  }

  std::shared_ptr<mapping> state_;
};

}  // namespace mp
