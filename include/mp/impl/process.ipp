// process: definitions (see process.hpp) — start() on both sides of the fork, a fresh child's entry, the rest.
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <mutex>

#include <mp/detail/child_os.hpp>
#include <mp/detail/fork_thread.hpp>
#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/spawn.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/detail/type_name.hpp>
#include <mp/process.hpp>

namespace mp {

// ---- construction, moves, destruction ----

MP_DECL Process::Process(ProcessOptions options) : state_(std::make_unique<detail::process_record>()) {
  start_method_ = options.start_method;
  state_->identity = detail::next_identity();
  state_->name = options.name.empty() ? "Process-" + detail::identity_string(state_->identity) : std::move(options.name);
  state_->daemon = options.daemon.value_or(false);
  state_->owner = this;  // not yet shared with the registry: no lock needed
}

MP_DECL Process::Process(main_process_tag) : state_(std::make_unique<detail::process_record>()) {
  state_->role = detail::process_record::kind::main;
  state_->creator_pid = 0;
  state_->name = "MainProcess";
  state_->pid = ::getpid();
  state_->started = true;
  state_->owner = this;
}

MP_DECL Process::Process(Process&& other) noexcept
    : state_(std::move(other.state_)), target_(std::move(other.target_)), start_method_(other.start_method_) {
  if (state_) {
    detail::registry& reg = detail::the_registry();
    std::lock_guard lock(reg.mutex);
    state_->owner = this;
  }
}

MP_DECL Process& Process::operator=(Process&& other) noexcept {
  if (this == &other) return *this;
  finish_and_forget();
  state_ = std::move(other.state_);
  target_ = std::move(other.target_);
  start_method_ = other.start_method_;
  if (state_) {
    detail::registry& reg = detail::the_registry();
    std::lock_guard lock(reg.mutex);
    state_->owner = this;
  }
  return *this;
}

MP_DECL Process::~Process() { finish_and_forget(); }

MP_DECL void Process::finish_and_forget() noexcept {
  if (!state_) return;
  detail::process_record& state = *state_;
  // Only the creating process owns the child; in a forked child (or for MainProcess) there is nothing to reap.
  if (state.role == detail::process_record::kind::child && state.creator_pid == ::getpid() && state.started &&
      !state.closed) {
    state.finish();
    try {
      detail::remove_child(&state);
    } catch (...) {
    }
  }
  state_.reset();
}

// ---- the checks every operation starts with ----

MP_DECL detail::process_record& Process::record(const char* operation) const {
  if (!state_) {
    throw ProcessError(std::string("Process::") + operation +
                       ": this Process was moved from; use the Process object it was moved to");
  }
  return *state_;
}

MP_DECL detail::process_record& Process::usable_record(const char* operation) const {
  detail::process_record& state = record(operation);
  if (state.closed) {
    throw ProcessError(std::string("Process::") + operation + ": " + state.name +
                       " is closed; a closed Process cannot be used (create a new one)");
  }
  return state;
}

MP_DECL bool Process::is_current(const detail::process_record& state) const {
  if (state.role == detail::process_record::kind::main) return state.pid == ::getpid();
  detail::registry& reg = detail::the_registry();
  std::lock_guard lock(reg.mutex);
  return reg.current == &state;
}

MP_DECL void Process::require_child_of_this_process(const detail::process_record& state, const char* operation) const {
  if (state.creator_pid != ::getpid()) {
    throw ProcessError(std::string("Process::") + operation + ": " + state.name + " was created by process " +
                       std::to_string(state.creator_pid) + ", not by this one (pid " + std::to_string(::getpid()) +
                       "); only the process that created a Process can " + operation + " it");
  }
}

MP_DECL std::string Process::describe(const detail::process_record& state) const {
  return state.pid > 0 ? state.name + " (pid " + std::to_string(state.pid) + ")" : state.name;
}

MP_DECL detail::process_record& Process::joinable_record() const {
  detail::process_record& state = usable_record("join");
  if (state.role == detail::process_record::kind::main || is_current(state)) {
    throw ProcessError("Process::join: " + state.name + " cannot join itself: it is the current process");
  }
  require_child_of_this_process(state, "join");
  if (!state.started) {
    throw ProcessError("Process::join: " + state.name + " was not started; call start() before join()");
  }
  return state;
}

// ---- start: the parent's side ----

namespace detail {

// A dynamically linked program binds a libc function at its first call (lazy binding: the dynamic linker looks
// the name up, several microseconds and a few page faults). A function that only forked children call would be
// bound anew in every child, since each child's binding dies with it: the parent calls them once, harmlessly, so
// its children inherit them bound. (Not through the syscall seam: the point is to call these very functions.)
MP_DECL void bind_child_calls_once() {
  static const bool bound = [] {
    int signal = 0;
    ::prctl(PR_GET_PDEATHSIG, &signal);
    (void)::getppid();
    (void)::syscall(SYS_getpid);  // the child ends through syscall(SYS_exit_group)
    const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      ::dup2(fd, fd);  // a no-op that returns fd
      ::close(fd);
    }
    char bytes[2] = {1, 2};
    volatile std::size_t one = 1;  // not a constant: the call must not be inlined away
    std::memmove(bytes, bytes + 1, one);
    // Nothing reads `bound`, so an optimizer may drop the copy as a dead store (GCC did in mp_compiled: every
    // forked child then bound memmove itself, ~14 page faults more per child); the barrier "reads" the bytes.
    asm volatile("" : : "r"(bytes) : "memory");
    return bytes[0] == 2;
  }();
  (void)bound;
}

}  // namespace detail

MP_DECL void Process::start() {
  detail::process_record& state = usable_record("start");
  if (state.role == detail::process_record::kind::main || is_current(state)) {
    throw ProcessError("Process::start: " + state.name + " is the current process, which is already running");
  }
  if (state.started) {
    throw ProcessError("Process::start: " + describe(state) +
                       " was already started; a Process starts only once (create a new Process to run again)");
  }
  require_child_of_this_process(state, "start");
  StartMethod method = start_method_ ? *start_method_ : get_start_method();
  detail::require_init(method, "Process::start");
  Process& parent_process_object = current_process();
  if (parent_process_object.daemon()) {
    throw ProcessError("Process::start: " + state.name + " cannot start from " + parent_process_object.name() +
                       ": daemonic processes are not allowed to have children (as in Python)");
  }
  detail::parent_record parent{parent_process_object.name(), ::getpid()};
  if (method != StartMethod::fork) {
    start_fresh(state, method, std::move(parent));
    return;
  }

  // Buffered output written before fork() would otherwise be written twice: once by each process.
  detail::flush_standard_streams();
  detail::bind_child_calls_once();

  // The child's death signal follows the thread that forks it: from any thread but main, the fork happens on
  // mp's fork thread, which lives as long as the process (detail/fork_thread.hpp). The child is then a copy of
  // that thread, so it takes the starting thread's signal mask.
  const bool on_main = detail::on_main_thread();
  sigset_t caller_mask;
  ::pthread_sigmask(SIG_SETMASK, nullptr, &caller_mask);  // reads the mask: cannot fail
  auto fork_child = [&] {
    detail::registry& reg = detail::the_registry();
    // Held across fork() so that no other thread holds it at that moment: the child gets it locked by its own
    // (only) thread and releases it in become_child().
    std::unique_lock lock(reg.mutex);
    detail::reap_finished_children_locked(reg);
    detail::register_exit_function_locked(reg);
    pid_t child = detail::sys_try("fork", [] { return ::fork(); });
    if (child == 0) {
      // The child: async-signal-safe code that must not throw until run_in_child runs the target.
      lock.release();
      if (!on_main) ::pthread_sigmask(SIG_SETMASK, &caller_mask, nullptr);
      detail::become_child(reg, state, parent);
      run_in_child(reg.parent ? reg.parent->pid : 0, -1);
    }
    if (child == -1) detail::throw_errno("fork", state.name);
    adopt_child_locked(state, child);
  };
  if (on_main) {
    fork_child();
  } else {
    detail::run_on_fork_thread(fork_child);
  }
  // As Python: the parent keeps no copy of the target and its arguments (a Connection among them stays open
  // only in the child).
  target_.reset();
}

MP_DECL void Process::adopt_child_locked(detail::process_record& state, pid_t child) {
  detail::registry& reg = detail::the_registry();
  state.pid = child;
  int pidfd = detail::sys_try("pidfd_open", [&] { return detail::pidfd_open(child); });
  if (pidfd == -1 && detail::last_errno() == ESRCH) {
    // pidfd_open works on a zombie, so the child has ended *and* been reaped by someone else (SIGCHLD set to
    // SIG_IGN, a waitpid(-1) elsewhere). It was started; join() and exitcode() will say its status is lost.
    state.reaped_elsewhere = true;
  } else if (pidfd == -1) {
    int err = detail::last_errno();
    // Without a pidfd the child cannot be waited for safely: take it back rather than leave it running. (Not
    // through the seam: on this path to an error, a failure of either call changes nothing.)
    ::kill(child, SIGKILL);
    detail::retry_on_eintr([&] { return ::waitpid(child, nullptr, 0); });
    state.pid = 0;
    detail::throw_errno("pidfd_open", state.name + " (pid " + std::to_string(child) + ")", err);
  }
  state.pidfd.reset(pidfd);
  state.started = true;
  if (!state.reaped_elsewhere) reg.children.push_back(&state);
}

MP_DECL void Process::start_fresh(detail::process_record& state, StartMethod method, detail::parent_record parent) {
  detail::spawn_request request;
  request.name = state.name;
  request.identity = state.identity;
  request.daemon = state.daemon;
  request.parent_name = parent.name;
  request.parent_pid = parent.pid;
  // As set here (none yet: the child's default also comes from MP_START_METHOD); reading it through
  // get_start_method() would fix this process's default as a side effect of a per-Process choice.
  request.start_method = detail::start_method_setting();
  detail::fd_outbox outbox;
  {
    detail::fd_outbox_scope scope(outbox);
    if (typeid(*this) != typeid(Process)) {
      std::optional<detail::process_type_codec> codec = detail::find_process_type(std::type_index(typeid(*this)));
      if (!codec) {
        const std::string type = detail::type_name(typeid(*this));
        throw ProcessError("Process::start: " + state.name + " is a " + type + ", a subclass of mp::Process; under "
                           "start method " + std::string(to_string(method)) + " the child must rebuild it: give " +
                           type + " a default constructor and a serialize member listing its fields, and register "
                           "it with MP_REGISTER_PROCESS(" + type + ") (docs/start-methods.md), or use "
                           "StartMethod::fork");
      }
      request.subclass = detail::spawn_target{detail::locate_code(codec->factory), codec->encode(*this)};
    }
    if (target_) request.target = target_->encode_for_spawn();
  }

  // Not for memory (nothing is copied) but for order: what the parent printed before start() comes first.
  detail::flush_standard_streams();

  detail::fresh_child child;
  {
    detail::registry& reg = detail::the_registry();
    std::lock_guard lock(reg.mutex);
    child = detail::start_fresh_child(method, request, outbox.fds);
    detail::reap_finished_children_locked(reg);
    detail::register_exit_function_locked(reg);
    if (method == StartMethod::forkserver) {
      state.pid = child.pid;
      state.via_server = true;
      state.status_fd = std::move(child.status);
      // The child cannot end before it has read its Process unless it is killed from outside; if it did and the
      // server reaped it (ESRCH), the status pipe serves as the sentinel.
      int pidfd = detail::sys_try("pidfd_open", [&] { return detail::pidfd_open(child.pid); });
      if (pidfd == -1) {
        pidfd = detail::sys_try("fcntl", [&] { return ::fcntl(state.status_fd.get(), F_DUPFD_CLOEXEC, 0); });
      }
      state.pidfd.reset(pidfd);
      state.started = true;
      reg.children.push_back(&state);
    } else {
      adopt_child_locked(state, child.pid);
    }
  }
  (void)detail::wait_until_ready(child);  // end of file instead if it died first: its exit code says how
  target_.reset();
}

// ---- the child's side ----

// Async-signal-safe up to run(), and noexcept: in a forked child of a multithreaded parent, only such code is safe
// until the child's own code runs (syscall.hpp's listed exception: these calls bypass the seam).
MP_DECL void Process::run_in_child(pid_t os_parent, int ready_fd) noexcept {
  int code = 1;
  try {
    detail::process_record& state = *state_;
    // Die with the parent: SIGKILL for a daemon (Python terminates daemons at exit; this also covers a parent
    // killed by SIGKILL), SIGTERM for the others (Python would leave them orphaned; mp does not, see docs).
    int death_signal = state.daemon ? SIGKILL : SIGTERM;
    ::prctl(PR_SET_PDEATHSIG, death_signal);
    // The parent may have died between fork() and prctl(): then we were already re-parented. (The creating
    // thread is the main thread or the fork thread, which end only with the process.) Under forkserver the OS
    // parent is the server, which ends when the parent does. ready_fd: a spawned child's socket, -1 if forked.
    const bool orphaned = ::getppid() != os_parent;
    if (ready_fd >= 0) {
      detail::retry_on_eintr([&] { return ::write(ready_fd, "r", 1); });
      ::close(ready_fd);
    }
    if (orphaned) ::raise(death_signal);
    // As Python's util._close_stdin: a child does not compete with its parent for standard input.
    int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull >= 0) {
      ::dup2(devnull, STDIN_FILENO);
      ::close(devnull);
    }
    try {
      run();
      code = 0;
    } catch (...) {
      code = 1;
      detail::exception_description error = detail::describe_current_exception();
      std::string report = "Process " + state.name + ":\n" + error.to_string() + "\n";
      detail::flush_pending_output();  // what the target printed comes before its error
      std::fputs(report.c_str(), stderr);
    }
    detail::run_exit_function();
  } catch (...) {
    code = 1;
  }
  detail::flush_standard_streams();
  // _exit itself, without its lazy binding (see bind_child_calls_once): syscall() is bound by pidfd_open.
  ::syscall(SYS_exit_group, code);
  ::_exit(code);
}

MP_DECL void Process::run() {
  if (target_) (*target_)();
}

// ---- the other members ----

MP_DECL void Process::join() { (void)join_until(std::nullopt); }

MP_DECL bool Process::join_until(const detail::deadline& until) {
  detail::process_record& state = joinable_record();
  if (!state.wait_until(until)) return false;
  detail::remove_child(&state);
  return true;
}

MP_DECL bool Process::is_alive() const {
  detail::process_record& state = usable_record("is_alive");
  if (state.role == detail::process_record::kind::main || is_current(state)) return true;
  require_child_of_this_process(state, "is_alive");
  if (!state.started) return false;
  if (state.poll()) {
    detail::remove_child(&state);
    return false;
  }
  return true;
}

MP_DECL std::optional<int> Process::exitcode() const {
  detail::process_record& state = usable_record("exitcode");
  if (state.role == detail::process_record::kind::main || is_current(state) || !state.started) return std::nullopt;
  require_child_of_this_process(state, "exitcode");
  return state.poll();
}

MP_DECL pid_t Process::pid() const {
  detail::process_record& state = usable_record("pid");
  return state.pid;
}

MP_DECL const std::string& Process::name() const { return record("name").name; }

MP_DECL void Process::name(std::string new_name) { record("name").name = std::move(new_name); }

MP_DECL bool Process::daemon() const { return record("daemon").daemon; }

MP_DECL void Process::daemon(bool is_daemon) {
  detail::process_record& state = usable_record("daemon");
  if (state.started) {
    throw ProcessError("Process::daemon: " + describe(state) + " has already started; set daemon before start()");
  }
  state.daemon = is_daemon;
}

MP_DECL void Process::terminate() { signal_child("terminate", SIGTERM); }

MP_DECL void Process::kill() { signal_child("kill", SIGKILL); }

// `operation` names the member in messages, and what there would be nothing to do before start().
MP_DECL void Process::signal_child(const char* operation, int signal) {
  detail::process_record& state = usable_record(operation);
  if (state.role == detail::process_record::kind::main || is_current(state)) {
    throw ProcessError(std::string("Process::") + operation + ": " + state.name +
                       " is the current process; end it with std::exit() instead");
  }
  require_child_of_this_process(state, operation);
  if (!state.started) {
    throw ProcessError(std::string("Process::") + operation + ": " + state.name +
                       " was not started; there is nothing to " + operation);
  }
  state.send_signal(signal);
}

MP_DECL void Process::close() {
  detail::process_record& state = record("close");
  if (state.closed || state.role == detail::process_record::kind::main) return;
  if (state.started && state.creator_pid == ::getpid()) {
    if (!state.poll()) {
      throw ProcessError("Process::close: " + describe(state) +
                         " is still running; call join() or terminate() before close()");
    }
    detail::remove_child(&state);
  }
  state.pidfd.reset();
  state.status_fd.reset();
  target_.reset();
  state.closed = true;
}

MP_DECL int Process::sentinel() const {
  detail::process_record& state = usable_record("sentinel");
  if (!state.started) {
    throw ProcessError("Process::sentinel: " + state.name + " was not started; a sentinel exists after start()");
  }
  if (!state.pidfd) state.throw_reaped_elsewhere();
  // A forkserver child's pidfd is readable as soon as it exits, before the server has reaped it and reported its
  // status; the status pipe becomes readable only then (and stays so), so is_alive() agrees with the sentinel.
  if (state.via_server && state.status_fd) return state.status_fd.get();
  return state.pidfd.get();
}

// ---- free functions ----

MP_DECL Process& current_process() {
  detail::registry& reg = detail::the_registry();
  {
    std::lock_guard lock(reg.mutex);
    if (reg.current && reg.current->owner) return *reg.current->owner;
    if (reg.current) {
      // A Pool worker's record (detail::become_pool_worker): wrapped in a Process the first time it is asked for,
      // leaked like the main process's, since the worker ends with _exit.
      auto* worker = new Process(Process::main_process_tag{});
      worker->state_.reset(reg.current);
      reg.current->owner = worker;
      return *worker;
    }
  }
  // Leaked on purpose: it must outlive every static that may ask for it at exit.
  static Process* main_process = new Process(Process::main_process_tag{});
  return *main_process;
}

MP_DECL bool ParentProcess::is_alive() const noexcept {
  if (::getppid() == pid_) return true;
  return via_server_ &&
         (detail::sys_try("kill", [&] { return ::kill(pid_, 0); }) == 0 || detail::last_errno() == EPERM);
}

MP_DECL std::optional<ParentProcess> parent_process() {
  detail::registry& reg = detail::the_registry();
  std::lock_guard lock(reg.mutex);
  if (!reg.parent) return std::nullopt;
  return ParentProcess(reg.parent->name, reg.parent->pid, reg.parent->via_server);
}

MP_DECL std::vector<Process*> active_children() {
  detail::registry& reg = detail::the_registry();
  std::lock_guard lock(reg.mutex);
  detail::reap_finished_children_locked(reg);
  std::vector<Process*> children;
  children.reserve(reg.children.size());
  for (detail::process_record* child : reg.children) children.push_back(child->owner);
  return children;
}

MP_DECL std::size_t cpu_count() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (detail::sys_try("sched_getaffinity", [&] { return ::sched_getaffinity(0, sizeof set, &set); }) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return static_cast<std::size_t>(n);
  }
  // More CPUs than cpu_set_t holds (EINVAL): ask with growing dynamic sets.
  for (int cpus = 2 * CPU_SETSIZE; cpus <= (1 << 16); cpus *= 2) {
    cpu_set_t* dynamic = CPU_ALLOC(cpus);
    if (!dynamic) break;
    std::size_t size = CPU_ALLOC_SIZE(cpus);
    CPU_ZERO_S(size, dynamic);
    int found =
        detail::sys_try("sched_getaffinity", [&] { return ::sched_getaffinity(0, size, dynamic); }) == 0
            ? CPU_COUNT_S(size, dynamic)
            : 0;
    CPU_FREE(dynamic);
    if (found > 0) return static_cast<std::size_t>(found);
  }
  long online = ::sysconf(_SC_NPROCESSORS_ONLN);
  return online > 0 ? static_cast<std::size_t>(online) : 1;
}

MP_DECL std::ostream& operator<<(std::ostream& out, const Process& process) {
  if (!process.state_) return out << "<Process moved-from>";
  detail::process_record& state = *process.state_;
  std::string text = "<Process name='" + state.name + "'";
  if (state.role == detail::process_record::kind::main) {
    text += " parent=None started>";
    return out << text;
  }
  const bool foreign = state.creator_pid != ::getpid();
  const bool current = process.is_current(state);
  std::optional<int> code;
  std::string status;
  if (current) {
    status = "started";
  } else if (state.closed) {
    status = "closed";
  } else if (foreign) {
    status = "unknown";
  } else if (!state.started) {
    status = "initial";
  } else {
    try {
      code = state.poll();
    } catch (const Error&) {
      status = "stopped exitcode=unknown";
    }
    if (status.empty()) status = code ? "stopped" : "started";
  }
  if (state.pid > 0 && !state.closed) text += " pid=" + std::to_string(state.pid);
  text += " parent=" + std::to_string(state.creator_pid) + " " + status;
  if (code) text += " exitcode=" + detail::exitcode_name(*code);
  if (state.daemon) text += " daemon";
  return out << text << '>';
}

// ---- a fresh child (spawn, forkserver) ----

namespace detail {

/// A child started by spawn or forkserver: reads its Process from `socket`, becomes it, runs it and _exits with
/// the same exit codes as a forked child (an exception: 1, and its type and what() on stderr).
MP_DECL void run_spawned_child(int socket_fd, pid_t direct_parent, bool via_server) noexcept {
  std::string name = "Process (spawned)";
  try {
    unique_fd socket(socket_fd);
    // Inherited without it; the child's own children must not get it. (A failure changes nothing worth
    // stopping for: the child would run all the same.)
    ::fcntl(socket_fd, F_SETFD, FD_CLOEXEC);
    fd_frame message = receive_fd_frame(socket_fd, "spawned child: reading its Process");
    spawn_request request = mp::deserialize<spawn_request>(message.bytes);
    name = "Process " + request.name;
    if (request.start_method && (static_cast<int>(*request.start_method) < 0 ||
                                 static_cast<int>(*request.start_method) > static_cast<int>(StartMethod::forkserver))) {
      throw ProcessError("spawned child: start method " + std::to_string(static_cast<int>(*request.start_method)) +
                         " is not one");
    }
    adopt_start_method_setting(request.start_method);
    auto fds = std::make_shared<fd_inbox>(std::move(message.fds));
    std::unique_ptr<Process> process;  // never destroyed: the child ends with _exit
    if (request.subclass) {
      auto factory = reinterpret_cast<Process* (*)(std::span<const std::byte>)>(resolve_code(request.subclass->entry));
      fd_inbox_scope scope(*fds);
      process.reset(factory(request.subclass->bytes));
    } else {
      process = std::make_unique<Process>(ProcessOptions{});
    }
    process_record& state = *process->state_;
    state.identity = request.identity;
    state.name = request.name;
    state.daemon = request.daemon;
    state.creator_pid = request.parent_pid;
    state.pid = ::getpid();
    state.started = true;
    if (request.target) process->target_ = std::make_unique<spawned_task>(std::move(*request.target), fds);
    registry& reg = the_registry();
    {
      std::lock_guard lock(reg.mutex);
      reg.current = &state;
      reg.identity = request.identity;
      reg.counter = 0;
      reg.children.clear();
      reg.parent = parent_record{request.parent_name, request.parent_pid, via_server};
    }
    const pid_t os_parent = via_server ? direct_parent : request.parent_pid;
    process.release()->run_in_child(os_parent, socket.release());
  } catch (...) {
    exception_description error = describe_current_exception();
    std::string report = name + ":\n" + error.to_string() + "\n";
    std::fputs(report.c_str(), stderr);
  }
  ::_exit(1);
}

}  // namespace detail

}  // namespace mp
