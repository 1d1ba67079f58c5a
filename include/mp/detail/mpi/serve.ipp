// serve: definitions (see serve.hpp).
#pragma once

#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <optional>

#include <mp/detail/archive.hpp>
#include <mp/detail/child_os.hpp>
#include <mp/detail/code_address.hpp>
#include <mp/detail/mpi/doorbell.hpp>
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
  std::unique_ptr<code_translator> translator;
  unique_fd master;  // rank 0's pidfd when it runs on this host: a spawned worker whose parent died exits
  std::vector<std::byte> in;
  std::vector<std::byte> out;
  std::vector<std::byte> large;  // a split payload, received in place; kept warm for the next one
  // Big payloads come back to back: freed memory stays in the heap for the next task instead of going back to the
  // kernel and coming again as fresh pages (~12.5 us per 4 KiB page on a small VM: 16 MiB costs 50 ms fresh, 1 ms
  // warm). This process serves until exit, so the heap is ours to tune; memory goes back after a second idle.
  (void)::mallopt(M_MMAP_THRESHOLD, 32 << 20);
  (void)::mallopt(M_TRIM_THRESHOLD, 256 << 20);
  bool holding = false;  // warm memory is held since the last message
  std::uint64_t last_check = monotonic_ns();
  std::uint64_t last_message = last_check;
  bool master_remote = false;  // rank 0 runs on another host: a pending send moves only as this rank polls
  auto master_gone = [&] {
    const std::uint64_t now = monotonic_ns();
    if (!master || now - last_check <= 200'000'000) return;
    last_check = now;
    pollfd p{master.get(), POLLIN, 0};
    if (::poll(&p, 1, 0) > 0) ::_exit(1);  // rank 0 is gone: nobody will ever send tag_exit
  };
  // A send to rank 0 that waits with the backoff: a big one waits for rank 0 to take it (Open MPI's blocking send
  // would spin meanwhile, taking the CPU from the other ranks).
  doorbells bells;             // rank 0's page when it runs on this host (doorbell.hpp)
  bell* own_bell = nullptr;     // this rank's bell in it
  bell* master_bell = nullptr;  // rank 0's
  int own_rank = 0;
  MPI_Comm_rank(comm, &own_rank);
  auto send_to_master = [&](const void* data, std::size_t bytes, int tag) {
    MPI_Request request = MPI_REQUEST_NULL;
    MPI_Isend(data, static_cast<int>(bytes), MPI_BYTE, 0, tag, comm, &request);
    if (master_bell != nullptr) ring(*master_bell);
    backoff waiting(20'000);
    for (;;) {
      int done = 0;
      MPI_Test(&request, &done, MPI_STATUS_IGNORE);
      if (done != 0) return;
      master_gone();
      waiting.pause(master_remote ? 20'000 : 1'000'000);
    }
  };
  backoff idle;
  for (;;) {
    // Past the spin, the bell is armed before this poll: a message rung after it wakes the sleep below at once.
    std::optional<bell_sleep> armed;
    if (own_bell != nullptr && !idle.spinning()) armed.emplace(own_bell);
    int flag = 0;
    MPI_Status status;
    MPI_Iprobe(0, MPI_ANY_TAG, comm, &flag, &status);
    // Open MPI's probe looks at the messages it has matched before it lets its progress engine take in new ones:
    // a message that arrived since the last poll is seen only by the next probe. Before sleeping, look twice.
    if (flag == 0 && armed) MPI_Iprobe(0, MPI_ANY_TAG, comm, &flag, &status);
    if (flag == 0) {
      master_gone();
      const std::uint64_t now = monotonic_ns();
      if (holding && now - last_message > 1'000'000'000) {
        holding = false;
        std::vector<std::byte>().swap(large);
        if (out.capacity() > packed_limit) std::vector<std::byte>().swap(out);
        if (in.capacity() > packed_limit) std::vector<std::byte>().swap(in);
        (void)::malloc_trim(0);
      }
      if (armed) {
        idle.pause(*armed);
      } else {
        idle.pause();
      }
      continue;
    }
    armed.reset();
    holding = true;
    last_message = monotonic_ns();
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
      std::int32_t bell_fd = -1;
      std::uint64_t bell_count = 0;
      std::uint64_t init = 0;
      ar(modules, master_pid, master_host, bell_fd, bell_count, init);
      const std::span<const std::byte> payload = message.subspan(message.size() - ar.remaining());
      pool::worker_code_map() = nullptr;
      translator = std::make_unique<code_translator>(modules);
      pool::worker_code_map() = translator.get();
      if (master_host == host && !master) master.reset(detail::pidfd_open(static_cast<pid_t>(master_pid)));
      master_remote = master_host != host;
      bells = master_remote ? doorbells() : doorbells::attach(master_pid, bell_fd, bell_count);
      own_bell = bells.at(static_cast<std::size_t>(own_rank) + 1);
      master_bell = bells.at(0);
      idle.spin_for(own_bell != nullptr ? bell_spin_ns : 300'000);
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
      if (large.capacity() < total) {
        std::vector<std::byte>().swap(large);
        large.reserve(total);
        advise_huge(large.data(), total);
      }
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
    // An apply's single-block result (u64 count 1, u64 length, the block, u8 0: no failure) leaves its block
    // behind: rank 0 receives it straight into the result's storage.
    constexpr std::size_t head = sizeof(std::uint64_t) + 1 + sizeof(std::int32_t);
    constexpr std::size_t around = head + 2 * sizeof(std::uint64_t);
    std::uint64_t results = 0;
    std::uint64_t length = 0;
    if (how == outcome::ran && header.result_block != 0 && out.size() >= block_limit && out.size() > around) {
      std::memcpy(&results, out.data() + head, sizeof results);
      std::memcpy(&length, out.data() + head + sizeof results, sizeof length);
    }
    if (results == 1 && length <= (out.size() - around - 1) / header.result_block &&
        around + length * header.result_block + 1 == out.size() && out.back() == std::byte{0}) {
      std::byte message[around + 1];
      std::memcpy(message, out.data(), around);
      message[sizeof(std::uint64_t)] = static_cast<std::byte>(outcome::block_follows);
      message[around] = std::byte{0};
      send_to_master(message, sizeof message, tag_result);
      send_to_master(out.data() + around, length * header.result_block, tag_part);
    } else {
      send_to_master(out.data(), out.size(), tag_result);
    }
    idle.reset();
  }
}

}  // namespace mp::detail::mpi
