// progress: the bar MapOptions{.progress = ...} draws on stderr (mpire's and tqdm's progress bar):
//   "squares:  42%|########            | 4200/10000 [00:01<00:02, 3512.3 it/s]"  (total known)
//   "squares: 4200 it [00:01, 3512.3 it/s]"                                      (endless imap input)
// Counting is one atomic add on the path that delivers results (or, for imap, consumes them); drawing is done by
// the bar's own thread, woken at most 10 times a second, so no pool lock is ever held across a write to a
// terminal. On a terminal the line is redrawn in place ("\r", erase to end of line); when forced onto a file or
// pipe (Progress::always) a line is appended at most once a second, plus the final one.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include <mp/detail/config.hpp>

namespace mp::detail::pool {

class progress_bar {
 public:
  /// A bar on stderr, or null when !force and stderr is not a terminal. total: empty when unknown.
  MP_DECL static std::shared_ptr<progress_bar> start(bool force, std::optional<std::size_t> total, std::string desc);

  MP_DECL progress_bar(std::optional<std::size_t> total, std::string desc, bool tty);
  progress_bar(const progress_bar&) = delete;
  progress_bar& operator=(const progress_bar&) = delete;
  /// Draws the final state (once) and stops the drawing thread.
  MP_DECL ~progress_bar();

  /// n more items done (lock-free; callable under any lock).
  void advance(std::size_t n) noexcept { done_.fetch_add(n, std::memory_order_relaxed); }
  /// The work ended (completely or by an error): the thread draws the last state and ends the line. Never blocks
  /// on the drawing.
  MP_DECL void finish() noexcept;
  /// finish(), then waits until the last state is drawn (AsyncResult::wait: the bar is complete when map returns).
  MP_DECL void finish_and_wait() noexcept;
  /// The line as drawn now (for tests of the format).
  MP_DECL std::string line() const;

 private:
  MP_DECL void loop();
  MP_DECL void draw(bool last);

  const std::optional<std::size_t> total_;
  const std::string desc_;
  const bool tty_;
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_line_ = started_;  // non-terminals: when a line was last appended
  std::atomic<std::size_t> done_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool finished_ = false;  // guarded by mutex_
  std::mutex join_mutex_;  // serializes joining thread_
  std::thread thread_;
};

}  // namespace mp::detail::pool

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/pool/progress.ipp>
#endif
