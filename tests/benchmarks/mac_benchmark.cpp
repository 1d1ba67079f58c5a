// The cost of the manager's frame MAC (issue 19: every socket frame after an authenticated handshake carries an
// HMAC-SHA256 under the session key). The MAC is mandatory with an authkey, so the baseline is the same call on a
// Unix socket WITHOUT an authkey (no session, no MAC), measured in the same run: a dict get returning a value of
// 8 B, 1 KiB, 64 KiB and 1 MiB, on the socket alone (the shared-memory channel, whose slots carry no MAC, is
// turned off in the measuring child). Also: the same call over loopback TCP (keyed), and the time of the four
// HMAC-SHA256 a call computes (the client seals the request, the server checks it, seals the reply, the client
// checks it) measured alone, in CPU time (the calls are wall-clock time: on a loaded machine compare the ratio).
//   build/default/tests/benchmarks/mac_benchmark
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>

#include <mp/detail/manager/auth.hpp>
#include <mp/detail/manager/client.hpp>
#include <mp/manager.hpp>

namespace {

using clock_type = std::chrono::steady_clock;

// Runs f in a forked child (the proxy's usual place) and returns the seconds it reported through a pipe.
double in_child(const std::function<double()>& f) {
  int fds[2];
  if (::pipe(fds) != 0) std::abort();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    mp::detail::manager::channels_enabled = false;  // the socket alone: the channel's slots carry no MAC
    const double seconds = f();
    if (::write(fds[1], &seconds, sizeof seconds) != sizeof seconds) ::_exit(1);
    ::_exit(0);
  }
  ::close(fds[1]);
  double seconds = 0;
  if (::read(fds[0], &seconds, sizeof seconds) != sizeof seconds) std::fprintf(stderr, "child failed\n");
  ::close(fds[0]);
  ::waitpid(pid, nullptr, 0);
  return seconds;
}

// CPU time of this thread (s): on a loaded machine the HMACs alone are measured by the CPU they take, not by the
// wall clock (which counts the time other processes ran).
double thread_cpu_seconds() {
  timespec now{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) * 1e-9;
}

template <class F>
double timed(F&& f) {
  const auto start = clock_type::now();
  f();
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);
  constexpr int reps = 5;
  const std::size_t sizes[] = {8, 1024, 64 * 1024, 1024 * 1024};
  mp::Manager plain;  // a private Unix socket, no authkey: no MAC
  mp::Manager keyed({.authkey = "mac-benchmark"});
  mp::Manager tcp({.address = mp::Address::tcp("127.0.0.1", 0), .authkey = "mac-benchmark"});
  auto dplain = plain.dict<int, std::string>();
  auto dkeyed = keyed.dict<int, std::string>();
  auto dtcp = tcp.dict<int, std::string>();

  std::printf("Manager dict get on the socket (no shared-memory channel), best of %d interleaved runs, per call\n\n",
              reps);
  std::printf("%10s %14s %14s %8s %14s %16s %10s\n", "value", "unix no key", "unix + MAC", "ratio", "tcp + MAC",
              "4 HMACs (CPU)", "MAC share");
  for (const std::size_t size : sizes) {
    const std::string value(size, 'v');
    dplain[1] = value, dkeyed[1] = value, dtcp[1] = value;
    const int rounds = size <= 1024 ? 20'000 : size <= 64 * 1024 ? 2'000 : 200;
    auto calls = [&](mp::DictProxy<int, std::string>& d) {
      return in_child([&] {
        return timed([&] {
          for (int i = 0; i < rounds; ++i) {
            if (d.get(1)->size() != size) std::abort();
          }
        });
      }) / rounds;
    };
    // The four HMAC-SHA256 of one call: twice over the request (~13 bytes: op, id, key), twice over the reply.
    const mp::detail::manager::hmac_digest key{};
    const std::string request(13, 'r'), reply(size + 14, 'v');
    auto macs = [&] {
      unsigned sink = 0;
      const double start = thread_cpu_seconds();
      for (int i = 0; i < rounds; ++i) {
        for (int twice = 0; twice < 2; ++twice) {
          sink += mp::detail::manager::frame_mac(key, mp::detail::manager::direction::to_server, i, request)[0];
          sink += mp::detail::manager::frame_mac(key, mp::detail::manager::direction::to_client, i, reply)[0];
        }
      }
      const double seconds = thread_cpu_seconds() - start;
      if (sink == 1) std::printf(" ");  // keeps the loop
      return seconds / rounds;
    };
    double none = 1e9, mac = 1e9, over_tcp = 1e9, alone = 1e9;
    for (int rep = 0; rep < reps; ++rep) {
      none = std::min(none, calls(dplain));
      mac = std::min(mac, calls(dkeyed));
      over_tcp = std::min(over_tcp, calls(dtcp));
      alone = std::min(alone, macs());
    }
    std::printf("%9zuB %12.1fus %12.1fus %7.2fx %12.1fus %14.1fus %9.0f%%\n", size, none * 1e6, mac * 1e6,
                mac / none, over_tcp * 1e6, alone * 1e6, 100 * alone / mac);
  }
  std::printf("\nratio: unix + MAC over unix without a key (the same socket path; the difference is the MAC);\n"
              "MAC share: the 4 HMACs' CPU time as a share of the keyed unix call's wall time\n");
  return 0;
}
