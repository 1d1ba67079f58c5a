// mp::Process: run a callable in a child process (Python's multiprocessing.Process), plus current_process(),
// parent_process(), active_children() and cpu_count().
// A child is started by fork (a copy of the parent), spawn (the program anew: the target and its arguments are
// serialized) or forkserver (a fork of a clean server process); it runs target(args...) (or an overridden run())
// and ends with _exit — it never returns into the caller's stack. docs/start-methods.md says what crosses.
// Process safety: a Process object is owned by the process that created it; only that process may start, join,
// poll or signal it. Different Process objects may be used from different threads; one Process object should be
// used by one thread at a time (join() from several threads is fine). Children started from a thread get a signal
// when that *thread* ends (PR_SET_PDEATHSIG): start them from a thread that outlives them (docs/process.md).
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <concepts>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeindex>
#include <typeinfo>
#include <utility>
#include <variant>
#include <vector>

#if defined(__GLIBCXX__)
#include <ext/stdio_sync_filebuf.h>
#endif

#include <mp/context.hpp>
#include <mp/detail/code_address.hpp>
#include <mp/detail/fork_thread.hpp>
#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/registry.hpp>
#include <mp/detail/spawn.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/detail/type_name.hpp>
#include <mp/errors.hpp>
#include <mp/serialize.hpp>

namespace mp {

/// Process(name=, daemon=) as designated initializers: `mp::Process p({.name = "worker", .daemon = true}, f);`
struct ProcessOptions {
  // Default member initializers let callers omit fields without -Wmissing-field-initializers.
  std::string name = {};                         ///< empty: "Process-N" (Python's default name)
  std::optional<bool> daemon = {};               ///< empty: not a daemon
  std::optional<StartMethod> start_method = {};  ///< empty: get_start_method()
};

namespace detail {

/// A type-erased target(args...) that may hold move-only arguments (std::function cannot).
struct process_task {
  virtual ~process_task() = default;
  virtual void operator()() = 0;
  /// The target as bytes for a spawned child; ProcessError naming the type that cannot cross.
  virtual spawn_target encode_for_spawn() const = 0;
};

template <class T>
inline constexpr bool is_function_pointer_v = std::is_pointer_v<T> && std::is_function_v<std::remove_pointer_t<T>>;

/// A class with no state that the child can simply default-construct: a lambda without captures.
template <class T>
inline constexpr bool is_stateless_target_v = std::is_class_v<T> && std::is_empty_v<T> && std::is_default_constructible_v<T>;

// A string literal argument decays to const char*, which cannot cross (a pointer); it travels as its text and the
// child passes the target a pointer to that text.
template <class A> struct wire_arg { using type = A; };
template <> struct wire_arg<const char*> { using type = std::string; };
template <> struct wire_arg<char*> { using type = std::string; };
template <class A> using wire_arg_t = typename wire_arg<A>::type;

template <class A>
inline constexpr bool arg_crosses_v = is_serializable_v<wire_arg_t<A>> && std::is_default_constructible_v<wire_arg_t<A>>;

/// Whether a target of type F can be rebuilt in a spawned child. A lambda with captures cannot: it may capture a
/// reference, which C++ cannot detect and whose address means nothing there — pass the values as arguments.
template <class F>
consteval bool target_crosses() {
  if constexpr (is_function_pointer_v<F> || is_stateless_target_v<F>) return true;
  else if constexpr (has_member_serialize<F> || has_member_save_load<F> || has_free_serialize<F> || std::is_aggregate_v<F>)
    return is_serializable_v<F> && std::is_default_constructible_v<F>;
  else return false;
}

/// How the target itself travels: a function pointer as its code address, a stateless one as nothing.
template <class F>
using wire_target_t =
    std::conditional_t<is_function_pointer_v<F>, code_address, std::conditional_t<is_stateless_target_v<F>, std::monostate, F>>;

template <class A>
decltype(auto) unwire(wire_arg_t<A>& value) {
  if constexpr (std::is_same_v<wire_arg_t<A>, A>) return std::move(value);
  else if constexpr (std::is_same_v<A, const char*>) return static_cast<const char*>(value.c_str());
  else return static_cast<char*>(value.data());
}

/// The entry a spawned child calls: decodes target and arguments (in the child's own address space) and calls.
template <class F, class... Args>
void run_spawned_target(std::span<const std::byte> bytes) {
  input_archive archive(bytes);
  wire_target_t<F> wire_target{};
  std::tuple<wire_arg_t<Args>...> args;
  archive(wire_target);
  std::apply([&](auto&... arg) { archive(arg...); }, args);
  if (archive.remaining() != 0) {
    throw SerializationError("spawn: " + std::to_string(archive.remaining()) +
                             " bytes left over after the target's arguments: the parent runs another binary");
  }
  F target = [&]() -> F {
    if constexpr (is_function_pointer_v<F>) return reinterpret_cast<F>(resolve_code(wire_target));
    else if constexpr (is_stateless_target_v<F>) return F{};
    else return std::move(wire_target);
  }();
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    std::invoke(std::move(target), unwire<Args>(std::get<I>(args))...);
  }(std::index_sequence_for<Args...>{});
}

template <class F, class... Args>
struct bound_process_task final : process_task {
  template <class G, class... A>
  explicit bound_process_task(G&& target, A&&... args) : parts(std::forward<G>(target), std::forward<A>(args)...) {}
  // Runs once, in the child: the arguments are the child's own copies, so they are handed over as rvalues
  // (a target taking std::unique_ptr<T> by value works), as std::thread does.
  void operator()() override {
    std::apply([](auto&& target, auto&&... args) { std::invoke(std::move(target), std::move(args)...); },
               std::move(parts));
  }
  spawn_target encode_for_spawn() const override {
    if constexpr (!target_crosses<F>()) {
      throw ProcessError("Process::start: the target, of type " + type_name<F>() +
                         ", cannot cross to a process started by spawn or forkserver: only a function, a lambda "
                         "without captures, or a function object with a serialize member can (a capture may be a "
                         "reference, meaningless in a fresh process); pass captured values as arguments, or use "
                         "StartMethod::fork");
    } else if constexpr (!(arg_crosses_v<Args> && ...)) {
      std::string refused;
      ((refused += arg_crosses_v<Args> ? std::string() : (refused.empty() ? "" : ", ") + type_name<Args>()), ...);
      throw ProcessError("Process::start: argument(s) of type " + refused +
                         " cannot cross to a process started by spawn or forkserver: arguments are serialized "
                         "(mp::serialize) there; pass values (std::string, not std::string_view or a pointer; "
                         "not std::ref), handles that support spawn, or use StartMethod::fork");
    } else {
      spawn_target result;
      result.entry = locate_code(reinterpret_cast<std::uintptr_t>(&run_spawned_target<F, Args...>));
      const F& target = std::get<0>(parts);
      if constexpr (is_function_pointer_v<F>) {
        serialize_into(result.bytes, locate_code(reinterpret_cast<std::uintptr_t>(target)));
      } else if constexpr (!is_stateless_target_v<F>) {
        serialize_into(result.bytes, target);
      }
      [&]<std::size_t... I>(std::index_sequence<I...>) {
        (serialize_into(result.bytes, wire_arg_t<Args>(std::get<I + 1>(parts))), ...);
      }(std::index_sequence_for<Args...>{});
      return result;
    }
  }
  std::tuple<F, Args...> parts;
};

/// The target of a Process rebuilt in a spawned child: calls the entry the parent named, with the descriptors that
/// arrived with the bytes.
struct spawned_task final : process_task {
  spawned_task(spawn_target target, std::shared_ptr<fd_inbox> fds) : target(std::move(target)), fds(std::move(fds)) {}
  void operator()() override {
    auto entry = reinterpret_cast<void (*)(std::span<const std::byte>)>(resolve_code(target.entry));
    fd_inbox_scope scope(*fds);
    entry(target.bytes);
  }
  spawn_target encode_for_spawn() const override { return target; }
  spawn_target target;
  std::shared_ptr<fd_inbox> fds;
};

struct main_process_tag {};

}  // namespace detail

/// A child process running target(args...) or an overridden run(). Movable (std::vector<Process>), not copyable.
class Process {
 public:
  /// For subclasses that override run().
  Process() : Process(ProcessOptions{}) {}
  /// For subclasses that override run(), with a name, daemon flag or start method.
  explicit Process(ProcessOptions options);
  /// Process(target=f, args=(a, b)): target and args are decay-copied (or moved) into the Process.
  template <class F, class... Args>
    requires(!std::same_as<std::remove_cvref_t<F>, ProcessOptions> &&
             !std::derived_from<std::remove_cvref_t<F>, Process>)
  explicit Process(F&& target, Args&&... args) : Process(ProcessOptions{}, std::forward<F>(target), std::forward<Args>(args)...) {}
  /// Process(target=f, args=(a, b), name=, daemon=).
  template <class F, class... Args>
  Process(ProcessOptions options, F&& target, Args&&... args);

  Process(Process&& other) noexcept;
  /// Finishes the child this Process owned (as the destructor does), then takes over other's.
  Process& operator=(Process&& other) noexcept;
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  /// Joins a running non-daemon child; terminates (SIGTERM, then SIGKILL after 2 s) and reaps a daemon one.
  virtual ~Process();

  /// Starts the child. ProcessError if started twice, closed, or not created by this process.
  void start();
  /// Waits until the child ends. ProcessError before start(), on the current process, or after close().
  void join();
  /// Waits at most timeout; true if the child has ended.
  template <class Rep, class Period>
  bool join(std::chrono::duration<Rep, Period> timeout);
  /// True from start() until the child ends (reaps it once it has ended). Always true for current_process().
  bool is_alive() const;
  /// Empty while running or before start; 0 ok; n from exit(n); 1 on an uncaught exception; -N if killed by signal N.
  std::optional<int> exitcode() const;
  /// The child's pid; 0 before start; getpid() for current_process().
  pid_t pid() const;
  /// "Process-1", "Process-1:2" (a child's child), "MainProcess", or the name given.
  const std::string& name() const;
  void name(std::string new_name);
  /// Daemon children are terminated when their parent exits, and die with it (even by SIGKILL).
  bool daemon() const;
  /// Before start() only (ProcessError after).
  void daemon(bool is_daemon);
  /// Sends SIGTERM (no-op once the child has ended).
  void terminate();
  /// Sends SIGKILL (no-op once the child has ended).
  void kill();
  /// Releases the sentinel; ProcessError if still running. Any later use but name()/daemon() throws ProcessError.
  void close();
  /// A pidfd that becomes readable when the child ends (for poll/epoll/mp::wait); owned by this Process.
  int sentinel() const;

 protected:
  /// What the child runs; the default calls target(args...). Override it in a subclass.
  virtual void run();

 private:
  friend Process& current_process();
  friend std::ostream& operator<<(std::ostream& out, const Process& process);
  friend void detail::run_spawned_child(int socket, pid_t direct_parent, bool via_server) noexcept;
  explicit Process(detail::main_process_tag);

  detail::process_record& record(const char* operation) const;  // throws on a moved-from Process
  detail::process_record& usable_record(const char* operation) const;  // also throws on a closed one
  detail::process_record& joinable_record() const;  // throws unless join() may wait for it
  void require_child_of_this_process(const detail::process_record& state, const char* operation) const;
  bool is_current(const detail::process_record& state) const;
  std::string describe(const detail::process_record& state) const;
  [[noreturn]] void run_in_child(pid_t os_parent, int ready_fd) noexcept;
  void start_fresh(detail::process_record& state, StartMethod method, detail::parent_record parent);
  void adopt_child_locked(detail::process_record& state, pid_t child);
  void finish_and_forget() noexcept;

  std::unique_ptr<detail::process_record> state_;   // heap: the registry's pointer to it survives moves
  std::unique_ptr<detail::process_task> target_;    // dropped by the parent once start() returns
  std::optional<StartMethod> start_method_;
};

/// The Process object of the running process: "MainProcess" in the main process, the running Process in a child.
Process& current_process();

/// The parent of the current process, as seen when it started this one (Python's parent_process()).
class ParentProcess {
 public:
  ParentProcess(std::string name, pid_t pid, bool via_server = false)
      : name_(std::move(name)), pid_(pid), via_server_(via_server) {}
  /// The parent's name when it started this process ("MainProcess", "Process-1", …).
  const std::string& name() const noexcept { return name_; }
  /// The parent's pid.
  pid_t pid() const noexcept { return pid_; }
  /// True while the parent lives: once it dies, this process is re-parented and getppid() changes. (Under
  /// forkserver the OS parent is the server, which ends with the parent: then the parent's pid is probed.)
  bool is_alive() const noexcept {
    if (::getppid() == pid_) return true;
    return via_server_ && (::kill(pid_, 0) == 0 || detail::last_errno() == EPERM);
  }

 private:
  std::string name_;
  pid_t pid_;
  bool via_server_;
};

/// The parent of the current process; std::nullopt in the main process (Python returns None).
std::optional<ParentProcess> parent_process();

/// The running children started by this process; reaps those that have ended (as Python). The pointers are to
/// the Process objects themselves and stay valid while those objects live.
std::vector<Process*> active_children();

/// The number of CPUs this process may run on (sched_getaffinity), at least 1.
std::size_t cpu_count();

/// Python's repr: <Process name='Process-1' pid=1234 parent=1200 started daemon>, … stopped exitcode=-SIGTERM>.
std::ostream& operator<<(std::ostream& out, const Process& process);

// ---------------------------------------------------------------------------------------------------------------
// Definitions

inline Process::Process(ProcessOptions options) : state_(std::make_unique<detail::process_record>()) {
  start_method_ = options.start_method;
  state_->identity = detail::next_identity();
  state_->name = options.name.empty() ? "Process-" + detail::identity_string(state_->identity) : std::move(options.name);
  state_->daemon = options.daemon.value_or(false);
  state_->owner = this;  // not yet shared with the registry: no lock needed
}

template <class F, class... Args>
Process::Process(ProcessOptions options, F&& target, Args&&... args) : Process(std::move(options)) {
  static_assert(std::is_invocable_v<std::decay_t<F>, std::decay_t<Args>...>,
                "mp::Process(target, args...): target cannot be called with these arguments (the child calls it "
                "with its own copies, as rvalues); check the argument types, or wrap an lvalue reference "
                "parameter's argument in std::ref");
  target_ = std::make_unique<detail::bound_process_task<std::decay_t<F>, std::decay_t<Args>...>>(
      std::forward<F>(target), std::forward<Args>(args)...);
}

inline Process::Process(detail::main_process_tag) : state_(std::make_unique<detail::process_record>()) {
  state_->role = detail::process_record::kind::main;
  state_->creator_pid = 0;
  state_->name = "MainProcess";
  state_->pid = ::getpid();
  state_->started = true;
  state_->owner = this;
}

inline Process::Process(Process&& other) noexcept
    : state_(std::move(other.state_)), target_(std::move(other.target_)), start_method_(other.start_method_) {
  if (state_) {
    detail::registry& reg = detail::the_registry();
    std::lock_guard lock(reg.mutex);
    state_->owner = this;
  }
}

inline Process& Process::operator=(Process&& other) noexcept {
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

inline Process::~Process() { finish_and_forget(); }

inline void Process::finish_and_forget() noexcept {
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

inline detail::process_record& Process::record(const char* operation) const {
  if (!state_) {
    throw ProcessError(std::string("Process::") + operation +
                       ": this Process was moved from; use the Process object it was moved to");
  }
  return *state_;
}

inline detail::process_record& Process::usable_record(const char* operation) const {
  detail::process_record& state = record(operation);
  if (state.closed) {
    throw ProcessError(std::string("Process::") + operation + ": " + state.name +
                       " is closed; a closed Process cannot be used (create a new one)");
  }
  return state;
}

inline bool Process::is_current(const detail::process_record& state) const {
  if (state.role == detail::process_record::kind::main) return state.pid == ::getpid();
  detail::registry& reg = detail::the_registry();
  std::lock_guard lock(reg.mutex);
  return reg.current == &state;
}

inline void Process::require_child_of_this_process(const detail::process_record& state, const char* operation) const {
  if (state.creator_pid != ::getpid()) {
    throw ProcessError(std::string("Process::") + operation + ": " + state.name + " was created by process " +
                       std::to_string(state.creator_pid) + ", not by this one (pid " + std::to_string(::getpid()) +
                       "); only the process that created a Process can " + operation + " it");
  }
}

inline std::string Process::describe(const detail::process_record& state) const {
  return state.pid > 0 ? state.name + " (pid " + std::to_string(state.pid) + ")" : state.name;
}

namespace detail {

// A dynamically linked program binds a libc function at its first call (lazy binding: the dynamic linker looks
// the name up, several microseconds and a few page faults). A function that only forked children call would be
// bound anew in every child, since each child's binding dies with it: the parent calls them once, harmlessly, so
// its children inherit them bound.
inline void bind_child_calls_once() {
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
    return bytes[0] == 2;  // read back, so the call is not removed as a dead store
  }();
  (void)bound;
}

}  // namespace detail

inline void Process::start() {
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
  std::fflush(nullptr);
  std::cout.flush();
  std::cerr.flush();
  std::clog.flush();
  detail::bind_child_calls_once();

  // The child's death signal follows the thread that forks it: from any thread but main, the fork happens on
  // mp's fork thread, which lives as long as the process (detail/fork_thread.hpp). The child is then a copy of
  // that thread, so it takes the starting thread's signal mask.
  const bool on_main = detail::on_main_thread();
  sigset_t caller_mask;
  ::pthread_sigmask(SIG_SETMASK, nullptr, &caller_mask);
  auto fork_child = [&] {
    detail::registry& reg = detail::the_registry();
    // Held across fork() so that no other thread holds it at that moment: the child gets it locked by its own
    // (only) thread and releases it in become_child().
    std::unique_lock lock(reg.mutex);
    detail::reap_finished_children_locked(reg);
    detail::register_exit_function_locked(reg);
    pid_t child = ::fork();
    if (child == 0) {
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

inline void Process::adopt_child_locked(detail::process_record& state, pid_t child) {
  detail::registry& reg = detail::the_registry();
  state.pid = child;
  int pidfd = detail::pidfd_open(child);
  if (pidfd == -1 && detail::last_errno() == ESRCH) {
    // pidfd_open works on a zombie, so the child has ended *and* been reaped by someone else (SIGCHLD set to
    // SIG_IGN, a waitpid(-1) elsewhere). It was started; join() and exitcode() will say its status is lost.
    state.reaped_elsewhere = true;
  } else if (pidfd == -1) {
    int err = detail::last_errno();
    // Without a pidfd the child cannot be waited for safely: take it back rather than leave it running.
    ::kill(child, SIGKILL);
    detail::retry_on_eintr([&] { return ::waitpid(child, nullptr, 0); });
    state.pid = 0;
    detail::throw_errno("pidfd_open", state.name + " (pid " + std::to_string(child) + ")", err);
  }
  state.pidfd.reset(pidfd);
  state.started = true;
  if (!state.reaped_elsewhere) reg.children.push_back(&state);
}

namespace detail {

/// How a registered Process subclass crosses to a spawned child (MP_REGISTER_PROCESS).
struct process_type_codec {
  std::vector<std::byte> (*encode)(const Process&);
  std::uintptr_t factory;  // Process* (*)(std::span<const std::byte>), located at start()
};

inline std::mutex& process_types_mutex() {
  static std::mutex* mutex = new std::mutex;
  return *mutex;
}
inline std::map<std::type_index, process_type_codec>& process_types() {
  static auto* types = new std::map<std::type_index, process_type_codec>;
  return *types;
}

/// The child's side of a registered subclass: a default-constructed T whose serialize member reads its fields.
template <class T>
Process* make_spawned_process(std::span<const std::byte> bytes) {
  auto object = std::make_unique<T>();
  input_archive archive(bytes);
  archive(*object);
  if (archive.remaining() != 0) {
    throw SerializationError("spawn: " + std::to_string(archive.remaining()) + " bytes left over after the " +
                             type_name<T>() + ": its serialize member reads fewer fields than it writes");
  }
  return object.release();
}

}  // namespace detail

/// Lets a Process subclass that overrides run() start by spawn or forkserver: the child default-constructs a T and
/// its serialize member (`template <class Archive> void serialize(Archive& ar) { ar(field1, field2); }`) restores
/// the fields. Call once before starting one (or use MP_REGISTER_PROCESS(T) at namespace scope). Returns true.
template <class T>
bool register_process() {
  static_assert(std::derived_from<T, Process>, "mp::register_process<T>: T must derive from mp::Process");
  static_assert(std::is_default_constructible_v<T>,
                "mp::register_process<T>: the spawned child default-constructs T; give T a default constructor");
  static_assert(detail::has_member_serialize<T> || detail::has_member_save_load<T>,
                "mp::register_process<T>: T needs a member `template <class Archive> void serialize(Archive& ar) "
                "{ ar(field1, field2); }` listing the fields its run() uses (none: an empty one)");
  std::lock_guard lock(detail::process_types_mutex());
  detail::process_types()[std::type_index(typeid(T))] = detail::process_type_codec{
      [](const Process& process) { return mp::serialize(static_cast<const T&>(process)); },
      reinterpret_cast<std::uintptr_t>(&detail::make_spawned_process<T>)};
  return true;
}

inline void Process::start_fresh(detail::process_record& state, StartMethod method, detail::parent_record parent) {
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
      std::optional<detail::process_type_codec> codec;
      {
        std::lock_guard lock(detail::process_types_mutex());
        auto found = detail::process_types().find(std::type_index(typeid(*this)));
        if (found != detail::process_types().end()) codec = found->second;
      }
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
      int pidfd = detail::pidfd_open(child.pid);
      if (pidfd == -1) pidfd = ::fcntl(state.status_fd.get(), F_DUPFD_CLOEXEC, 0);
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

inline void Process::run_in_child(pid_t os_parent, int ready_fd) noexcept {
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
      std::cout.flush();
      std::fflush(stdout);
      std::fputs(report.c_str(), stderr);
    }
    detail::run_exit_function();
  } catch (...) {
    code = 1;
  }
  try {
    for (std::ostream* stream : {&std::cout, &std::cerr, &std::clog}) {
      if (detail::has_own_buffer(*stream)) stream->flush();
    }
  } catch (...) {
  }
  std::fflush(nullptr);
  // _exit itself, without its lazy binding (see bind_child_calls_once): syscall() is bound by pidfd_open.
  ::syscall(SYS_exit_group, code);
  ::_exit(code);
}

inline void Process::run() {
  if (target_) (*target_)();
}

inline void Process::join() {
  detail::process_record& state = joinable_record();
  state.wait_until(std::nullopt);
  detail::remove_child(&state);
}

template <class Rep, class Period>
bool Process::join(std::chrono::duration<Rep, Period> timeout) {
  detail::process_record& state = joinable_record();
  // A timeout beyond ~30 years is "forever": converting it to the clock's nanoseconds would overflow.
  std::optional<std::chrono::steady_clock::time_point> deadline;
  if (std::chrono::duration<double>(timeout).count() < 1e9) {
    deadline = std::chrono::steady_clock::now() +
               std::chrono::ceil<std::chrono::steady_clock::duration>(std::max(timeout, decltype(timeout)::zero()));
  }
  if (!state.wait_until(deadline)) return false;
  detail::remove_child(&state);
  return true;
}

inline detail::process_record& Process::joinable_record() const {
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

inline bool Process::is_alive() const {
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

inline std::optional<int> Process::exitcode() const {
  detail::process_record& state = usable_record("exitcode");
  if (state.role == detail::process_record::kind::main || is_current(state) || !state.started) return std::nullopt;
  require_child_of_this_process(state, "exitcode");
  return state.poll();
}

inline pid_t Process::pid() const {
  detail::process_record& state = usable_record("pid");
  return state.pid;
}

inline const std::string& Process::name() const { return record("name").name; }

inline void Process::name(std::string new_name) { record("name").name = std::move(new_name); }

inline bool Process::daemon() const { return record("daemon").daemon; }

inline void Process::daemon(bool is_daemon) {
  detail::process_record& state = usable_record("daemon");
  if (state.started) {
    throw ProcessError("Process::daemon: " + describe(state) + " has already started; set daemon before start()");
  }
  state.daemon = is_daemon;
}

inline void Process::terminate() {
  detail::process_record& state = usable_record("terminate");
  if (state.role == detail::process_record::kind::main || is_current(state)) {
    throw ProcessError("Process::terminate: " + state.name + " is the current process; end it with std::exit() instead");
  }
  require_child_of_this_process(state, "terminate");
  if (!state.started) {
    throw ProcessError("Process::terminate: " + state.name + " was not started; there is nothing to terminate");
  }
  state.send_signal(SIGTERM);
}

inline void Process::kill() {
  detail::process_record& state = usable_record("kill");
  if (state.role == detail::process_record::kind::main || is_current(state)) {
    throw ProcessError("Process::kill: " + state.name + " is the current process; end it with std::exit() instead");
  }
  require_child_of_this_process(state, "kill");
  if (!state.started) {
    throw ProcessError("Process::kill: " + state.name + " was not started; there is nothing to kill");
  }
  state.send_signal(SIGKILL);
}

inline void Process::close() {
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

inline int Process::sentinel() const {
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

inline Process& current_process() {
  detail::registry& reg = detail::the_registry();
  {
    std::lock_guard lock(reg.mutex);
    if (reg.current && reg.current->owner) return *reg.current->owner;
  }
  // Leaked on purpose: it must outlive every static that may ask for it at exit.
  static Process* main_process = new Process(detail::main_process_tag{});
  return *main_process;
}

inline std::optional<ParentProcess> parent_process() {
  detail::registry& reg = detail::the_registry();
  std::lock_guard lock(reg.mutex);
  if (!reg.parent) return std::nullopt;
  return ParentProcess(reg.parent->name, reg.parent->pid, reg.parent->via_server);
}

inline std::vector<Process*> active_children() {
  detail::registry& reg = detail::the_registry();
  std::lock_guard lock(reg.mutex);
  detail::reap_finished_children_locked(reg);
  std::vector<Process*> children;
  children.reserve(reg.children.size());
  for (detail::process_record* child : reg.children) children.push_back(child->owner);
  return children;
}

inline std::size_t cpu_count() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return static_cast<std::size_t>(n);
  }
  // More CPUs than cpu_set_t holds (EINVAL): ask with growing dynamic sets.
  for (int cpus = 2 * CPU_SETSIZE; cpus <= (1 << 16); cpus *= 2) {
    cpu_set_t* dynamic = CPU_ALLOC(cpus);
    if (!dynamic) break;
    std::size_t size = CPU_ALLOC_SIZE(cpus);
    CPU_ZERO_S(size, dynamic);
    int found = ::sched_getaffinity(0, size, dynamic) == 0 ? CPU_COUNT_S(size, dynamic) : 0;
    CPU_FREE(dynamic);
    if (found > 0) return static_cast<std::size_t>(found);
  }
  long online = ::sysconf(_SC_NPROCESSORS_ONLN);
  return online > 0 ? static_cast<std::size_t>(online) : 1;
}

namespace detail {

/// A child started by spawn or forkserver: reads its Process from `socket`, becomes it, runs it and _exits with
/// the same exit codes as a forked child (an exception: 1, and its type and what() on stderr).
[[noreturn]] inline void run_spawned_child(int socket_fd, pid_t direct_parent, bool via_server) noexcept {
  std::string name = "Process (spawned)";
  try {
    unique_fd socket(socket_fd);
    ::fcntl(socket_fd, F_SETFD, FD_CLOEXEC);  // inherited without it; the child's own children must not get it
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

namespace detail {

/// "-SIGTERM" for -15, as Python's _exitcode_to_name; the number itself for other codes.
inline std::string exitcode_name(int code) {
  const char* name = nullptr;
  switch (-code) {
    case SIGHUP: name = "SIGHUP"; break;
    case SIGINT: name = "SIGINT"; break;
    case SIGQUIT: name = "SIGQUIT"; break;
    case SIGILL: name = "SIGILL"; break;
    case SIGABRT: name = "SIGABRT"; break;
    case SIGBUS: name = "SIGBUS"; break;
    case SIGFPE: name = "SIGFPE"; break;
    case SIGKILL: name = "SIGKILL"; break;
    case SIGUSR1: name = "SIGUSR1"; break;
    case SIGSEGV: name = "SIGSEGV"; break;
    case SIGUSR2: name = "SIGUSR2"; break;
    case SIGPIPE: name = "SIGPIPE"; break;
    case SIGALRM: name = "SIGALRM"; break;
    case SIGTERM: name = "SIGTERM"; break;
    default: break;
  }
  return code < 0 && name ? std::string("-") + name : std::to_string(code);
}

}  // namespace detail

inline std::ostream& operator<<(std::ostream& out, const Process& process) {
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

}  // namespace mp

#define MP_DETAIL_CONCAT2(a, b) a##b
#define MP_DETAIL_CONCAT(a, b) MP_DETAIL_CONCAT2(a, b)
/// At namespace scope: lets Process subclass T (default constructible, with a serialize member) start by spawn and
/// forkserver. See mp::register_process.
#define MP_REGISTER_PROCESS(T) \
  [[maybe_unused]] static const bool MP_DETAIL_CONCAT(mp_process_registered_, __COUNTER__) = ::mp::register_process<T>()
