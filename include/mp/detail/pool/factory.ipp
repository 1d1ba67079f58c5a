// factory: definitions (see factory.hpp).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <string>

#include <mp/detail/archive.hpp>
#include <mp/detail/segment_pool.hpp>
#include <mp/detail/child_os.hpp>
#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/pool/handles.hpp>
#include <mp/detail/pool/task.hpp>
#include <mp/detail/shm_segment.hpp>
#include <mp/detail/registry.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/detail/unique_fd.hpp>
#include <mp/errors.hpp>

#include <mp/detail/pool/factory.hpp>

namespace mp::detail::pool {

// Not through the syscall seam: what a freshly forked worker does before it runs user code (prctl, getppid, close,
// open, dup2), as syscall.hpp says. kill(2) goes through it although its failure needs no handling: the factory
// kills only its own unreaped children, which cannot fail.
MP_DECL void send_factory_request(int sock, const factory_request& request, int fd) noexcept {
  iovec part{const_cast<factory_request*>(&request), sizeof request};
  msghdr message{};
  message.msg_iov = &part;
  message.msg_iovlen = 1;
  alignas(cmsghdr) std::byte control[CMSG_SPACE(sizeof(int))];
  if (fd >= 0) {
    message.msg_control = control;
    message.msg_controllen = sizeof control;
    cmsghdr* cmsg = CMSG_FIRSTHDR(&message);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cmsg), &fd, sizeof fd);
  }
  sys_try("sendmsg", [&] { return ::sendmsg(sock, &message, MSG_NOSIGNAL); });
}

// Receives one request and the descriptor it may carry (owned by `fd`); the byte count as recv(2).
MP_DECL ssize_t receive_factory_request(int sock, factory_request& request, unique_fd& fd) {
  iovec part{&request, sizeof request};
  msghdr message{};
  message.msg_iov = &part;
  message.msg_iovlen = 1;
  alignas(cmsghdr) std::byte control[CMSG_SPACE(sizeof(int) * 4)];
  message.msg_control = control;
  message.msg_controllen = sizeof control;
  const ssize_t got = sys_try("recvmsg", [&] { return ::recvmsg(sock, &message, MSG_CMSG_CLOEXEC); });
  if (got < 0) return got;
  for (cmsghdr* cmsg = CMSG_FIRSTHDR(&message); cmsg != nullptr; cmsg = CMSG_NXTHDR(&message, cmsg)) {
    if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int received = -1;
      std::memcpy(&received, CMSG_DATA(cmsg) + i * sizeof(int), sizeof received);
      if (i == 0) fd.reset(received);
      else unique_fd extra(received);
    }
  }
  return got;
}

MP_DECL void factory_main(int sock, std::size_t slots,
                          const std::function<void(std::size_t, int, unsigned)>& run_worker) {
  unsigned forked = 0;
  struct child {
    pid_t pid = 0;
    unique_fd pidfd;  // readable when it exits
  };
  std::vector<child> children(slots);
  std::vector<pollfd> fds;
  std::vector<std::size_t> fd_slot;
  const pid_t self = ::getpid();

  // A failed send needs no handling: the Pool's process is gone, and the next recv() sees end of file.
  auto send = [&](const factory_event& event) {
    sys_try("send", [&] { return ::send(sock, &event, sizeof event, MSG_NOSIGNAL); });
  };
  auto reap = [&](std::size_t slot) {
    int status = 0;
    sys_try("waitpid", [&] { return ::waitpid(children[slot].pid, &status, 0); });
    send({factory_event::exited, static_cast<std::uint32_t>(slot), children[slot].pid, exitcode_from_status(status)});
    children[slot].pid = 0;
    children[slot].pidfd.reset();
  };
  auto kill_all_and_exit = [&](int code) {
    for (std::size_t s = 0; s < slots; ++s)
      if (children[s].pid != 0) sys_try("kill", [&] { return ::kill(children[s].pid, SIGKILL); });
    for (std::size_t s = 0; s < slots; ++s)
      if (children[s].pid != 0) reap(s);
    ::_exit(code);
  };

  for (;;) {
    fds.clear();
    fd_slot.clear();
    fds.push_back({sock, POLLIN, 0});
    for (std::size_t s = 0; s < slots; ++s) {
      if (children[s].pid == 0) continue;
      fds.push_back({children[s].pidfd.get(), POLLIN, 0});
      fd_slot.push_back(s);
    }
    if (sys_try("poll", [&] { return ::poll(fds.data(), fds.size(), -1); }) < 0) kill_all_and_exit(70);
    for (std::size_t i = 1; i < fds.size(); ++i)
      if (fds[i].revents != 0) reap(fd_slot[i - 1]);
    if (fds[0].revents == 0) continue;

    factory_request request;
    unique_fd worker_socket;
    const auto got = receive_factory_request(sock, request, worker_socket);
    if (got <= 0) kill_all_and_exit(0);  // the Pool's process is gone: take the workers with us
    if (request.op == factory_request::shutdown) kill_all_and_exit(0);
    if (request.slot >= slots) continue;
    child& c = children[request.slot];
    if (request.op == factory_request::kill) {
      if (c.pid != 0 && c.pid == request.pid) sys_try("kill", [&] { return ::kill(c.pid, SIGKILL); });
      continue;
    }
    if (request.op != factory_request::spawn || c.pid != 0) continue;
    flush_standard_streams();
    ++forked;
    const pid_t pid = sys_try("fork", [] { return ::fork(); });
    if (pid < 0) {
      send({factory_event::spawn_failed, request.slot, 0, last_errno()});
      continue;
    }
    if (pid == 0) {
      // The worker: dies with the factory, never returns into the factory's loop.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != self) ::_exit(70);
      ::close(sock);
      for (auto& other : children) other.pidfd.reset();
      // As Python's workers (util._close_stdin): a worker does not compete with the parent for standard input.
      const int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (devnull >= 0) {
        ::dup2(devnull, STDIN_FILENO);
        ::close(devnull);
      }
      run_worker(request.slot, worker_socket.release(), forked);
      ::_exit(0);
    }
    c.pid = pid;
    c.pidfd.reset(pidfd_open(pid));
    if (!c.pidfd) {  // no pidfd (very old kernel or out of fds): we cannot watch it, so do not keep it
      const int err = last_errno();
      sys_try("kill", [&] { return ::kill(pid, SIGKILL); });
      sys_try("waitpid", [&] { return ::waitpid(pid, nullptr, 0); });
      c.pid = 0;
      send({factory_event::spawn_failed, request.slot, 0, err});
      continue;
    }
    send({factory_event::spawned, request.slot, pid, 0});
  }
}

MP_DECL void factory_entry(std::span<const std::byte> bytes) {
  // Parent death shows as end of file on the factory socket, as for a forked factory. The death signal the
  // spawned-child path armed would fire when the *thread* that created the Pool ends (PR_SET_PDEATHSIG follows
  // the creating thread), which may happen while the Pool lives on in another thread. (Not through the syscall
  // seam: with these arguments prctl cannot fail.)
  ::prctl(PR_SET_PDEATHSIG, 0);
  fd_inbox* box = current_fd_inbox();
  if (box == nullptr || box->fds.size() < 3 || !box->fds[0] || !box->fds[1] || !box->fds[2])
    throw ProcessError("Pool worker factory: expected 3 descriptors from the Pool's process (segment, eventfd, socket)");
  factory_boot boot;
  input_archive ar(bytes);
  ar(boot);
  unique_fd wake = std::move(box->fds[1]);
  unique_fd sock = std::move(box->fds[2]);
  const shm_segment segment = shm_segment::from_fd(std::move(box->fds[0]), "mp-pool");
  const std::size_t n = static_cast<std::size_t>(boot.processes);
  if (n == 0 || n > 4096 || segment.size() < shared_region::bytes_for(n))
    throw ProcessError("Pool worker factory: a segment of " + std::to_string(segment.size()) + " bytes for " +
                       std::to_string(n) + " workers");
  const code_translator translator(boot.modules);
  worker_code_map() = &translator;  // inherited by every worker forked below
  const std::size_t maxtasksperchild = static_cast<std::size_t>(boot.maxtasksperchild);
  // The initializer's handles: descriptors after the first 3, inherited by every worker forked below.
  std::vector<unique_fd> initializer_fds;
  for (std::size_t i = 3; i < box->fds.size(); ++i) initializer_fds.push_back(std::move(box->fds[i]));
  std::function<void()> initializer;
  if (boot.initializer != 0) {
    const auto run = reinterpret_cast<trampoline_fn>(translator.translate(boot.initializer));
    initializer = [run, &boot, &initializer_fds] {
      fd_inbox inbox;  // this worker's copies: closed once the handles in the arguments hold their own
      inbox.fds = std::move(initializer_fds);
      fd_inbox_scope scope(inbox);
      std::vector<std::byte> unused;
      run(boot.initializer_state, unused);
    };
  }
  const parent_link link{*static_cast<shared_region*>(segment.data()), wake.get()};
  factory_main(sock.get(), n, [&](std::size_t slot, int socket, unsigned number) {
    become_pool_worker("PoolWorker-" + std::to_string(number),
                       parent_record{boot.parent_name, static_cast<pid_t>(boot.parent_pid), false});
    try {
      worker_main(link, slot, socket, initializer, maxtasksperchild);
    } catch (...) {
      ::_exit(70);
    }
  });
}

// Writes a result message to the outbox; a big body goes as a segment on the worker's socket first, the message
// then holding only its header: the segment the trampoline serialized big results into (result_blob), or, for a
// big body in the buffer (many small results), one it is copied into now. The segment is one of the worker's
// recycled ones (segment_pool.hpp): the parent marks it consumed once it decoded the result, and the next big
// result reuses its pages, already touched, instead of fresh ones.
// `notify`: whether the parent is told of it now (hold_result_notice).
MP_DECL void send_result(const parent_link& link, ring& outbox, int socket, std::vector<std::byte>& out,
                         result_blob& blob, bool notify) {
  const std::size_t body = out.size() - sizeof(result_header);
  if (!blob.holds() && body >= blob_threshold && socket >= 0) {
    const auto space = blob.acquire(body);  // none (no memory): the ring still works, piece by piece
    if (!space.empty()) std::memcpy(space.data(), out.data() + sizeof(result_header), body);
  }
  if (blob.holds()) {
    const int fds[] = {blob.fd()};
    send_fd_frame(socket, {}, fds, "Pool worker: sending a big result");
    result_header header{};
    std::memcpy(&header, out.data(), sizeof header);
    header.length = sizeof header - sizeof header.length;
    header.blob = blob.size();
    blob.release();
    write_all(link, outbox, reinterpret_cast<const std::byte*>(&header), sizeof header, notify);
    if (out.capacity() > pool_result_keep) std::vector<std::byte>().swap(out);  // do not hoard
    return;
  }
  write_all(link, outbox, out.data(), out.size(), notify);
}

MP_DECL void worker_main(const parent_link& link, std::size_t slot, int socket,
                         const std::function<void()>& initializer, std::size_t maxtasksperchild) {
  shared_slot& mine = link.shared.slot(slot);
  // Handles in task arguments resolve through what this worker keeps (handles.hpp). The scope also hides the
  // spawned factory's own inbox, which a fork of it would otherwise inherit as current.
  worker_handles kept;
  fd_inbox inbox;
  inbox.cache = &kept;
  fd_inbox_scope inbox_scope(inbox);
  std::vector<std::byte> out;
  result_blob big_result;  // a big result's segment, between its trampoline and send_result
  if (initializer) {
    try {
      initializer();
    } catch (...) {
      // Tell the parent why (chunk id 0), so a pool whose initializer always fails reports it instead of looping.
      begin_result(out);
      encode_failed_chunk(out);
      end_result(out, 0);
      write_all(link, mine.outbox, out.data(), out.size());
      flush_standard_streams();
      ::_exit(1);
    }
  }
  std::vector<std::byte> task;
  // The parent's recycled argument segments, mapped once each (segment_pool.hpp, segment_view_cache).
  segment_view_cache big_args(4, pool_segment_budget / 2, pool_segment_budget / 2);
  const bool crowded = link.shared.crowded.load(std::memory_order_relaxed) != 0;
  unsigned held = 0;  // results written whose notice is held back (hold_result_notice)
  for (std::size_t done = 0;;) {
    task_header header{};
    read_exact(link, mine.inbox, reinterpret_cast<std::byte*>(&header), sizeof header, held);
    task.resize(header.length - (sizeof header - sizeof header.length));
    read_exact(link, mine.inbox, task.data(), task.size(), held);
    if (header.trampoline == 0) {
      flush_standard_streams();
      ::_exit(0);
    }
    const std::uint64_t started = monotonic_ns();
    mine.started_ns.store(started);
    mine.current_chunk.store(header.chunk_id);
    if (header.timeout_ns != 0) link.wake_parent();  // the supervisor must arm this task's deadline
    begin_result(out);
    trampoline_fn run = nullptr;
    try {
      run = trampoline_from(header.trampoline);  // translated under spawn/forkserver: may fail
    } catch (...) {
      encode_failed_chunk(out);
    }
    if (run != nullptr) {
      std::span<const std::byte> payload(task);
      // A big payload, mapped: decoded straight from the segment, marked consumed (for the parent to reuse) as soon
      // as the task ran.
      segment_reader big;
      try {
        if (header.handles == 0) {
          kept.clear_current();
        } else if (header.handles != reuse_handles) {
          if (header.handles > payload.size()) throw SerializationError("Pool worker: a truncated task message");
          unique_fd blob = kept.apply_section(payload.first(header.handles), socket);
          payload = payload.subspan(header.handles);
          if (header.blob != 0) {
            if (!blob) throw ProcessError("Pool worker: a task's blob segment did not arrive");
            big = segment_reader(std::move(blob), static_cast<std::size_t>(header.blob), "Pool worker", &big_args);
            payload = big.bytes();
          }
        }
      } catch (...) {
        encode_failed_chunk(out);
        run = nullptr;
      }
      if (run != nullptr) run(payload, result_sink(out, socket >= 0 ? &big_result : nullptr));
    }
    flush_pending_output();
    end_result(out, header.chunk_id);
    const std::uint64_t ran = monotonic_ns() - started;
    mine.last_run_ns.store(ran, std::memory_order_relaxed);
    const bool hold = hold_result_notice(crowded, mine.inbox.readable() != 0, ran, held);
    send_result(link, mine.outbox, socket, out, big_result, !hold);
    held = hold ? held + 1 : 0;
    mine.current_chunk.store(0);
    if (maxtasksperchild != 0 && ++done >= maxtasksperchild) ::_exit(0);
  }
}

}  // namespace mp::detail::pool
