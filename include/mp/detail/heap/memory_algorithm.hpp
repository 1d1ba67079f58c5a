// heap/memory_algorithm: how a SharedHeap hands out blocks — Boost.Interprocess's rbtree_best_fit (best fit, the free
// blocks in a red-black tree keyed by size) under mp's robust lock, so that a process killed while allocating
// neither wedges the others nor lets them build on a half-updated tree.
// Why the lock is taken here, around each call, rather than by rbtree_best_fit (whose mutex family is null): the
// base locks inside its own functions, so whoever locks next after a death cannot tell whether the dead holder had
// begun writing, and could refuse only by throwing through Boost's destructors. Here `writing_` marks exactly the
// span in which Boost may write its tree and block headers; a death outside it left nothing half-done.
// Blocks of up to 256 bytes come from slabs (heap/small_blocks.hpp): cheaper, and their bookkeeping writes are
// journaled, so a death while taking or freeing one is undone by the next holder (settle_dead_holder) instead of
// breaking the heap; `writing_` then marks only the base's own calls (a new slab, an emptied slab given back).
// Why a death inside that span breaks the heap for good: a torn red-black tree can send the next search into a
// loop or hand one block out twice. Boost's check_sanity() only sums the free sizes found by walking that same
// tree (which may loop), and a real check would need the allocator's private state — so we refuse instead:
// allocation throws mp::Error naming the cause, deallocation does nothing (a leak, never a throw from a
// destructor), and the objects already in the heap keep their contents.
// Layout: this object is the segment manager's base, at the start of the managed buffer; its own members follow
// the base's, so the base is told to keep that many more bytes (extra_hdr_bytes) ahead of its first block.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include <boost/interprocess/mem_algo/rbtree_best_fit.hpp>
#include <boost/interprocess/offset_ptr.hpp>
#include <boost/interprocess/sync/mutex_family.hpp>

#include <mp/detail/config.hpp>
#include <mp/detail/heap/small_blocks.hpp>
#include <mp/detail/heap/test_seam.hpp>
#include <mp/detail/robust_mutex.hpp>

namespace mp::detail::heap {

class memory_algorithm
    : public boost::interprocess::rbtree_best_fit<boost::interprocess::null_mutex_family,
                                                  boost::interprocess::offset_ptr<void>> {
  using base = boost::interprocess::rbtree_best_fit<boost::interprocess::null_mutex_family,
                                                    boost::interprocess::offset_ptr<void>>;

 public:
  using size_type = base::size_type;

  /// Called by the segment manager's constructor, once, in the process that creates the heap.
  MP_DECL memory_algorithm(size_type size, size_type extra_hdr_bytes);
  MP_DECL static size_type get_min_size(size_type extra_hdr_bytes);

  // What the segment manager calls, each under the lock. allocate returns null when no block is large enough.
  void* allocate(size_type nbytes) {
    if (small_blocks::is_small(nbytes) && small_.enabled()) return allocate_small(nbytes);
    const call in(*this, op::allocate);
    void* block = base::allocate(nbytes);
    if (block == nullptr && release_spares()) block = base::allocate(nbytes);
    return block;
  }
  void* allocate_aligned(size_type nbytes, size_type alignment) {
    const call in(*this, op::allocate);
    void* block = base::allocate_aligned(nbytes, alignment);
    if (block == nullptr && release_spares()) block = base::allocate_aligned(nbytes, alignment);
    return block;
  }
  /// Frees; on a broken heap, does nothing (the block leaks).
  void deallocate(void* addr) noexcept {
    if (addr == nullptr || !enter(op::read)) return;
    if (small_.owns(addr)) {
      void* const emptied = small_.give_back(addr);
      small_.journal().commit();
      if (emptied != nullptr) {
        begin_writing(op::free);
        base::deallocate(emptied);
      }
    } else {
      begin_writing(op::free);
      base::deallocate(addr);
    }
    leave();
  }
  bool check_sanity() {
    const call in(*this, op::read);
    return base::check_sanity();
  }
  bool all_memory_deallocated() {
    const call in(*this, op::read);
    return base::all_memory_deallocated();
  }
  // size(ptr), get_size() and get_free_memory() read without the lock, as in the base.
  /// Usable bytes of an allocated block.
  size_type size(const void* ptr) const {
    return small_.owns(ptr) ? small_.size_of(ptr) : base::size(ptr);
  }
  /// Bytes not allocated: the base's free blocks and the room left in slabs.
  size_type get_free_memory() const { return base::get_free_memory() + small_.free_bytes(); }

  // The base's other entry points would run unlocked: no mp code calls them, and a Boost template that did would
  // fail to compile here rather than race.
  template <class T>
  T* allocation_command(boost::interprocess::allocation_type, size_type, size_type&, T*&) = delete;
  void* raw_allocation_command(boost::interprocess::allocation_type, size_type, size_type&, void*&, size_type) = delete;
  void allocate_many(size_type, size_type, multiallocation_chain&) = delete;
  void allocate_many(const size_type*, size_type, size_type, multiallocation_chain&) = delete;
  void deallocate_many(multiallocation_chain&) = delete;
  void grow(size_type) = delete;
  void shrink_to_fit() = delete;
  void zero_free_memory() = delete;

  /// True once a process died inside the allocator: every allocation throws, every deallocation does nothing.
  bool broken() const noexcept { return broken_.load(std::memory_order_acquire) != 0; }
  /// Throws the mp::Error that says why the heap is broken (what() names the dead thread and what it was doing).
  [[noreturn]] MP_DECL void throw_broken() const;

 private:
  enum class op : std::uint32_t { read, allocate, free };

  // One call into the base under the lock; throws throw_broken() if the heap is broken.
  class call {
   public:
    call(memory_algorithm& algorithm, op what) : algorithm_(algorithm) {
      if (!algorithm_.enter(what)) algorithm_.throw_broken();
    }
    ~call() { algorithm_.leave(); }
    call(const call&) = delete;
    call& operator=(const call&) = delete;

   private:
    memory_algorithm& algorithm_;
  };

  // Takes the lock; false (and the lock released) if the heap is broken. `what` != read marks the writing span.
  bool enter(op what) {
    lock_.lock();
    if (lock_.previous_owner_died()) settle_dead_holder();
    if (broken_.load(std::memory_order_relaxed) != 0) {
      lock_.unlock();
      return false;
    }
    holder_ = this_thread_tid();
    const seam_hook hook = the_seam_hook().load(std::memory_order_relaxed);
    if (hook != nullptr) hook(seam_point::allocator_locked);
    if (what != op::read) begin_writing(what);
    return true;
  }
  // Marks the span in which the base may write its tree (`what`: allocate or free), until leave().
  void begin_writing(op what) noexcept {
    writing_ = what;
    // A SIGKILL lands between two instructions of the program as compiled: the fences keep the compiler from
    // moving Boost's writes out of the span that `writing_` marks (the next holder reads it only after the death).
    std::atomic_signal_fence(std::memory_order_seq_cst);
    const seam_hook hook = the_seam_hook().load(std::memory_order_relaxed);
    if (hook != nullptr) hook(seam_point::allocator_writing);
  }
  void end_writing() noexcept {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    writing_ = op::read;
  }
  void leave() noexcept {
    end_writing();
    lock_.unlock();
  }

  // A block of at most small_blocks::largest bytes: from a slab with room, else from a new slab (refill).
  void* allocate_small(size_type nbytes) {
    const call in(*this, op::read);
    void* block = small_.take(nbytes);
    if (block == nullptr) block = refill(nbytes);
    small_.journal().commit();
    return block;
  }
  // A new slab from the base and a block from it; when the base has no slab's room (or the slab would lie beyond
  // the bitmap), a block of the base's own. Null if the base has no room at all.
  MP_DECL void* refill(size_type nbytes) noexcept;
  // When the base is out of room: gives every size's spare slab back to it. True if there was one. Called in the
  // writing span (begin_writing(op::allocate)) and leaves it so.
  MP_DECL bool release_spares() noexcept;

  // After EOWNERDEAD: the dead holder left `writing_` set iff it died where Boost may have been writing.
  MP_DECL void settle_dead_holder() noexcept;

  robust_mutex lock_;
  op writing_ = op::read;                 // guarded by lock_: the holder's op while Boost may write, else read
  pid_t holder_ = 0;                      // guarded by lock_: the thread in the allocator (named if it dies there)
  op broken_op_ = op::read;               // guarded by lock_: what the thread that broke the heap was doing
  pid_t broken_by_ = 0;                   // guarded by lock_: that thread
  std::atomic<std::uint32_t> broken_{0};  // set once, under lock_, after broken_op_ and broken_by_
  small_blocks small_;                    // guarded by lock_ (its hints owns(), free_bytes() read without it)
};

}  // namespace mp::detail::heap

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/heap/memory_algorithm.ipp>
#endif
