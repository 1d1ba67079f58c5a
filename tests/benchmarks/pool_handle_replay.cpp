// pool_handle_replay: the CPU work a Pool task carrying a handle costs, parent and worker steps replayed in one
// process (no fork, no ring, no wake-ups), so that it can be measured independently of the machine's load:
//   valgrind --tool=callgrind pool_handle_replay queue 1000   (and 2000: the difference / 1000 = instructions/task)
//   time pool_handle_replay queue 1000000                      (CPU time per task, against `int`)
// Kinds: int (the baseline: no handle), queue, value, lock. The first task of a kind sends the descriptors (once,
// over a socketpair); every later one takes the path pool_benchmark's "handle argument" rows time.
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <vector>

#include <mp/pool.hpp>
#include <mp/queue.hpp>
#include <mp/shared.hpp>
#include <mp/sync.hpp>
namespace d = mp::detail;
namespace p = mp::detail::pool;
int plain(int x) { return x + 1; }
int with_queue(mp::Queue<int> q, int x) { return q.closed() ? 0 : x + 1; }
int with_value(mp::Value<int> v, int x) { return v.load() == 7 ? x + 1 : 0; }
int with_lock(mp::Lock l, int x) { return l.locked() ? 0 : x + 1; }

struct rig {
  p::handle_table table;
  p::worker_view view;
  p::worker_handles kept;
  int sv[2];
  p::handle_section section;
  rig() {
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) std::abort();
  }
  ~rig() {
    ::close(sv[0]);
    ::close(sv[1]);
  }
  rig(const rig&) = delete;
  rig& operator=(const rig&) = delete;
};

// One task: what Pool::apply_async, the core's dispatch and the worker's loop do with its arguments and handles.
template <class F, class... A>
__attribute__((noinline)) long one_task(rig& r, F f, const A&... args) {
  using R = int;
  // parent
  std::vector<std::byte> message;
  std::tuple<p::held_arg_t<const A&>...> values(args...);  // as Pool::apply_async holds them
  d::fd_outbox box;
  {
    d::fd_outbox_scope scope(box);
    p::encode_callable(message, f);
    d::output_archive measure(d::output_archive::measure_tag{});  // as p::encode_payload does
    measure(values);
    const std::size_t at = message.size();
    message.resize(at + measure.measured());
    d::output_archive ar(d::output_archive::presized_tag{}, std::span<std::byte>(message).subspan(at));
    ar(values);
  }
  auto handles = p::handles_of(box, "sim");
  p::handle_section& section = r.section;  // the core reuses one per worker
  section.clear();
  bool reused = false;
  if (handles) {
    handles->attach(r.table);
    p::handle_plan plan = r.view.plan(handles->chunk(0), r.table);
    reused = plan.reuses_previous();
    if (!reused) p::encode_handle_section(section, plan);
    p::send_handles(r.sv[0], plan, r.table);
  }
  // worker
  d::fd_inbox inbox;
  inbox.cache = &r.kept;
  d::fd_inbox_scope inbox_scope(inbox);
  if (!section.empty()) r.kept.apply_section({section.data(), section.size()}, r.sv[1]);
  else if (!reused) r.kept.clear_current();
  std::vector<std::byte> out;
  p::begin_result(out);
  p::apply_trampoline<F, R, A...>(message, out);
  handles.reset();  // parent: the chunk's answer arrived
  return static_cast<long>(out.size());
}

int main(int argc, char** argv) {
  const char* kind = argc > 1 ? argv[1] : "int";
  const int n = argc > 2 ? std::atoi(argv[2]) : 1000;
  rig r;
  mp::Queue<int> q;
  mp::Value<int> v(7);
  mp::Lock l;
  long sum = 0;
  for (int i = 0; i < n; ++i) {
    if (!std::strcmp(kind, "int")) sum += one_task(r, &plain, i);
    else if (!std::strcmp(kind, "queue")) sum += one_task(r, &with_queue, q, i);
    else if (!std::strcmp(kind, "value")) sum += one_task(r, &with_value, v, i);
    else if (!std::strcmp(kind, "lock")) sum += one_task(r, &with_lock, l, i);
  }
  std::printf("%s %d %ld\n", kind, n, sum);
}
