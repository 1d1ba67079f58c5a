// jobs: rank 0's side of each kind of work an mp::mpi::Pool runs — apply (one chunk), map/starmap (every chunk
// encoded at submission, results landing in place), imap/imap_unordered (chunks fed as the consumer pulls) — and
// the state an AsyncResult or an IMapIterator reads. Each implements engine.hpp's `job`; the bytes are mp::Pool's
// (pool/task.hpp), so a worker rank runs them with the same trampolines as a spawn worker of mp::Pool.
// All job state is guarded by the MPI lock (runtime.hpp) but `phase`, which waiters read without it.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <ranges>
#include <span>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <mp/detail/archive.hpp>
#include <mp/detail/mpi/engine.hpp>
#include <mp/detail/mpi/protocol.hpp>
#include <mp/detail/pool/imap_cursor.hpp>
#include <mp/detail/pool/task.hpp>
#include <mp/detail/process_child.hpp>
#include <mp/errors.hpp>

namespace mp::detail::mpi {

/// Compile-time check of a callable for another rank: its state must cross, and rank 0's captures may be references.
template <class F>
constexpr void check_callable() {
  pool::check_callable<F>();
  static_assert(target_crosses<F>(),
                "mp::mpi::Pool: the function cannot cross to another rank: only a function, a lambda without "
                "captures, or a function object with a serialize member can (a capture may be a reference, "
                "meaningless in another process); pass captured values as arguments");
}

/// Appends one argument as the element of a std::tuple<T...> would be written (a tuple is its elements in order),
/// from the caller's object: no copy of the arguments into a tuple first (a 16 MiB buffer is read once, not twice).
template <class T, class A>
void save_argument(output_archive& ar, const A& argument) {
  if constexpr (std::is_same_v<std::remove_cvref_t<A>, T>) ar(argument);
  else ar(T(argument));  // a string literal or char pointer travels as std::string
}

template <class R>
using stored_t = std::conditional_t<std::is_void_v<R>, std::monostate, R>;

/// What map over items of result E returns.
template <class E>
using map_result_t = std::conditional_t<std::is_void_v<E>, void, std::vector<E>>;

enum phase : int { queued = 0, running = 1, finished = 2, cancelled = 3 };

/// A job whose outcome an AsyncResult<R> reads once `phase` is finished or cancelled.
template <class R>
class result_job : public job {
 public:
  std::atomic<int> phase{queued};
  stored_t<R> value{};       // written before phase (release), read after (acquire)
  std::exception_ptr error;
  std::vector<std::function<void()>> callbacks;  // run once done, outside the MPI lock

  bool done() const noexcept { return phase.load(std::memory_order_acquire) >= finished; }
  void started(std::size_t) override {
    int expected = queued;
    phase.compare_exchange_strong(expected, running);
  }
  /// Publishes the outcome (under the MPI lock) and queues the callbacks.
  void finish(int how = finished) {
    phase.store(how, std::memory_order_release);
    for (auto& callback : callbacks) engine::defer(std::move(callback));
    callbacks.clear();
  }
};

/// Whether an apply's result R is one block (a std::vector of bitwise values, a std::string), received in place.
template <class R>
consteval bool block_result() {
  if constexpr (std::is_void_v<R>) return false;
  else return is_single_block_v<R>;
}

/// apply_async: one chunk whose message is the callable's state and the arguments.
template <class R>
class apply_job final : public result_job<R> {
 public:
  std::vector<std::byte> message;
  apply_job() {
    if constexpr (block_result<R>()) this->result_block = sizeof(typename R::value_type);
  }
  std::span<const std::byte> prefix() override { return message; }
  std::span<const std::byte> body(std::size_t) override { return {}; }
  std::span<std::byte> block(std::size_t, std::uint64_t length) override {
    if constexpr (block_result<R>()) {
      using element = typename R::value_type;
      if (length > this->value.max_size()) return {};
      R fresh;
      fresh.reserve(length);
      advise_huge(fresh.data(), length * sizeof(element));  // resize() below is the first touch
      fresh.resize(length);
      this->value = std::move(fresh);
      return {reinterpret_cast<std::byte*>(this->value.data()), length * sizeof(element)};
    } else {
      return {};
    }
  }
  void deliver_block(std::size_t) override {
    std::vector<std::byte>().swap(message);
    this->finish();
  }
  void deliver(std::size_t, input_archive& ar) override {
    this->error = pool::read_results<R>(ar, 1, "apply result", [&](std::uint64_t) { return &this->value; }).failure;
    std::vector<std::byte>().swap(message);
    this->finish();
  }
  void fail(std::size_t, std::exception_ptr e) override {
    this->error = std::move(e);
    this->finish();
  }
};

/// Python's automatic chunksize: ceil(n / (4 * processes)).
inline std::size_t auto_chunksize(std::size_t n, std::size_t processes) {
  const std::size_t per = 4 * std::max<std::size_t>(1, processes);
  return std::max<std::size_t>(1, n / per + (n % per != 0 ? 1 : 0));
}

/// map/starmap: every chunk's items serialized at submission; results land in place.
template <class E>
class map_job final : public result_job<map_result_t<E>> {
 public:
  std::vector<std::byte> callable;
  std::vector<std::byte> items;      // chunk bodies back to back
  std::vector<std::size_t> offsets;  // chunk c's body: items[offsets[c], offsets[c + 1])
  std::vector<std::size_t> starts;   // chunk c's first item index
  std::size_t remaining = 0;         // chunks not yet answered
  std::size_t error_at = SIZE_MAX;   // item index of the earliest failure so far
  std::exception_ptr first_error;

  std::span<const std::byte> prefix() override { return callable; }
  std::span<const std::byte> body(std::size_t c) override {
    return std::span<const std::byte>(items).subspan(offsets[c], offsets[c + 1] - offsets[c]);
  }
  void deliver(std::size_t c, input_archive& ar) override {
    const std::size_t start = starts[c];
    auto outcome = pool::read_results<E>(ar, starts[c + 1] - start, "map results", [&](std::uint64_t) {
      if constexpr (!std::is_void_v<E>) return this->value.data() + start;
    });
    if (outcome.failure) note_failure(start + outcome.count, std::move(outcome.failure));
    chunk_done();
  }
  void fail(std::size_t c, std::exception_ptr e) override {
    note_failure(starts[c], std::move(e));
    chunk_done();
  }

 private:
  void note_failure(std::size_t at, std::exception_ptr e) {
    if (at < error_at) {
      error_at = at;
      first_error = std::move(e);
    }
  }
  void chunk_done() {
    if (--remaining != 0) return;
    this->error = first_error;
    std::vector<std::byte>().swap(items);
    this->finish();
  }
};

/// imap/imap_unordered: chunks are added as the consumer pulls; answers wait in `arrivals` until consumed.
template <class E>
class imap_job final : public job {
 public:
  std::vector<std::byte> callable;
  std::map<std::size_t, std::vector<std::byte>> bodies;  // a vector's buffer does not move as others come and go
  pool::chunk_arrivals<E> arrivals;

  std::span<const std::byte> prefix() override { return callable; }
  std::span<const std::byte> body(std::size_t c) override { return bodies.at(c); }
  void deliver(std::size_t c, input_archive& ar) override {
    pool::chunk_result<E> result;
    const std::uint64_t items = pool::chunk_length(body(c));
    auto outcome = pool::read_results<E>(ar, items, "imap results", [&](std::uint64_t count) {
      result.values.reserve(count);
      return std::back_inserter(result.values);
    });
    result.error = std::move(outcome.failure);
    store(c, std::move(result));
  }
  void fail(std::size_t c, std::exception_ptr e) override { store(c, pool::chunk_result<E>{{}, std::move(e)}); }

 private:
  void store(std::size_t c, pool::chunk_result<E> result) {
    bodies.erase(c);
    arrivals.store(c, std::move(result));
  }
};

/// What an IMapIterator drives: the input range and the window of chunks in flight; pool::imap_cursor consumes
/// them. Input is pulled as results are consumed, with at most 4 * processes + 2 chunks in flight or waiting.
template <class F, class V, class E, bool Ordered>
struct imap_state : pool::imap_cursor<imap_state<F, V, E, Ordered>, E, Ordered> {
  using input_type = std::remove_reference_t<V>&;
  using T = std::remove_cvref_t<std::ranges::range_value_t<input_type>>;
  std::shared_ptr<mpi::engine> engine;
  std::shared_ptr<imap_job<E>> job = std::make_shared<imap_job<E>>();
  V input;  // a reference to an lvalue range (which must outlive the iteration), or the moved-in rvalue range
  std::ranges::iterator_t<input_type> it;
  std::size_t chunksize;
  std::size_t window;

  imap_state(std::shared_ptr<mpi::engine> e, F f, V&& in, std::size_t size)
      : engine(std::move(e)), input(std::forward<V>(in)), it(std::ranges::begin(input)),
        chunksize(std::max<std::size_t>(1, size)), window(4 * engine->processes() + 2) {
    job->trampoline = &pool::map_trampoline<F, T, E, false>;
    pool::encode_callable(job->callable, f);
  }

  void feed() {
    while (!this->input_done && this->submitted - this->consumed < window) {
      std::vector<std::byte> body;
      const auto end = std::ranges::end(input);
      const std::uint64_t n = pool::append_items<T>(body, it, end, chunksize);
      if (it == end) this->input_done = true;
      if (n == 0) break;
      {
        std::lock_guard lock(mpi_mutex());
        job->bodies.emplace(this->submitted, std::move(body));
      }
      engine->submit(job, this->submitted, 1, Ordered ? "mp::mpi::Pool::imap" : "mp::mpi::Pool::imap_unordered");
      ++this->submitted;
    }
  }
  pool::chunk_arrivals<E>& arrivals() { return job->arrivals; }
  void wait_for_chunk() { engine->wait([&] { return job->arrivals.ready(this->consumed, Ordered); }); }
};

}  // namespace mp::detail::mpi
