// imap_cursor: the consuming side of imap/imap_unordered, written once for Pool and ThreadPool. Chunk results arrive
// from any thread keyed by chunk index (chunk_arrivals); the iterator takes them in input order (Ordered) or in
// arrival order and yields them item by item; a failed item yields its error at its position, and the rest of its
// chunk (which never ran) is skipped.
#pragma once

#include <cstddef>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include <mp/detail/pool/progress.hpp>
#include <mp/errors.hpp>

namespace mp::detail::pool {

/// One chunk's answer: the values of its items that ran, and the error of the item after them (null: all ran).
template <class E>
struct chunk_result {
  std::vector<E> values;
  std::exception_ptr error;
};

/// Chunk results waiting to be consumed; store() from any thread.
template <class E>
class chunk_arrivals {
 public:
  void store(std::size_t chunk, chunk_result<E> result) {
    std::lock_guard lock(mutex_);
    arrived_.emplace(chunk, std::move(result));
    order_.push_back(chunk);
  }
  /// Whether the chunk to consume next is here: chunk `next` (ordered), or any chunk.
  bool ready(std::size_t next, bool ordered) {
    std::lock_guard lock(mutex_);
    return ordered ? arrived_.count(next) != 0 : !order_.empty();
  }
  /// Takes that chunk out; ready() must hold.
  chunk_result<E> take(std::size_t next, bool ordered) {
    std::lock_guard lock(mutex_);
    std::size_t key = next;
    if (ordered) {
      std::erase(order_, key);
    } else {
      key = order_.front();
      order_.pop_front();
    }
    auto node = arrived_.extract(key);
    return std::move(node.mapped());
  }

 private:
  std::mutex mutex_;
  std::map<std::size_t, chunk_result<E>> arrived_;
  std::deque<std::size_t> order_;
};

/// The iterator's side of an imap state. Derived provides feed() (submits chunks while its window allows, counting
/// them in `submitted` and setting `input_done` at the end of the input), arrivals() and wait_for_chunk() (blocks
/// until arrivals().ready(consumed, Ordered)).
template <class Derived, class E, bool Ordered>
struct imap_cursor {
  bool input_done = false;
  bool started = false;
  bool at_end = false;
  std::size_t submitted = 0;  // chunks handed to the pool
  std::size_t consumed = 0;   // chunks taken out of the arrivals
  std::shared_ptr<progress_bar> progress;  // counts items as they are consumed; null: none

  const E& current() const {
    if (at_end) throw Error("IMapIterator: dereferenced past the end");
    if (on_error_) std::rethrow_exception(chunk_.error);
    return chunk_.values[position_ - 1];
  }

  /// Moves to the next item (or error position, or the end).
  void advance() {
    auto& self = static_cast<Derived&>(*this);
    if (on_error_) {  // the failed item is behind us: the rest of that chunk never ran
      on_error_ = false;
      chunk_.error = nullptr;
    }
    for (;;) {
      if (position_ < chunk_.values.size()) {
        ++position_;
        if (progress) progress->advance(1);
        return;
      }
      if (chunk_.error) {
        on_error_ = true;
        if (progress) progress->advance(1);
        return;
      }
      self.feed();
      if (input_done && consumed == submitted) {
        at_end = true;
        if (progress) progress->finish();
        return;
      }
      self.wait_for_chunk();
      chunk_ = self.arrivals().take(consumed, Ordered);
      ++consumed;
      position_ = 0;
      self.feed();
    }
  }

 private:
  chunk_result<E> chunk_;
  std::size_t position_ = 0;  // items of chunk_ yielded so far
  bool on_error_ = false;     // the current position is chunk_.error
};

}  // namespace mp::detail::pool
