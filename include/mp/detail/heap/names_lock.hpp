// heap/names_lock: the lock over a SharedHeap's named objects (find_or_construct, find, destroy) — an RLock's state
// (detail/sync_state.hpp: robust, and re-entrant because a constructor run by find_or_construct may itself find
// or construct in the same heap) plus what a dead holder was doing.
// Why it knows more than a lock: Boost's index of names (a red-black tree in the heap) is written in a short span of
// each construct and destroy, which the holder marks, with the name. If the holder dies inside that span the index
// may be half-updated, so every later use of names throws an mp::Error naming that object; a death anywhere else
// (while running a constructor, say) leaves at most an unreachable block. Allocation is not affected either way:
// containers keep working.
// Lives in the heap's control block (heap/segment.hpp), constructed once by the heap's creator.
#pragma once

#include <sys/types.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <string_view>

#include <mp/detail/config.hpp>
#include <mp/detail/heap/test_seam.hpp>
#include <mp/detail/robust_mutex.hpp>
#include <mp/detail/sync_state.hpp>

namespace mp::detail::heap {

class names_lock {
 public:
  /// Acquires (again, if this thread holds it); throws mp::Error if a holder died while writing the index.
  void lock() {
    const bool reentry = state_.mutex.held_by_this_thread();
    lock_acquire(state_, true, {});
    if (reentry) return;
    if (state_.mutex.previous_owner_died()) settle_dead_holder();
    if (broken_.load(std::memory_order_relaxed) != 0) {
      lock_release(state_, true);
      throw_broken();
    }
    holder_ = this_thread_tid();
  }
  void unlock() { lock_release(state_, true); }

  /// Marks, for its lifetime, the span in which the holder lets Boost write the index entry of `name`.
  class writing {
   public:
    MP_DECL writing(names_lock& lock, std::string_view name) noexcept;
    ~writing() {
      std::atomic_signal_fence(std::memory_order_seq_cst);  // Boost's writes stay inside the span (memory_algorithm)
      lock_.writing_ = 0;
    }
    writing(const writing&) = delete;
    writing& operator=(const writing&) = delete;

   private:
    names_lock& lock_;
  };

  /// Throws the mp::Error that says why names can no longer be used.
  [[noreturn]] MP_DECL void throw_broken() const;

 private:
  // After EOWNERDEAD: the dead holder left `writing_` set iff it died while Boost may have been writing the index.
  MP_DECL void settle_dead_holder() noexcept;

  static constexpr std::size_t name_capacity = 64;  // a longer name is kept truncated: it only serves the message

  lock_state state_;                         // the robust mutex and the holder's re-entry depth
  std::uint32_t writing_ = 0;                // guarded by state_: 1 while Boost may be writing the index
  pid_t holder_ = 0;                         // guarded by state_: the holding thread
  std::array<char, name_capacity> name_{};   // guarded by state_: the name being written (NUL-terminated)
  pid_t broken_by_ = 0;                      // guarded by state_: the thread that died writing
  std::array<char, name_capacity> broken_name_{};  // guarded by state_: the name it was writing
  std::atomic<std::uint32_t> broken_{0};     // set once, under state_, after broken_by_ and broken_name_
};

}  // namespace mp::detail::heap

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/heap/names_lock.ipp>
#endif
