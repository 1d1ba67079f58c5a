// Tests of mp/sync.hpp (and the detail::robust_mutex under it), across real processes, under every start method
// (ctest runs each test with MP_START_METHOD=fork, spawn and forkserver): children get the primitives, note pipes
// and test segments as Process arguments, never through captures.
// Processes synchronize through the primitives under test or through pipes, never through sleeps; a short
// timeout appears only where the test asserts that something does NOT happen.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <fstream>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/robust_mutex.hpp>
#include <mp/detail/shm_segment.hpp>
#include <mp/detail/sync_state.hpp>
#include <mp/detail/unique_fd.hpp>
#include <mp/process.hpp>
#include <mp/shared.hpp>
#include <mp/sync.hpp>

#include "support/child_process.hpp"

namespace {

using namespace std::chrono_literals;
using namespace mp_test;

// Waits (observing, not synchronizing) until `process` sleeps in the kernel with `registered()` true: the state a
// lost wake-up would strand it in.
template <class Pred>
bool wait_until_asleep(const mp::Process& process, Pred registered) {
  auto asleep = [&] {
    std::ifstream stat("/proc/" + std::to_string(process.pid()) + "/stat");
    std::string line;
    std::getline(stat, line);
    const auto state = line.rfind(')') + 2;
    return registered() && line.size() > state && line[state] == 'S';
  };
  const auto limit = std::chrono::steady_clock::now() + 5s;
  while (!asleep() && std::chrono::steady_clock::now() < limit) std::this_thread::sleep_for(1ms);
  return asleep();
}

/// A test's shared segment as a Process argument (its memfd crosses as a descriptor); the child maps it with map().
template <class T>
struct segment_of : mp_test::fd_argument {
  /// Maps the segment in this process (for the rest of its life: a child ends with _exit) and returns its T.
  T* map() const {
    auto* segment = new mp::detail::shm_segment(
        mp::detail::shm_segment::from_fd(mp::detail::unique_fd(::dup(fd)), "segment_of"));
    return static_cast<T*>(segment->data());
  }
};

// A robust_mutex and a counter in a fresh shared segment.
struct shared_mutex_block {
  struct layout {
    mp::detail::robust_mutex mutex;
    std::int64_t counter = 0;
  };
  shared_mutex_block() : segment(mp::detail::shm_segment::create(sizeof(layout), "robust_mutex_test")) {
    block = new (segment.data()) layout();
  }
  segment_of<layout> handle() const { return {segment.fd()}; }
  mp::detail::shm_segment segment;
  layout* block;
};
using mutex_block = segment_of<shared_mutex_block::layout>;

/// A child that takes the shared mutex, posts `locked`, and unlocks once `release` has a note.
void hold_until_released(mutex_block shared, note_end locked, note_end release) {
  auto* block = shared.map();
  block->mutex.lock();
  locked.post();
  release.wait();
  block->mutex.unlock();
}

}  // namespace

// ---- detail::robust_mutex ---------------------------------------------------------------------------------

TEST_CASE("robust_mutex gives exactly 400000 for 4 processes x 100000 increments", "[robust_mutex]") {
  shared_mutex_block shared;
  auto* block = shared.block;
  std::vector<mp::Process> children;
  for (int i = 0; i < 4; ++i) {
    children.push_back(start(
        [](mutex_block shared) {
          auto* block = shared.map();
          for (int n = 0; n < 100'000; ++n) {
            block->mutex.lock();
            block->counter = block->counter + 1;
            block->mutex.unlock();
          }
        },
        shared.handle()));
  }
  for (auto& child : children) CHECK(finish(child) == 0);
  CHECK(block->counter == 400'000);
}

TEST_CASE("robust_mutex try_lock and try_lock_until fail while another process holds it", "[robust_mutex]") {
  shared_mutex_block shared;
  auto* block = shared.block;
  note_pipe locked, release;
  auto holder = start(hold_until_released, shared.handle(), locked.writer(), release.reader());
  REQUIRE(locked.wait());
  CHECK(block->mutex.locked_hint());
  CHECK_FALSE(block->mutex.held_by_this_thread());
  CHECK_FALSE(block->mutex.try_lock());
  const auto start_time = std::chrono::steady_clock::now();
  CHECK_FALSE(block->mutex.try_lock_until(mp::detail::deadline_after(50ms)));
  CHECK(std::chrono::steady_clock::now() - start_time >= 50ms);
  release.post();
  CHECK(finish(holder) == 0);
  CHECK(block->mutex.try_lock());
  CHECK(block->mutex.held_by_this_thread());
  CHECK_FALSE(block->mutex.previous_owner_died());
  block->mutex.unlock();
  CHECK_FALSE(block->mutex.locked_hint());
}

TEST_CASE("robust_mutex passes to a waiter within 3 s when its holder is SIGKILLed", "[robust_mutex]") {
  shared_mutex_block shared;
  auto* block = shared.block;
  note_pipe locked;
  auto holder = start(
      [](mutex_block shared, note_end locked) {
        auto* block = shared.map();
        block->mutex.lock();
        block->counter = -1;  // a half-updated state the next holder must repair
        locked.post();
        hang();
      },
      shared.handle(), locked.writer());
  REQUIRE(locked.wait());

  SECTION("a waiter already blocked in another process") {
    note_pipe waiting;
    mp::Semaphore got(0);
    auto waiter = start(
        [](mutex_block shared, note_end waiting, mp::Semaphore got) {
          auto* block = shared.map();
          waiting.post();
          child_check(block->mutex.try_lock_until(mp::detail::deadline_after(5s)));  // the hang detector
          got.release();
          child_check(block->mutex.previous_owner_died());
          child_check(block->counter == -1);
          block->counter = 0;
          block->mutex.unlock();
          child_check(!block->mutex.previous_owner_died());
        },
        shared.handle(), waiting.writer(), got);
    REQUIRE(waiting.wait());
    // Timed: the kill to the waiter's note that it holds the mutex, not the exits and reaps (slow on a loaded
    // machine); 3 s stays below the waiter's 5 s deadline.
    const auto killed_at = std::chrono::steady_clock::now();
    holder.kill();
    CHECK(got.acquire(10s));
    CHECK(std::chrono::steady_clock::now() - killed_at < 3s);
    CHECK(finish(holder) == -SIGKILL);
    CHECK(finish(waiter) == 0);
    CHECK(block->counter == 0);
  }
  SECTION("the next lock() after the death") {
    holder.kill();
    CHECK(finish(holder) == -SIGKILL);
    block->mutex.lock();
    CHECK(block->mutex.previous_owner_died());
    CHECK(block->counter == -1);
    block->counter = 0;
    block->mutex.unlock();
    block->mutex.lock();
    CHECK_FALSE(block->mutex.previous_owner_died());
    block->mutex.unlock();
  }
}

TEST_CASE("robust_mutex: every lock a SIGKILLed process held passes on, however it took and released them",
          "[robust_mutex]") {
  // robust_mutex links a held mutex into the thread's robust list itself (its fast path) or lets glibc do it (a
  // contended lock): the kernel finds the locks a dead thread held only through that list, so it must stay whole
  // across both ways of locking and releases out of order.
  struct layout {
    mp::detail::robust_mutex mutexes[5];
  };
  auto segment = mp::detail::shm_segment::create(sizeof(layout), "robust_mutex_test");
  auto* block = new (segment.data()) layout();
  auto& contended = block->mutexes[4];
  contended.lock();  // the child's lock() of it sleeps, then takes it through glibc
  note_pipe locking, locked;
  auto holder = start(
      [](segment_of<layout> shared, note_end locking, note_end locked) {
        auto* block = shared.map();
        for (int i = 0; i < 4; ++i) block->mutexes[i].lock();
        block->mutexes[1].unlock();  // from the middle of the list
        block->mutexes[3].unlock();  // from its front
        block->mutexes[1].lock();
        locking.post();
        block->mutexes[4].lock();
        locked.post();
        hang();
      },
      segment_of<layout>{segment.fd()}, locking.writer(), locked.writer());
  REQUIRE(locking.wait());
  auto& word = reinterpret_cast<pthread_mutex_t*>(&contended)->__data.__lock;
  REQUIRE(wait_until_asleep(holder, [&] { return (__atomic_load_n(&word, __ATOMIC_SEQ_CST) & FUTEX_WAITERS) != 0; }));
  contended.unlock();  // wakes the child
  REQUIRE(locked.wait());
  holder.kill();
  CHECK(finish(holder) == -SIGKILL);
  for (int i = 0; i < 5; ++i) {
    auto& mutex = block->mutexes[i];
    INFO("mutex " << i);
    REQUIRE(mutex.try_lock_until(mp::detail::deadline_after(5s)));
    CHECK(mutex.previous_owner_died() == (i != 3));
    mutex.unlock();
    CHECK_FALSE(mutex.locked_hint());
  }
}

TEST_CASE("robust_mutex: a sleeper whose wake-up a dead waiter consumed still gets the lock", "[robust_mutex]") {
  // Found by tests/faults (Lock holders killed at random points, 2 wedges in 50 sanitizer runs): glibc's unlock
  // clears FUTEX_WAITERS and wakes one waiter, which sets the bit again only if it lives; killed after the wake-up
  // while a trylock took the lock, it leaves the other sleepers with nobody to wake them.
  shared_mutex_block shared;
  auto* block = shared.block;
  block->mutex.lock();
  auto waiter = start(
      [](mutex_block shared) {
        auto* block = shared.map();
        block->mutex.lock();
        block->counter = 7;
        block->mutex.unlock();
      },
      shared.handle());
  auto& word = reinterpret_cast<pthread_mutex_t*>(&block->mutex)->__data.__lock;  // the robust futex word
  REQUIRE(wait_until_asleep(waiter, [&] { return (__atomic_load_n(&word, __ATOMIC_SEQ_CST) & FUTEX_WAITERS) != 0; }));
  __atomic_and_fetch(&word, ~static_cast<int>(FUTEX_WAITERS), __ATOMIC_SEQ_CST);  // what the dead waiter leaves
  block->mutex.unlock();  // sees no waiter: no wake-up
  const bool ended = waiter.join(5s);
  if (!ended) waiter.kill(), waiter.join();
  CHECK(ended);
  CHECK(block->counter == 7);
}

TEST_CASE("A Semaphore waiter looks again when its releaser died before waking it",
          "[semaphore][lost_wake]") {
  // A releaser SIGKILLed between raising the count and its futex_wake leaves a sleeping acquirer unwoken; the
  // count is there, so the waiter must find it on its own (bounded futex sleeps), not wait for a release that
  // never comes. Here the "dead releaser" raises the count of a semaphore in shared memory without waking.
  auto segment = mp::detail::shm_segment::create(sizeof(mp::detail::semaphore_state), "mp-test-semaphore");
  auto* state = new (segment.data()) mp::detail::semaphore_state(0, 0);
  auto waiter = start(
      [](segment_of<mp::detail::semaphore_state> shared) {
        child_check(mp::detail::semaphore_acquire(*shared.map(), {}), "acquired");
      },
      segment_of<mp::detail::semaphore_state>{segment.fd()});
  REQUIRE(wait_until_asleep(waiter, [&] { return state->sleepers.load() == 1; }));
  state->value.fetch_add(1);  // what the dead releaser did before it could wake anybody
  const bool ended = waiter.join(5s);
  if (!ended) waiter.kill(), waiter.join();
  CHECK(ended);
  CHECK(waiter.exitcode() == 0);
  CHECK(state->value.load() == 0);
}

TEST_CASE("robust_mutex refuses a release by a process that does not hold it", "[robust_mutex]") {
  shared_mutex_block shared;
  auto* block = shared.block;
  CHECK_THROWS_WITH(block->mutex.unlock(), Catch::Contains("does not hold"));
  note_pipe locked, release;
  auto holder = start(hold_until_released, shared.handle(), locked.writer(), release.reader());
  REQUIRE(locked.wait());
  CHECK_THROWS_AS(block->mutex.unlock(), mp::Error);
  release.post();
  CHECK(finish(holder) == 0);
}

TEST_CASE("robust_mutex relocked by its holder throws instead of deadlocking", "[robust_mutex]") {
  shared_mutex_block shared;
  auto* block = shared.block;
  block->mutex.lock();
  CHECK_FALSE(block->mutex.try_lock());
  CHECK_THROWS_WITH(block->mutex.lock(), Catch::Contains("already holds"));
  CHECK_FALSE(block->mutex.try_lock_until(mp::detail::deadline_after(10ms)));
  block->mutex.unlock();
}

TEST_CASE("this_thread_tid is refreshed in a forked child", "[robust_mutex]") {
  const pid_t parent_tid = mp::detail::this_thread_tid();
  CHECK(parent_tid == static_cast<pid_t>(::gettid()));
  auto child = start(
      [](pid_t parent_tid) {
        child_check(mp::detail::this_thread_tid() != parent_tid);
        child_check(mp::detail::this_thread_tid() == static_cast<pid_t>(::gettid()));
      },
      parent_tid);
  CHECK(finish(child) == 0);
}

// ---- Lock and RLock ---------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("Lock gives exactly 400000 for 4 processes x 100000 increments", "[lock]", mp::Lock, mp::RLock) {
  TestType lock;
  mp::RawValue<std::int64_t> counter(0);
  std::vector<mp::Process> children;
  for (int i = 0; i < 4; ++i) {
    children.push_back(start(
        [](TestType lock, mp::RawValue<std::int64_t> counter) {
          for (int n = 0; n < 100'000; ++n) {
            std::lock_guard guard(lock);
            counter.value() = counter.value() + 1;
          }
        },
        lock, counter));
  }
  for (auto& child : children) CHECK(finish(child) == 0);
  CHECK(counter.value() == 400'000);
}

namespace {

/// A child that acquires `lock`, posts `locked`, and releases it once `release` has a note.
template <class L>
void hold_lock_until_released(L lock, note_end locked, note_end release) {
  lock.acquire();
  locked.post();
  release.wait();
  lock.release();
}

}  // namespace

TEMPLATE_TEST_CASE("Lock acquire, try_acquire and acquire(timeout) see a holder in another process", "[lock]",
                   mp::Lock, mp::RLock) {
  TestType lock;
  note_pipe locked, release;
  auto holder = start(hold_lock_until_released<TestType>, lock, locked.writer(), release.reader());
  REQUIRE(locked.wait());
  CHECK(lock.locked());
  CHECK_FALSE(lock.try_acquire());
  CHECK_FALSE(lock.try_lock());
  const auto began = std::chrono::steady_clock::now();
  CHECK_FALSE(lock.acquire(30ms));
  CHECK(std::chrono::steady_clock::now() - began >= 30ms);
  release.post();
  CHECK(lock.acquire(10s));  // returns as soon as the holder releases
  CHECK(lock.locked());
  CHECK_FALSE(lock.owner_died());
  lock.release();
  CHECK(finish(holder) == 0);
  CHECK_FALSE(lock.locked());
}

TEMPLATE_TEST_CASE("Lock works with std::lock_guard, std::unique_lock and std::scoped_lock", "[lock]", mp::Lock,
                   mp::RLock) {
  TestType a;
  TestType b;
  {
    std::lock_guard guard(a);
    CHECK(a.locked());
  }
  CHECK_FALSE(a.locked());
  {
    std::unique_lock guard(a, std::defer_lock);
    CHECK(guard.try_lock_for(10ms));
    guard.unlock();
    CHECK(guard.try_lock_until(std::chrono::system_clock::now() + 10ms));
  }
  {
    std::scoped_lock both(a, b);
    CHECK(a.locked());
    CHECK(b.locked());
    // Another process sees both held.
    auto child = start([](TestType a, TestType b) { child_check(!a.try_lock() && !b.try_lock()); }, a, b);
    CHECK(finish(child) == 0);
  }
  CHECK_FALSE(a.locked());
  CHECK_FALSE(b.locked());
}

TEMPLATE_TEST_CASE("Lock held by a SIGKILLed process passes to its waiter within 3 s with owner_died()", "[lock]",
                   mp::Lock, mp::RLock) {
  TestType lock;
  mp::RawValue<int> guarded(0);
  note_pipe locked, waiting;
  mp::Semaphore got(0);
  auto holder = start(
      [](TestType lock, mp::RawValue<int> guarded, note_end locked) {
        lock.acquire();
        if constexpr (std::is_same_v<TestType, mp::RLock>) lock.acquire();  // dies two levels deep
        guarded.value() = -1;
        locked.post();
        hang();
      },
      lock, guarded, locked.writer());
  REQUIRE(locked.wait());
  auto waiter = start(
      [](TestType lock, mp::RawValue<int> guarded, note_end waiting, mp::Semaphore got) {
        waiting.post();
        child_check(lock.acquire(5s));  // the hang detector
        got.release();
        child_check(lock.owner_died());
        guarded.value() = 0;  // repair
        lock.release();       // one level: the dead holder's depth died with it
        child_check(!lock.locked());
        lock.acquire();
        child_check(!lock.owner_died());
        lock.release();
      },
      lock, guarded, waiting.writer(), got);
  REQUIRE(waiting.wait());
  // Timed: the kill to the waiter's note that it holds the lock, not the exits and reaps (slow on a loaded machine);
  // 3 s stays below the waiter's 5 s deadline.
  const auto killed_at = std::chrono::steady_clock::now();
  holder.kill();
  CHECK(got.acquire(10s));
  CHECK(std::chrono::steady_clock::now() - killed_at < 3s);
  CHECK(finish(holder) == -SIGKILL);
  CHECK(finish(waiter) == 0);
  CHECK(guarded.value() == 0);
}

TEST_CASE("Lock acquired again by its holder throws instead of deadlocking - acquire(timeout) returns false",
          "[lock]") {
  mp::Lock lock;
  lock.acquire();
  CHECK_FALSE(lock.try_acquire());
  CHECK_THROWS_WITH(lock.acquire(), Catch::Contains("already holds") && Catch::Contains("RLock"));
  CHECK_FALSE(lock.acquire(20ms));
  lock.release();
  CHECK_THROWS_WITH(lock.release(), Catch::Contains("Lock::release") && Catch::Contains("does not hold"));
}

TEMPLATE_TEST_CASE("Lock released by a process that does not hold it throws mp::Error", "[lock]", mp::Lock,
                   mp::RLock) {
  TestType lock;
  note_pipe locked, release;
  auto holder = start(hold_lock_until_released<TestType>, lock, locked.writer(), release.reader());
  REQUIRE(locked.wait());
  CHECK_THROWS_WITH(lock.release(), Catch::Contains("does not hold"));
  CHECK(lock.locked());  // the holder still holds it
  release.post();
  CHECK(finish(holder) == 0);
}

TEST_CASE("Lock excludes threads of one process too", "[lock]") {
  mp::Lock lock;
  long counter = 0;
  auto work = [&] {
    for (int i = 0; i < 50'000; ++i) {
      std::lock_guard guard(lock);
      counter = counter + 1;
    }
  };
  std::thread a(work), b(work);
  a.join();
  b.join();
  CHECK(counter == 100'000);
}

TEST_CASE("RLock is re-entrant: the owner's last release frees it for other processes", "[rlock]") {
  mp::RLock lock;
  lock.acquire();
  CHECK(lock.try_acquire());
  CHECK(lock.acquire(1ms));
  CHECK(lock.is_owned());
  for (int level = 3; level > 0; --level) {
    auto child = start([](mp::RLock lock) { child_check(!lock.try_acquire() && !lock.is_owned()); }, lock);
    CHECK(finish(child) == 0);
    lock.release();
  }
  CHECK_FALSE(lock.locked());
  CHECK_FALSE(lock.is_owned());
  auto child = start(
      [](mp::RLock lock) {
        child_check(lock.try_acquire());
        lock.release();
      },
      lock);
  CHECK(finish(child) == 0);
  CHECK_THROWS_WITH(lock.release(), Catch::Contains("RLock::release") && Catch::Contains("does not hold"));
}

// ---- Semaphore and BoundedSemaphore -----------------------------------------------------------------------

TEST_CASE("Semaphore counts releases from other processes and blocks at zero", "[semaphore]") {
  mp::Semaphore semaphore(0);
  CHECK(semaphore.get_value() == 0);
  CHECK_FALSE(semaphore.try_acquire());
  CHECK_FALSE(semaphore.acquire(20ms));
  auto releaser = start(
      [](mp::Semaphore semaphore) {
        for (int i = 0; i < 3; ++i) semaphore.release();
      },
      semaphore);
  for (int i = 0; i < 3; ++i) CHECK(semaphore.acquire(10s));
  CHECK(finish(releaser) == 0);
  CHECK(semaphore.get_value() == 0);
  CHECK_FALSE(semaphore.acquire(20ms));
  semaphore.release();
  semaphore.release();
  CHECK(semaphore.get_value() == 2);
  semaphore.acquire();
  CHECK(semaphore.get_value() == 1);
}

TEST_CASE("Semaphore(2) admits at most 2 processes at a time", "[semaphore]") {
  mp::Semaphore semaphore(2);
  mp::RawValue<int> inside(0);
  mp::RawValue<int> most(0);
  std::vector<mp::Process> children;
  for (int i = 0; i < 4; ++i) {
    children.push_back(start(
        [](mp::Semaphore semaphore, mp::RawValue<int> inside, mp::RawValue<int> most) {
          for (int n = 0; n < 2'000; ++n) {
            std::lock_guard guard(semaphore);
            const int now = inside.fetch_add(1) + 1;
            int seen = most.load();
            while (now > seen && !most.compare_exchange(seen, now)) {
            }
            inside.fetch_sub(1);
          }
        },
        semaphore, inside, most));
  }
  for (auto& child : children) CHECK(finish(child) == 0);
  CHECK(most.load() >= 1);
  CHECK(most.load() <= 2);
  CHECK(semaphore.get_value() == 2);
}

TEST_CASE("Semaphore waiters blocked in several processes are each woken by one release", "[semaphore]") {
  mp::Semaphore semaphore(0);
  mp::Semaphore done(0);
  std::vector<mp::Process> children;
  for (int i = 0; i < 3; ++i) {
    children.push_back(start(
        [](mp::Semaphore semaphore, mp::Semaphore done) {
          semaphore.acquire();
          done.release();
        },
        semaphore, done));
  }
  for (int i = 0; i < 3; ++i) {
    semaphore.release();
    CHECK(done.acquire(10s));
  }
  for (auto& child : children) CHECK(finish(child) == 0);
  CHECK(semaphore.get_value() == 0);
}

TEST_CASE("Semaphore release is not lost to a waiter that was SIGKILLed", "[semaphore]") {
  mp::Semaphore semaphore(0);
  note_pipe waiting;
  auto victim = start(
      [](mp::Semaphore semaphore, note_end waiting) {
        waiting.post();
        semaphore.acquire();
        hang();
      },
      semaphore, waiting.writer());
  REQUIRE(waiting.wait());
  victim.kill();
  CHECK(finish(victim) == -SIGKILL);
  auto survivor = start([](mp::Semaphore semaphore) { child_check(semaphore.acquire(5s)); }, semaphore);
  semaphore.release();
  CHECK(finish(survivor) == 0);
}

TEST_CASE("Semaphore rejects a negative initial value", "[semaphore]") {
  CHECK_THROWS_WITH(mp::Semaphore(-1), Catch::Contains(">= 0") && Catch::Contains("-1"));
  CHECK_THROWS_AS(mp::BoundedSemaphore(0), mp::Error);
}

TEST_CASE("BoundedSemaphore release above its initial value throws mp::Error", "[semaphore]") {
  mp::BoundedSemaphore semaphore(2);
  CHECK_THROWS_WITH(semaphore.release(), Catch::Contains("released too many times") && Catch::Contains("2"));
  CHECK(semaphore.get_value() == 2);
  semaphore.acquire();
  auto child = start(
      [](mp::BoundedSemaphore semaphore) {
        semaphore.release();  // back to 2: allowed
        try {
          semaphore.release();
        } catch (const mp::Error&) {
          return;
        }
        throw std::runtime_error("over-release did not throw");
      },
      semaphore);
  CHECK(finish(child) == 0);
  CHECK(semaphore.get_value() == 2);
}

// ---- Condition --------------------------------------------------------------------------------------------

namespace {

// n processes each register as waiters (posting `registered` while holding the lock), wait untimed, then post
// `woken`. Once the parent has acquired `registered` n times and then taken the lock, all n are inside wait().
std::vector<mp::Process> start_condition_waiters(mp::Condition condition, mp::Semaphore registered,
                                                 mp::Semaphore woken, int n) {
  std::vector<mp::Process> waiters;
  for (int i = 0; i < n; ++i) {
    waiters.push_back(start(
        [](mp::Condition condition, mp::Semaphore registered, mp::Semaphore woken) {
          std::unique_lock guard(condition);
          registered.release();
          condition.wait();
          woken.release();
        },
        condition, registered, woken));
  }
  for (int i = 0; i < n; ++i) REQUIRE(registered.acquire(10s));
  return waiters;
}

}  // namespace

TEST_CASE("Condition notify wakes one waiter, notify(2) two, notify_all the rest", "[condition]") {
  mp::Condition condition;
  mp::Semaphore registered(0), woken(0);
  auto waiters = start_condition_waiters(condition, registered, woken, 5);
  auto notify = [&](auto how) {
    std::lock_guard guard(condition);
    how();
  };
  notify([&] { condition.notify(); });
  CHECK(woken.acquire(10s));
  CHECK_FALSE(woken.acquire(50ms));  // exactly one
  notify([&] { condition.notify(2); });
  CHECK(woken.acquire(10s));
  CHECK(woken.acquire(10s));
  CHECK_FALSE(woken.acquire(50ms));  // exactly two more
  notify([&] { condition.notify_all(); });
  CHECK(woken.acquire(10s));
  CHECK(woken.acquire(10s));
  for (auto& waiter : waiters) CHECK(finish(waiter) == 0);
  CHECK(woken.get_value() == 0);
}

TEST_CASE("Condition notify does not wake a waiter that started waiting after it", "[condition]") {
  mp::Condition condition;
  mp::Semaphore registered(0), woken(0);
  auto first = start_condition_waiters(condition, registered, woken, 1);
  {
    std::lock_guard guard(condition);
    condition.notify();
    // A second waiter registers after the notify, while the first may not have taken its wake-up yet.
    first.push_back(start(
        [](mp::Condition condition, mp::Semaphore registered) {
          std::unique_lock lock(condition);
          registered.release();
          child_check(!condition.wait(100ms));
        },
        condition, registered));
  }
  CHECK(woken.acquire(10s));
  for (auto& waiter : first) CHECK(finish(waiter) == 0);
}

TEST_CASE("Condition wait(timeout) returns false once it runs out and holds the lock again", "[condition]") {
  mp::Lock lock;
  mp::Condition condition(lock);
  std::unique_lock guard(condition);
  const auto began = std::chrono::steady_clock::now();
  CHECK_FALSE(condition.wait(30ms));
  CHECK(std::chrono::steady_clock::now() - began >= 30ms);
  CHECK(lock.locked());
  auto child = start([](mp::Lock lock) { child_check(!lock.try_acquire()); }, lock);
  CHECK(finish(child) == 0);
  // After a timed-out wait a later notify has no stale waiter to count.
  condition.notify();
  CHECK_FALSE(condition.wait(1ms));
}

TEST_CASE("Condition wait_for sees a predicate made true by another process", "[condition]") {
  mp::Condition condition;
  mp::RawValue<int> state(0);
  std::unique_lock guard(condition);
  auto setter = start(
      [](mp::Condition condition, mp::RawValue<int> state) {
        for (int step = 1; step <= 3; ++step) {
          std::lock_guard lock(condition);
          state.value() = step;
          condition.notify_all();
        }
      },
      condition, state);
  CHECK(condition.wait_for([&] { return state.value() == 3; }, 10s));
  CHECK_FALSE(condition.wait_for([&] { return state.value() == 4; }, 20ms));
  CHECK(condition.wait_for([&] { return state.value() == 3; }));
  guard.unlock();
  CHECK(finish(setter) == 0);
}

TEST_CASE("Condition wait releases every level of its RLock and restores them", "[condition]") {
  mp::RLock lock;
  mp::Condition condition(lock);
  mp::Event inside;
  lock.acquire();
  lock.acquire();
  auto notifier = start(
      [](mp::Condition condition, mp::Event inside) {
        // Only possible if the waiter released both levels.
        std::lock_guard guard(condition);
        inside.set();
        condition.notify();
      },
      condition, inside);
  CHECK(condition.wait(10s));
  CHECK(inside.is_set());
  CHECK(lock.is_owned());
  lock.release();
  CHECK(lock.is_owned());  // second level restored
  lock.release();
  CHECK_FALSE(lock.locked());
  CHECK(finish(notifier) == 0);
}

TEST_CASE("Condition wait and notify without holding the lock throw mp::Error", "[condition]") {
  mp::Condition condition;
  CHECK_THROWS_WITH(condition.wait(), Catch::Contains("Condition::wait") && Catch::Contains("not held"));
  CHECK_THROWS_WITH(condition.wait(1ms), Catch::Contains("not held"));
  CHECK_THROWS_WITH(condition.notify(), Catch::Contains("Condition::notify"));
  CHECK_THROWS_WITH(condition.notify_all(), Catch::Contains("Condition::notify_all"));
}

TEST_CASE("Condition waiter recovers when the notifier is SIGKILLed holding the lock", "[condition]") {
  mp::Condition condition;
  mp::Semaphore registered(0), woken(0);
  auto waiters = start_condition_waiters(condition, registered, woken, 1);
  mp::Semaphore notified(0);
  auto notifier = start(
      [](mp::Condition condition, mp::Semaphore notified) {
        condition.acquire();
        condition.notify();
        notified.release();
        hang();  // dies holding the lock: the waiter cannot reacquire it until the kernel frees it
      },
      condition, notified);
  REQUIRE(notified.acquire(10s));
  // Timed: the kill to the waiter's note that it holds the lock again, not the notifier's reap (slow on a loaded
  // machine). The 5 s wait is the hang detector.
  const auto killed_at = std::chrono::steady_clock::now();
  notifier.kill();
  CHECK(woken.acquire(5s));
  CHECK(std::chrono::steady_clock::now() - killed_at < 3s);
  CHECK(finish(notifier) == -SIGKILL);
  for (auto& waiter : waiters) CHECK(finish(waiter) == 0);
  // The lock is usable afterwards.
  CHECK(condition.acquire(1s));
  condition.release();
}

// ---- Event ------------------------------------------------------------------------------------------------

TEST_CASE("Event wait blocks until another process sets it - clear and is_set", "[event]") {
  mp::Event event;
  CHECK_FALSE(event.is_set());
  CHECK_FALSE(event.wait(20ms));
  mp::Semaphore woken(0);
  std::vector<mp::Process> waiters;
  for (int i = 0; i < 3; ++i) {
    waiters.push_back(start(
        [](mp::Event event, mp::Semaphore woken) {
          event.wait();
          woken.release();
        },
        event, woken));
  }
  auto setter = start([](mp::Event event) { event.set(); }, event);
  for (int i = 0; i < 3; ++i) CHECK(woken.acquire(10s));
  CHECK(finish(setter) == 0);
  for (auto& waiter : waiters) CHECK(finish(waiter) == 0);
  CHECK(event.is_set());
  CHECK(event.wait(0ms));
  event.wait();
  event.clear();
  CHECK_FALSE(event.is_set());
  CHECK_FALSE(event.wait(10ms));
}

TEST_CASE("Event waiters are not wedged by a waiter that was SIGKILLed", "[event]") {
  mp::Event event;
  note_pipe waiting;
  auto victim = start(
      [](mp::Event event, note_end waiting) {
        waiting.post();
        event.wait();
        hang();
      },
      event, waiting.writer());
  REQUIRE(waiting.wait());
  victim.kill();
  CHECK(finish(victim) == -SIGKILL);
  auto survivor = start([](mp::Event event) { child_check(event.wait(5s)); }, event);
  event.set();
  CHECK(finish(survivor) == 0);
}

// ---- Barrier ----------------------------------------------------------------------------------------------

// [fork]: a Barrier with an action cannot cross to spawn or forkserver (the action is the parent's code); that
// refusal is tested under "A Barrier with an action refuses to cross to a spawned child".
TEST_CASE("Barrier releases 3 processes together with distinct indices, action once per pass", "[barrier][fork]") {
  mp::RawValue<int> actions(0);
  mp::RawArray<int> index_seen(3 * 5);  // per pass, a count per index
  mp::Barrier barrier(3, [actions]() mutable { actions.fetch_add(1); });
  CHECK(barrier.parties() == 3);
  std::vector<mp::Process> children;
  for (int i = 0; i < 3; ++i) {
    children.push_back(start_forked([=]() mutable {
      for (int pass = 0; pass < 5; ++pass) {
        const int index = barrier.wait();
        child_check(index >= 0 && index < 3);
        index_seen.fetch_add(static_cast<std::size_t>(pass * 3 + index), 1);
        // Every party of this pass has arrived, so the action already ran for it.
        child_check(actions.load() >= pass + 1);
      }
    }));
  }
  for (auto& child : children) CHECK(finish(child) == 0);
  CHECK(actions.load() == 5);
  for (int count : index_seen) CHECK(count == 1);
  CHECK(barrier.n_waiting() == 0);
  CHECK_FALSE(barrier.broken());
}

TEST_CASE("Barrier without an action releases 3 processes together with distinct indices", "[barrier]") {
  mp::RawArray<int> index_seen(3 * 5);  // per pass, a count per index
  mp::Barrier barrier(3);
  std::vector<mp::Process> children;
  for (int i = 0; i < 3; ++i) {
    children.push_back(start(
        [](mp::Barrier barrier, mp::RawArray<int> index_seen) {
          for (int pass = 0; pass < 5; ++pass) {
            const int index = barrier.wait();
            child_check(index >= 0 && index < 3);
            index_seen.fetch_add(static_cast<std::size_t>(pass * 3 + index), 1);
          }
        },
        barrier, index_seen));
  }
  for (auto& child : children) CHECK(finish(child) == 0);
  for (int count : index_seen) CHECK(count == 1);
  CHECK(barrier.n_waiting() == 0);
  CHECK_FALSE(barrier.broken());
}

TEST_CASE("Barrier n_waiting counts processes inside wait()", "[barrier]") {
  mp::Barrier barrier(3);
  mp::Semaphore arrived(0);
  std::vector<mp::Process> children;
  for (int i = 0; i < 2; ++i) {
    children.push_back(start(
        [](mp::Barrier barrier, mp::Semaphore arrived) {
          arrived.release();
          barrier.wait();
        },
        barrier, arrived));
  }
  for (int i = 0; i < 2; ++i) REQUIRE(arrived.acquire(10s));
  // They have posted and are about to wait: n_waiting reaches 2 (bounded wait on the barrier's own state).
  CHECK(poll_until([&] { return barrier.n_waiting() == 2; }, 30s));
  CHECK(barrier.wait() == 2);
  for (auto& child : children) CHECK(finish(child) == 0);
  CHECK(barrier.n_waiting() == 0);
}

namespace {

/// A Barrier party that says it arrived, then expects its wait to break (abort, reset or another's timeout).
void wait_expecting_broken_barrier(mp::Barrier barrier, mp::Semaphore arrived) {
  arrived.release();
  try {
    barrier.wait();
  } catch (const mp::BrokenBarrierError&) {
    return;
  }
  throw std::runtime_error("the barrier wait did not break");
}

}  // namespace

TEST_CASE("Barrier abort breaks current and future waits until reset", "[barrier]") {
  mp::Barrier barrier(3);
  mp::Semaphore arrived(0);
  auto waiter = start(wait_expecting_broken_barrier, barrier, arrived);
  REQUIRE(arrived.acquire(10s));
  CHECK(poll_until([&] { return barrier.n_waiting() == 1; }, 30s));  // a current wait, not only a future one
  barrier.abort();
  CHECK(finish(waiter) == 0);
  CHECK(barrier.broken());
  CHECK(barrier.n_waiting() == 0);
  CHECK_THROWS_AS(barrier.wait(), mp::BrokenBarrierError);
  CHECK_THROWS_WITH(barrier.wait(1s), Catch::Contains("broken") && Catch::Contains("reset()"));
  barrier.reset();
  CHECK_FALSE(barrier.broken());
  // Usable again: three parties pass.
  std::vector<mp::Process> children;
  for (int i = 0; i < 2; ++i) children.push_back(start([](mp::Barrier barrier) { barrier.wait(); }, barrier));
  CHECK(barrier.wait(10s) >= 0);
  for (auto& child : children) CHECK(finish(child) == 0);
}

TEST_CASE("Barrier reset while a process waits gives it BrokenBarrierError and leaves the barrier usable",
          "[barrier]") {
  mp::Barrier barrier(2);
  mp::Semaphore arrived(0);
  auto waiter = start(wait_expecting_broken_barrier, barrier, arrived);
  REQUIRE(arrived.acquire(10s));
  REQUIRE(poll_until([&] { return barrier.n_waiting() == 1; }, 30s));
  barrier.reset();
  CHECK(finish(waiter) == 0);
  CHECK_FALSE(barrier.broken());
  auto partner = start([](mp::Barrier barrier) { barrier.wait(); }, barrier);
  CHECK(barrier.wait(10s) >= 0);
  CHECK(finish(partner) == 0);
}

TEST_CASE("Barrier wait(timeout) breaks the barrier for every party", "[barrier]") {
  mp::Barrier barrier(3);
  mp::Semaphore arrived(0);
  auto waiter = start(wait_expecting_broken_barrier, barrier, arrived);
  REQUIRE(arrived.acquire(10s));
  const auto began = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH(barrier.wait(30ms), Catch::Contains("timed out"));
  CHECK(std::chrono::steady_clock::now() - began >= 30ms);
  CHECK(finish(waiter) == 0);
  CHECK(barrier.broken());

  SECTION("the default timeout given at construction") {
    mp::Barrier with_default(2, {}, 20ms);
    CHECK_THROWS_AS(with_default.wait(), mp::BrokenBarrierError);
    CHECK(with_default.broken());
  }
}

// [fork]: a Barrier with an action cannot cross to spawn or forkserver (see above).
TEST_CASE("Barrier action that throws breaks the barrier and reaches its caller", "[barrier][fork]") {
  mp::Barrier barrier(2, [] { throw std::runtime_error("action failed"); });
  auto other = start_forked([barrier]() mutable {
    try {
      barrier.wait();
    } catch (const mp::BrokenBarrierError&) {
      return;
    }
    throw std::runtime_error("wait did not break");
  });
  bool action_error = false;
  bool broken_error = false;
  try {
    barrier.wait(10s);
  } catch (const mp::BrokenBarrierError&) {
    broken_error = true;  // the child arrived last and ran the action
  } catch (const std::runtime_error& error) {
    action_error = std::string(error.what()) == "action failed";
  }
  const int child_code = finish(other);
  CHECK((action_error || broken_error));
  CHECK(barrier.broken());
  // The child either got BrokenBarrierError (exit 0) or ran the failing action itself (exit 1).
  CHECK(child_code == (action_error ? 0 : 1));
}

TEST_CASE("Barrier rejects parties < 1", "[barrier]") {
  CHECK_THROWS_WITH(mp::Barrier(0), Catch::Contains("parties") && Catch::Contains("0"));
}

// ---- resources --------------------------------------------------------------------------------------------

namespace {
int open_fd_count() {
  int count = 0;
  for (int fd = 0; fd < 4096; ++fd) {
    if (::fcntl(fd, F_GETFD) != -1) ++count;
  }
  return count;
}
}  // namespace

TEST_CASE("Synchronization objects share one descriptor per 64 KiB and none once they are gone", "[resources]") {
  const int before = open_fd_count();
  {
    std::vector<mp::Lock> locks(500);
    std::vector<mp::RLock> rlocks(500);
    std::vector<mp::Condition> conditions(200);
    std::vector<mp::Event> events(200);
    mp::Semaphore semaphore(3);
    mp::Barrier barrier(2);
    // ~1600 objects of one or two cache lines each: about 2 chunks of 64 KiB.
    CHECK(open_fd_count() - before <= 3);
    // Distinct objects never share memory.
    locks[0].acquire();
    CHECK_FALSE(locks[1].locked());
    CHECK(locks[1].try_acquire());
    locks[1].release();
    locks[0].release();
  }
  CHECK(open_fd_count() == before);
}

TEST_CASE("Synchronization objects created in a forked child never overlap the parent's", "[resources]") {
  mp::Lock parent_lock;  // the parent keeps filling this chunk after the fork
  mp::Semaphore child_done(0);
  mp::Event parent_done;
  mp::RawValue<int> child_saw_locked(-1);
  auto child = start(
      [](mp::Semaphore child_done, mp::Event parent_done, mp::RawValue<int> child_saw_locked) {
        mp::Lock child_lock;  // must not be a piece the parent hands out next
        parent_done.wait();
        child_saw_locked.value() = child_lock.locked() ? 1 : 0;
        child_done.release();
      },
      child_done, parent_done, child_saw_locked);
  std::vector<mp::Lock> parent_locks(8);
  for (auto& lock : parent_locks) lock.acquire();
  parent_done.set();
  CHECK(child_done.acquire(10s));
  CHECK(finish(child) == 0);
  CHECK(child_saw_locked.value() == 0);
  for (auto& lock : parent_locks) lock.release();
}

// ---- start methods spawn and forkserver -------------------------------------------------------------------

namespace {

void spawned_sync_worker(mp::Lock lock, mp::RLock rlock, mp::Semaphore semaphore, mp::Event event,
                         mp::Condition condition, mp::Barrier barrier, mp::RawArray<int> counters,
                         mp::RawValue<int> notified) {
  for (int i = 0; i < 1000; ++i) {
    std::lock_guard guard(lock);
    counters[0] += 1;
  }
  for (int i = 0; i < 1000; ++i) {
    std::lock_guard outer(rlock);
    std::lock_guard inner(rlock);
    counters[1] += 1;
  }
  barrier.wait();
  semaphore.release();
  event.wait();
  std::lock_guard guard(condition);
  notified.value() += 1;
  condition.notify_all();
}

}  // namespace

TEST_CASE("Synchronization objects cross to children started by spawn and forkserver", "[spawn]") {
  const auto method = GENERATE(mp::StartMethod::spawn, mp::StartMethod::forkserver);
  mp::Lock lock;
  mp::RLock rlock;
  mp::Semaphore semaphore(0);
  mp::Event event;
  mp::Condition condition;
  mp::Barrier barrier(3, {}, 10s);
  mp::RawArray<int> counters(2);  // [0] guarded by lock, [1] by rlock
  mp::RawValue<int> notified(0);
  std::vector<mp::Process> children;
  for (int i = 0; i < 2; ++i) {
    children.emplace_back(mp::ProcessOptions{.start_method = method}, spawned_sync_worker, lock, rlock, semaphore,
                          event, condition, barrier, counters, notified);
    children.back().start();
  }
  for (int i = 0; i < 1000; ++i) {
    {
      std::lock_guard guard(lock);
      counters[0] += 1;
    }
    std::lock_guard guard(rlock);
    counters[1] += 1;
  }
  CHECK(barrier.wait() >= 0);
  CHECK(semaphore.acquire(10s));
  CHECK(semaphore.acquire(10s));
  event.set();
  {
    std::unique_lock guard(condition);
    CHECK(condition.wait_for([&] { return notified.value() == 2; }, 10s));
  }
  for (auto& child : children) CHECK(finish(child) == 0);
  CHECK(counters[0] == 3000);
  CHECK(counters[1] == 3000);
}

TEST_CASE("A Barrier with an action refuses to cross to a spawned child", "[spawn]") {
  const auto method = GENERATE(mp::StartMethod::spawn, mp::StartMethod::forkserver);
  mp::Barrier barrier(2, [] {});
  mp::Process child({.start_method = method}, [](mp::Barrier b) { b.wait(); }, barrier);
  CHECK_THROWS_AS(child.start(), mp::SerializationError);
  mp::Process again({.start_method = method}, [](mp::Barrier b) { b.wait(); }, barrier);
  CHECK_THROWS_WITH(again.start(), Catch::Contains("Barrier with an action"));
  CHECK(again.pid() == 0);  // refused before any process was started
}
