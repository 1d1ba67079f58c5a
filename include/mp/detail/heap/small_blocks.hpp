// heap/small_blocks: blocks of up to 256 bytes (a map or list node, a short string) carved from 4 KiB slabs, and
// the undo journal that lets a process killed while taking or freeing one leave nothing half-done.
// Why slabs: Boost's rbtree_best_fit spends ~900 instructions per allocation (a search and a rebalance of its tree
// of free blocks) and 16 bytes of header per block; a slab hands out a block by popping its free list or bumping
// its carve mark (~20 writes, all in two cache lines), and a map<int,int> node takes 32 bytes instead of 48.
// Why a journal: the base tree is rebalanced in place, so a death inside it breaks the heap for good
// (heap/memory_algorithm.hpp); the few words a slab operation changes are each noted (address, old value) before
// they are written, so the next holder of the allocator's lock undoes a dead process's half-done operation and the
// heap goes on. Only the base allocator's own calls (a new slab, an emptied slab given back) can still break it.
// Layout: this object lives inside memory_algorithm, in shared memory; every link is an offset from it, so each
// process may map the heap anywhere. A slab is a base block of slab_usable bytes at an address that is a multiple of
// slab_bytes (mappings are page-aligned, so that holds in every process), its header first; a bitmap with one bit
// per page of the heap (1/32768 of it, set up by the heap's creator) tells a slab's page from any other, so
// deallocate() knows a small block without a header of its own. Each size keeps one emptied slab as a spare (a
// block taken and freed over and over would otherwise cost a slab from the base allocator each time); other emptied
// slabs go back to the base at once, and spares too when the base runs out (free_memory() counts a spare's page as
// free, so after freeing everything it is what it was before).
// Every member is called under the allocator's lock (memory_algorithm), and its writes go through the journal.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include <mp/detail/config.hpp>
#include <mp/detail/heap/test_seam.hpp>

namespace mp::detail::heap {

/// Notes (address, old value) of each word before it is written, so that the next user can undo the writes of an
/// operation its writer died in the middle of. Lives in shared memory; addresses are offsets from the journal.
class undo_journal {
 public:
  /// *word = value, after noting the old value.
  void set(std::int64_t& word, std::int64_t value) noexcept {
    entries_[count_] = entry{static_cast<std::int64_t>(reinterpret_cast<char*>(&word) - reinterpret_cast<char*>(this)),
                             word};
    // A SIGKILL lands between two instructions as compiled: the entry is complete before it counts, and it counts
    // before the word changes.
    std::atomic_signal_fence(std::memory_order_seq_cst);
    count_ = count_ + 1;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    word = value;
  }
  /// The operation is complete: its writes stay.
  void commit() noexcept {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    count_ = 0;
  }
  /// True if a writer died between its first set() and its commit().
  bool pending() const noexcept { return count_ != 0; }
  /// Restores the noted words, newest first (idempotent: a death during undo leaves it to the next user).
  void undo() noexcept {
    for (std::uint64_t i = count_; i-- > 0;) {
      *reinterpret_cast<std::int64_t*>(reinterpret_cast<char*>(this) + entries_[i].offset) = entries_[i].old;
    }
    commit();
  }

  /// The most words one operation writes (small_blocks::take_from_new: 14).
  static constexpr std::size_t capacity = 24;

 private:
  struct entry {
    std::int64_t offset;
    std::int64_t old;
  };
  std::uint64_t count_ = 0;
  entry entries_[capacity]{};
};

class small_blocks {
 public:
  static constexpr std::size_t largest = 256;  // bytes: larger requests go to the base allocator
  static constexpr std::size_t granule = 16;   // block sizes are multiples of this (the heap's alignment)
  static constexpr std::size_t classes = largest / granule;
  static constexpr std::size_t slab_bytes = 4096;
  /// What a slab asks the base for: 16 bytes less than a page, so that the next slab's block header (16 bytes) fits
  /// at the end of the page and slabs lie page after page (a whole page would leave a 4080-byte gap after each).
  static constexpr std::size_t slab_usable = slab_bytes - 16;
  static constexpr std::size_t header_bytes = 64;  // a slab's header, on a cache line of its own
  /// Heaps below this size keep no bitmap and no slabs (everything from the base allocator): there, a slab's page
  /// that stays in use splits the free space large blocks need (a 64 KiB heap then held a vector<char> of 15 KiB
  /// instead of 30 KiB).
  static constexpr std::size_t smallest_heap = 1024 * 1024;
  /// Pages beyond this many bytes of heap are not covered by the bitmap (requests that would need a slab there go
  /// to the base allocator): the bitmap of a 16 GiB heap is 512 KiB, zeroed when the heap is made.
  static constexpr std::size_t covered_bytes = std::size_t{1} << 34;

  /// Bytes of bitmap for a heap whose buffer (at `buffer`, `bytes` long) must be covered.
  MP_DECL static std::size_t bitmap_bytes(const void* buffer, std::size_t bytes) noexcept;
  /// In the heap's creator: the bitmap (bitmap_bytes of memory from the heap, zeroed here) covering that buffer.
  MP_DECL void init(void* bitmap, const void* buffer, std::size_t bytes) noexcept;

  bool enabled() const noexcept { return bitmap_ != 0; }
  static bool is_small(std::size_t bytes) noexcept { return bytes <= largest; }

  /// A block of `bytes` (<= largest) from a slab with room; null if no slab of its size has room.
  void* take(std::size_t bytes) noexcept {
    const std::size_t cls = class_of(bytes);
    if (room_[cls] == 0) return nullptr;
    return take_from(at(room_[cls]));
  }
  /// Makes `memory` (slab_usable bytes at a multiple of slab_bytes, from the base, which counted `cost` bytes for
  /// it) a slab for `bytes` and takes a block from it; null (and `memory` untouched) if the bitmap does not cover it.
  MP_DECL void* take_from_new(void* memory, std::size_t bytes, std::size_t cost) noexcept;
  /// Some size's spare slab, no longer a slab — the caller gives it back to the base after commit() — or null.
  MP_DECL void* take_spare() noexcept;

  /// True if `p` is a block from a slab (exact: the bitmap marks the slabs' pages, and no base block starts there).
  bool owns(const void* p) const noexcept {
    const std::size_t page = page_of(p);
    return page < pages_ && (bitmap()[page / 64] & bit_of(page)) != 0;
  }
  /// The usable bytes of a block that owns() says is small.
  std::size_t size_of(const void* p) const noexcept { return static_cast<std::size_t>(slab_of(p).size); }
  /// Frees a block owns() says is small. Returns its slab if that became empty and its size has a spare already —
  /// the caller gives it back to the base allocator after commit() — else null.
  MP_DECL void* give_back(void* p) noexcept;

  /// Bytes in slabs not handed out, and the base's bytes of the spares.
  std::size_t free_bytes() const noexcept { return static_cast<std::size_t>(free_bytes_); }
  undo_journal& journal() noexcept { return journal_; }

 private:
  struct slab {
    std::int64_t free;    // offset in the slab of its first free block (whose first word links the next), 0: none
    std::int64_t carved;  // offset in the slab of the first byte never handed out
    std::int64_t live;    // blocks handed out
    std::int64_t size;    // bytes of each block
    std::int64_t next;    // the list of slabs of this size with room: offsets from small_blocks, 0: none
    std::int64_t prev;
    std::int64_t listed;  // 1 while on that list
    std::int64_t cost;    // bytes the base allocator counts for the slab (what free_memory() counts for a spare)
  };
  static_assert(sizeof(slab) <= header_bytes);

  static std::size_t class_of(std::size_t bytes) noexcept { return bytes == 0 ? 0 : (bytes - 1) / granule; }
  static bool full(const slab& s) noexcept {
    return s.free == 0 && s.carved + s.size > static_cast<std::int64_t>(slab_usable);
  }
  std::int64_t offset_of(const void* p) const noexcept {
    return static_cast<std::int64_t>(static_cast<const char*>(p) - reinterpret_cast<const char*>(this));
  }
  slab& at(std::int64_t offset) const noexcept {
    return *reinterpret_cast<slab*>(const_cast<char*>(reinterpret_cast<const char*>(this)) + offset);
  }
  std::int64_t* bitmap() const noexcept { return reinterpret_cast<std::int64_t*>(&at(bitmap_)); }
  static std::int64_t bit_of(std::size_t page) noexcept { return std::int64_t{1} << (page % 64); }
  static std::int64_t capacity(std::int64_t size) noexcept {
    return static_cast<std::int64_t>(slab_usable - header_bytes) / size * size;
  }
  // Pages counted from the page this object is on (the mapping's first page, or close to it).
  std::size_t page_of(const void* p) const noexcept {
    const auto origin = reinterpret_cast<std::uintptr_t>(this) / slab_bytes;
    const auto page = reinterpret_cast<std::uintptr_t>(p) / slab_bytes;
    return page < origin ? pages_ : static_cast<std::size_t>(page - origin);  // below: not covered, not a slab
  }
  slab& slab_of(const void* p) const noexcept {
    return *reinterpret_cast<slab*>(reinterpret_cast<std::uintptr_t>(p) / slab_bytes * slab_bytes);
  }

  void* take_from(slab& s) noexcept {
    char* const base = reinterpret_cast<char*>(&s);
    if (s.live == 0) {  // the spare (or a new slab, which take_from_new made one): a spare no more
      journal_.set(spare_[class_of(static_cast<std::size_t>(s.size))], 0);
      journal_.set(free_bytes_, free_bytes_ + capacity(s.size) - s.cost);
    }
    std::int64_t block;
    if (s.free != 0) {
      block = s.free;
      journal_.set(s.free, *reinterpret_cast<const std::int64_t*>(base + block));
    } else {
      block = s.carved;
      journal_.set(s.carved, block + s.size);
    }
    journal_.set(s.live, s.live + 1);
    const seam_hook hook = the_seam_hook().load(std::memory_order_relaxed);
    if (hook != nullptr) hook(seam_point::small_blocks_writing);
    journal_.set(free_bytes_, free_bytes_ - s.size);
    if (full(s)) unlink(s);
    return base + block;
  }
  MP_DECL void link(slab& s) noexcept;
  MP_DECL void unlink(slab& s) noexcept;

  std::int64_t room_[classes]{};   // per size, the first slab with room (offset from this), 0: none
  std::int64_t spare_[classes]{};  // per size, its empty slab (also on the room list), 0: none
  std::int64_t free_bytes_ = 0;    // bytes in non-empty slabs not handed out, plus the spares' costs
  std::int64_t bitmap_ = 0;       // offset from this of the bitmap of slab pages, 0: no slabs (a small heap)
  std::size_t pages_ = 0;         // pages the bitmap covers, from this object's page
  undo_journal journal_;
};

}  // namespace mp::detail::heap

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/heap/small_blocks.ipp>
#endif
