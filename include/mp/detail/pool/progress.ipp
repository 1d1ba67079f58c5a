// progress: definitions (see progress.hpp).
#pragma once

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <utility>

#include <mp/detail/syscall.hpp>

#include <mp/detail/pool/progress.hpp>

namespace mp::detail::pool {

MP_DECL std::shared_ptr<progress_bar> progress_bar::start(bool force, std::optional<std::size_t> total,
                                                          std::string desc) {
  const bool tty = ::isatty(STDERR_FILENO) == 1;
  if (!force && !tty) return nullptr;
  return std::make_shared<progress_bar>(total, std::move(desc), tty);
}

MP_DECL progress_bar::progress_bar(std::optional<std::size_t> total, std::string desc, bool tty)
    : total_(total), desc_(std::move(desc)), tty_(tty) {
  thread_ = std::thread([this] { loop(); });
}

MP_DECL progress_bar::~progress_bar() { finish_and_wait(); }

MP_DECL void progress_bar::finish_and_wait() noexcept {
  finish();
  std::lock_guard lock(join_mutex_);
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

MP_DECL void progress_bar::finish() noexcept {
  {
    std::lock_guard lock(mutex_);
    finished_ = true;
  }
  wake_.notify_all();
}

MP_DECL void progress_bar::loop() {
  std::unique_lock lock(mutex_);
  draw(false);
  for (;;) {
    // At most 10 redraws a second.
    if (wake_.wait_for(lock, std::chrono::milliseconds(100), [&] { return finished_; })) break;
    lock.unlock();
    draw(false);
    lock.lock();
  }
  lock.unlock();
  draw(true);
}

namespace {
inline std::string clock_text(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long s = static_cast<long>(seconds + 0.5);
  char text[32];
  if (s >= 3600) std::snprintf(text, sizeof text, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  else std::snprintf(text, sizeof text, "%02ld:%02ld", s / 60, s % 60);
  return text;
}
}  // namespace

MP_DECL std::string progress_bar::line() const {
  const std::size_t done = done_.load(std::memory_order_relaxed);
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0;
  char rate_text[32];
  std::snprintf(rate_text, sizeof rate_text, "%.1f it/s", rate);
  std::string text = desc_.empty() ? std::string() : desc_ + ": ";
  if (total_) {
    const std::size_t total = *total_;
    const double fraction = total == 0 ? 1.0 : std::min(1.0, static_cast<double>(done) / static_cast<double>(total));
    constexpr int width = 20;
    const int filled = static_cast<int>(fraction * width);
    char percent[8];
    std::snprintf(percent, sizeof percent, "%3d%%", static_cast<int>(fraction * 100));
    const double eta = rate > 0 ? static_cast<double>(total - std::min(done, total)) / rate : -1.0;
    text += std::string(percent) + "|" + std::string(static_cast<std::size_t>(filled), '#') +
            std::string(static_cast<std::size_t>(width - filled), ' ') + "| " + std::to_string(done) + "/" +
            std::to_string(total) + " [" + clock_text(elapsed) + "<" + clock_text(eta) + ", " + rate_text + "]";
  } else {
    text += std::to_string(done) + " it [" + clock_text(elapsed) + ", " + rate_text + "]";
  }
  return text;
}

MP_DECL void progress_bar::draw(bool last) {
  std::string text;
  if (tty_) {
    text = "\r" + line() + "\x1b[K" + (last ? "\n" : "");
  } else {
    const auto now = std::chrono::steady_clock::now();
    if (!last && now - last_line_ < std::chrono::seconds(1)) return;
    last_line_ = now;
    text = line() + "\n";
  }
  // A failed write (stderr closed) costs nothing but the bar.
  std::size_t at = 0;
  while (at < text.size()) {
    const auto n = retry_on_eintr([&] { return ::write(STDERR_FILENO, text.data() + at, text.size() - at); });
    if (n <= 0) break;
    at += static_cast<std::size_t>(n);
  }
}

}  // namespace mp::detail::pool
