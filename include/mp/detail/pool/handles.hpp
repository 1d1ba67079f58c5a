// handles: how mp handles in task arguments (a Queue, a Value, a Lock, a Connection, a SharedHeap, ...) reach the
// pool's workers — their descriptors travel over a per-worker unix socket beside the task bytes (SCM_RIGHTS,
// detail/handle_transfer.hpp), once per worker and shared object.
//
// A shared object is known by the open file behind its descriptor (st_dev, st_ino): the same in every process and
// for every dup. Each worker keeps what it received by that key (worker_handles), together with what the handles'
// load() made of it (a mapping), so one Queue sent with a million tasks costs each worker one descriptor and one
// mapping. The parent mirrors what each worker keeps (worker_view): the next message to a worker carries the keys
// of its handles, the descriptors the worker lacks (one fd frame on its socket, sent before the message enters the
// ring), and the keys it should drop: those beyond the most recent `worker_keeps`, and those no message used for
// `worker_forgets_after` messages — so a long-running pool's descriptor count stays bounded.
// Why the parent keeps a descriptor of every object a worker keeps (handle_table): an inode number is reused once
// its file is gone; while the parent holds one, no new object can take the key a worker still maps.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <typeindex>
#include <unordered_map>
#include <utility>
#include <vector>

#include <mp/detail/config.hpp>
#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/small_vector.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail::pool {

/// How many shared objects a worker keeps beyond those of the message at hand (least recently used dropped first).
inline constexpr std::size_t worker_keeps = 32;
/// A worker drops an object no message to it has carried for this many messages.
inline constexpr std::uint64_t worker_forgets_after = 1024;

/// The open file behind a descriptor.
struct handle_key {
  std::uint64_t dev = 0;
  std::uint64_t ino = 0;
  friend bool operator==(const handle_key&, const handle_key&) = default;
};
struct handle_key_hash {
  std::size_t operator()(const handle_key& k) const noexcept {
    return static_cast<std::size_t>(k.ino * 0x9E3779B97F4A7C15ull ^ (k.dev + (k.ino >> 29)));
  }
};

/// The key of `fd` (fstat); SerializationError naming `what` if it fails.
MP_DECL handle_key key_of(int fd);

/// Parent: one descriptor per shared object that a queued task carries or a worker keeps, with a reference count.
/// Guarded by the core's mutex.
class handle_table {
 public:
  struct entry {
    unique_fd fd;
    std::size_t refs = 0;
  };
  /// One more reference; the first dups `fd`, a descriptor of that object valid during the call. The entry stays
  /// where it is until its last reference is released.
  MP_DECL entry& acquire(const handle_key& key, int fd);
  MP_DECL void release(const handle_key& key) noexcept;
  /// Drops a reference acquire() returned `held` for: no lookup unless it was the last.
  MP_DECL void release(const handle_key& key, entry& held) noexcept;
  /// Our descriptor of it; -1 if unknown.
  MP_DECL int fd(const handle_key& key) const noexcept;
  std::size_t size() const noexcept { return entries_.size(); }

 private:
  MP_DECL void erase(const handle_key& key) noexcept;

  std::unordered_map<handle_key, entry, handle_key_hash> entries_;
  // The entries the latest acquires found (null: none): a Pool sending the same handles with every task finds them
  // here instead of hashing. An entry erased from the map is dropped from here.
  std::array<std::pair<handle_key, entry*>, 4> recent_{};
  std::size_t recent_next_ = 0;
};

/// The handles of one submission (an apply, a map's chunks, one imap chunk): chunk c's descriptor list, in
/// export_fd's index order, is keys[offsets[c - first], offsets[c - first + 1]). Built by the submitting thread;
/// attach() (under the core mutex) takes the table's references, the destructor (also under it) drops them.
/// Sized for the common case of one task carrying a few handles that know their identity: its lists live inside
/// the object (no allocation beyond the object's own), found by linear search (no hashing: the maps below stay
/// empty unless a submission carries many objects, or handles that do not know their identity).
class submission_handles {
 public:
  explicit submission_handles(std::size_t first) : first_(first) { offsets_.push_back(0); }
  submission_handles(const submission_handles&) = delete;
  submission_handles& operator=(const submission_handles&) = delete;
  MP_DECL ~submission_handles();

  /// Appends the next chunk's descriptors (what serializing it put in `box`); Error beyond max_fds_per_frame.
  MP_DECL void add_chunk(const fd_outbox& box, const char* caller);
  /// True if no chunk carries a handle (then the submission needs none of this).
  bool empty() const noexcept { return keys_.empty(); }
  /// Under the core mutex, while the handles serialized are still alive.
  MP_DECL void attach(handle_table& table);
  std::span<const handle_key> chunk(std::size_t c) const noexcept {
    const std::size_t i = c - first_;
    return std::span<const handle_key>(keys_.data() + offsets_[i], offsets_[i + 1] - offsets_[i]);
  }

 private:
  /// Up to this many distinct objects are found by a linear search, beyond it through maps().index.
  static constexpr std::size_t linear_search_limit = 16;
  struct object {
    handle_key key;
    int fd;                             // borrowed until attach() (the handles being serialized are alive), then -1
    handle_table::entry* held;  // after attach(): the table's entry this submission holds a reference to
  };
  /// Records `key` (with a descriptor of it) as carried, once per object.
  MP_DECL void add_object(const handle_key& key, int fd);

  std::size_t first_;
  small_vector<handle_key, 4> keys_;
  small_vector<std::uint32_t, 2> offsets_;
  small_vector<object, 4> objects_;                                    // each object carried, once
  struct lookup_maps {
    std::unordered_map<handle_key, std::size_t, handle_key_hash> index;  // key -> objects_ index, past the limit
    std::unordered_map<int, handle_key> unknown;  // fd -> key by fstat, for handles that do not know theirs
  };
  /// Made only when needed: building and clearing two empty maps costs a task with a handle as much as a lookup.
  lookup_maps& maps() {
    if (!maps_) maps_ = std::make_unique<lookup_maps>();
    return *maps_;
  }
  std::unique_ptr<lookup_maps> maps_;
  handle_table* table_ = nullptr;
};

/// The handles of a one-chunk submission (chunk `first`) whose serialization filled `box`; null if it has none.
inline std::shared_ptr<submission_handles> handles_of(const fd_outbox& box, const char* caller, std::size_t first = 0) {
  if (box.fds.empty()) return nullptr;
  auto handles = std::make_shared<submission_handles>(first);
  handles->add_chunk(box, caller);
  return handles;
}

/// What travels with one message to a worker (its handle section, task.hpp): the keys of its descriptor list, the
/// keys dropped, and the descriptors the worker lacks (sent on its socket, as one fd frame whose bytes are keys).
/// A big payload's blob segment (`blob`, borrowed) rides in the same fd frame, after the handles' descriptors.
struct handle_plan {
  std::span<const handle_key> table;  // borrowed from the submission, alive while the plan is used
  std::vector<handle_key> drop;
  std::vector<handle_key> send;
  int blob = -1;
  /// `table` is the previous message's to this worker.
  bool same_table = false;
  bool empty() const noexcept { return table.empty() && drop.empty() && blob < 0; }
  /// Nothing changes for the worker: the message says "the previous handles" (task.hpp's reuse_handles), no section.
  bool reuses_previous() const noexcept { return same_table && drop.empty() && send.empty() && blob < 0; }
};

/// Parent: which shared objects one worker keeps. Guarded by the core mutex.
class worker_view {
 public:
  /// The plan for the next message to this worker, which carries `keys`; updates the view and takes or drops
  /// the table's references for what the worker will keep.
  MP_DECL handle_plan plan(std::span<const handle_key> keys, handle_table& table);
  /// The worker is gone: drops the references of everything it kept.
  MP_DECL void forget(handle_table& table) noexcept;
  std::size_t size() const noexcept { return kept_.size(); }

 private:
  std::unordered_map<handle_key, std::uint64_t, handle_key_hash> kept_;  // key -> last message that carried it
  std::uint64_t messages_ = 0;
  // The previous message's keys and their kept_ values: the next message usually carries the same handles, and
  // then needs no lookup. Valid while those keys are kept (only forget() erases a key a message just carried).
  small_vector<handle_key, 4> last_keys_;
  small_vector<std::uint64_t*, 4> last_uses_;
};

/// A task message's handle section: a few bytes in the usual case, built in place for each message to a worker.
using handle_section = small_vector<std::byte, 64>;

/// The handle section of a task message (a plan that does not reuse_previous()): handle_plan without `send`, plus
/// the count of fd frames to read first. 8 bytes of counts, then the keys.
MP_DECL void encode_handle_section(handle_section& out, const handle_plan& plan);

/// Parent: sends the descriptors a plan says the worker lacks. False if the socket failed (the worker is gone).
MP_DECL bool send_handles(int socket, const handle_plan& plan, const handle_table& table) noexcept;

/// Worker: the shared objects it received and what handles made of them (an fd_cache for import_fd/import_shared).
class worker_handles final : public fd_cache {
 public:
  /// Applies a message's handle section: reads the fd frame it announces from `socket`, drops what it says, and
  /// makes its descriptor list current; returns the payload's blob segment if the section announces one.
  /// SerializationError / ProcessError if it is malformed.
  MP_DECL unique_fd apply_section(std::span<const std::byte> section, int socket);
  /// A message without handles: nothing resolves.
  void clear_current() noexcept { current_.clear(); }
  int fd(std::uint32_t index) const override {
    return index < current_.size() && current_[index] != nullptr ? current_[index]->fd.get() : -1;
  }
  MP_DECL std::shared_ptr<void>* attachment(std::uint32_t index, std::type_index type) override;
  std::size_t size() const noexcept { return entries_.size(); }

 private:
  struct entry {
    unique_fd fd;
    std::vector<std::pair<std::type_index, std::shared_ptr<void>>> attached;
  };
  std::unordered_map<handle_key, entry, handle_key_hash> entries_;
  std::vector<entry*> current_;  // the current message's descriptor list (kept for a message reusing it)
};

}  // namespace mp::detail::pool

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/pool/handles.ipp>
#endif
