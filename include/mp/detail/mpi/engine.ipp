// engine: definitions (see engine.hpp).
#pragma once

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <utility>

#include <mp/detail/code_address.hpp>
#include <mp/detail/mpi/engine.hpp>
#include <mp/detail/mpi/serve.hpp>
#include <mp/errors.hpp>

namespace mp::detail::mpi {

/// Callbacks waiting for the MPI lock to be released; guarded by mpi_mutex().
inline std::vector<std::function<void()>>& deferred() {
  static std::vector<std::function<void()>> list;
  return list;
}

inline int engine::shown_rank(const slot& s) const noexcept {
  return group_->spawned ? s.worker->rank + 1 : s.worker->rank;
}

inline void engine::defer(std::function<void()> callback) {
  std::lock_guard lock(mpi_mutex());
  deferred().push_back(std::move(callback));
}

inline void engine::run_callbacks() {
  for (;;) {
    std::vector<std::function<void()>> batch;
    {
      std::lock_guard lock(mpi_mutex());
      if (deferred().empty()) return;
      batch.swap(deferred());
    }
    for (auto& callback : batch) callback();
  }
}

inline engine::engine(engine_config config) : config_(std::move(config)) {
  group_ = &acquire_group(config_.processes, "mp::mpi::Pool");
  try {
    start_workers();
  } catch (...) {
    release_group(*group_);
    throw;
  }
}

inline void engine::start_workers() {
  std::lock_guard lock(mpi_mutex());
  std::vector<std::byte> start;
  {
    output_archive ar(start);
    const std::uint64_t init = config_.initializer == nullptr ? 0 : pool::trampoline_address(config_.initializer);
    int top = 0;
    for (const worker_slot& w : group_->workers) top = std::max(top, w.rank);
    bells_ = doorbells::create(static_cast<std::size_t>(top) + 2);
    ar(loaded_modules(), static_cast<std::int32_t>(::getpid()), mpi::state().host,
       static_cast<std::int32_t>(bells_.fd()), static_cast<std::uint64_t>(bells_.count()), init);
  }
  start.insert(start.end(), config_.initializer_payload.begin(), config_.initializer_payload.end());
  std::size_t wanted = config_.processes != 0 ? config_.processes : group_->alive();
  for (worker_slot& w : group_->workers) {
    if (slots_.size() == wanted) break;
    if (!w.alive) continue;
    check("MPI_Send", MPI_Send(start.data(), static_cast<int>(start.size()), MPI_BYTE, w.rank, tag_start, group_->comm));
    slots_.push_back(slot{&w, {}, 0});
  }
  std::string failure;
  for (slot& s : slots_) {
    MPI_Status status;
    check("MPI_Probe", MPI_Probe(s.worker->rank, tag_hello, group_->comm, &status));
    int count = 0;
    MPI_Get_count(&status, MPI_BYTE, &count);
    rx_.resize(static_cast<std::size_t>(count));
    check("MPI_Recv", MPI_Recv(rx_.data(), count, MPI_BYTE, s.worker->rank, tag_hello, group_->comm, MPI_STATUS_IGNORE));
    input_archive ar(rx_);
    std::int32_t pid = 0;
    ar(pid, s.worker->host);
    s.worker->pid = pid;
    if (!s.worker->pidfd) s.worker->pidfd = watch_pid(pid, s.worker->host);
    const auto outcome = pool::read_results<void>(ar, 1, "initializer result", [](std::uint64_t) {});
    if (outcome.failure && failure.empty()) {
      try {
        std::rethrow_exception(outcome.failure);
      } catch (const std::exception& e) {
        failure = "rank " + std::to_string(shown_rank(s)) + " (pid " + std::to_string(pid) + "): " + e.what();
      }
    }
  }
  if (!failure.empty()) throw Error("mp::mpi::Pool: the initializer failed on " + failure);
}

inline engine::~engine() {
  try {
    if (state_ == state::running) close();
    if (state_ != state::joined) join();
  } catch (...) {
  }
}

inline void engine::submit(std::shared_ptr<job> job, std::size_t first, std::size_t count, const char* caller) {
  {
    std::lock_guard lock(mpi_mutex());
    if (state_ != state::running)
      throw Error(std::string(caller) + ": the pool is " + (state_ == state::closed ? "closed" : "terminated") +
                  " and takes no new work");
    if (std::none_of(slots_.begin(), slots_.end(), [](const slot& s) { return s.worker->alive; }))
      throw Error(std::string(caller) + ": the pool has no live worker rank left (every rank it had has died); "
                  "close it and start a new Pool");
    pending_.push_back(pending{std::move(job), first, first + count});
    outstanding_ += count;
    progress_locked();
  }
  run_callbacks();
}

inline bool engine::withdraw(const job* j, std::size_t chunk) {
  std::lock_guard lock(mpi_mutex());
  for (auto it = pending_.begin(); it != pending_.end(); ++it) {
    if (it->job.get() != j || chunk < it->next || chunk >= it->end) continue;
    if (it->end - it->next != 1) return false;  // only whole single-chunk jobs (apply) are withdrawn
    pending_.erase(it);
    --outstanding_;
    return true;
  }
  return false;
}

inline void engine::poll() {
  {
    std::lock_guard lock(mpi_mutex());
    progress_locked();
  }
  run_callbacks();
}

inline bool engine::progress_locked() {
  bool moved = receive_locked();
  moved = dispatch_locked() || moved;
  test_sends_locked();
  if (!moved && outstanding_ != 0) {
    const std::uint64_t now = monotonic_ns();
    if (now - last_check_ > 100'000'000) {
      last_check_ = now;
      check_ranks_locked();
    }
  }
  return moved;
}

inline bool engine::receive_locked() {
  bool moved = false;
  for (;;) {
    int flag = 0;
    MPI_Message message;
    MPI_Status status;
    check("MPI_Improbe", MPI_Improbe(MPI_ANY_SOURCE, tag_result, group_->comm, &flag, &message, &status));
    if (flag == 0) return moved;
    moved = true;
    int count = 0;
    MPI_Get_count(&status, MPI_BYTE, &count);
    rx_.resize(static_cast<std::size_t>(count));
    check("MPI_Mrecv", MPI_Mrecv(rx_.data(), count, MPI_BYTE, &message, MPI_STATUS_IGNORE));
    auto found = std::find_if(slots_.begin(), slots_.end(), [&](const slot& s) { return s.worker->rank == status.MPI_SOURCE; });
    if (found == slots_.end() || found->chunks.empty()) continue;  // a rank this pool no longer counts on
    slot& s = *found;
    std::uint64_t id = 0;
    const std::size_t head = sizeof id + 1 + sizeof(std::int32_t);
    if (rx_.size() < head) throw Error("mp::mpi::Pool: a truncated result message from rank " + std::to_string(s.worker->rank));
    std::memcpy(&id, rx_.data(), sizeof id);
    const auto how = static_cast<outcome>(rx_[sizeof id]);
    std::int32_t code = 0;
    std::memcpy(&code, rx_.data() + sizeof id + 1, sizeof code);
    // Ranks answer in order; the request of an answered chunk has completed (the rank received it).
    inflight chunk = std::move(s.chunks.front());
    s.chunks.pop_front();
    MPI_Waitall(3, chunk.requests, MPI_STATUSES_IGNORE);
    s.last_answer = monotonic_ns();
    --outstanding_;
    if (how == outcome::block_follows) {
      // Its block comes next from the same rank: receive it in place (or drop it), then the chunk is done.
      receive_block_locked(s, chunk, !chunk.dropped && chunk.id == id);
      if (!s.worker->alive) continue;
    }
    if (chunk.dropped) continue;
    if (chunk.id != id) {
      chunk.job->fail(chunk.chunk, std::make_exception_ptr(Error("mp::mpi::Pool: rank " + std::to_string(s.worker->rank) +
                                                                  " answered another chunk than it was sent")));
      continue;
    }
    if (how == outcome::timed_out) {
      chunk.job->fail(chunk.chunk, std::make_exception_ptr(TimeoutError(
          "mp::mpi::Pool: a task ran longer than its timeout of " + describe_timeout(std::chrono::nanoseconds(chunk.header.timeout_ns)) +
          " on rank " + std::to_string(shown_rank(s)) + "; its process was killed and the rank goes on serving")));
    } else if (how == outcome::lost) {
      chunk.job->fail(chunk.chunk, std::make_exception_ptr(WorkerLost(
          code, "the process running a task on rank " + std::to_string(shown_rank(s)) + " died (exit code " +
                    std::to_string(code) + "); the rank goes on serving")));
    } else if (how == outcome::block_follows) {
      chunk.job->deliver_block(chunk.chunk);
    } else {
      input_archive ar(std::span<const std::byte>(rx_).subspan(head));
      try {
        chunk.job->deliver(chunk.chunk, ar);
      } catch (...) {
        chunk.job->fail(chunk.chunk, std::current_exception());
      }
    }
  }
}

inline void engine::receive_block_locked(slot& s, inflight& chunk, bool wanted) {
  std::uint64_t length = 0;
  const std::size_t at = sizeof(std::uint64_t) + 1 + sizeof(std::int32_t) + sizeof(std::uint64_t);
  if (rx_.size() >= at + sizeof length) std::memcpy(&length, rx_.data() + at, sizeof length);
  // The rank sent the block right after the head; it can only be missing if the rank died in between.
  int flag = 0;
  MPI_Message message;
  MPI_Status status;
  for (backoff pause(20'000);; pause.pause(100'000)) {
    check("MPI_Improbe", MPI_Improbe(s.worker->rank, tag_part, group_->comm, &flag, &message, &status));
    if (flag != 0) break;
    if (ended(s.worker->pidfd)) {
      if (wanted) {
        chunk.dropped = true;
        chunk.job->fail(chunk.chunk, std::make_exception_ptr(WorkerLost(
            0, "mp::mpi::Pool: rank " + std::to_string(shown_rank(s)) + " (pid " + std::to_string(s.worker->pid) +
                   ") died while sending a result")));
      }
      rank_lost_locked(s);
      return;
    }
  }
  int count = 0;
  MPI_Get_count(&status, MPI_BYTE, &count);
  std::span<std::byte> into;
  if (wanted && chunk.header.result_block != 0 && length * chunk.header.result_block == static_cast<std::uint64_t>(count))
    into = chunk.job->block(chunk.chunk, length);
  if (into.size() != static_cast<std::size_t>(count)) {
    rx_.resize(static_cast<std::size_t>(count));
    check("MPI_Mrecv", MPI_Mrecv(rx_.data(), count, MPI_BYTE, &message, MPI_STATUS_IGNORE));
    if (wanted) {
      chunk.dropped = true;
      chunk.job->fail(chunk.chunk, std::make_exception_ptr(Error("mp::mpi::Pool: rank " + std::to_string(shown_rank(s)) +
                                                                  " sent a result block of an unexpected size")));
    }
    return;
  }
  check("MPI_Mrecv", MPI_Mrecv(into.data(), count, MPI_BYTE, &message, MPI_STATUS_IGNORE));
}

inline bool engine::dispatch_locked() {
  constexpr std::size_t depth = 2;
  bool moved = false;
  while (!pending_.empty()) {
    // The least loaded live rank; among equals, the one that answered last (it is polling hot).
    slot* best = nullptr;
    for (slot& s : slots_) {
      if (!s.worker->alive || s.chunks.size() >= depth) continue;
      if (best == nullptr || s.chunks.size() < best->chunks.size() ||
          (s.chunks.size() == best->chunks.size() && s.last_answer > best->last_answer))
        best = &s;
    }
    if (best == nullptr) break;
    pending& p = pending_.front();
    std::shared_ptr<mpi::job> job = p.job;
    const std::size_t chunk = p.next++;
    if (p.next == p.end) pending_.pop_front();
    send_locked(*best, std::move(job), chunk);
    moved = true;
  }
  return moved;
}

inline void engine::send_locked(slot& s, std::shared_ptr<mpi::job> job, std::size_t chunk) {
  inflight& f = s.chunks.emplace_back();
  f.job = std::move(job);
  f.chunk = chunk;
  f.id = next_id_++;
  f.header = task_header{f.id, pool::trampoline_address(f.job->trampoline),
                         f.job->timeout_ns != 0 ? f.job->timeout_ns : config_.task_timeout_ns, 0, 0, 0,
                         f.job->result_block};
  const std::span<const std::byte> prefix = f.job->prefix();
  const std::span<const std::byte> body = f.job->body(chunk);
  const std::size_t total = sizeof f.header + prefix.size() + body.size();
  if (total > static_cast<std::size_t>(INT_MAX)) {
    std::shared_ptr<mpi::job> failed = std::move(f.job);
    s.chunks.pop_back();
    --outstanding_;
    failed->fail(chunk, std::make_exception_ptr(Error("mp::mpi::Pool: a task message of " + std::to_string(total) +
                                                     " bytes is over MPI's 2 GiB message size; split the work")));
    return;
  }
  f.job->started(chunk);
  f.header.prefix_bytes = prefix.size();
  f.header.body_bytes = body.size();
  const int to = s.worker->rank;
  if (total <= packed_limit) {
    f.packed.resize(total);
    std::memcpy(f.packed.data(), &f.header, sizeof f.header);
    if (!prefix.empty()) std::memcpy(f.packed.data() + sizeof f.header, prefix.data(), prefix.size());
    if (!body.empty()) std::memcpy(f.packed.data() + sizeof f.header + prefix.size(), body.data(), body.size());
    check("MPI_Isend", MPI_Isend(f.packed.data(), static_cast<int>(total), MPI_BYTE, to, tag_task, group_->comm,
                                 &f.requests[0]));
  } else {
    f.header.split = 1;
    check("MPI_Isend", MPI_Isend(&f.header, sizeof f.header, MPI_BYTE, to, tag_task, group_->comm, &f.requests[0]));
    if (!prefix.empty())
      check("MPI_Isend", MPI_Isend(prefix.data(), static_cast<int>(prefix.size()), MPI_BYTE, to, tag_part,
                                   group_->comm, &f.requests[1]));
    if (!body.empty())
      check("MPI_Isend", MPI_Isend(body.data(), static_cast<int>(body.size()), MPI_BYTE, to, tag_part, group_->comm,
                                   &f.requests[2]));
  }
  sending_ = true;
  if (s.worker->host != mpi::state().host) {
    sending_remote_ = true;
  } else if (bell* b = bells_.at(static_cast<std::size_t>(to) + 1)) {
    ring(*b);
  }
}

inline void engine::test_sends_locked() {
  if (!sending_) return;
  bool any = false;
  bool remote = false;
  for (slot& s : slots_) {
    for (inflight& f : s.chunks) {
      int complete = 0;
      MPI_Testall(3, f.requests, &complete, MPI_STATUSES_IGNORE);
      if (complete == 0) {
        any = true;
        remote = remote || s.worker->host != mpi::state().host;
      }
    }
  }
  sending_ = any;
  sending_remote_ = remote;
}

inline void engine::check_ranks_locked() {
  for (slot& s : slots_) {
    if (s.worker->alive && ended(s.worker->pidfd)) rank_lost_locked(s);
  }
}

inline void engine::rank_lost_locked(slot& s) {
  s.worker->alive = false;
  const std::string who = "rank " + std::to_string(shown_rank(s)) + " (pid " + std::to_string(s.worker->pid) + ")";
  while (!s.chunks.empty()) {
    inflight f = std::move(s.chunks.front());
    s.chunks.pop_front();
    --outstanding_;
    // Its send never completes: the message and its job stay alive with the engine, as MPI may still read them.
    std::shared_ptr<mpi::job> job = f.job;
    graveyard_.push_back(std::move(f));
    job->fail(f.chunk, std::make_exception_ptr(WorkerLost(0, "mp::mpi::Pool: " + who +
                                                               " died while running a task (exit status not known to rank 0)")));
  }
  const bool any = std::any_of(slots_.begin(), slots_.end(), [](const slot& x) { return x.worker->alive; });
  if (!any) {
    while (!pending_.empty()) {
      pending p = std::move(pending_.front());
      pending_.pop_front();
      for (std::size_t c = p.next; c < p.end; ++c) {
        --outstanding_;
        p.job->fail(c, std::make_exception_ptr(Error("mp::mpi::Pool: every worker rank has died (the last: " + who + ")")));
      }
    }
  }
}

inline void engine::close() {
  std::lock_guard lock(mpi_mutex());
  if (state_ == state::running) state_ = state::closed;
}

inline void engine::terminate() {
  {
    std::lock_guard lock(mpi_mutex());
    if (state_ == state::joined) return;
    state_ = state::terminated;
    while (!pending_.empty()) {
      pending p = std::move(pending_.front());
      pending_.pop_front();
      for (std::size_t c = p.next; c < p.end; ++c) {
        --outstanding_;
        p.job->fail(c, std::make_exception_ptr(Error("mp::mpi::Pool was terminated before this task started")));
      }
    }
    for (slot& s : slots_) {
      for (inflight& f : s.chunks) {
        if (f.dropped) continue;
        f.job->fail(f.chunk, std::make_exception_ptr(Error("mp::mpi::Pool was terminated while this task ran")));
        f.dropped = true;  // its answer still comes back (the rank must be idle again), and is ignored
      }
    }
  }
  run_callbacks();
}

inline void engine::join() {
  {
    std::lock_guard lock(mpi_mutex());
    if (state_ == state::joined) return;
    if (state_ == state::running) throw Error("mp::mpi::Pool::join: call close() or terminate() first");
  }
  // Every chunk answered (terminated ones too: a rank must be idle before the next Pool uses it).
  wait([&] {
    std::lock_guard lock(mpi_mutex());
    return outstanding_ == 0 && std::all_of(slots_.begin(), slots_.end(), [](const slot& s) { return s.chunks.empty(); });
  });
  std::lock_guard lock(mpi_mutex());
  state_ = state::joined;
  release_group(*group_);
}

}  // namespace mp::detail::mpi
