// child_os: definitions (see child_os.hpp).
#pragma once

#include <signal.h>
#include <stdio_ext.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <iostream>
#include <typeinfo>
#include <vector>

#if defined(__GLIBCXX__)
#include <ext/stdio_sync_filebuf.h>
#endif

#include <mp/detail/child_os.hpp>

namespace mp::detail {

MP_DECL int pidfd_open(pid_t pid) noexcept { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0U)); }

MP_DECL int pidfd_send_signal(int pidfd, int signal) noexcept {
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, signal, nullptr, 0U));
}

MP_DECL int exitcode_from_status(int status) noexcept {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return 1;  // stopped/continued are never reported: waitpid is called without WUNTRACED
}

// Signals are named one way, by sigabbrev_np ("TERM" for SIGTERM; null for a number without a name).
MP_DECL std::string describe_wait_status(int status) {
  if (WIFSIGNALED(status)) {
    const char* name = ::sigabbrev_np(WTERMSIG(status));
    return "killed by signal " + std::to_string(WTERMSIG(status)) + (name ? std::string(" (SIG") + name + ")" : "");
  }
  return "exit code " + std::to_string(exitcode_from_status(status));
}

MP_DECL std::string exitcode_name(int code) {
  const char* name = code < 0 && code != INT_MIN ? ::sigabbrev_np(-code) : nullptr;
  return name ? std::string("-SIG") + name : std::to_string(code);
}

MP_DECL void close_descriptors_except(std::initializer_list<int> keep) noexcept {
  int sorted[16];
  std::size_t n = 0;
  for (int fd : keep)
    if (fd >= 3 && n < std::size(sorted)) sorted[n++] = fd;
  std::sort(sorted, sorted + n);
  unsigned from = 3;
  for (std::size_t i = 0; i < n; ++i) {
    const unsigned fd = static_cast<unsigned>(sorted[i]);
    if (fd > from) ::syscall(SYS_close_range, from, fd - 1, 0U);
    if (fd >= from) from = fd + 1;
  }
  ::syscall(SYS_close_range, from, ~0U, 0U);
}

MP_DECL bool has_own_buffer(std::ostream& stream) noexcept {
  std::streambuf* buffer = stream.rdbuf();
  if (buffer == nullptr) return false;
#if defined(__GLIBCXX__)
  return typeid(*buffer) != typeid(__gnu_cxx::stdio_sync_filebuf<char>);
#else
  return true;
#endif
}

MP_DECL void flush_standard_streams() noexcept {
  try {
    for (std::ostream* stream : {&std::cout, &std::cerr, &std::clog})
      if (has_own_buffer(*stream)) stream->flush();
  } catch (...) {
  }
  std::fflush(nullptr);
}

MP_DECL void flush_pending_output() noexcept {
  try {
    if (has_own_buffer(std::cout)) std::cout.flush();
  } catch (...) {
  }
  if (::__fpending(stdout) != 0) std::fflush(stdout);
  if (::__fpending(stderr) != 0) std::fflush(stderr);
}

}  // namespace mp::detail
