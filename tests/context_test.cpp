// Tests of the start methods (fork, spawn, forkserver) and mp::init: every behaviour of a Process under each
// method, what can and cannot cross to a fresh process, the missing-mp::init guard, and the reason spawn and
// forkserver exist — a lock held by another thread does not deadlock their children.
// Children report through pipes whose ends cross as descriptors (a handle with save/load, see pipe_end), and block
// on pipe reads, never on sleeps.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <future>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <mp/connection.hpp>
#include <mp/detail/child_os.hpp>
#include <mp/detail/forkserver.hpp>
#include <mp/detail/handle_transfer.hpp>
#include <mp/detail/spawn.hpp>
#include <mp/detail/start_method.hpp>
#include <mp/manager.hpp>
#include <mp/process.hpp>
#include <mp/queue.hpp>

#include "support/child_process.hpp"

using namespace std::chrono_literals;
using Catch::Matchers::Contains;

namespace {

/// One end of a pipe as a Process argument: copied by fork, sent as a descriptor by spawn and forkserver.
struct pipe_end : mp_test::fd_argument {

  /// Writes all of text (usable in a child: no Catch2 macro).
  void write(std::string_view text) const {
    while (!text.empty()) {
      ssize_t n = ::write(fd, text.data(), text.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) std::abort();
      text.remove_prefix(static_cast<std::size_t>(n));
    }
  }
  /// Blocks until one byte arrives or every writer has closed.
  void wait_for_release() const {
    char byte;
    while (::read(fd, &byte, 1) < 0 && errno == EINTR) {
    }
  }
};

/// A pipe owned by the test; its ends are handed to children as pipe_end.
class test_pipe {
 public:
  test_pipe() { REQUIRE(::pipe2(fds_, O_CLOEXEC) == 0); }
  ~test_pipe() {
    for (int fd : fds_)
      if (fd >= 0) ::close(fd);
  }
  test_pipe(const test_pipe&) = delete;
  test_pipe& operator=(const test_pipe&) = delete;

  pipe_end reader() const { return {fds_[0]}; }
  pipe_end writer() const { return {fds_[1]}; }
  void release(int count = 1) const { writer().write(std::string(static_cast<std::size_t>(count), 'r')); }
  /// Closes this process's write end, then reads until every writer has closed theirs.
  std::string read_all() {
    if (fds_[1] >= 0) ::close(std::exchange(fds_[1], -1));
    std::string text;
    char buffer[4096];
    for (;;) {
      ssize_t n = ::read(fds_[0], buffer, sizeof buffer);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return text;
      text.append(buffer, static_cast<std::size_t>(n));
    }
  }

 private:
  int fds_[2] = {-1, -1};
};

/// The fork server started by a test is stopped at its end: each test leaves no process behind.
struct forkserver_stopper {
  ~forkserver_stopper() { mp::detail::stop_forkserver(); }
};

bool readable_within(int fd, std::chrono::milliseconds timeout) {
  pollfd ready{fd, POLLIN, 0};
  int n;
  do {
    n = ::poll(&ready, 1, static_cast<int>(timeout.count()));
  } while (n < 0 && errno == EINTR);
  return n == 1;
}

std::string method_name(mp::StartMethod method) { return std::string(mp::to_string(method)); }

// --- targets: plain functions, so that they cross under every method -------------------------------------------

void report_sum_and_identity(pipe_end out, std::string label, int a, double b) {
  const auto parent = mp::parent_process();
  out.write(label + " " + std::to_string(a + b) + " " + mp::current_process().name() + " parent=" +
            (parent ? parent->name() + ":" + std::to_string(parent->pid()) : std::string("none")) +
            (parent && parent->is_alive() ? " alive" : " dead") + " pid=" +
            std::to_string(mp::current_process().pid() == ::getpid()) + "\n");
}

void report_text(pipe_end out, const char* text) { out.write(std::string(text) + "\n"); }

void exit_with(int code) { std::exit(code); }

void throw_runtime_error(std::string message) { throw std::runtime_error(message); }

void wait_for_release(pipe_end release) {
  ::signal(SIGTERM, SIG_DFL);  // Catch2's handler is not installed in a spawned child, but one forked is
  release.wait_for_release();
}

void report_start_method(pipe_end out) { out.write(method_name(mp::get_start_method()) + "\n"); }

void start_grandchild(pipe_end out, int method) {
  mp::Process grandchild({.start_method = static_cast<mp::StartMethod>(method)}, report_sum_and_identity, out,
                         std::string("grandchild"), 1, 1.0);
  grandchild.start();
  grandchild.join();
  std::exit(*grandchild.exitcode() == 0 ? 0 : 7);
}

/// A function object with state and a serialize member: crosses with its fields.
struct greeter {
  std::string greeting;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(greeting);
  }
  void operator()(pipe_end out, std::string who) const { out.write(greeting + ", " + who + "\n"); }
};

/// A Process subclass that overrides run(), registered so that spawn and forkserver can rebuild it.
class counting_process : public mp::Process {
 public:
  counting_process() = default;
  counting_process(mp::StartMethod method, pipe_end out, int count)
      : mp::Process({.name = "Counter", .start_method = method}), out_(out), count_(count) {}
  template <class Archive>
  void serialize(Archive& ar) {
    ar(out_, count_);
  }

 protected:
  void run() override {
    std::string text;
    for (int i = 1; i <= count_; ++i) text += std::to_string(i) + " ";
    out_.write(text + "by " + name() + "\n");
  }

 private:
  pipe_end out_;
  int count_ = 0;
};
MP_REGISTER_PROCESS(counting_process);

class unregistered_process : public mp::Process {
 public:
  explicit unregistered_process(mp::StartMethod method) : mp::Process({.start_method = method}) {}

 protected:
  void run() override {}
};

void block_forever_and_report(pipe_end out, pipe_end never) {
  ::signal(SIGTERM, SIG_DFL);
  out.write(std::to_string(::getpid()) + "\n");
  never.wait_for_release();
  std::_Exit(3);  // only if the pipe was closed: the test then fails on the exit code
}

void start_blocked_grandchild(pipe_end out, pipe_end never, int method, bool daemon) {
  ::signal(SIGTERM, SIG_DFL);
  mp::Process grandchild({.daemon = daemon, .start_method = static_cast<mp::StartMethod>(method)},
                         block_forever_and_report, out, never);
  grandchild.start();
  out.write(std::to_string(::getpid()) + "\n");
  never.wait_for_release();
}

void echo_through_handles(mp::Queue<int> numbers, mp::Connection<std::string> connection,
                          mp::JoinableQueue<std::string> tasks, mp::SimpleQueue<std::vector<double>> results,
                          mp::Connection<std::string> same_connection) {
  numbers.put(numbers.get() + 1);
  connection.send("echo " + connection.recv());
  same_connection.send("again");
  const std::string task = tasks.get();
  tasks.task_done();
  results.put(std::vector<double>(task.size(), 0.5));
}

void update_through_proxies(mp::DictProxy<std::string, int> dict, mp::ListProxy<int> list, mp::ValueProxy<double> value,
                            mp::LockProxy lock, mp::QueueProxy<std::string> queue) {
  std::lock_guard guard(lock);
  dict.set("child", 7);
  list.append(3);
  value.set(value.get() * 2);
  queue.put("from " + mp::current_process().name());
}

// The "library" whose lock another thread of the parent holds forever (a logger, an allocator arena).
std::mutex& library_mutex() {
  static std::mutex mutex;
  return mutex;
}
int library_call() {
  std::lock_guard lock(library_mutex());
  return 42;
}
void use_the_library(pipe_end out) { out.write(std::to_string(library_call()) + "\n"); }

}  // namespace

TEST_CASE("Every start method runs a function with its arguments as the named child of its parent", "[context]") {
  forkserver_stopper stop;
  const mp::StartMethod method = GENERATE(mp::StartMethod::fork, mp::StartMethod::spawn, mp::StartMethod::forkserver);
  INFO("start method " << method_name(method));
  test_pipe out;
  mp::Process p({.name = "Worker", .start_method = method}, report_sum_and_identity, out.writer(),
                std::string("sum"), 2, 3.5);
  p.start();
  mp::Process literal({.start_method = method}, report_text, out.writer(), "a string literal");
  literal.start();
  mp::Process lambda({.start_method = method}, [](pipe_end end, int n) { end.write("lambda " + std::to_string(n) + "\n"); },
                     out.writer(), 9);
  lambda.start();
  mp::Process object({.start_method = method}, greeter{"hello"}, out.writer(), std::string("world"));
  object.start();
  for (mp::Process* child : {&p, &literal, &lambda, &object}) {
    child->join();
    CHECK(child->exitcode() == 0);
  }
  const std::string text = out.read_all();
  CHECK_THAT(text, Contains("sum 5.500000 Worker parent=MainProcess:" + std::to_string(::getpid()) + " alive pid=1\n"));
  CHECK_THAT(text, Contains("a string literal\n"));
  CHECK_THAT(text, Contains("lambda 9\n"));
  CHECK_THAT(text, Contains("hello, world\n"));
}

TEST_CASE("Every start method reports exit codes: 0 or exit(n) or 1 with the exception on stderr or -N by a signal",
          "[context]") {
  forkserver_stopper stop;
  const mp::StartMethod method = GENERATE(mp::StartMethod::fork, mp::StartMethod::spawn, mp::StartMethod::forkserver);
  INFO("start method " << method_name(method));
  SECTION("exit(n)") {
    mp::Process p({.start_method = method}, exit_with, 3);
    p.start();
    p.join();
    CHECK(p.exitcode() == 3);
  }
  SECTION("an uncaught exception: 1, its type and what() on stderr") {
    // The child writes to the stderr it inherits: the fork server's is the one it started with, so it is started
    // (and stopped) while stderr is the pipe.
    mp::detail::stop_forkserver();
    test_pipe err;
    const int saved_stderr = ::dup(STDERR_FILENO);
    ::dup2(err.writer().fd, STDERR_FILENO);
    mp::Process p({.name = "Thrower", .start_method = method}, throw_runtime_error, std::string("boom"));
    p.start();
    p.join();
    mp::detail::stop_forkserver();
    ::dup2(saved_stderr, STDERR_FILENO);
    ::close(saved_stderr);
    CHECK(p.exitcode() == 1);
    CHECK(err.read_all() == "Process Thrower:\nstd::runtime_error: boom\n");
  }
  SECTION("terminate and kill: -SIGTERM and -SIGKILL; join(timeout), is_alive and the sentinel") {
    test_pipe release;
    mp::Process terminated({.start_method = method}, wait_for_release, release.reader());
    mp::Process killed({.start_method = method}, wait_for_release, release.reader());
    terminated.start();
    killed.start();
    CHECK(terminated.is_alive());
    CHECK_FALSE(terminated.exitcode().has_value());
    CHECK_FALSE(readable_within(terminated.sentinel(), 0ms));
    terminated.terminate();
    killed.kill();
    CHECK(terminated.join(30s));
    killed.join();
    CHECK(readable_within(terminated.sentinel(), 0ms));
    CHECK_FALSE(terminated.is_alive());
    CHECK(terminated.exitcode() == -SIGTERM);
    CHECK(killed.exitcode() == -SIGKILL);
    terminated.terminate();  // no-op once ended
  }
  SECTION("a released child ends with 0 after join(timeout) said it was running") {
    test_pipe release;
    mp::Process p({.start_method = method}, wait_for_release, release.reader());
    p.start();
    CHECK_FALSE(p.join(10ms));
    release.release();
    CHECK(p.join(30s));
    CHECK(p.exitcode() == 0);
  }
}

TEST_CASE("A child started by spawn or forkserver starts its own children by every method", "[context]") {
  forkserver_stopper stop;
  const mp::StartMethod outer = GENERATE(mp::StartMethod::spawn, mp::StartMethod::forkserver);
  const mp::StartMethod inner = GENERATE(mp::StartMethod::fork, mp::StartMethod::spawn, mp::StartMethod::forkserver);
  INFO(method_name(outer) << " then " << method_name(inner));
  test_pipe out;
  mp::Process p({.start_method = outer}, start_grandchild, out.writer(), static_cast<int>(inner));
  p.start();
  p.join();
  CHECK(p.exitcode() == 0);
  const std::string text = out.read_all();
  CHECK_THAT(text, Contains("grandchild 2.000000 " + p.name() + ":1 parent=" + p.name() + ":" +
                            std::to_string(p.pid()) + " alive pid=1\n"));
}

TEST_CASE("A registered Process subclass runs its overridden run() under every start method", "[context]") {
  forkserver_stopper stop;
  const mp::StartMethod method = GENERATE(mp::StartMethod::fork, mp::StartMethod::spawn, mp::StartMethod::forkserver);
  INFO("start method " << method_name(method));
  test_pipe out;
  counting_process p(method, out.writer(), 3);
  p.start();
  p.join();
  CHECK(p.exitcode() == 0);
  CHECK(out.read_all() == "1 2 3 by Counter\n");
}

TEST_CASE("What cannot cross to a spawned child is refused at start() with ProcessError naming it", "[context]") {
  const mp::StartMethod method = GENERATE(mp::StartMethod::spawn, mp::StartMethod::forkserver);
  INFO("start method " << method_name(method));
  int local = 5;
  SECTION("a lambda with captures") {
    mp::Process p({.start_method = method}, [&local] { local = 6; });
    CHECK_THROWS_WITH(p.start(), Contains("cannot cross") && Contains("lambda without captures") &&
                                     Contains("StartMethod::fork"));
    CHECK_FALSE(p.is_alive());
  }
  SECTION("a pointer argument and std::cref") {
    mp::Process pointer({.start_method = method}, [](int* value) { *value = 1; }, &local);
    CHECK_THROWS_WITH(pointer.start(), Contains("argument(s) of type int*") && Contains("cannot cross"));
    mp::Process reference({.start_method = method}, [](const int& value) { (void)value; }, std::cref(local));
    CHECK_THROWS_WITH(reference.start(), Contains("std::reference_wrapper<int const>"));
  }
  SECTION("an unregistered subclass") {
    unregistered_process p(method);
    CHECK_THROWS_WITH(p.start(), Contains("unregistered_process") && Contains("MP_REGISTER_PROCESS"));
  }
  SECTION("a handle outside a Process argument") {
    test_pipe pipe;
    CHECK_THROWS_AS(mp::serialize(pipe.writer()), mp::SerializationError);
  }
  CHECK(mp::active_children().empty());
}

TEST_CASE("spawn and forkserver without mp::init fail at once with an Error that says to call it", "[context]") {
  const mp::StartMethod method = GENERATE(mp::StartMethod::spawn, mp::StartMethod::forkserver);
  // As if main() had not called mp::init (the test runner's main does).
  std::atomic<int>& state = mp::detail::the_init_state();
  const int saved = state.exchange(static_cast<int>(mp::detail::init_state::not_called));
  mp::Process p({.start_method = method}, exit_with, 0);
  CHECK_THROWS_WITH(p.start(), Contains("mp::init(argc, argv) was not called") &&
                                   Contains("first line of main()") && Contains(method_name(method)));
  state.store(saved);
  CHECK_FALSE(p.is_alive());
  CHECK(mp::detail::forkserver_pid() == 0);  // nothing was started, not even the server
  // fork copies the running program and needs no mp::init.
  state.store(static_cast<int>(mp::detail::init_state::not_called));
  mp::Process forked({.start_method = mp::StartMethod::fork}, exit_with, 4);
  forked.start();
  state.store(saved);
  forked.join();
  CHECK(forked.exitcode() == 4);
}

TEST_CASE("A lock another thread holds forever deadlocks a forked child but not a spawn or forkserver one",
          "[context]") {
  forkserver_stopper stop;
  const mp::StartMethod method = GENERATE(mp::StartMethod::spawn, mp::StartMethod::forkserver, mp::StartMethod::fork);
  INFO("start method " << method_name(method));
  mp_test::lock_held_by_another_thread held(library_mutex());
  test_pipe out;
  mp::Process p({.start_method = method}, use_the_library, out.writer());
  p.start();
  if (method == mp::StartMethod::fork) {
    // The child's copy of the mutex is locked by a thread that does not exist there: it can never get it.
    CHECK_FALSE(p.join(200ms));
    p.kill();
    p.join();
    CHECK(p.exitcode() == -SIGKILL);
  } else {
    p.join();
    CHECK(p.exitcode() == 0);
  }
  CHECK(out.read_all() == (method == mp::StartMethod::fork ? "" : "42\n"));
}

TEST_CASE("forkserver children are the single-threaded server's and still join and report exit codes", "[context]") {
  forkserver_stopper stop;
  test_pipe release;
  // A thread in the parent: the server is a fresh program, so it does not have it.
  std::promise<void> done;
  std::thread busy([&] { done.get_future().wait(); });
  mp::Process p({.start_method = mp::StartMethod::forkserver}, wait_for_release, release.reader());
  p.start();
  const pid_t server = mp::detail::forkserver_pid();
  REQUIRE(server > 0);
  std::ifstream status("/proc/" + std::to_string(p.pid()) + "/stat");
  std::string pid, comm, state;
  pid_t ppid = 0;
  status >> pid >> comm >> state >> ppid;
  CHECK(ppid == server);
  CHECK(std::distance(std::filesystem::directory_iterator("/proc/" + std::to_string(server) + "/task"),
                      std::filesystem::directory_iterator()) == 1);
  CHECK(p.is_alive());
  release.release();
  p.join();
  CHECK(p.exitcode() == 0);
  done.set_value();
  busy.join();
  // The same server serves the next child.
  mp::Process q({.start_method = mp::StartMethod::forkserver}, exit_with, 6);
  q.start();
  q.join();
  CHECK(q.exitcode() == 6);
  CHECK(mp::detail::forkserver_pid() == server);
}

TEST_CASE("A sentinel becomes readable only when the child's exit code is known, under every start method",
          "[context]") {
  // Under forkserver the child's pidfd is readable before the server has reaped it and reported its status: the
  // sentinel is the status pipe instead, so a program that waits on it finds is_alive() false right away.
  const mp::StartMethod method = GENERATE(mp::StartMethod::fork, mp::StartMethod::spawn, mp::StartMethod::forkserver);
  CAPTURE(mp::to_string(method));
  for (int round = 0; round < 20; ++round) {
    mp::Process p({.start_method = method}, exit_with, 3);
    p.start();
    pollfd ready{p.sentinel(), POLLIN, 0};
    REQUIRE(::poll(&ready, 1, -1) == 1);
    CHECK_FALSE(p.is_alive());
    CHECK(p.exitcode() == 3);
    p.join();
  }
}

TEST_CASE("forkserver children report their exit codes even when the parent ignores SIGCHLD", "[context]") {
  // SIG_IGN survives exec: a server started then would let the kernel reap its children, losing their status.
  forkserver_stopper stop;
  mp::detail::stop_forkserver();
  struct sigaction ignore {};
  struct sigaction previous {};
  ignore.sa_handler = SIG_IGN;
  REQUIRE(::sigaction(SIGCHLD, &ignore, &previous) == 0);
  mp::Process p({.start_method = mp::StartMethod::forkserver}, exit_with, 5);
  p.start();
  ::sigaction(SIGCHLD, &previous, nullptr);  // the server exists now, with what it inherited
  CHECK(p.join(20s));
  CHECK(p.exitcode() == 5);
}

TEST_CASE("A killed fork server is replaced and its orphaned child's exit code is reported lost",
          "[context]") {
  forkserver_stopper stop;
  test_pipe release;
  mp::Process p({.start_method = mp::StartMethod::forkserver}, wait_for_release, release.reader());
  p.start();
  const pid_t server = mp::detail::forkserver_pid();
  ::kill(server, SIGKILL);
  // The server's death ends the child too (PR_SET_PDEATHSIG relative to the server); its status is lost.
  CHECK_THROWS_WITH(p.join(), Contains("forkserver that started it died"));
  mp::Process q({.start_method = mp::StartMethod::forkserver}, exit_with, 2);
  q.start();
  q.join();
  CHECK(q.exitcode() == 2);
  CHECK(mp::detail::forkserver_pid() != server);
}

TEST_CASE("MP_START_METHOD chooses the default start method and a bad value is an error", "[context]") {
  ::setenv("MP_START_METHOD", "spawn", 1);
  CHECK(mp::detail::default_start_method() == mp::StartMethod::spawn);
  ::setenv("MP_START_METHOD", "vfork", 1);
  CHECK_THROWS_WITH(mp::detail::default_start_method(), Contains("MP_START_METHOD=vfork") && Contains("forkserver"));
  ::unsetenv("MP_START_METHOD");
  CHECK(mp::detail::default_start_method() == mp::StartMethod::fork);
}

TEST_CASE("A child started by any method dies with its parent when the parent is killed", "[context]") {
  forkserver_stopper stop;
  const mp::StartMethod outer = GENERATE(mp::StartMethod::spawn, mp::StartMethod::forkserver);
  const mp::StartMethod inner = GENERATE(mp::StartMethod::fork, mp::StartMethod::spawn, mp::StartMethod::forkserver);
  const bool daemon = GENERATE(true, false);
  INFO(method_name(outer) << " then " << method_name(inner) << (daemon ? " daemon" : " non-daemon"));
  test_pipe out;
  test_pipe never;
  mp::Process middle({.start_method = outer}, start_blocked_grandchild, out.writer(), never.reader(),
                     static_cast<int>(inner), daemon);
  middle.start();
  // Two lines: the grandchild's pid and the middle's, in either order.
  std::vector<pid_t> pids;
  std::string line;
  char c;
  while (pids.size() < 2 && ::read(out.reader().fd, &c, 1) == 1) {
    if (c != '\n') {
      line += c;
    } else {
      pids.push_back(static_cast<pid_t>(std::stol(line)));
      line.clear();
    }
  }
  REQUIRE(pids.size() == 2);
  const pid_t grandchild = pids[0] == middle.pid() ? pids[1] : pids[0];
  const int grandchild_fd = mp::detail::pidfd_open(grandchild);  // while its parent lives: not a reused pid
  REQUIRE(grandchild_fd >= 0);
  middle.kill();
  middle.join();
  CHECK(middle.exitcode() == -SIGKILL);
  CHECK(readable_within(grandchild_fd, 30s));  // it ended: the runner (a subreaper) reaps it
  ::close(grandchild_fd);
}

TEST_CASE("A malformed spawn request makes the child exit 1 with a message instead of crashing", "[context]") {
  // The child is this test program, whose main() calls mp::init: it finds the marker and reads the request.
  auto run_child = [](const std::string& marker, int inherit, std::string_view payload) {
    int err[2];
    REQUIRE(::pipe2(err, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t actions;
    ::posix_spawn_file_actions_init(&actions);
    ::posix_spawn_file_actions_adddup2(&actions, err[1], STDERR_FILENO);
    if (inherit >= 0) ::posix_spawn_file_actions_adddup2(&actions, inherit, inherit);
    std::vector<char*> env;
    std::string assignment = marker;
    env.push_back(assignment.data());
    env.push_back(nullptr);
    char name[] = "context_test";
    char* argv[] = {name, nullptr};
    pid_t pid = 0;
    REQUIRE(::posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, argv, env.data()) == 0);
    ::posix_spawn_file_actions_destroy(&actions);
    ::close(err[1]);
    if (!payload.empty()) REQUIRE(::write(inherit + 1, payload.data(), payload.size()) == static_cast<ssize_t>(payload.size()));
    std::string text;
    char buffer[512];
    for (ssize_t n; (n = ::read(err[0], buffer, sizeof buffer)) > 0;) text.append(buffer, static_cast<std::size_t>(n));
    ::close(err[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    return std::pair(status, text);
  };
  SECTION("a marker that is not a descriptor") {
    auto [status, text] = run_child("MP_SPAWNED_CHILD=abc", -1, "");
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 1));
    CHECK_THAT(text, Contains("malformed MP_SPAWNED_CHILD=abc"));
  }
  SECTION("garbage instead of a request") {
    int pair[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0);
    // pair[0] is the child's; the test writes garbage on pair[1] (numbered pair[0] + 1 here, checked below).
    REQUIRE(pair[1] == pair[0] + 1);
    auto [status, text] = run_child("MP_SPAWNED_CHILD=" + std::to_string(pair[0]), pair[0],
                                    "this is not a request from an mp parent, but garbage bytes");
    ::close(pair[0]);
    ::close(pair[1]);
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 1));
    CHECK_THAT(text, Contains("malformed message header"));
  }
}

TEST_CASE("Queue and JoinableQueue and SimpleQueue and Connection cross to children of every start method",
          "[context]") {
  forkserver_stopper stop;
  const mp::StartMethod method = GENERATE(mp::StartMethod::fork, mp::StartMethod::spawn, mp::StartMethod::forkserver);
  INFO("start method " << method_name(method));
  mp::Queue<int> numbers;
  auto [mine, theirs] = mp::Pipe<std::string>();
  mp::JoinableQueue<std::string> tasks;
  mp::SimpleQueue<std::vector<double>> results;
  numbers.put(41);
  tasks.put("three");
  mp::Process p({.start_method = method}, echo_through_handles, numbers, theirs, tasks, results, theirs);
  p.start();
  theirs.close();  // the child has its own copy
  mine.send("hello");
  CHECK(mine.recv() == "echo hello");
  CHECK(mine.recv() == "again");
  CHECK(tasks.join(30s));
  CHECK(results.get() == std::vector<double>{0.5, 0.5, 0.5, 0.5, 0.5});
  p.join();
  CHECK(p.exitcode() == 0);
  CHECK(numbers.get() == 42);
  CHECK_THROWS_AS(mine.recv(), mp::EOFError);  // the child's end closed when it exited
}

TEST_CASE("A Queue or Connection cannot travel inside a Queue item or plain bytes", "[context]") {
  mp::Queue<int> queue;
  auto [a, b] = mp::Pipe<int>();
  CHECK_THROWS_WITH(mp::serialize(queue), Contains("Queue is a handle") && Contains("Process"));
  CHECK_THROWS_WITH(mp::serialize(a), Contains("Connection is a handle"));
  a.close();
  mp::detail::fd_outbox outbox;
  mp::detail::fd_outbox_scope scope(outbox);
  CHECK_THROWS_WITH(mp::serialize(a), Contains("closed"));
}

TEST_CASE("active_children and the repr and close work for children of every start method", "[context]") {
  forkserver_stopper stop;
  const mp::StartMethod method = GENERATE(mp::StartMethod::fork, mp::StartMethod::spawn, mp::StartMethod::forkserver);
  INFO("start method " << method_name(method));
  test_pipe release;
  mp::Process a({.name = "A", .daemon = true, .start_method = method}, wait_for_release, release.reader());
  mp::Process b({.name = "B", .start_method = method}, wait_for_release, release.reader());
  a.start();
  b.start();
  std::vector<mp::Process*> running = mp::active_children();
  CHECK(running.size() == 2);
  CHECK(std::count(running.begin(), running.end(), &a) == 1);
  std::ostringstream text;
  text << a;
  CHECK(text.str() == "<Process name='A' pid=" + std::to_string(a.pid()) + " parent=" + std::to_string(::getpid()) +
                          " started daemon>");
  CHECK_THROWS_AS(b.close(), mp::ProcessError);  // still running
  release.release(2);
  a.join();
  b.join();
  CHECK(mp::active_children().empty());
  b.close();
  CHECK_THROWS_AS(b.exitcode(), mp::ProcessError);
  std::ostringstream closed;
  closed << b;
  CHECK_THAT(closed.str(), Contains("closed"));
}

TEST_CASE("Manager proxies cross to children of every start method and reach the same server", "[context]") {
  forkserver_stopper stop;
  const mp::StartMethod method = GENERATE(mp::StartMethod::fork, mp::StartMethod::spawn, mp::StartMethod::forkserver);
  INFO("start method " << method_name(method));
  mp::Manager manager;
  auto dict = manager.dict<std::string, int>();
  auto list = manager.list<int>();
  auto value = manager.value<double>(1.5);
  auto queue = manager.queue<std::string>();
  mp::Process p({.name = "Updater", .start_method = method}, update_through_proxies, dict, list, value,
                manager.lock(), queue);
  p.start();
  p.join();
  CHECK(p.exitcode() == 0);
  CHECK(dict.get("child", -1) == 7);
  CHECK(list.copy() == std::vector<int>{3});
  CHECK(value.get() == 3.0);
  CHECK(queue.get() == "from Updater");
  // A proxy carries the manager's authkey: it crosses only as a Process argument.
  CHECK_THROWS_WITH(mp::serialize(dict), Contains("only as an argument of a Process"));
}

TEST_CASE("A child of spawn or forkserver inherits the start method set in its parent", "[context]") {
  forkserver_stopper stop;
  const mp::StartMethod method = GENERATE(mp::StartMethod::spawn, mp::StartMethod::forkserver);
  INFO("start method " << method_name(method));
  std::atomic<int>& setting = mp::detail::the_start_method();
  const int saved = setting.load();
  {
    test_pipe out;
    setting.store(-1);  // not set: a per-Process choice must not fix this process's default
    mp::Process p({.start_method = method}, report_start_method, out.writer());
    p.start();
    CHECK(setting.load() == -1);
    p.join();
    CHECK(out.read_all() == method_name(mp::detail::default_start_method()) + "\n");
  }
  {
    test_pipe out;
    mp::set_start_method(method, true);
    mp::Process p(report_start_method, out.writer());
    p.start();
    p.join();
    CHECK(out.read_all() == method_name(method) + "\n");
  }
  setting.store(saved);
}

TEST_CASE("A spawned child that returns from main without reaching mp::init exits 1 with a message", "[context]") {
  // What the exit handler installed at start-up (detail/spawn.ipp) does in a program whose main never called
  // mp::init while the spawn marker is in its environment; run in a raw forked child with the marker set.
  test_pipe err;
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(err.writer().fd, STDERR_FILENO);
    ::setenv("MP_SPAWNED_CHILD", "3", 1);
    mp::detail::report_unconsumed_marker();  // _exits
    std::_Exit(99);
  }
  REQUIRE(pid > 0);
  const std::string text = err.read_all();
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 1));
  CHECK_THAT(text, Contains("main() returned without calling mp::init(argc, argv)"));
  // Without the marker (a normal program) it does nothing.
  CHECK(std::getenv("MP_SPAWNED_CHILD") == nullptr);
  mp::detail::report_unconsumed_marker();
}
