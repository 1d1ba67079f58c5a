// sync_state: definitions (see sync_state.hpp) — the paths that wait, and the messages.
#pragma once

#include <optional>
#include <string>

#include <mp/detail/sync_state.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

// ---- Lock and RLock ---------------------------------------------------------------------------------------

MP_DECL void throw_not_owner(bool recursive) {
  throw Error(std::string(recursive ? "RLock" : "Lock") +
              "::release: this thread does not hold the lock (release it in the thread that acquired it; a lock "
              "with a known owner is what lets mp recover it when that owner dies)");
}

// ---- Semaphore --------------------------------------------------------------------------------------------

MP_DECL bool semaphore_wait(semaphore_state& s, const deadline& until) {
  if (spin_until([&] { return s.value.load(std::memory_order_relaxed) > 0 && semaphore_try_take(s); }, short_spin)) {
    return true;
  }
  // Dekker with release(): we publish "sleeping" then look at the value; release() publishes the value then looks
  // at sleepers (both seq_cst), so at least one of us sees the other and no wake-up is lost.
  s.sleepers.fetch_add(1);
  bool taken = false;
  for (;;) {
    if (semaphore_try_take(s)) {
      taken = true;
      break;
    }
    if (!futex_wait_bounded(s.value, 0, until)) {
      taken = semaphore_try_take(s);
      break;
    }
  }
  s.sleepers.fetch_sub(1);
  return taken;
}

MP_DECL void throw_semaphore_overflow(std::uint32_t max) {
  throw Error("BoundedSemaphore::release: released too many times (the value is already at its bound " +
              std::to_string(max) + "); release only what you acquired");
}

// ---- Condition --------------------------------------------------------------------------------------------

MP_DECL void throw_condition_not_held(const char* call) {
  throw Error(std::string("Condition::") + call +
              ": the condition's lock is not held by this thread (acquire it first, e.g. "
              "std::unique_lock guard(condition))");
}

MP_DECL bool condition_take_token(condition_state& c) noexcept {
  std::uint64_t counts = c.counts.load();
  while ((counts >> 32) > 0) {
    if (c.counts.compare_exchange_weak(counts, counts - condition_token)) return true;
  }
  return false;
}

MP_DECL bool condition_wait(condition_state& c, lock_state& lock, bool recursive, const deadline& until) {
  if (!lock.mutex.held_by_this_thread()) throw_condition_not_held("wait");
  const std::uint32_t registered = c.seq.load();
  c.counts.fetch_add(1);  // one more sleeper, registered while holding the lock, before any later notify
  const std::uint32_t depth = lock.depth;  // an RLock's; unused for a Lock
  if (recursive) lock.depth = 0;
  lock.mutex.unlock();  // all levels of an RLock, as Python's Condition does

  bool notified = false;
  for (;;) {
    const std::uint32_t seen = c.seq.load();
    if (seen != registered && condition_take_token(c)) {
      notified = true;
      break;
    }
    if (expired(until)) break;
    if (spin_until([&] { return c.seq.load(std::memory_order_relaxed) != seen; }, short_spin)) continue;
    futex_wait_bounded(c.seq, seen, until);  // a timeout is noticed at the top of the loop
  }

  lock.mutex.lock();
  if (recursive) lock.depth = depth;
  if (!notified) {
    std::uint64_t counts = c.counts.load();
    for (;;) {
      const bool have_sleeper = (counts & 0xffff'ffffU) > 0;
      const std::uint64_t next = have_sleeper ? counts - 1 : counts - condition_token;
      if (c.counts.compare_exchange_weak(counts, next)) {
        notified = !have_sleeper;
        break;
      }
    }
  }
  return notified;
}

// ---- Event ------------------------------------------------------------------------------------------------

MP_DECL bool event_wait_slow(event_state& e, const deadline& until) {
  if (spin_until([&] { return e.flag.load(std::memory_order_acquire) != 0; }, short_spin)) return true;
  e.sleepers.fetch_add(1);
  while (e.flag.load() == 0) {
    if (!futex_wait_bounded(e.flag, 0, until)) break;
  }
  e.sleepers.fetch_sub(1);
  return e.flag.load() != 0;
}

// ---- Barrier ----------------------------------------------------------------------------------------------

MP_DECL void barrier_bump(barrier_state& b) noexcept {
  b.epoch.fetch_add(1);
  futex_wake(b.epoch);
}

// Ends the current generation as failed: its waiters get BrokenBarrierError. Holding b.mutex.
MP_DECL void barrier_fail_generation(barrier_state& b) noexcept {
  if (b.count > 0) {
    b.passed &= ~(std::uint64_t{1} << (b.generation % 64));
    ++b.generation;
    b.count = 0;
  }
  barrier_bump(b);
}

// Locks b.mutex; a holder that died mid-update may have left the counts half-written, so the barrier breaks.
MP_DECL void barrier_lock(barrier_state& b) {
  b.mutex.lock();
  if (b.mutex.previous_owner_died()) {
    b.broken = true;
    barrier_fail_generation(b);
  }
}

[[noreturn]] MP_DECL void throw_broken_barrier(const char* why) {
  throw BrokenBarrierError(std::string("Barrier::wait: the barrier is broken (") + why +
                           "); call reset() before using it again");
}

// Holding b.mutex: the result of a waiter of generation gen if that generation has ended.
MP_DECL std::optional<bool> barrier_outcome(const barrier_state& b, std::uint32_t gen) noexcept {
  if (b.generation == gen) return std::nullopt;
  if (b.generation - gen > 64) return true;  // too old for the history: it was not failed while we watched
  return ((b.passed >> (gen % 64)) & 1U) != 0;
}

MP_DECL int barrier_wait(barrier_state& b, const std::function<void()>& action, const deadline& until) {
  barrier_lock(b);
  if (b.broken) {
    b.mutex.unlock();
    throw_broken_barrier("aborted, timed out or reset while waited on");
  }
  const std::uint32_t gen = b.generation;
  const int index = b.count++;
  if (b.count == b.parties) {
    if (action) {
      try {
        action();
      } catch (...) {
        b.broken = true;
        barrier_fail_generation(b);
        b.mutex.unlock();
        throw;
      }
    }
    b.passed |= std::uint64_t{1} << (gen % 64);
    ++b.generation;
    b.count = 0;
    barrier_bump(b);
    b.mutex.unlock();
    return index;
  }
  for (;;) {
    const std::uint32_t seen = b.epoch.load();
    b.mutex.unlock();
    bool timed_out = false;
    if (!spin_until([&] { return b.epoch.load(std::memory_order_relaxed) != seen; }, short_spin)) {
      while (b.epoch.load() == seen) {
        if (!futex_wait_bounded(b.epoch, seen, until)) {
          timed_out = true;
          break;
        }
      }
    }
    barrier_lock(b);
    if (auto outcome = barrier_outcome(b, gen)) {
      b.mutex.unlock();
      if (*outcome) return index;
      throw_broken_barrier("aborted, reset, timed out or a party died while this process waited");
    }
    if (timed_out) {
      b.broken = true;  // as Python: a timeout breaks the barrier for every party
      barrier_fail_generation(b);
      b.mutex.unlock();
      throw_broken_barrier("this wait timed out");
    }
  }
}

MP_DECL void barrier_reset(barrier_state& b) {
  barrier_lock(b);
  barrier_fail_generation(b);
  b.broken = false;
  b.mutex.unlock();
}

MP_DECL void barrier_abort(barrier_state& b) {
  barrier_lock(b);
  b.broken = true;
  barrier_fail_generation(b);
  b.mutex.unlock();
}

MP_DECL int barrier_n_waiting(barrier_state& b) {
  barrier_lock(b);
  const int count = b.broken ? 0 : b.count;
  b.mutex.unlock();
  return count;
}

MP_DECL bool barrier_broken(barrier_state& b) {
  barrier_lock(b);
  const bool is_broken = b.broken;
  b.mutex.unlock();
  return is_broken;
}

}  // namespace mp::detail
