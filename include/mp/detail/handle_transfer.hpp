// handle_transfer: how a handle to a shared object (a pipe end, a memfd segment, a socket) crosses to a process
// that does not share this one's memory (start methods spawn and forkserver): as bytes plus a list of descriptors.
//
// A handle type opts in with a save/load pair (mp::serialize's convention) that calls export_fd() in save() and
// import_fd() in load(); the bytes hold only the descriptor's index in the list. The list travels beside the bytes
// with SCM_RIGHTS (send_fd_frame / receive_fd_frame), so the child gets its own descriptors for the same open files —
// never a name to guess. Outside a transfer (a Queue item, a plain mp::serialize), export_fd throws: a handle
// cannot be turned into bytes that mean nothing.
//
// The fd frames here (a 16-byte header, then the bytes; the descriptors ride on the header's sendmsg) carry a fresh
// child's start request (start_fresh_child, detail/spawn.hpp: for Process, the Pool's workers and the Manager's
// server) and the fork server's requests and replies, over a unix socket. The Connection's frames are another
// format (detail/wire.hpp: an 8-byte length, over a socket or a pipe, no descriptors).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <tuple>
#include <type_traits>
#include <typeindex>
#include <typeinfo>
#include <utility>
#include <vector>

#include <mp/detail/config.hpp>
#include <mp/detail/for_load.hpp>
#include <mp/detail/small_vector.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail {

/// The open file behind a descriptor (fstat's st_dev and st_ino): the same in every process and for every dup.
/// {0, 0}: not known.
struct fd_identity {
  std::uint64_t dev = 0;
  std::uint64_t ino = 0;
  bool known() const noexcept { return dev != 0 || ino != 0; }
};

/// The identity of `fd` (one fstat); unknown ({0, 0}) if fstat fails.
MP_DECL fd_identity identity_of(int fd) noexcept;

/// identity_of(fd) of a handle's descriptor, found at the first call and kept: what a handle sent with every Pool
/// task passes to export_fd instead of costing the pool an fstat per task. Thread-safe (two threads may serialize
/// copies of one handle at once: both find the same value); copies carry what was found. The owner resets it when
/// its descriptor changes.
class identity_cache {
 public:
  identity_cache() noexcept = default;
  identity_cache(const identity_cache& other) noexcept { copy(other); }
  identity_cache& operator=(const identity_cache& other) noexcept {
    copy(other);
    return *this;
  }
  fd_identity get(int fd) const noexcept {
    const std::uint64_t ino = ino_.load(std::memory_order_acquire);
    if (ino != 0) return {dev_.load(std::memory_order_relaxed), ino};
    const fd_identity found = identity_of(fd);
    dev_.store(found.dev, std::memory_order_relaxed);
    ino_.store(found.ino, std::memory_order_release);  // 0 if fstat failed: found again next time
    return found;
  }
  void reset() noexcept {
    ino_.store(0, std::memory_order_relaxed);
    dev_.store(0, std::memory_order_relaxed);
  }

 private:
  void copy(const identity_cache& other) noexcept {
    dev_.store(other.dev_.load(std::memory_order_relaxed), std::memory_order_relaxed);
    ino_.store(other.ino_.load(std::memory_order_acquire), std::memory_order_release);
  }
  mutable std::atomic<std::uint64_t> dev_{0};
  mutable std::atomic<std::uint64_t> ino_{0};  // 0: not found yet (no open file has inode 0)
};

/// The descriptors a transfer sends (parent side). Borrowed: the handles being serialized own them.
/// Room for a few inside the box: a Pool task carrying a handle or two allocates nothing for them.
struct fd_outbox {
  small_vector<int, 4> fds;
  /// Beside fds: the open file behind each, when its handle knew it (a Pool then needs no fstat per task), else
  /// unknown.
  small_vector<fd_identity, 4> ids;
};

/// A receiver that keeps what it received across transfers (a Pool worker, detail/pool/handles.hpp): the same
/// handle sent with a million tasks arrives once, and what its load() made of the descriptor (a mapping) is reused.
class fd_cache {
 public:
  /// The descriptor sent under `index` in the current transfer; -1 if there is none.
  virtual int fd(std::uint32_t index) const = 0;
  /// Where an attachment of type `type` made from that descriptor is kept (null until first made); nullptr if
  /// there is no such descriptor.
  virtual std::shared_ptr<void>* attachment(std::uint32_t index, std::type_index type) = 0;

 protected:
  ~fd_cache() = default;
};

/// The descriptors a transfer received (child side); owned until the handles have dup'ed theirs. A Pool worker's
/// inbox holds none of its own: `cache` resolves the indices.
struct fd_inbox {
  std::vector<unique_fd> fds;
  fd_cache* cache = nullptr;
};

// for_load_t, for_load and blank_for_load (what a receiver decodes a handle into): detail/for_load.hpp.

// thread_local: two threads may start spawned children at once, each serializing its own arguments.
inline fd_outbox*& current_fd_outbox() noexcept {
  thread_local fd_outbox* box = nullptr;
  return box;
}
inline fd_inbox*& current_fd_inbox() noexcept {
  thread_local fd_inbox* box = nullptr;
  return box;
}

/// Makes `box` the target of export_fd() for the lifetime of the scope.
class fd_outbox_scope {
 public:
  explicit fd_outbox_scope(fd_outbox& box) noexcept : previous_(current_fd_outbox()) { current_fd_outbox() = &box; }
  ~fd_outbox_scope() { current_fd_outbox() = previous_; }
  fd_outbox_scope(const fd_outbox_scope&) = delete;
  fd_outbox_scope& operator=(const fd_outbox_scope&) = delete;

 private:
  fd_outbox* previous_;
};

/// Makes `box` the source of import_fd() for the lifetime of the scope.
class fd_inbox_scope {
 public:
  explicit fd_inbox_scope(fd_inbox& box) noexcept : previous_(current_fd_inbox()) { current_fd_inbox() = &box; }
  ~fd_inbox_scope() { current_fd_inbox() = previous_; }
  fd_inbox_scope(const fd_inbox_scope&) = delete;
  fd_inbox_scope& operator=(const fd_inbox_scope&) = delete;

 private:
  fd_inbox* previous_;
};

/// In a handle's save(): the index under which `fd` travels. mp::serialize calls save() twice (a measuring pass,
/// then the writing one), so the same fd gets the same index; a save(ar) calls export_fd(ar, ...) below. `what` names the handle type for the error. `id`:
/// the open file behind fd if the handle keeps it (identity_of), which spares the receiver's bookkeeping an fstat.
MP_DECL std::uint32_t export_fd(int fd, const char* what, fd_identity id = {});
/// export_fd in a handle's save(ar): the measuring pass gets index 0 without a lookup (an index takes 4 bytes
/// whatever its value), so a handle sent with each Pool task costs one export per descriptor, not two. A closed
/// handle still throws here.
template <class Archive>
std::uint32_t export_fd(const Archive& ar, int fd, const char* what, fd_identity id = {}) {
  if (ar.measuring() && fd >= 0) return 0;
  return export_fd(fd, what, id);
}

/// In a handle's load(): the child's own descriptor (close-on-exec) for the fd sent under `index`.
MP_DECL unique_fd import_fd(std::uint32_t index, const char* what);

/// In a handle's load(): `make(import_fd(index))`, except in a receiver that caches (a Pool worker), where the
/// object made the first time a handle arrived is returned again while `reuse(object)` holds (a Queue closed in
/// this process is not). T names the attachment kind: one descriptor may back several kinds.
template <class T, class Make, class Reuse>
std::shared_ptr<T> import_shared(std::uint32_t index, const char* what, Make&& make, Reuse&& reuse) {
  fd_inbox* box = current_fd_inbox();
  if (box != nullptr && box->cache != nullptr) {
    if (std::shared_ptr<void>* kept = box->cache->attachment(index, std::type_index(typeid(T)))) {
      if (*kept && reuse(*static_cast<const T*>(kept->get()))) return std::static_pointer_cast<T>(*kept);
      std::shared_ptr<T> made = make(import_fd(index, what));
      *kept = made;
      return made;
    }
  }
  return make(import_fd(index, what));
}
template <class T, class Make>
std::shared_ptr<T> import_shared(std::uint32_t index, const char* what, Make&& make) {
  return import_shared<T>(index, what, std::forward<Make>(make), [](const T&) { return true; });
}

// ---------------------------------------------------------------------------------------------------------------
// fd frames over a unix stream socket: a header that carries the descriptors, then the bytes.

/// The kernel's SCM_MAX_FD: the most descriptors one sendmsg carries.
inline constexpr std::size_t max_fds_per_frame = 253;

/// One fd frame as received: its bytes, and the descriptors that came with it (owned).
struct fd_frame {
  std::vector<std::byte> bytes;
  fd_inbox fds;
};

/// Sends bytes + descriptors as one fd frame (MSG_NOSIGNAL: a peer that died is a ProcessError, not SIGPIPE).
/// `what` names the exchange in errors ("forkserver request").
MP_DECL void send_fd_frame(int socket, std::span<const std::byte> bytes, std::span<const int> fds, const char* what);

/// Receives one fd frame; ProcessError on end of file or a malformed header. `max_size` bounds the allocation.
MP_DECL fd_frame receive_fd_frame(int socket, const char* what, std::uint64_t max_size = std::uint64_t{1} << 36);

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/handle_transfer.ipp>
#endif
