// core: definitions (see core.hpp).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>
#include <optional>

#include <mp/detail/child_os.hpp>
#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/code_address.hpp>
#include <mp/detail/registry.hpp>
#include <mp/detail/segment_pool.hpp>
#include <mp/detail/spawn.hpp>
#include <mp/detail/syscall.hpp>

#include <mp/detail/pool/core.hpp>

namespace mp::detail::pool {

MP_DECL core::core(config settings) : config_(std::move(settings)) {
  const std::size_t n = config_.processes;
  segment_ = shm_segment::create(shared_region::bytes_for(n), "mp-pool-" + std::to_string(::getpid()));
  shared_ = new (segment_.data()) shared_region;
  for (std::size_t s = 0; s < n; ++s) new (&shared_->slot(s)) shared_slot;
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  const std::size_t usable =
      sys_try("sched_getaffinity", [&] { return ::sched_getaffinity(0, sizeof cpus, &cpus); }) == 0
          ? static_cast<std::size_t>(CPU_COUNT(&cpus))
          : 1;
  crowded_ = n > usable;
  shared_->worker_spin_ns.store(worker_spin_for(n, usable));
  shared_->crowded.store(crowded_ ? 1 : 0);
  wake_fd_.reset(make_eventfd());
  slots_.resize(n);
  dispatched_ns_.resize(n, 0);

  flush_standard_streams();
  registry& reg = the_registry();
  // Held from socketpair() until the factory's end is closed here: a fork in another thread (Process::start holds
  // it across fork()) would otherwise copy that end into its child, and neither side would see end of file when
  // the other dies. Under fork it is held across fork() like Process::start does, so the factory's copy of mp's
  // process registry is consistent.
  std::unique_lock reg_lock(reg.mutex);
  int pair[2];
  sys("socketpair", [&] { return ::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair); });
  unique_fd ours(pair[0]);
  unique_fd theirs(pair[1]);

  if (!fresh()) {
    const pid_t pid = sys_try("fork", [] { return ::fork(); });
    if (pid == 0) {
      // The factory: forget the parent's children (not ours to join), close the parent's end, serve.
      reg.children.clear();
      reg_lock.release();
      reg.mutex.unlock();
      ours.reset();
      worker_code_map() = nullptr;  // a Pool inside a spawn worker: these workers share our addresses
      shared_region* shared = shared_;
      const int wake = wake_fd_.get();
      const config& cfg = config_;
      const pid_t owner = owner_;
      factory_main(theirs.get(), n, [shared, wake, &cfg, owner](std::size_t slot, int socket, unsigned number) {
        become_pool_worker("PoolWorker-" + std::to_string(number), parent_record{cfg.parent_name, owner, false});
        try {
          worker_main(parent_link{*shared, wake}, slot, socket, cfg.initializer, cfg.maxtasksperchild);
        } catch (...) {
          ::_exit(70);
        }
      });
    }
    const int err = last_errno();
    theirs.reset();
    reg_lock.unlock();
    if (pid < 0) throw_errno("fork", "Pool worker factory", err);
    factory_pid_ = pid;
  } else {
    factory_boot boot;
    boot.processes = n;
    boot.maxtasksperchild = config_.maxtasksperchild;
    boot.initializer = config_.initializer_address;
    boot.initializer_state = config_.initializer_state;
    boot.modules = loaded_modules();
    boot.parent_name = config_.parent_name;
    boot.parent_pid = ::getpid();
    std::vector<std::byte> bytes;
    {
      output_archive ar(bytes);
      ar(boot);
    }
    spawn_request request;
    request.name = "PoolFactory";
    request.parent_name = config_.parent_name;  // not current_process(): the registry mutex is held
    request.parent_pid = ::getpid();
    request.start_method = start_method_setting();
    request.target = spawn_target{locate_code(reinterpret_cast<std::uintptr_t>(&factory_entry)), std::move(bytes)};
    std::vector<int> fds = {segment_.fd(), wake_fd_.get(), theirs.get()};
    fds.insert(fds.end(), config_.initializer_fds.begin(), config_.initializer_fds.end());
    fresh_child started = start_fresh_child(config_.start_method, request, fds);
    theirs.reset();
    reg_lock.unlock();
    factory_pid_ = started.pid;
    factory_status_ = std::move(started.status);
    if (factory_status_) factory_pidfd_.reset(pidfd_open(started.pid));
    // One byte once it runs (from mp::Process's spawned-child path); end of file if it died first.
    const bool got = wait_until_ready(started);
    if (!got) {
      ours.reset();
      reap_factory();
      throw ProcessError("Pool: the worker factory process (pid " + std::to_string(started.pid) +
                         ") ended while starting; its standard error says why");
    }
  }
  factory_ = std::move(ours);
  {
    std::lock_guard lock(mutex_);
    for (std::size_t s = 0; s < n; ++s) spawn_locked(s);
  }
  supervisor_ = std::thread([this] { supervise(); });
}

MP_DECL core::~core() {
  if (!owned_here()) return;  // a forked copy: the real pool lives on in its owner
  bool needs_terminate = false;
  {
    std::lock_guard lock(mutex_);
    needs_terminate = state_ != state::stopped && state_ != state::terminated;
  }
  if (needs_terminate) terminate();
  stop_supervisor_and_factory();
}

MP_DECL void core::throw_not_owner(const char* caller) const {
  throw Error(std::string(caller) + ": this Pool belongs to process " + std::to_string(owner_) +
              ", not to this process (" + std::to_string(::getpid()) +
              "); a Pool works only in the process that created it: create one here");
}

MP_DECL void core::submit(std::shared_ptr<job> job, std::size_t first, std::size_t count, const char* caller,
                          std::shared_ptr<submission_handles> handles) {
  require_owner(caller);
  if (handles && handles->empty()) handles.reset();
  std::lock_guard lock(mutex_);
  if (!broken_.empty()) throw Error(std::string(caller) + ": the pool is broken (" + broken_ + "); create a new Pool");
  if (state_ != state::running)
    throw Error(std::string(caller) + ": the pool is " + (state_ == state::terminated ? "terminated" : "closed") +
                " and accepts no new work; create a new Pool");
  if (count == 0) return;
  if (job->timeout_ns == 0) job->timeout_ns = config_.task_timeout_ns;
  if (handles) handles->attach(handles_);
  pending_.push_back({std::move(job), first, first + count, std::move(handles)});
  outstanding_ += count;
  dispatch_locked();
  // The supervisor of a crowded pool must look every crowded_look_ms while work is outstanding (workers may hold
  // back results' notices): if it went to sleep with none, wake it to start looking.
  if (supervisor_resting_) {
    supervisor_resting_ = false;
    signal_eventfd(wake_fd_.get());
  }
}

MP_DECL bool core::cancel(const job& target) {
  std::lock_guard lock(mutex_);
  if (target.dispatched) return false;
  std::size_t removed = 0;
  for (auto it = pending_.begin(); it != pending_.end();) {
    if (it->job.get() == &target) {
      removed += it->end - it->next;
      it = pending_.erase(it);
    } else {
      ++it;
    }
  }
  if (removed == 0) return false;  // finished already (or failed by terminate)
  outstanding_ -= removed;
  if (outstanding_ == 0) changed_.notify_all();
  return true;
}

MP_DECL bool core::running(const job& target) {
  std::lock_guard lock(mutex_);
  for (std::size_t s = 0; s < slots_.size(); ++s) {
    const std::uint64_t current = shared_->slot(s).current_chunk.load();
    if (current == 0) continue;
    for (const inflight& chunk : slots_[s].chunks)
      if (chunk.job.get() == &target && chunk.id == current) return true;
  }
  return false;
}

MP_DECL void core::close() {
  require_owner("Pool::close");
  std::lock_guard lock(mutex_);
  if (state_ == state::running) state_ = state::closed;
}

MP_DECL void core::terminate() {
  require_owner("Pool::terminate");
  {
    std::lock_guard lock(mutex_);
    if (state_ == state::stopped || state_ == state::terminated) return;
    state_ = state::terminated;
    fail_everything_locked([] {
      return std::make_exception_ptr(
          Error("Pool::terminate() stopped the workers before this task finished; its result will never come"));
    });
    request_locked({factory_request::shutdown, 0, 0});
  }
  stop_supervisor_and_factory();
}

MP_DECL void core::join() {
  require_owner("Pool::join");
  std::unique_lock lock(mutex_);
  if (state_ == state::running)
    throw Error("Pool::join: the pool is still running; call close() or terminate() first");
  // terminate() from another thread ends every wait below.
  auto ended = [&] { return state_ == state::stopped || state_ == state::terminated || !broken_.empty(); };
  if (state_ == state::closed) {
    changed_.wait(lock, [&] { return outstanding_ == 0 || ended(); });
    if (state_ == state::closed) {
      state_ = state::stopping;
      dispatch_locked();  // sends every idle worker its stop message
    }
  }
  changed_.wait(lock, [&] { return live_ == 0 || ended(); });
  if (state_ == state::stopping || (state_ == state::closed && !broken_.empty())) {
    state_ = state::stopped;
    changed_.notify_all();  // another thread may be in join() too
    request_locked({factory_request::shutdown, 0, 0});
  }
  lock.unlock();
  stop_supervisor_and_factory();
}

// Waits for the factory to end once its socket is closed. Under fork and spawn it is our child; under forkserver
// it is the server's, which reaps it and then writes its status to factory_status_ (end of file if the server
// died: then the factory was re-parented, to us if we are the nearest subreaper, and the pidfd reaps it — waitid
// fails at once with ECHILD if it is not ours).
MP_DECL void core::reap_factory() noexcept {
  if (factory_pid_ == 0) return;
  if (factory_status_) {
    int status = 0;
    std::size_t got = 0;
    while (got < sizeof status) {
      const auto n = sys_try("read", [&] {
        return ::read(factory_status_.get(), reinterpret_cast<char*>(&status) + got, sizeof status - got);
      });
      if (n <= 0) break;
      got += static_cast<std::size_t>(n);
    }
    if (got != sizeof status && factory_pidfd_) {
      siginfo_t info{};
      sys_try("waitid", [&] {
        return ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(factory_pidfd_.get()), &info, WEXITED);
      });
    }
    factory_status_.reset();
    factory_pidfd_.reset();
  } else {
    sys_try("waitpid", [&] { return ::waitpid(factory_pid_, nullptr, 0); });
  }
  factory_pid_ = 0;
}

MP_DECL void core::stop_supervisor_and_factory() noexcept {
  std::lock_guard teardown(teardown_mutex_);  // join() and terminate() may race here from two threads
  stop_supervisor_.store(true);
  signal_eventfd(wake_fd_.get());
  if (supervisor_.joinable() && supervisor_.get_id() != std::this_thread::get_id()) supervisor_.join();
  factory_.reset();  // EOF: the factory kills whatever is left and exits
  reap_factory();
  // Workers of a factory killed from outside die by PR_SET_PDEATHSIG, re-parented to the nearest subreaper. If
  // that is this process, reap them here. The pidfd names that exact process (no pid-reuse race); waitid fails
  // with ECHILD at once when the worker is not our child.
  for (auto& slot : slots_) {
    if (!slot.pidfd) continue;
    siginfo_t info{};
    sys_try("waitid", [&] {
      return ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(slot.pidfd.get()), &info, WEXITED);
    });
    slot.pidfd.reset();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The supervisor.

MP_DECL void core::supervise() {
  bool awake = false;  // counted in collectors_awake: workers then skip the eventfd write
  std::uint64_t last_activity = monotonic_ns();
  const std::uint64_t spin_ns = crowded_ ? 0 : 50'000;  // crowded: see core::wait
  while (!stop_supervisor_.load()) {
    std::optional<std::uint64_t> next_deadline;
    bool did = false;
    bool busy = false;
    {
      std::lock_guard lock(mutex_);
      did = progress_locked();
      next_deadline = check_timeouts_locked();
      busy = outstanding_ != 0;
      supervisor_resting_ = crowded_ && !busy;  // decided under the mutex: a submit() after it wakes us
    }
    const std::uint64_t now = monotonic_ns();
    if (did) last_activity = now;
    // Spin while results flow and no waiting caller is collecting already; else sleep in poll().
    const bool spin = busy && callers_spinning_.load() == 0 && now - last_activity < spin_ns;
    if (spin != awake) {
      awake = spin;
      if (awake) {
        shared_->collectors_awake.fetch_add(1);
      } else {
        shared_->collectors_awake.fetch_sub(1);
        continue;  // one more progress(): results published while we counted as awake sent no wake-up
      }
    }
    int timeout_ms = -1;
    if (spin) {
      timeout_ms = 0;
    } else if (next_deadline) {
      timeout_ms = *next_deadline <= now ? 0 : static_cast<int>((*next_deadline - now + 999'999) / 1'000'000);
    }
    // Workers of a crowded pool may hold back the notice of a result (hold_result_notice): look for one anyway.
    if (crowded_ && busy && (timeout_ms < 0 || timeout_ms > crowded_look_ms)) timeout_ms = crowded_look_ms;
    // Once the factory is gone its socket stays readable (EOF): stop watching it (poll ignores fd -1).
    pollfd fds[2] = {{wake_fd_.get(), POLLIN, 0}, {factory_gone_.load() ? -1 : factory_.get(), POLLIN, 0}};
    const int ready = sys_try("poll", [&] { return ::poll(fds, 2, timeout_ms); });
    if (ready > 0 && (fds[0].revents & POLLIN) != 0) {
      std::uint64_t count = 0;  // resets the eventfd; nothing to do if that fails (it stays readable: one more round)
      sys_try("read", [&] { return ::read(wake_fd_.get(), &count, sizeof count); });
    }
    if (ready > 0 && fds[1].revents != 0) {
      std::lock_guard lock(mutex_);
      if (read_factory_locked()) last_activity = monotonic_ns();
    }
  }
  if (awake) shared_->collectors_awake.fetch_sub(1);
}

// ---------------------------------------------------------------------------------------------------------------
// Progress: everything below runs with mutex_ held and never blocks.

MP_DECL bool core::progress_locked() {
  bool did = false;
  for (std::size_t s = 0; s < slots_.size(); ++s)
    if (slots_[s].live) did |= drain_locked(s);
  did |= dispatch_locked();
  return did;
}

MP_DECL bool core::read_factory_locked() {
  bool did = false;
  for (;;) {
    factory_event event;
    const auto got = sys_try("recv", [&] { return ::recv(factory_.get(), &event, sizeof event, MSG_DONTWAIT); });
    if (got < 0 && (last_errno() == EAGAIN || last_errno() == EWOULDBLOCK)) return did;
    if (got <= 0) {
      // The factory is gone (killed from outside): no worker can be replaced or even reaped any more.
      factory_gone_.store(true);
      if (state_ != state::stopped && state_ != state::terminated)
        break_pool_locked("its worker factory process died unexpectedly");
      for (auto& slot : slots_) slot.live = false;
      live_ = 0;
      changed_.notify_all();
      return true;
    }
    did = true;
    if (event.slot >= slots_.size()) continue;
    const std::size_t s = event.slot;
    if (event.kind == factory_event::spawned) {
      slots_[s].pid = event.pid;
      slots_[s].pidfd.reset(pidfd_open(event.pid));  // -1 if already gone
    } else if (event.kind == factory_event::exited) {
      worker_exited_locked(s, event.pid, event.code);
    } else if (event.kind == factory_event::spawn_failed) {
      slots_[s].live = false;
      --live_;
      break_pool_locked("the worker factory could not fork a worker: " + std::string(std::strerror(event.code)));
    }
  }
}

MP_DECL bool core::drain_locked(std::size_t s) {
  slot_state& slot = slots_[s];
  ring& ring = shared_->slot(s).outbox;
  bool did = false;
  for (;;) {
    const std::size_t need = slot.rx_need == 0 ? sizeof(std::uint64_t) : slot.rx_need;
    if (slot.rx.size() < need) slot.rx.resize(need);
    const std::size_t got = ring.read_some(slot.rx.data() + slot.rx_have, need - slot.rx_have);
    if (got == 0) break;
    did = true;
    slot.rx_have += got;
    if (slot.rx_have < need) continue;
    if (slot.rx_need == 0) {
      std::uint64_t length = 0;
      std::memcpy(&length, slot.rx.data(), sizeof length);
      slot.rx_need = sizeof length + length;
      continue;
    }
    const std::size_t size = slot.rx_need;
    slot.rx_need = 0;
    slot.rx_have = 0;
    handle_result_locked(s, std::span<const std::byte>(slot.rx.data(), size));
    if (slot.rx.size() > (std::size_t{4} << 20)) std::vector<std::byte>().swap(slot.rx);  // do not hoard
  }
  if (did) wake_producer(ring);
  return did;
}

MP_DECL void core::handle_result_locked(std::size_t s, std::span<const std::byte> message) {
  slot_state& slot = slots_[s];
  const result_message result = split_result(message);
  // A big result: the worker sent its blob segment on the socket before this message entered the ring.
  segment_reader big;  // marks the worker's segment consumed once decoded, for it to reuse
  std::exception_ptr lost;
  if (result.blob != 0) {
    try {
      fd_frame frame = receive_fd_frame(slot.socket.get(), "Pool: a worker's big result", 0);
      if (frame.fds.fds.size() != 1)
        throw ProcessError("Pool: " + std::to_string(frame.fds.fds.size()) + " descriptors came with a big result");
      big = segment_reader(std::move(frame.fds.fds[0]), static_cast<std::size_t>(result.blob), "Pool",
                           slot.big_results.get());
    } catch (...) {
      lost = std::current_exception();
    }
  }
  input_archive ar(big ? big.bytes() : result.body);
  if (result.chunk_id == 0) {  // the initializer threw; the worker exits next
    try {
      if (auto failure = read_results<void>(ar, 0, "initializer failure", [] {}).failure)
        std::rethrow_exception(failure);
    } catch (const RemoteError& e) {
      initializer_error_ = e.what();  // "<type>: <message>"
    } catch (const std::exception& e) {
      const auto* info = dynamic_cast<const RemoteInfo*>(&e);  // a Remote<E>: what() is the message alone
      initializer_error_ = info != nullptr ? info->remote_type() + ": " + e.what() : std::string(e.what());
    } catch (...) {
    }
    return;
  }
  if (slot.chunks.empty() || slot.chunks.front().id != result.chunk_id) return;  // cannot happen: FIFO per worker
  inflight done = std::move(slot.chunks.front());
  slot.chunks.pop_front();
  barren_deaths_ = 0;
  const std::uint64_t now = monotonic_ns();
  if (crowded_) {
    // As the worker timed it (a chunk it ran since, if any: as typical): in a crowded pool the time from dispatch
    // to result is mostly waiting for a CPU, which says nothing about how deep its queue should be.
    ewma_chunk_ns_ = (ewma_chunk_ns_ * 7 + shared_->slot(s).last_run_ns.load(std::memory_order_relaxed)) / 8;
  } else if (dispatched_ns_[s] != 0) {
    const std::uint64_t took = now - dispatched_ns_[s];  // since it became the worker's first chunk
    ewma_chunk_ns_ = (ewma_chunk_ns_ * 7 + took) / 8;
  }
  dispatched_ns_[s] = slot.chunks.empty() ? 0 : now;
  try {
    if (lost) std::rethrow_exception(lost);
    done.job->deliver(done.chunk, ar);
  } catch (...) {
    done.job->fail(done.chunk, std::current_exception());
  }
  if (--outstanding_ == 0) changed_.notify_all();
}

MP_DECL void core::worker_exited_locked(std::size_t s, pid_t pid, int code) {
  slot_state& slot = slots_[s];
  if (!slot.live || (slot.pid != 0 && slot.pid != pid)) return;
  drain_locked(s);  // results it finished before dying still count
  shared_slot& shared = shared_->slot(s);
  const std::uint64_t running = shared.current_chunk.load();
  std::deque<inflight> chunks = std::move(slot.chunks);
  slot.chunks.clear();
  bool failed_one = false;
  // The unstarted ones go back to the front of the queue, in their order.
  for (auto it = chunks.rbegin(); it != chunks.rend(); ++it) {
    // A worker we killed for a timeout may have finished that chunk and started the next one just before the
    // signal landed: that next chunk is not at fault, so it is retried rather than failed.
    const bool at_fault = it->id == running && running != 0 && (!slot.kill_sent || slot.timed_out == running);
    if (at_fault) {
      std::exception_ptr error;
      if (slot.timed_out == running) {
        error = std::make_exception_ptr(
            TimeoutError("Pool: a task ran longer than its task_timeout of " +
                         std::to_string(it->job->timeout_ns / 1'000'000) + " ms; its worker (pid " +
                         std::to_string(pid) + ") was killed and replaced"));
      } else {
        error = std::make_exception_ptr(WorkerLost(
            code, "the worker process (pid " + std::to_string(pid) + ") running this task died with exit code " +
                      std::to_string(code) + (code < 0 ? " (killed by signal " + std::to_string(-code) + ")" : "") +
                      "; the pool replaced it and the other tasks go on",
            pid));
      }
      it->job->fail(it->chunk, error);
      failed_one = true;
      if (--outstanding_ == 0) changed_.notify_all();
    } else {
      pending_.push_front({it->job, it->chunk, it->chunk + 1, it->handles});
    }
  }
  // Reset the slot for its successor: the dead worker can no longer touch the rings.
  reset_handles_locked(s);
  slot.big_results->clear();  // its successor writes into segments of its own
  shared.inbox.reset();
  shared.outbox.reset();
  shared.current_chunk.store(0);
  shared.started_ns.store(0);
  slot.writing = false;
  slot.written = 0;
  slot.rx_have = 0;
  slot.rx_need = 0;
  slot.timed_out = 0;
  slot.kill_sent = false;
  slot.sent = 0;
  dispatched_ns_[s] = 0;
  slot.pid = 0;
  slot.pidfd.reset();
  slot.live = false;
  slot.stop_sent = false;
  --live_;
  changed_.notify_all();
  if (!failed_one && code != 0) ++barren_deaths_;
  if (barren_deaths_ > 3 + 2 * slots_.size()) {
    break_pool_locked(initializer_error_.empty()
                          ? "its workers keep dying before finishing any task (last exit code " + std::to_string(code) + ")"
                          : "its initializer failed in every worker: " + initializer_error_);
    return;
  }
  if (state_ == state::running || state_ == state::closed) spawn_locked(s);
}

MP_DECL void core::spawn_locked(std::size_t s) {
  slots_[s].live = true;
  ++live_;
  // The worker's socket for the descriptors of handles: its end travels with the request, through the factory.
  int pair[2] = {-1, -1};
  if (sys_try("socketpair", [&] { return ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair); }) == 0) {
    slots_[s].socket.reset(pair[0]);
    // Ours never blocks (the core mutex is held while sending); a full socket is a failed send (handles.hpp).
    sys_try("fcntl", [&] { return ::fcntl(pair[0], F_SETFL, O_NONBLOCK); });
  }
  unique_fd theirs(pair[1]);
  request_locked({factory_request::spawn, static_cast<std::uint32_t>(s), 0}, theirs.get());
}

MP_DECL void core::reset_handles_locked(std::size_t s) noexcept {
  slots_[s].handles.forget(handles_);
  slots_[s].socket.reset();
}

MP_DECL void core::request_locked(const factory_request& request, int fd) {
  if (!factory_) return;
  // A failure needs no handling: the factory is gone, and the supervisor sees end of file on this socket. (A
  // worker whose socket could not be made or sent gets none: a task with handles to it fails as WorkerLost.)
  send_factory_request(factory_.get(), request, fd);
}

MP_DECL std::optional<std::uint64_t> core::check_timeouts_locked() {
  std::optional<std::uint64_t> earliest;
  const std::uint64_t now = monotonic_ns();
  for (std::size_t s = 0; s < slots_.size(); ++s) {
    slot_state& slot = slots_[s];
    if (!slot.live || slot.kill_sent || slot.chunks.empty() || slot.pid == 0) continue;
    shared_slot& shared = shared_->slot(s);
    const std::uint64_t running = shared.current_chunk.load();
    if (running == 0) continue;
    const std::uint64_t started = shared.started_ns.load();
    for (const inflight& chunk : slot.chunks) {
      if (chunk.id != running) continue;
      if (chunk.job->timeout_ns == 0) break;
      const std::uint64_t due = started + chunk.job->timeout_ns;
      if (now >= due) {
        slot.timed_out = running;
        slot.kill_sent = true;
        request_locked({factory_request::kill, static_cast<std::uint32_t>(s), slot.pid});
      } else if (!earliest || due < *earliest) {
        earliest = due;
      }
      break;
    }
  }
  return earliest;
}

// `wake`: false when the caller wakes the worker itself once it has written all it will (dispatch_locked), a
// message that does not fit the ring excepted (the worker must drain it).
MP_DECL void core::start_message_locked(std::size_t s, const task_header& header, std::span<const std::byte> prefix,
                                        std::span<const std::byte> body, bool wake) {
  slot_state& slot = slots_[s];
  slot.header = header;
  if (header.handles == 0) slot.section.clear();
  slot.prefix = prefix;
  slot.body = body;
  slot.written = 0;
  slot.writing = true;
  flush_locked(s, wake);
}

MP_DECL bool core::flush_locked(std::size_t s, bool wake) {
  slot_state& slot = slots_[s];
  if (!slot.writing) return false;
  ring& ring = shared_->slot(s).inbox;
  const std::span<const std::byte> parts[4] = {
      {reinterpret_cast<const std::byte*>(&slot.header), sizeof slot.header},
      {slot.section.data(), slot.section.size()},
      slot.prefix,
      slot.body};
  bool did = false;
  std::size_t offset = slot.written;
  for (const auto& part : parts) {
    if (offset >= part.size()) {
      offset -= part.size();
      continue;
    }
    const std::size_t want = part.size() - offset;
    const std::size_t put = ring.write_some(part.data() + offset, want);
    slot.written += put;
    did |= put != 0;
    if (put < want) {
      // Full: the worker tells us (eventfd) when it has made room. Re-check after raising the flag.
      ring.producer_sleeping.store(1);
      if (did) wake_consumer(ring);
      if (ring.writable() != 0) return flush_locked(s) || did;
      return did;
    }
    offset = 0;
  }
  slot.writing = false;
  if (wake) wake_consumer(ring);
  return did;
}

MP_DECL bool core::dispatch_locked() {
  bool did = false;
  for (std::size_t s = 0; s < slots_.size(); ++s)
    if (slots_[s].live) did |= flush_locked(s);
  if (state_ == state::stopping) {
    for (std::size_t s = 0; s < slots_.size(); ++s) {
      slot_state& slot = slots_[s];
      if (!slot.live || slot.stop_sent || slot.writing || !slot.chunks.empty()) continue;
      slot.stop_sent = true;
      start_message_locked(s, stop_message, {}, {});
      did = true;
    }
    return did;
  }
  if (pending_.empty()) return did;
  // Level by level, so that chunks spread over the workers. In a crowded pool each worker is woken once, after the
  // loop: woken at its first chunk, it would run it and sleep again before its next one is written (a wake-up per
  // chunk); with a CPU per worker, it had better start on its first chunk while the others are written.
  const std::size_t depth = prefetch_depth(ewma_chunk_ns_, crowded_);
  std::vector<std::size_t>& written = dispatched_to_;
  written.clear();
  for (std::size_t level = 0; level < depth && !pending_.empty(); ++level) {
    for (std::size_t s = 0; s < slots_.size() && !pending_.empty(); ++s) {
      slot_state& slot = slots_[s];
      if (!slot.live || slot.writing || slot.chunks.size() != level) continue;
      if (config_.maxtasksperchild != 0 && slot.sent >= config_.maxtasksperchild) continue;
      pending& front = pending_.front();
      std::shared_ptr<job> job = front.job;
      const std::size_t chunk = front.next++;
      std::shared_ptr<submission_handles> handles = front.handles;
      if (front.next == front.end) pending_.pop_front();
      const std::uint64_t id = next_id_++;
      std::size_t blob_size = 0;
      const int blob = job->blob(chunk, blob_size);  // a big payload: its segment travels instead of its bytes
      const auto prefix = blob >= 0 ? std::span<const std::byte>{} : job->prefix();
      const auto body = blob >= 0 ? std::span<const std::byte>{} : job->body(chunk);
      slot.section.clear();
      bool reused = false;  // the worker's previous descriptor list again: no section
      if (handles || slot.handles.size() != 0 || blob >= 0) {
        handle_plan plan = slot.handles.plan(handles ? handles->chunk(chunk) : std::span<const handle_key>{}, handles_);
        plan.blob = blob;
        if (!plan.empty() && !plan.reuses_previous()) encode_handle_section(slot.section, plan);
        reused = plan.reuses_previous();
        // Before the message enters the ring: the worker reads them as soon as it reads the section. A worker we
        // cannot send to is gone or going; make sure it goes, so its chunks fail or move on rather than hang.
        if (!send_handles(slot.socket.get(), plan, handles_) && !slot.kill_sent && slot.pid != 0) {
          slot.kill_sent = true;
          request_locked({factory_request::kill, static_cast<std::uint32_t>(s), slot.pid});
        }
      }
      const task_header header{sizeof(task_header) - sizeof(std::uint64_t) + slot.section.size() + prefix.size() +
                                   body.size(),
                               id, trampoline_address(job->trampoline), job->timeout_ns,
                               reused ? reuse_handles : slot.section.size(),
                               blob >= 0 ? blob_size : 0};
      job->dispatched = true;
      slot.chunks.push_back({std::move(job), chunk, id, std::move(handles)});
      ++slot.sent;
      if (slot.chunks.size() == 1) dispatched_ns_[s] = monotonic_ns();
      start_message_locked(s, header, prefix, body, !crowded_);
      if (crowded_ && !slot.wake_due) written.push_back(s);
      slot.wake_due = crowded_;
      did = true;
    }
  }
  for (const std::size_t s : written) {
    slots_[s].wake_due = false;
    wake_consumer(shared_->slot(s).inbox);
  }
  return did;
}

MP_DECL void core::fail_everything_locked(const std::function<std::exception_ptr()>& make_error) {
  for (auto& slot : slots_) {
    for (inflight& chunk : slot.chunks) chunk.job->fail(chunk.chunk, make_error());
    slot.chunks.clear();
    slot.writing = false;
  }
  for (pending& range : pending_)
    for (std::size_t c = range.next; c < range.end; ++c) range.job->fail(c, make_error());
  pending_.clear();
  outstanding_ = 0;
  changed_.notify_all();
}

MP_DECL void core::break_pool_locked(const std::string& why) {
  if (broken_.empty()) broken_ = why;
  fail_everything_locked([&] { return std::make_exception_ptr(Error("Pool: " + why + "; this task cannot run")); });
}

}  // namespace mp::detail::pool
