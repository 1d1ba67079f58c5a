// mp::Process: run a callable in a child process (Python's multiprocessing.Process), plus current_process(),
// parent_process(), active_children() and cpu_count(). A child is started by fork, spawn or forkserver
// (<mp/context.hpp>); it runs target(args...) (or an overridden run()) and ends with _exit — it never returns into
// the caller's stack. docs/start-methods.md says what crosses to a fresh (spawn, forkserver) child.
// Process safety: a Process object is owned by the process that created it; only that process may start, join,
// poll or signal it. Different Process objects may be used from different threads; one Process object by one
// thread at a time (join() from several threads is fine). Children started from a thread get a signal when that
// *thread* ends (PR_SET_PDEATHSIG): start them from a thread that outlives them (docs/process.md).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <typeindex>
#include <typeinfo>
#include <utility>
#include <vector>

#include <mp/context.hpp>
#include <mp/detail/clock.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/process_child.hpp>
#include <mp/detail/registry.hpp>
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
  struct main_process_tag {};
  explicit Process(main_process_tag);

  detail::process_record& record(const char* operation) const;  // throws on a moved-from Process
  detail::process_record& usable_record(const char* operation) const;  // also throws on a closed one
  detail::process_record& joinable_record() const;  // throws unless join() may wait for it
  void require_child_of_this_process(const detail::process_record& state, const char* operation) const;
  bool is_current(const detail::process_record& state) const;
  std::string describe(const detail::process_record& state) const;
  bool join_until(const detail::deadline& until);  // join() and join(timeout)
  void signal_child(const char* operation, int signal);  // terminate() and kill()
  [[noreturn]] void run_in_child(pid_t os_parent, int ready_fd) noexcept;
  void start_fresh(detail::process_record& state, StartMethod method, detail::parent_record parent);
  void adopt_child_locked(detail::process_record& state, pid_t child);
  void finish_and_forget() noexcept;

  std::unique_ptr<detail::process_record> state_;   // heap: the registry's pointer to it survives moves
  std::unique_ptr<detail::process_task> target_;    // dropped by the parent once start() returns
  std::optional<StartMethod> start_method_;
};

/// The Process object of the running process: "MainProcess" in the main process, the running Process in a child.
MP_DECL Process& current_process();

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
  bool is_alive() const noexcept;

 private:
  std::string name_;
  pid_t pid_;
  bool via_server_;
};

/// The parent of the current process; std::nullopt in the main process (Python returns None).
MP_DECL std::optional<ParentProcess> parent_process();

/// The running children started by this process; reaps those that have ended (as Python). The pointers are to
/// the Process objects themselves and stay valid while those objects live.
MP_DECL std::vector<Process*> active_children();

/// The number of CPUs this process may run on (sched_getaffinity), at least 1.
MP_DECL std::size_t cpu_count();

/// Python's repr: <Process name='Process-1' pid=1234 parent=1200 started daemon>, … stopped exitcode=-SIGTERM>.
MP_DECL std::ostream& operator<<(std::ostream& out, const Process& process);

/// Lets a Process subclass that overrides run() start by spawn or forkserver: the child default-constructs a T and
/// its serialize member (`template <class Archive> void serialize(Archive& ar) { ar(field1, field2); }`) restores
/// the fields. Call once before starting one (or use MP_REGISTER_PROCESS(T) at namespace scope). Returns true.
template <class T>
bool register_process();

// ---- definitions ----

template <class F, class... Args>
Process::Process(ProcessOptions options, F&& target, Args&&... args) : Process(std::move(options)) {
  static_assert(std::is_invocable_v<std::decay_t<F>, std::decay_t<Args>...>,
                "mp::Process(target, args...): target cannot be called with these arguments (the child calls it "
                "with its own copies, as rvalues); check the argument types, or wrap an lvalue reference "
                "parameter's argument in std::ref");
  target_ = std::make_unique<detail::bound_process_task<std::decay_t<F>, std::decay_t<Args>...>>(
      std::forward<F>(target), std::forward<Args>(args)...);
}

template <class Rep, class Period>
bool Process::join(std::chrono::duration<Rep, Period> timeout) {
  // A timeout of a century or more (duration::max()) is "forever": now() + timeout would overflow the clock.
  return join_until(detail::deadline_or_forever(timeout));
}

template <class T>
bool register_process() {
  static_assert(std::derived_from<T, Process>, "mp::register_process<T>: T must derive from mp::Process");
  static_assert(std::is_default_constructible_v<T>,
                "mp::register_process<T>: the spawned child default-constructs T; give T a default constructor");
  static_assert(detail::has_member_serialize<T> || detail::has_member_save_load<T>,
                "mp::register_process<T>: T needs a member `template <class Archive> void serialize(Archive& ar) "
                "{ ar(field1, field2); }` listing the fields its run() uses (none: an empty one)");
  detail::register_process_type(
      std::type_index(typeid(T)),
      detail::process_type_codec{[](const Process& process) { return mp::serialize(static_cast<const T&>(process)); },
                                 reinterpret_cast<std::uintptr_t>(&detail::make_spawned_process<T>)});
  return true;
}

}  // namespace mp

#define MP_DETAIL_CONCAT2(a, b) a##b
#define MP_DETAIL_CONCAT(a, b) MP_DETAIL_CONCAT2(a, b)
/// At namespace scope: lets Process subclass T (default constructible, with a serialize member) start by spawn and
/// forkserver. See mp::register_process.
#define MP_REGISTER_PROCESS(T) \
  [[maybe_unused]] static const bool MP_DETAIL_CONCAT(mp_process_registered_, __COUNTER__) = ::mp::register_process<T>()

#if MP_INCLUDE_DEFINITIONS
#include <mp/impl/process.ipp>
#endif
