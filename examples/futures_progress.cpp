// Futures and a progress bar: submit simulated downloads of uneven length to a Pool, collect them with
// mp::as_completed as they finish (a bar on stderr when it is a terminal), cancel what is still queued once enough
// bytes arrived, and see a failed one arrive with its own exception type.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <mp/mp.hpp>

namespace {

// A "download": sleeps a little (I/O), returns a size; one URL fails.
long download(int id) {
  std::this_thread::sleep_for(std::chrono::milliseconds(5 + (id * 7) % 23));
  if (id == 13) throw std::invalid_argument("url " + std::to_string(id) + " is malformed");
  return 1000L * (id % 10 + 1);
}

}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);
  mp::Pool pool(4);
  std::vector<mp::AsyncResult<long>> results;
  for (int id = 0; id < 60; ++id) results.push_back(pool.submit(download, id));
  results[0].add_done_callback([](mp::AsyncResult<long>& r) {
    std::printf("callback: the first download %s\n", r.successful() ? "succeeded" : "failed");
  });

  long bytes = 0;
  int ok = 0, failed = 0, cancelled = 0;
  const long enough = 150'000;
  for (auto& r : mp::as_completed(results, {.progress = mp::Progress::on_tty, .desc = "downloads"})) {
    if (r.cancelled()) {
      ++cancelled;
      continue;
    }
    try {
      bytes += r.get();
      ++ok;
    } catch (const std::invalid_argument& e) {  // the task's own exception type, from another process
      std::printf("failed in worker %d: %s\n", dynamic_cast<const mp::RemoteInfo&>(e).pid(), e.what());
      ++failed;
    }
    if (bytes >= enough) {
      for (auto& pending : results) pending.cancel();  // true only for the ones still queued
      bytes = -1'000'000'000;                          // cancel once
    }
  }
  const auto [done, not_done] = mp::wait(results, mp::ReturnWhen::all_completed);
  std::printf("%d downloaded, %d failed, %d cancelled before they started; %zu done, %zu not done\n", ok, failed,
              cancelled, done.size(), not_done.size());
  return ok + failed + cancelled == 60 && not_done.empty() ? 0 : 1;
}
