// jobs: the parent side of each kind of work a Pool runs — apply (one chunk), map/starmap (every chunk encoded at
// submission, results landing in place) and imap/imap_unordered (chunks fed as the consumer pulls) — and the state
// an AsyncResult or an IMapIterator reads. Each job implements core.hpp's `job`: it hands the core its chunks'
// bytes and receives their result bodies (read_results, task.hpp) or their failures.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <ranges>
#include <span>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <mp/detail/archive.hpp>
#include <mp/detail/pool/completion.hpp>
#include <mp/detail/pool/core.hpp>
#include <mp/detail/pool/imap_cursor.hpp>
#include <mp/detail/pool/progress.hpp>
#include <mp/detail/pool/task.hpp>
#include <mp/detail/segment_pool.hpp>
#include <mp/detail/unique_fd.hpp>
#include <mp/errors.hpp>

namespace mp::detail::pool {

/// What a job of result type R stores (void: nothing).
template <class R>
using stored_t = std::conditional_t<std::is_void_v<R>, std::monostate, R>;

/// A job whose outcome an AsyncResult<R> reads once done is set (completion.hpp: callbacks, watchers).
template <class R>
class result_job : public job, public completion {
 public:
  stored_t<R> value{};     // written before done (release), read after (acquire)
  std::exception_ptr error;
  std::shared_ptr<progress_bar> progress;  // MapOptions::progress; null: none

  void finish() {
    if (progress) progress->finish();
    complete(event, error != nullptr && !was_cancelled.load());
  }
  /// Ends a job taken out of the queue before it ran (AsyncResult::cancel).
  void finish_cancelled() {
    error = std::make_exception_ptr(CancelledError("AsyncResult: the task was cancelled before it started"));
    was_cancelled.store(true);
    finish();
  }
};

/// apply_async: one chunk whose message is the callable's state and the arguments.
template <class R>
class apply_job final : public result_job<R> {
 public:
  std::vector<std::byte> message;
  unique_fd big;               // the whole message as a blob segment instead (encode_payload), until answered
  std::size_t big_size = 0;
  std::span<const std::byte> prefix() override { return message; }
  std::span<const std::byte> body(std::size_t) override { return {}; }
  int blob(std::size_t, std::size_t& size) override {
    size = big_size;
    return big ? big.get() : -1;
  }
  void deliver(std::size_t, input_archive& ar) override {
    big.reset();
    this->error = read_results<R>(ar, 1, "apply result", [&](std::uint64_t) { return &this->value; }).failure;
    this->finish();
  }
  void fail(std::size_t, std::exception_ptr e) override {
    big.reset();
    this->error = std::move(e);
    this->finish();
  }
};

/// What map over items of result E returns.
template <class E>
using map_result_t = std::conditional_t<std::is_void_v<E>, void, std::vector<E>>;

/// Python's automatic chunksize: ceil(n / (4 * processes)).
inline std::size_t auto_chunksize(std::size_t n, std::size_t processes) {
  const std::size_t per = 4 * processes;
  return std::max<std::size_t>(1, n / per + (n % per != 0 ? 1 : 0));
}

/// A synchronous map's big chunks, serialized only when dispatched, from the caller's range (alive while map()
/// waits), into the pool's recycled segments: a few warm segments then carry any number of big items, where
/// serializing them all at submission would need fresh memory for all of them at once (map_async must read its
/// input before it returns; map may read it while it waits). close() runs when map() returns, whatever happened.
struct lazy_chunks {
  std::mutex mutex;
  bool open = true;
  std::function<unique_fd(std::size_t)> encode;  // chunk c's payload segment
  unique_fd operator()(std::size_t c) {
    std::lock_guard lock(mutex);
    if (!open) throw Error("Pool::map: the call ended before a chunk of its big items was sent");
    return encode(c);
  }
  void close() noexcept {
    std::lock_guard lock(mutex);
    open = false;
  }
};

/// Closes a map call's lazy_chunks when the call returns or throws.
struct lazy_closer {
  std::shared_ptr<lazy_chunks>& lazy;
  ~lazy_closer() {
    if (lazy) lazy->close();
  }
};

/// map/starmap: every chunk's items serialized at submission (a synchronous map's big chunks: at dispatch, see
/// lazy_chunks; map_async's big chunks: into `items` too, copied into a recycled segment at dispatch); results land
/// in place.
template <class E>
class map_job final : public result_job<map_result_t<E>> {
 public:
  std::vector<std::byte> callable;
  std::vector<std::byte> items;        // chunk bodies back to back
  std::vector<std::size_t> offsets;    // chunk c's body: items[offsets[c], offsets[c + 1])
  std::vector<std::size_t> starts;     // chunk c's first item index
  std::size_t remaining = 0;           // chunks not yet answered
  std::size_t error_at = SIZE_MAX;     // item index of the earliest failure so far
  std::exception_ptr first_error;
  std::vector<unique_fd> bigs;           // chunk c as a blob segment (blob_chunk), until answered; empty: none
  std::vector<std::size_t> big_sizes;
  std::shared_ptr<lazy_chunks> lazy;     // a synchronous map's big chunks not yet serialized; null: none
  std::vector<std::exception_ptr> lazy_errors;  // chunk c could not be serialized when dispatched

  std::span<const std::byte> prefix() override { return callable; }
  std::span<const std::byte> body(std::size_t c) override {
    return std::span<const std::byte>(items).subspan(offsets[c], offsets[c + 1] - offsets[c]);
  }
  int blob(std::size_t c, std::size_t& size) override {
    size = c < bigs.size() ? big_sizes[c] : 0;
    if (size != 0 && !bigs[c] && lazy) {
      try {
        bigs[c] = (*lazy)(c);
      } catch (...) {
        if (offsets[c + 1] != offsets[c]) {  // staged in `items` (map_async): the ring carries the chunk instead
          size = 0;
          return -1;
        }
        // Sent without its items, the chunk fails in the worker; its result is replaced by this error.
        if (lazy_errors.empty()) lazy_errors.resize(bigs.size());
        lazy_errors[c] = std::current_exception();
        size = 0;
      }
    }
    return c < bigs.size() && bigs[c] ? bigs[c].get() : -1;
  }
  void deliver(std::size_t c, input_archive& ar) override {
    if (c < bigs.size()) bigs[c].reset();
    if (c < lazy_errors.size() && lazy_errors[c]) {
      fail(c, lazy_errors[c]);
      return;
    }
    const std::size_t start = starts[c];
    auto outcome = read_results<E>(ar, starts[c + 1] - start, "map results", [&](std::uint64_t) {
      if constexpr (!std::is_void_v<E>) return this->value.data() + start;
    });
    if (outcome.failure) note_failure(start + outcome.count, std::move(outcome.failure));
    if (this->progress) this->progress->advance(outcome.count);
    chunk_done();
  }
  void fail(std::size_t c, std::exception_ptr e) override {
    if (c < bigs.size()) bigs[c].reset();
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
  std::mutex mutex;  // guards bodies, bigs and with_handles; taken under the core mutex, never the other way round
  std::map<std::size_t, std::vector<std::byte>> bodies;
  chunk_arrivals<E> arrivals;
  // A big chunk (blob_threshold and up, without handles) travels as a recycled segment of the pool's, written
  // when dispatched from its body: as few warm segments as chunks in flight, whatever the window.
  shared_segment_pool* segments = nullptr;
  std::size_t segments_kept = 0;
  std::map<std::size_t, unique_fd> bigs;  // chunk c's segment, until answered
  std::set<std::size_t> with_handles;     // chunks whose items carry handles: always through the ring

  std::span<const std::byte> prefix() override { return callable; }
  std::span<const std::byte> body(std::size_t c) override {
    std::lock_guard lock(mutex);
    return bodies.at(c);  // the vector's buffer does not move when other entries come and go
  }
  int blob(std::size_t c, std::size_t& size) override {
    size = 0;
    std::lock_guard lock(mutex);
    const std::vector<std::byte>& items = bodies.at(c);
    const std::size_t total = callable.size() + items.size();
    if (segments == nullptr || total < blob_threshold || with_handles.contains(c)) return -1;
    try {
      unique_fd fd = segments->write(total, pool_segment_budget, segments_kept, "mp-pool-task",
                                     [&](std::span<std::byte> bytes) {
                                       std::memcpy(bytes.data(), callable.data(), callable.size());
                                       std::memcpy(bytes.data() + callable.size(), items.data(), items.size());
                                     });
      size = total;
      const int raw = fd.get();
      bigs[c] = std::move(fd);
      return raw;
    } catch (...) {
      return -1;  // no segment: the ring carries the chunk
    }
  }
  void deliver(std::size_t c, input_archive& ar) override {
    chunk_result<E> result;
    const std::uint64_t items = chunk_length(body(c));
    auto outcome = read_results<E>(ar, items, "imap results", [&](std::uint64_t count) {
      result.values.reserve(count);
      return std::back_inserter(result.values);
    });
    result.error = std::move(outcome.failure);
    store(c, std::move(result));
  }
  void fail(std::size_t c, std::exception_ptr e) override { store(c, chunk_result<E>{{}, std::move(e)}); }

 private:
  void store(std::size_t c, chunk_result<E> result) {
    {
      std::lock_guard lock(mutex);
      bodies.erase(c);
      bigs.erase(c);
      with_handles.erase(c);
    }
    arrivals.store(c, std::move(result));
    event.notify();
  }
};

/// What an IMapIterator drives: the input range and the window of chunks in flight; imap_cursor consumes them.
/// Input is pulled as results are consumed, with at most 4 * processes + 2 chunks in flight or waiting.
template <class F, class V, class E, bool Ordered>
struct imap_state : imap_cursor<imap_state<F, V, E, Ordered>, E, Ordered> {
  using input_type = std::remove_reference_t<V>&;  // iterated as an lvalue, owned or referenced
  using T = std::remove_cvref_t<std::ranges::range_value_t<input_type>>;
  std::shared_ptr<pool::core> core;
  std::shared_ptr<imap_job<E>> job = std::make_shared<imap_job<E>>();
  V input;  // a reference to an lvalue range (which must outlive the iteration), or the moved-in rvalue range
  std::ranges::iterator_t<input_type> it;
  std::size_t chunksize;
  std::size_t window;
  fd_outbox callable_box;  // descriptors of handles in the callable's state: every chunk carries them

  imap_state(std::shared_ptr<pool::core> c, F f, V&& in, std::size_t size)
      : core(std::move(c)), input(std::forward<V>(in)), it(std::ranges::begin(input)), chunksize(std::max<std::size_t>(1, size)),
        window(4 * core->processes() + 2) {
    job->trampoline = &map_trampoline<F, T, E, false>;
    job->segments = &core->payload_segments();
    job->segments_kept = core->payload_segments_kept();
    fd_outbox_scope scope(callable_box);
    encode_callable(job->callable, f);
  }

  /// Submits chunks until the window is full or the input ends.
  void feed() {
    while (!this->input_done && this->submitted - this->consumed < window) {
      std::vector<std::byte> body;
      const auto end = std::ranges::end(input);
      const char* caller = Ordered ? "Pool::imap" : "Pool::imap_unordered";
      fd_outbox box = callable_box;
      std::uint64_t n = 0;
      if constexpr (!std::is_lvalue_reference_v<std::ranges::range_reference_t<input_type>> && !is_bitwise_v<T>) {
        // Items made on the fly: handles among them must stay open until the pool holds their descriptors.
        std::vector<T> items;
        for (; items.size() < chunksize && it != end; ++it) items.push_back(static_cast<T>(*it));
        auto from = items.begin();
        fd_outbox_scope scope(box);
        n = append_items<T>(body, from, items.end(), chunksize);
        auto handles = handles_of(box, caller, this->submitted);
        if (it == end) this->input_done = true;
        if (n == 0) break;
        submit_chunk(std::move(body), caller, std::move(handles));
        continue;
      } else {
        fd_outbox_scope scope(box);
        n = append_items<T>(body, it, end, chunksize);
      }
      if (it == end) this->input_done = true;
      if (n == 0) break;
      submit_chunk(std::move(body), caller, handles_of(box, caller, this->submitted));
    }
  }
  chunk_arrivals<E>& arrivals() { return job->arrivals; }
  void wait_for_chunk() { core->wait(job->event, [&] { return job->arrivals.ready(this->consumed, Ordered); }); }

 private:
  void submit_chunk(std::vector<std::byte> body, const char* caller, std::shared_ptr<submission_handles> handles) {
    {
      std::lock_guard lock(job->mutex);
      job->bodies.emplace(this->submitted, std::move(body));
      if (handles) job->with_handles.insert(this->submitted);
    }
    core->submit(job, this->submitted, 1, caller, std::move(handles));
    ++this->submitted;
  }
};

}  // namespace mp::detail::pool
