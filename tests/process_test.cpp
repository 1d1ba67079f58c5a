// Tests of mp::Process, current_process(), parent_process(), active_children(), cpu_count() and the start methods.
// Every test runs real child processes, under every start method (ctest runs each test with MP_START_METHOD=fork,
// spawn and forkserver; the few [fork] tests are about what only fork does and fork explicitly). Children report
// through pipes (or their exit codes) and block on pipe reads, never on sleeps; the parent checks what they report.
// A child gets its pipes as Process arguments (pipe_view), never through a capture.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <mp/detail/child_os.hpp>
#include <mp/detail/forkserver.hpp>
#include <mp/detail/handle_transfer.hpp>
#include <mp/process.hpp>

using namespace std::chrono_literals;

namespace {

/// Both ends of a test_pipe as a Process argument: fork copies it, spawn and forkserver send its descriptors (the
/// save/load protocol of every mp handle, detail/handle_transfer.hpp). Usable in a child: no Catch2 macro.
struct pipe_view {
  int read_fd = -1;
  int write_fd = -1;

  template <class Archive>
  void save(Archive& ar) const {
    ar(mp::detail::export_fd(read_fd, "pipe_view"), mp::detail::export_fd(write_fd, "pipe_view"));
  }
  template <class Archive>
  void load(Archive& ar) {
    std::uint32_t read_index = 0, write_index = 0;
    ar(read_index, write_index);
    read_fd = mp::detail::import_fd(read_index, "pipe_view").release();  // the child's copies live as long as it
    write_fd = mp::detail::import_fd(write_index, "pipe_view").release();
  }

  /// Writes all of text.
  void write(std::string_view text) const {
    while (!text.empty()) {
      ssize_t n = ::write(write_fd, text.data(), text.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) std::abort();
      text.remove_prefix(static_cast<std::size_t>(n));
    }
  }
  /// Lets `count` processes blocked in wait_for_release() go on.
  void release(int count = 1) const { write(std::string(static_cast<std::size_t>(count), 'r')); }
  /// Blocks until another process calls release() (or every write end is closed).
  void wait_for_release() const {
    char byte;
    while (::read(read_fd, &byte, 1) < 0 && errno == EINTR) {
    }
  }
  /// Reads one line, without its '\n'.
  std::string read_line() const {
    std::string line;
    char c;
    for (;;) {
      ssize_t n = ::read(read_fd, &c, 1);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0 || c == '\n') return line;
      line += c;
    }
  }
  /// Closes this process's copy of the write end (so that its own reads can see end of file).
  void close_write() {
    if (write_fd >= 0) ::close(std::exchange(write_fd, -1));
  }
};

/// A pipe for tests: children write reports into it or block reading it until the parent releases them.
class test_pipe {
 public:
  // Not REQUIRE: children (started by spawn, outside any Catch test) make pipes too.
  test_pipe() {
    if (::pipe2(fds_, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
  }
  ~test_pipe() {
    close_read();
    close_write();
  }
  test_pipe(const test_pipe&) = delete;
  test_pipe& operator=(const test_pipe&) = delete;

  int read_fd() const { return fds_[0]; }
  int write_fd() const { return fds_[1]; }
  /// Both ends, to pass to a child as a Process argument (this test_pipe keeps owning them).
  pipe_view view() const { return {fds_[0], fds_[1]}; }

  /// Writes all of text.
  void write(std::string_view text) const { view().write(text); }
  /// Lets `count` children blocked in wait_for_release() go on.
  void release(int count = 1) const { view().release(count); }
  /// Blocks until a child calls release() (or every write end is closed).
  void wait_for_release() const { view().wait_for_release(); }
  /// Reads one line, without its '\n'.
  std::string read_line() const { return view().read_line(); }
  /// Closes this process's write end, then reads until every writer has closed theirs.
  std::string read_all() {
    close_write();
    std::string text;
    char buffer[4096];
    for (;;) {
      ssize_t n = ::read(fds_[0], buffer, sizeof buffer);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return text;
      text.append(buffer, static_cast<std::size_t>(n));
    }
  }
  void close_write() {
    if (fds_[1] >= 0) ::close(std::exchange(fds_[1], -1));
  }
  void close_read() {
    if (fds_[0] >= 0) ::close(std::exchange(fds_[0], -1));
  }

 private:
  int fds_[2] = {-1, -1};
};

/// True if fd is readable within timeout (a sentinel: the process has ended).
bool readable_within(int fd, std::chrono::milliseconds timeout) {
  pollfd ready{fd, POLLIN, 0};
  int n;
  do {
    n = ::poll(&ready, 1, static_cast<int>(timeout.count()));
  } while (n < 0 && errno == EINTR);
  return n == 1;
}

/// The number of open file descriptors of this process.
std::size_t open_fd_count() {
  std::size_t count = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) ++count;
  return count;
}

/// True if pid is no longer a child of this process (it was reaped).
bool reaped(pid_t pid) { return ::waitpid(pid, nullptr, WNOHANG) == -1 && errno == ECHILD; }

/// Catch2 reports fatal signals from its own handlers, which a forked child inherits: a child that is meant to die
/// by a signal restores the default actions first, so it dies quietly with the expected exit code.
void default_signal_actions() {
  for (int sig : {SIGTERM, SIGINT, SIGSEGV, SIGABRT, SIGILL, SIGFPE}) ::signal(sig, SIG_DFL);
}

void report_pid_and_name(const pipe_view& out) {
  mp::Process& me = mp::current_process();
  out.write(me.name() + " " + std::to_string(me.pid()) + " " + std::to_string(::getpid()) + "\n");
}

// A function object with state: an aggregate of serializable fields, so it crosses to spawn and forkserver too.
struct counting_target {
  int base;
  void operator()(const pipe_view& out, int add) const { out.write(std::to_string(base + add)); }
};

void write_sum(pipe_view out, std::string label, int a, double b) {
  out.write(label + "=" + std::to_string(a + static_cast<int>(b)));
}

/// A subclass overriding run(), as Python's `class WorkerProcess(multiprocessing.Process)`; registered (below) so
/// that a spawned child can rebuild it from its serialized fields.
class ReportingProcess : public mp::Process {
 public:
  ReportingProcess() = default;
  ReportingProcess(std::string name, pipe_view out) : mp::Process({.name = std::move(name)}), out_(out) {}
  template <class Archive>
  void serialize(Archive& ar) {
    ar(out_);
  }

 protected:
  void run() override { out_.write("run() of " + name() + " in pid " + std::to_string(::getpid())); }

 private:
  pipe_view out_;
};

}  // namespace

MP_REGISTER_PROCESS(ReportingProcess);

TEST_CASE("Process runs its target with copied arguments in a child process", "[process]") {
  test_pipe out;
  SECTION("a function pointer with converted arguments") {
    mp::Process p(write_sum, out.view(), "sum", 2, 3.5);
    p.start();
    p.join();
    CHECK(out.read_all() == "sum=5");
  }
  SECTION("a lambda without captures, run in another pid") {
    mp::Process p(
        [](pipe_view out, int add, std::string word, pid_t parent) {
          out.write(word + " " + std::to_string(40 + add) + (::getpid() != parent ? " in child" : " in parent"));
        },
        out.view(), 2, std::string("answer"), ::getpid());
    p.start();
    p.join();
    CHECK(out.read_all() == "answer 42 in child");
  }
  SECTION("a function object with state") {
    mp::Process p(counting_target{100}, out.view(), 23);
    p.start();
    p.join();
    CHECK(out.read_all() == "123");
  }
}

// [fork]: a target capturing by reference, a move-only argument and a copy of the parent's memory exist only under
// fork (spawn and forkserver refuse them at start(), see context_test).
TEST_CASE("Under fork a target may capture and take move-only arguments and the child's writes stay in the child",
          "[process][fork]") {
  test_pipe out;
  const mp::ProcessOptions forked{.start_method = mp::StartMethod::fork};
  SECTION("a lambda with captures, run in another pid") {
    const pid_t parent = ::getpid();
    int base = 40;
    std::string word = "answer";
    mp::Process p(forked, [&out, base, word, parent](int add) {
      out.write(word + " " + std::to_string(base + add) + (::getpid() != parent ? " in child" : " in parent"));
    }, 2);
    base = 0;  // the child got its copy at construction
    p.start();
    p.join();
    CHECK(out.read_all() == "answer 42 in child");
  }
  SECTION("a move-only argument") {
    auto value = std::make_unique<int>(7);
    mp::Process p(forked, [&out](std::unique_ptr<int> owned) { out.write("owned " + std::to_string(*owned)); },
                  std::move(value));
    CHECK_FALSE(value);
    p.start();
    p.join();
    CHECK(out.read_all() == "owned 7");
  }
  SECTION("a function object with state and a reference argument") {
    const pipe_view view = out.view();
    mp::Process p(forked, counting_target{100}, std::cref(view), 23);
    p.start();
    p.join();
    CHECK(out.read_all() == "123");
  }
  SECTION("a child's writes to its copy of a variable stay in the child") {
    int counter = 1;
    mp::Process p(forked, [&counter] { counter = 99; });
    p.start();
    p.join();
    CHECK(counter == 1);
  }
}

// [fork]: a shared_ptr argument makes the drop visible (use_count), and smart pointers cannot cross to spawn.
TEST_CASE("Process drops its target and arguments once start() returns", "[process][fork]") {
  auto shared = std::make_shared<int>(5);
  mp::Process p({.start_method = mp::StartMethod::fork},
                [](std::shared_ptr<int> copy) { std::_Exit(*copy == 5 ? 0 : 1); }, shared);
  CHECK(shared.use_count() == 2);
  p.start();
  CHECK(shared.use_count() == 1);
  p.join();
  CHECK(p.exitcode() == 0);
}

TEST_CASE("A subclass of Process runs its overridden run() in the child", "[process]") {
  test_pipe out;
  ReportingProcess p("Reporter", out.view());
  p.start();
  const pid_t child = p.pid();
  p.join();
  CHECK(out.read_all() == "run() of Reporter in pid " + std::to_string(child));
  CHECK(p.exitcode() == 0);
}

TEST_CASE("The child process never returns into the caller's stack", "[process]") {
  test_pipe out;
  mp::Process p([] {});
  p.start();
  out.write(std::to_string(::getpid()) + ";");  // only the parent gets here
  p.join();
  CHECK(out.read_all() == std::to_string(::getpid()) + ";");
}

TEST_CASE("What a child wrote to std::cout and stdout without flushing reaches its stdout when it ends", "[process]") {
  // The child flushes C stdio at its end, and the C++ streams only when they have a buffer of their own
  // (sync_with_stdio(false)): both paths must lose nothing.
  const bool synced = GENERATE(true, false);
  CAPTURE(synced);
  test_pipe out;
  mp::Process p([](pipe_view out, bool synced) {
    ::dup2(out.write_fd, STDOUT_FILENO);  // a pipe: stdio buffers it fully, nothing is written before the end
    if (!synced) std::ios_base::sync_with_stdio(false);
    std::cout << "from cout;";
    std::printf("from printf;");
  }, out.view(), synced);
  p.start();
  p.join();
  CHECK(p.exitcode() == 0);
  const std::string text = out.read_all();
  CHECK_THAT(text, Catch::Matchers::Contains("from cout;"));
  CHECK_THAT(text, Catch::Matchers::Contains("from printf;"));
  CHECK(text.size() == std::string("from cout;from printf;").size());
}

TEST_CASE("Processes are named Process-N and a child's children Process-N:M", "[process]") {
  mp::Process first([] {});
  mp::Process second([] {});
  REQUIRE(first.name().rfind("Process-", 0) == 0);
  const int n = std::stoi(first.name().substr(8));
  CHECK(second.name() == "Process-" + std::to_string(n + 1));
  CHECK(mp::Process({.name = "given"}, [] {}).name() == "given");

  test_pipe out;
  mp::Process parent(
      [](pipe_view out) {
        report_pid_and_name(out);
        mp::Process grandchild1(report_pid_and_name, out);
        mp::Process grandchild2(report_pid_and_name, out);
        grandchild1.start();
        grandchild1.join();
        grandchild2.start();
        grandchild2.join();
      },
      out.view());
  const std::string expected = "Process-" + std::to_string(n + 3);
  CHECK(parent.name() == expected);
  parent.start();
  parent.join();
  const std::string report = out.read_all();
  CHECK(report.find(expected + " ") != std::string::npos);
  CHECK(report.find(expected + ":1 ") != std::string::npos);
  CHECK(report.find(expected + ":2 ") != std::string::npos);

  SECTION("name can be changed, and the child sees the new name") {
    test_pipe named;
    mp::Process p([](pipe_view named) { named.write(mp::current_process().name()); }, named.view());
    p.name("renamed");
    CHECK(p.name() == "renamed");
    p.start();
    p.join();
    CHECK(named.read_all() == "renamed");
  }
}

TEST_CASE("current_process and parent_process describe the main process and a child", "[process]") {
  SECTION("in the main process") {
    mp::Process& me = mp::current_process();
    CHECK(me.name() == "MainProcess");
    CHECK(me.pid() == ::getpid());
    CHECK(me.is_alive());
    CHECK_FALSE(me.daemon());
    CHECK(&mp::current_process() == &me);
    CHECK_FALSE(mp::parent_process().has_value());
  }
  SECTION("in a child: itself, with the main process as its parent") {
    test_pipe out;
    mp::Process p(
        [](pipe_view out) {
          mp::Process& me = mp::current_process();
          std::optional<mp::ParentProcess> parent = mp::parent_process();
          out.write(me.name() + "|" + std::to_string(me.pid() == ::getpid()) + "|" + std::to_string(me.is_alive()) +
                    "|" + (parent ? parent->name() + "|" + std::to_string(parent->pid()) + "|" +
                                        std::to_string(parent->is_alive())
                                  : std::string("no parent")));
        },
        out.view());
    p.start();
    p.join();
    CHECK(out.read_all() == p.name() + "|1|1|MainProcess|" + std::to_string(::getpid()) + "|1");
  }
  SECTION("in a grandchild: its parent is the child") {
    test_pipe out;
    mp::Process p(
        [](pipe_view out) {
          mp::Process inner(
              [](pipe_view out) {
                std::optional<mp::ParentProcess> parent = mp::parent_process();
                out.write(parent ? parent->name() + " " + std::to_string(parent->pid()) : std::string("none"));
              },
              out);
          inner.start();
          inner.join();
          out.write(" / " + mp::current_process().name() + " " + std::to_string(::getpid()));
        },
        out.view());
    p.start();
    const pid_t child = p.pid();
    p.join();
    CHECK(out.read_all() == p.name() + " " + std::to_string(child) + " / " + p.name() + " " + std::to_string(child));
  }
  SECTION("ParentProcess::is_alive turns false once the parent dies") {
    test_pipe out;
    // outer is a child subreaper: the orphan is re-parented to it, and outer reaps it.
    mp::Process outer(
        [](pipe_view out) {
          ::prctl(PR_SET_CHILD_SUBREAPER, 1);
          test_pipe pids;
          test_pipe release;
          mp::Process middle(
              [](pipe_view out, pipe_view pids, pipe_view release) {
                mp::Process orphan(
                    [](pipe_view out, pipe_view pids, pipe_view release) {
                      ::signal(SIGTERM, SIG_IGN);  // survive the death signal sent when middle dies
                      out.write(mp::parent_process()->is_alive() ? "alive;" : "dead;");
                      pids.write(std::to_string(::getpid()) + "\n");
                      release.wait_for_release();
                      out.write(mp::parent_process()->is_alive() ? "alive" : "dead");
                    },
                    out, pids, release);
                orphan.start();
                release.wait_for_release();
              },
              out, pids.view(), release.view());
          middle.start();
          const pid_t orphan = std::stoi(pids.read_line());
          middle.kill();
          middle.join();
          release.release();
          mp::detail::stop_forkserver();  // under forkserver: the orphan's server is this process's child too
          ::waitpid(orphan, nullptr, 0);
        },
        out.view());
    outer.start();
    outer.join();
    CHECK(out.read_all() == "alive;dead");
  }
}

// [fork]: the child reaches the parent's Process objects through a copy of the parent's memory.
TEST_CASE("Under fork a child sees its own Process object as current_process and cannot join a sibling",
          "[process][fork]") {
  using Catch::Matchers::Contains;
  const mp::ProcessOptions forked{.start_method = mp::StartMethod::fork};
  SECTION("current_process() in a child is the Process object that was started, even after a move") {
    test_pipe out;
    std::vector<mp::Process> processes;
    processes.emplace_back(forked, [&out, &processes] {
      out.write(&mp::current_process() == &processes[0] ? "same" : "other");
    });
    processes.emplace_back([] {});
    processes[0].start();
    processes[0].join();
    CHECK(out.read_all() == "same");
  }
  SECTION("a child joining a sibling it did not create") {
    test_pipe out;
    test_pipe release;
    mp::Process sibling(forked, [&release]() { release.wait_for_release(); });
    sibling.start();
    mp::Process p(forked, [&out, &sibling] {
      try {
        sibling.join();
        out.write("no error\n");
      } catch (const mp::ProcessError& e) {
        out.write(std::string(e.what()) + "\n");
      }
    });
    p.start();
    p.join();
    // read_line, not read_all: the blocked sibling holds a copy of out's write end.
    CHECK_THAT(out.read_line(), Contains("only the process that created"));
    release.release();
    sibling.join();
  }
}

TEST_CASE("active_children lists the running children and reaps the finished ones", "[process]") {
  test_pipe release;
  REQUIRE(mp::active_children().empty());
  mp::Process a([](pipe_view release) { release.wait_for_release(); }, release.view());
  mp::Process b([](pipe_view release) { release.wait_for_release(); }, release.view());
  CHECK(mp::active_children().empty());  // not started yet
  a.start();
  b.start();
  std::vector<mp::Process*> running = mp::active_children();
  CHECK(running.size() == 2);
  CHECK(std::count(running.begin(), running.end(), &a) == 1);
  CHECK(std::count(running.begin(), running.end(), &b) == 1);

  release.release();  // one of them ends
  mp::Process* finished = nullptr;
  while (!finished) {
    pollfd ready[2] = {{a.sentinel(), POLLIN, 0}, {b.sentinel(), POLLIN, 0}};
    REQUIRE(::poll(ready, 2, 30000) > 0);
    finished = (ready[0].revents & POLLIN) ? &a : (ready[1].revents & POLLIN) ? &b : nullptr;
  }
  mp::Process* other = finished == &a ? &b : &a;
  running = mp::active_children();  // reaps the finished one without join()
  CHECK(running == std::vector<mp::Process*>{other});
  CHECK(reaped(finished->pid()));
  CHECK(finished->exitcode() == 0);

  release.release();
  other->join();
  CHECK(mp::active_children().empty());
}

TEST_CASE("exitcode reports how the child ended", "[process]") {
  SECTION("0 when the target returns") {
    mp::Process p([] {});
    CHECK_FALSE(p.exitcode().has_value());
    p.start();
    p.join();
    CHECK(p.exitcode() == 0);
  }
  SECTION("n from _exit(n)") {
    mp::Process p([] { ::_exit(3); });
    p.start();
    p.join();
    CHECK(p.exitcode() == 3);
  }
  SECTION("n from exit(n)") {
    mp::Process p([] { std::exit(3); });
    p.start();
    p.join();
    CHECK(p.exitcode() == 3);
  }
  SECTION("1 for an uncaught exception, whose type and what() go to stderr") {
    test_pipe err;
    mp::Process p(
        {.name = "Thrower"},
        [](pipe_view err) {
          ::dup2(err.write_fd, STDERR_FILENO);
          throw std::invalid_argument("bad input 42");
        },
        err.view());
    p.start();
    p.join();
    CHECK(p.exitcode() == 1);
    CHECK(err.read_all() == "Process Thrower:\nstd::invalid_argument: bad input 42\n");
  }
  SECTION("1 for an uncaught non-std exception, whose type goes to stderr") {
    test_pipe err;
    mp::Process p(
        {.name = "IntThrower"},
        [](pipe_view err) {
          ::dup2(err.write_fd, STDERR_FILENO);
          throw 42;
        },
        err.view());
    p.start();
    p.join();
    CHECK(p.exitcode() == 1);
    CHECK(err.read_all() == "Process IntThrower:\nint\n");
  }
  SECTION("-15 after terminate(), -9 after kill()") {
    test_pipe release;
    test_pipe ready;
    mp::Process terminated(
        [](pipe_view release, pipe_view ready) {
          default_signal_actions();
          ready.release();
          release.wait_for_release();
        },
        release.view(), ready.view());
    mp::Process killed([](pipe_view release) { release.wait_for_release(); }, release.view());
    terminated.start();
    killed.start();
    ready.wait_for_release();
    CHECK(terminated.is_alive());
    CHECK_FALSE(terminated.exitcode().has_value());
    terminated.terminate();
    killed.kill();
    terminated.join();
    killed.join();
    CHECK(terminated.exitcode() == -SIGTERM);
    CHECK(killed.exitcode() == -SIGKILL);
    CHECK_FALSE(terminated.is_alive());
    terminated.terminate();  // no-op once it has ended
    killed.kill();
  }
  SECTION("-N when the child kills itself with signal N") {
    mp::Process p([] {
      default_signal_actions();
      ::raise(SIGSEGV);
    });
    p.start();
    p.join();
    CHECK(p.exitcode() == -SIGSEGV);
  }
}

TEST_CASE("join(timeout) returns false while the child runs and true once it ends", "[process]") {
  test_pipe release;
  mp::Process p([](pipe_view release) { release.wait_for_release(); }, release.view());
  p.start();
  CHECK_FALSE(p.join(20ms));
  CHECK_FALSE(p.join(0s));
  CHECK_FALSE(p.join(std::chrono::duration<double>(0.01)));
  CHECK(p.is_alive());
  CHECK_FALSE(p.exitcode().has_value());
  release.release();
  CHECK(p.join(60s));
  CHECK(p.exitcode() == 0);
  CHECK(p.join(0s));  // already ended
  CHECK(p.join(std::chrono::hours::max()));
  CHECK_FALSE(p.is_alive());
}

TEST_CASE("sentinel is a close-on-exec fd that becomes readable when the child ends", "[process]") {
  test_pipe release;
  mp::Process p([](pipe_view release) { release.wait_for_release(); }, release.view());
  CHECK_THROWS_AS(p.sentinel(), mp::ProcessError);
  p.start();
  const int fd = p.sentinel();
  CHECK((::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
  CHECK_FALSE(readable_within(fd, 0ms));
  release.release();
  CHECK(readable_within(fd, 30000ms));
  p.join();
  CHECK(p.sentinel() == fd);  // valid until close()
  p.close();
  CHECK(::fcntl(fd, F_GETFD) == -1);
}

TEST_CASE("Misusing a Process throws ProcessError with a clear message", "[process]") {
  using Catch::Matchers::Contains;
  SECTION("start twice") {
    mp::Process p([] {});
    p.start();
    CHECK_THROWS_WITH(p.start(), Contains("already started") && Contains(p.name()));
    p.join();
    CHECK_THROWS_AS(p.start(), mp::ProcessError);
  }
  SECTION("join before start") {
    mp::Process p([] {});
    CHECK_THROWS_WITH(p.join(), Contains("not started") && Contains("start()"));
    CHECK_THROWS_AS(p.join(1s), mp::ProcessError);
    CHECK_THROWS_AS(p.terminate(), mp::ProcessError);
    CHECK_THROWS_AS(p.kill(), mp::ProcessError);
    CHECK_FALSE(p.is_alive());
    CHECK(p.pid() == 0);
  }
  SECTION("the main process joining, starting or signalling itself") {
    CHECK_THROWS_WITH(mp::current_process().join(), Contains("cannot join itself"));
    CHECK_THROWS_AS(mp::current_process().join(1s), mp::ProcessError);
    CHECK_THROWS_AS(mp::current_process().start(), mp::ProcessError);
    CHECK_THROWS_WITH(mp::current_process().terminate(), Contains("is the current process"));
    CHECK_THROWS_AS(mp::current_process().kill(), mp::ProcessError);
  }
  SECTION("a child joining itself") {
    test_pipe out;
    mp::Process p(
        [](pipe_view out) {
          try {
            mp::current_process().join();
            out.write("no error");
          } catch (const mp::ProcessError& e) {
            out.write(e.what());
          }
        },
        out.view());
    p.start();
    p.join();
    CHECK_THAT(out.read_all(), Contains("cannot join itself"));
  }
  SECTION("daemon set after start") {
    mp::Process p([] {});
    p.daemon(true);
    CHECK(p.daemon());
    p.daemon(false);
    p.start();
    CHECK_THROWS_WITH(p.daemon(true), Contains("already started") && Contains("before start()"));
    CHECK_FALSE(p.daemon());
    p.join();
  }
  SECTION("close while running, then use after close") {
    test_pipe release;
    mp::Process p([](pipe_view release) { release.wait_for_release(); }, release.view());
    p.start();
    CHECK_THROWS_WITH(p.close(), Contains("still running") && Contains(std::to_string(p.pid())));
    release.release();
    p.join();
    p.close();
    p.close();  // closing twice is harmless, as in Python
    CHECK(p.name().rfind("Process-", 0) == 0);
    CHECK_THROWS_WITH(p.join(), Contains("is closed"));
    CHECK_THROWS_AS(p.join(1s), mp::ProcessError);
    CHECK_THROWS_AS(p.is_alive(), mp::ProcessError);
    CHECK_THROWS_AS(p.exitcode(), mp::ProcessError);
    CHECK_THROWS_AS(p.pid(), mp::ProcessError);
    CHECK_THROWS_AS(p.sentinel(), mp::ProcessError);
    CHECK_THROWS_AS(p.start(), mp::ProcessError);
    CHECK_THROWS_AS(p.terminate(), mp::ProcessError);
    CHECK_THROWS_AS(p.kill(), mp::ProcessError);
  }
  SECTION("a moved-from Process") {
    mp::Process p([] {});
    mp::Process q(std::move(p));
    CHECK_THROWS_WITH(p.start(), Contains("moved from"));  // NOLINT(bugprone-use-after-move)
    CHECK_THROWS_AS(p.name(), mp::ProcessError);
  }
  SECTION("a daemon starting a child") {
    test_pipe out;
    mp::Process p(
        {.daemon = true},
        [](pipe_view out) {
          try {
            mp::Process inner([] {});
            inner.start();
            inner.join();
            out.write("started");
          } catch (const mp::ProcessError& e) {
            out.write(e.what());
          }
        },
        out.view());
    p.start();
    p.join();
    CHECK_THAT(out.read_all(), Contains("daemonic processes are not allowed to have children"));
  }
}

TEST_CASE("join reports a child reaped behind mp's back instead of waiting forever", "[process]") {
  test_pipe out;
  mp::Process middle(
      [](pipe_view out) {
        ::signal(SIGCHLD, SIG_IGN);  // the kernel reaps children at once: their exit codes are lost
        // A child of this process's own (fork or spawn): a forkserver child is the server's, which reaps it.
        const mp::StartMethod method = mp::get_start_method();
        mp::Process child({.start_method = method == mp::StartMethod::forkserver ? mp::StartMethod::spawn : method},
                          [] {});
        child.start();
        try {
          child.join();
          out.write("joined");
        } catch (const mp::ProcessError& e) {
          out.write(e.what());
        }
      },
      out.view());
  middle.start();
  middle.join();
  CHECK_THAT(out.read_all(), Catch::Matchers::Contains("reaped by someone else") &&
                                 Catch::Matchers::Contains("SIGCHLD"));
  CHECK(middle.exitcode() == 0);
}

TEST_CASE("A child forked without mp neither lists nor terminates its parent's children", "[process]") {
  test_pipe release;
  test_pipe ready;
  mp::Process daemon({.daemon = true}, [](pipe_view release, pipe_view ready) {
    default_signal_actions();
    ready.release();
    release.wait_for_release();
  }, release.view(), ready.view());
  daemon.start();
  ready.wait_for_release();
  std::fflush(nullptr);
  std::cout.flush();
  const pid_t raw = ::fork();  // as a user's own fork(), or another library's
  if (raw == 0) {
    // exit() runs mp's exit handler here: it must leave the parent's daemon alone.
    std::exit(mp::active_children().empty() ? 0 : 1);
  }
  REQUIRE(raw > 0);
  int status = 0;
  REQUIRE(::waitpid(raw, &status, 0) == raw);
  CHECK(mp::detail::exitcode_from_status(status) == 0);
  CHECK(daemon.is_alive());
  release.release();
  daemon.join();
  CHECK(daemon.exitcode() == 0);
}

TEST_CASE("Starting and joining and destroying processes leaves no file descriptor open", "[process]") {
  {
    mp::Process first([] {});  // under forkserver: the server (and this process's socket to it) runs from now on
    first.start();
    first.join();
  }
  // Per child: its sentinel (a pidfd); a forkserver child also has the status pipe the server reports through.
  const std::size_t per_child = mp::get_start_method() == mp::StartMethod::forkserver ? 2 : 1;
  const std::size_t before = open_fd_count();
  {
    mp::Process a([] {});
    mp::Process b([] { ::_exit(2); });
    a.start();
    b.start();
    CHECK(open_fd_count() == before + 2 * per_child);
    a.join();
    b.join();
    b.close();
    CHECK(open_fd_count() == before + per_child);
  }
  CHECK(open_fd_count() == before);
}

TEST_CASE("A daemon child dies when its parent is killed with SIGKILL and a non-daemon one gets SIGTERM", "[process]") {
  const bool daemon = GENERATE(true, false);
  CAPTURE(daemon);
  test_pipe out;
  // outer is a child subreaper, so the orphaned grandchild is re-parented to it and its exit status can be read.
  mp::Process outer(
      [](pipe_view out, bool daemon) {
        ::prctl(PR_SET_CHILD_SUBREAPER, 1);
        test_pipe pids;
        test_pipe never;  // the grandchild blocks reading it until every other holder is gone
        mp::Process middle(
            [](pipe_view pids, pipe_view never, bool daemon) {
              // A child of middle's own (fork or spawn), so that outer, the subreaper, inherits and reaps it: a
              // forkserver child is the server's, which may reap it first (context_test covers forkserver children
              // dying with their parent).
              const mp::StartMethod method = mp::get_start_method();
              mp::Process grandchild(
                  {.daemon = daemon,
                   .start_method = method == mp::StartMethod::forkserver ? mp::StartMethod::spawn : method},
                  [](pipe_view never, pipe_view pids) {
                    default_signal_actions();
                    pids.write(std::to_string(::getpid()) + "\n");  // ready to die quietly
                    never.close_write();
                    never.wait_for_release();
                  },
                  never, pids);
              grandchild.start();
              never.wait_for_release();
            },
            pids.view(), never.view(), daemon);
        middle.start();
        const pid_t grandchild = std::stoi(pids.read_line());
        const int pidfd = mp::detail::pidfd_open(grandchild);
        middle.kill();
        middle.join();
        const bool ended = pidfd >= 0 && readable_within(pidfd, 30000ms);
        int status = 0;
        const bool waited = ended && ::waitpid(grandchild, &status, 0) == grandchild;
        out.write("middle " + std::to_string(middle.exitcode().value_or(999)) + ", grandchild " +
                  (waited ? std::to_string(mp::detail::exitcode_from_status(status)) : std::string("still running")));
      },
      out.view(), daemon);
  outer.start();
  outer.join();
  CHECK(out.read_all() == "middle -9, grandchild " + std::to_string(daemon ? -SIGKILL : -SIGTERM));
  CHECK(outer.exitcode() == 0);
}

TEST_CASE("A child started from a thread that ends at once runs on until it is joined", "[process]") {
  // PR_SET_PDEATHSIG follows the thread that creates the child: mp creates it on a thread that lives as long as
  // the process (detail/fork_thread.hpp), so the starting thread's end does not kill it (it did before).
  test_pipe release;
  test_pipe out;
  mp::Process p([](pipe_view release, pipe_view out) {
    default_signal_actions();
    release.wait_for_release();
    out.write("done");
  }, release.view(), out.view());
  std::thread([&p] { p.start(); }).join();
  CHECK(p.is_alive());
  release.release();
  p.join();
  CHECK(p.exitcode() == 0);
  CHECK(out.read_all() == "done");
}

TEST_CASE("A child started from another thread keeps that thread's signal mask", "[process]") {
  test_pipe out;
  std::thread([&out] {
    sigset_t blocked;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGUSR1);
    REQUIRE(::pthread_sigmask(SIG_BLOCK, &blocked, nullptr) == 0);
    mp::Process p([](pipe_view out) {
      sigset_t mask;
      ::pthread_sigmask(SIG_SETMASK, nullptr, &mask);
      out.write(std::string(sigismember(&mask, SIGUSR1) == 1 ? "usr1 blocked" : "usr1 open") +
                (sigismember(&mask, SIGTERM) == 1 ? ", term blocked" : ", term open"));
    }, out.view());
    p.start();
    p.join();
  }).join();
  // Under spawn the new program starts with no signal blocked (POSIX_SPAWN_SETSIGMASK), as a Python spawn child.
  const std::string expected = mp::get_start_method() == mp::StartMethod::fork ? "usr1 blocked, term open"
                                                                                : "usr1 open, term open";
  CHECK(out.read_all() == expected);
}

TEST_CASE("The destructor joins a non-daemon child and terminates a daemon one", "[process]") {
  SECTION("non-daemon: waits until the child ends by itself") {
    test_pipe out;
    test_pipe release;
    pid_t child = 0;
    {
      mp::Process p(
          [](pipe_view out, pipe_view release) {
            release.wait_for_release();
            out.write("finished normally");
          },
          out.view(), release.view());
      p.start();
      child = p.pid();
      release.release();
    }
    CHECK(reaped(child));
    CHECK(out.read_all() == "finished normally");
    CHECK(mp::active_children().empty());
  }
  SECTION("daemon: terminated and reaped") {
    test_pipe release;
    test_pipe ready;
    pid_t child = 0;
    int pidfd = -1;
    {
      mp::Process p(
          {.daemon = true},
          [](pipe_view release, pipe_view ready) {
            default_signal_actions();
            ready.release();
            release.wait_for_release();
          },
          release.view(), ready.view());
      p.start();
      ready.wait_for_release();
      child = p.pid();
      pidfd = mp::detail::pidfd_open(child);
      REQUIRE(pidfd >= 0);
    }
    CHECK(readable_within(pidfd, 0ms));
    CHECK(reaped(child));
    ::close(pidfd);
  }
}

TEST_CASE("A Process can be moved before and after start", "[process]") {
  test_pipe out;
  std::vector<mp::Process> processes;
  for (int i = 0; i < 3; ++i) {
    mp::Process p(
        [](pipe_view out, int index) { out.write(std::to_string(index) + ":" + mp::current_process().name() + "\n"); },
        out.view(), i);
    processes.push_back(std::move(p));  // moved before start (and again when the vector grows)
  }
  for (mp::Process& p : processes) p.start();
  std::vector<std::string> names;
  for (mp::Process& p : processes) names.push_back(p.name());
  // Moved after start: the registry follows the Process to its new address.
  std::vector<mp::Process> moved;
  for (mp::Process& p : processes) moved.push_back(std::move(p));
  for (mp::Process* child : mp::active_children()) {
    CHECK(std::any_of(moved.begin(), moved.end(), [child](const mp::Process& p) { return &p == child; }));
  }
  mp::Process assigned([] {});
  assigned = std::move(moved.back());
  moved.pop_back();
  assigned.join();
  for (mp::Process& p : moved) p.join();
  for (mp::Process& p : moved) CHECK(p.exitcode() == 0);
  CHECK(assigned.exitcode() == 0);
  std::string report = out.read_all();
  for (int i = 0; i < 3; ++i) {
    CHECK(report.find(std::to_string(i) + ":" + names[static_cast<std::size_t>(i)] + "\n") != std::string::npos);
  }
  CHECK(mp::active_children().empty());
}

TEST_CASE("Buffered stdio output is written once and not once per process", "[process]") {
  test_pipe out;
  mp::Process writer(
      [](pipe_view out) {
        ::dup2(out.write_fd, STDOUT_FILENO);
        std::printf("before;");  // no newline: stays in the buffer
        std::cout << "cout;";
        mp::Process child([] { std::printf("child;"); });
        child.start();
        child.join();
        std::printf("after\n");
      },
      out.view());
  writer.start();
  writer.join();
  CHECK(out.read_all() == "before;cout;child;after\n");
}

TEST_CASE("A child joins its own children when it ends and terminates its daemon ones", "[process]") {
  SECTION("non-daemon grandchild: the child waits for it") {
    test_pipe out;
    test_pipe release;
    mp::Process child(
        [](pipe_view out, pipe_view release) {
          mp::Process grandchild(
              [](pipe_view out, pipe_view release) {
                release.wait_for_release();
                out.write("grandchild done;");
              },
              out, release);
          grandchild.start();
          out.write("started\n");
          // Leave without join(), and with no destructor to join it either: Python's _exit_function must.
          new mp::Process(std::move(grandchild));
        },
        out.view(), release.view());
    child.start();
    CHECK(out.read_line() == "started");
    CHECK_FALSE(child.join(20ms));  // it cannot end before its non-daemon child
    release.release();
    child.join();
    CHECK(child.exitcode() == 0);
    CHECK(out.read_all() == "grandchild done;");
  }
  SECTION("daemon grandchild: the child terminates it at exit(0)") {
    test_pipe out;
    test_pipe never;
    test_pipe go;
    mp::Process child(
        [](pipe_view out, pipe_view never, pipe_view go) {
          test_pipe ready;
          auto* grandchild = new mp::Process(
              {.daemon = true},
              [](pipe_view never, pipe_view ready) {
                default_signal_actions();
                ready.release();
                never.close_write();
                never.wait_for_release();
              },
              never, ready.view());  // leaked: the atexit handler must still terminate it
          grandchild->start();
          ready.wait_for_release();
          out.write(std::to_string(grandchild->pid()) + "\n");
          go.wait_for_release();  // until the parent holds a pidfd of the grandchild
          std::exit(0);
        },
        out.view(), never.view(), go.view());
    child.start();
    const pid_t grandchild = std::stoi(out.read_line());
    const int pidfd = mp::detail::pidfd_open(grandchild);  // alive: it blocks on `never`, which we hold open
    go.release();
    REQUIRE(pidfd >= 0);
    child.join();
    CHECK(child.exitcode() == 0);
    CHECK(readable_within(pidfd, 0ms));  // already gone when the child ended
    ::close(pidfd);
  }
}

TEST_CASE("Processes can be started and joined from several threads at once", "[process]") {
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&ok, t] {
      for (int i = 0; i < 5; ++i) {
        mp::Process p([](int code) { ::_exit(code); }, t * 10 + i);
        p.start();
        p.join();  // before this thread ends: the child's death signal follows its starting thread
        if (p.exitcode() == t * 10 + i) ++ok;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  CHECK(ok == 20);
  CHECK(mp::active_children().empty());
}

TEST_CASE("A Process prints as Python's repr", "[process]") {
  auto text = [](const mp::Process& p) {
    std::ostringstream out;
    out << p;
    return out.str();
  };
  const std::string parent = " parent=" + std::to_string(::getpid());
  CHECK(text(mp::current_process()) == "<Process name='MainProcess' parent=None started>");
  test_pipe release;
  test_pipe ready;
  mp::Process p({.name = "W", .daemon = true}, [](pipe_view release, pipe_view ready) {
    default_signal_actions();
    ready.release();
    release.wait_for_release();
  }, release.view(), ready.view());
  CHECK(text(p) == "<Process name='W'" + parent + " initial daemon>");
  p.start();
  ready.wait_for_release();
  const std::string pid = " pid=" + std::to_string(p.pid());
  CHECK(text(p) == "<Process name='W'" + pid + parent + " started daemon>");
  p.terminate();
  p.join();
  CHECK(text(p) == "<Process name='W'" + pid + parent + " stopped exitcode=-SIGTERM daemon>");
  p.close();
  CHECK(text(p) == "<Process name='W'" + parent + " closed daemon>");
  mp::Process moved(std::move(p));
  CHECK(text(p) == "<Process moved-from>");  // NOLINT(bugprone-use-after-move)
}

TEST_CASE("cpu_count respects the CPU affinity mask", "[process]") {
  CHECK(mp::cpu_count() >= 1);
  mp::Process p([] {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(static_cast<int>(::sched_getcpu()), &one);
    if (::sched_setaffinity(0, sizeof one, &one) != 0) ::_exit(2);
    ::_exit(mp::cpu_count() == 1 ? 0 : 1);
  });
  p.start();
  p.join();
  CHECK(p.exitcode() == 0);
}

TEST_CASE("get_all_start_methods lists fork and spawn and forkserver and a set method changes only with force", "[process]") {
  using Catch::Matchers::Contains;
  CHECK(mp::get_all_start_methods() ==
        std::vector<mp::StartMethod>{mp::StartMethod::fork, mp::StartMethod::spawn, mp::StartMethod::forkserver});
  const mp::StartMethod method = mp::get_start_method();  // fixes the default (fork, or MP_START_METHOD)
  mp::set_start_method(method);                           // the same again: harmless
  const mp::StartMethod other = method == mp::StartMethod::fork ? mp::StartMethod::spawn : mp::StartMethod::fork;
  CHECK_THROWS_WITH(mp::set_start_method(other), Contains("already") && Contains("force = true"));
  mp::set_start_method(other, true);
  CHECK(mp::get_start_method() == other);
  mp::Process p({.start_method = mp::StartMethod::fork}, [] { ::_exit(5); });
  p.start();
  p.join();
  CHECK(p.exitcode() == 5);
}
