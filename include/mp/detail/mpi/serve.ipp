// serve: definitions (see serve.hpp).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <memory>

#include <mp/detail/archive.hpp>
#include <mp/detail/child_os.hpp>
#include <mp/detail/code_address.hpp>
#include <mp/detail/mpi/protocol.hpp>
#include <mp/detail/mpi/serve.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail::mpi {

inline outcome run_timed(pool::trampoline_fn trampoline, std::span<const std::byte> payload, std::vector<std::byte>& out,
                         std::uint64_t timeout_ns, int& code) {
  const std::uint64_t deadline = monotonic_ns() + timeout_ns;
  int fds[2];
  sys("pipe2", [&] { return ::pipe2(fds, O_CLOEXEC); });
  unique_fd reader(fds[0]);
  unique_fd writer(fds[1]);
  flush_standard_streams();
  const pid_t pid = sys("fork", [] { return ::fork(); });
  if (pid == 0) {
    // The child: no MPI, no exit handlers (MPI_Finalize is one of them); the result goes through the pipe. MPI's
    // handlers for crash signals are dropped: a crash here is reported as this child's exit, not as the rank's.
    reader.reset();
    for (int sig : {SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL}) ::signal(sig, SIG_DFL);
    std::vector<std::byte> body;
    try {
      trampoline(payload, body);
    } catch (...) {
      ::_exit(3);
    }
    flush_pending_output();
    std::size_t at = 0;
    while (at < body.size()) {
      const ssize_t n = ::write(writer.get(), body.data() + at, body.size() - at);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) ::_exit(4);
      at += static_cast<std::size_t>(n);
    }
    ::_exit(0);
  }
  writer.reset();
  const std::size_t start = out.size();
  bool timed_out = false;
  std::byte buffer[65536];
  for (;;) {
    const std::uint64_t now = monotonic_ns();
    if (now >= deadline) {
      timed_out = true;
      break;
    }
    pollfd p{reader.get(), POLLIN, 0};
    const int wait_ms = static_cast<int>((deadline - now + 999'999) / 1'000'000);
    if (retry_on_eintr([&] { return ::poll(&p, 1, wait_ms); }) <= 0) continue;
    const ssize_t n = retry_on_eintr([&] { return ::read(reader.get(), buffer, sizeof buffer); });
    if (n <= 0) break;  // end of file: the child is done (or dead)
    out.insert(out.end(), buffer, buffer + n);
  }
  if (timed_out) ::kill(pid, SIGKILL);
  int status = 0;
  retry_on_eintr([&] { return ::waitpid(pid, &status, 0); });
  if (timed_out) {
    out.resize(start);
    return outcome::timed_out;
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    out.resize(start);
    code = exitcode_from_status(status);
    return outcome::lost;
  }
  return outcome::ran;
}

inline void serve(MPI_Comm comm, const std::string& host) {
  backoff::tighten_timer_slack();
  std::unique_ptr<code_translator> translator;
  unique_fd master;  // rank 0's pidfd when it runs on this host: a spawned worker whose parent died exits
  std::vector<std::byte> in;
  std::vector<std::byte> out;
  std::vector<std::byte> large;  // a split payload
  backoff idle;
  std::uint64_t last_check = monotonic_ns();
  for (;;) {
    int flag = 0;
    MPI_Status status;
    MPI_Iprobe(0, MPI_ANY_TAG, comm, &flag, &status);
    if (flag == 0) {
      if (master && monotonic_ns() - last_check > 200'000'000) {
        last_check = monotonic_ns();
        pollfd p{master.get(), POLLIN, 0};
        if (::poll(&p, 1, 0) > 0) ::_exit(1);  // rank 0 is gone: nobody will ever send tag_exit
      }
      idle.pause();
      continue;
    }
    int count = 0;
    MPI_Get_count(&status, MPI_BYTE, &count);
    in.resize(static_cast<std::size_t>(count));
    MPI_Recv(in.data(), count, MPI_BYTE, 0, status.MPI_TAG, comm, MPI_STATUS_IGNORE);
    const std::span<const std::byte> message(in);
    out.clear();
    if (status.MPI_TAG == tag_exit) {
      pool::worker_code_map() = nullptr;
      return;
    }
    if (status.MPI_TAG == tag_start) {
      // {modules, rank 0's pid, rank 0's host, initializer trampoline, initializer payload}
      input_archive ar(message);
      std::vector<loaded_module> modules;
      std::int32_t master_pid = 0;
      std::string master_host;
      std::uint64_t init = 0;
      ar(modules, master_pid, master_host, init);
      const std::span<const std::byte> payload = message.subspan(message.size() - ar.remaining());
      pool::worker_code_map() = nullptr;
      translator = std::make_unique<code_translator>(modules);
      pool::worker_code_map() = translator.get();
      if (master_host == host && !master) master.reset(detail::pidfd_open(static_cast<pid_t>(master_pid)));
      output_archive header(out);
      header(static_cast<std::int32_t>(::getpid()), host);
      if (init == 0) {
        const std::uint64_t none = 0;
        header(none, std::uint8_t{0});
      } else {
        try {
          pool::trampoline_from(init)(payload, out);
        } catch (...) {
          pool::encode_failed_chunk(out);
        }
      }
      MPI_Send(out.data(), static_cast<int>(out.size()), MPI_BYTE, 0, tag_hello, comm);
      idle.reset();
      continue;
    }
    // tag_task: {task_header, payload}; the answer: {chunk id, outcome, i32 code, result body}
    task_header header{};
    std::memcpy(&header, message.data(), std::min(message.size(), sizeof header));
    std::span<const std::byte> payload = message.subspan(std::min(message.size(), sizeof header));
    if (header.split != 0) {  // the payload follows in place: prefix, then body
      const std::size_t total = header.prefix_bytes + header.body_bytes;
      large.resize(total);
      if (header.prefix_bytes != 0)
        MPI_Recv(large.data(), static_cast<int>(header.prefix_bytes), MPI_BYTE, 0, tag_part, comm, MPI_STATUS_IGNORE);
      if (header.body_bytes != 0)
        MPI_Recv(large.data() + header.prefix_bytes, static_cast<int>(header.body_bytes), MPI_BYTE, 0, tag_part, comm,
                 MPI_STATUS_IGNORE);
      payload = large;
    }
    out.resize(sizeof(std::uint64_t) + 1 + sizeof(std::int32_t));
    std::memcpy(out.data(), &header.chunk_id, sizeof header.chunk_id);
    outcome how = outcome::ran;
    std::int32_t code = 0;
    try {
      const pool::trampoline_fn trampoline = pool::trampoline_from(header.trampoline);
      if (header.timeout_ns == 0) {
        trampoline(payload, out);
      } else {
        int c = 0;
        how = run_timed(trampoline, payload, out, header.timeout_ns, c);
        code = c;
      }
    } catch (...) {
      out.resize(sizeof(std::uint64_t) + 1 + sizeof(std::int32_t));
      pool::encode_failed_chunk(out);
    }
    flush_pending_output();
    out[sizeof(std::uint64_t)] = static_cast<std::byte>(how);
    std::memcpy(out.data() + sizeof(std::uint64_t) + 1, &code, sizeof code);
    MPI_Send(out.data(), static_cast<int>(out.size()), MPI_BYTE, 0, tag_result, comm);
    if (large.size() > packed_limit) std::vector<std::byte>().swap(large);
    idle.reset();
  }
}

}  // namespace mp::detail::mpi
