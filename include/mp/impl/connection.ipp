// connection: definitions (see connection.hpp): mp::wait's poll over the objects' descriptors.
#pragma once

#include <poll.h>
#include <time.h>

#include <string>

#include <mp/connection.hpp>
#include <mp/detail/syscall.hpp>

namespace mp::detail {

MP_DECL std::vector<std::size_t> wait_ready(const std::vector<int>& fds, const deadline& until) {
  std::vector<pollfd> polls;
  polls.reserve(fds.size());
  for (int fd : fds) polls.push_back(pollfd{fd, POLLIN, 0});
  // The time left is recomputed on every try, so a signal does not stretch the wait.
  const int n = sys_try("ppoll", [&] {
    timespec ts{};
    if (until) ts = time_left(*until);
    return ::ppoll(polls.data(), polls.size(), until ? &ts : nullptr, nullptr);
  });
  if (n == -1) throw_errno("ppoll", std::to_string(polls.size()) + " descriptors");
  std::vector<std::size_t> ready;
  for (std::size_t i = 0; i < polls.size(); ++i) {
    if (polls[i].revents & POLLNVAL)
      throw Error("mp::wait: descriptor " + std::to_string(polls[i].fd) +
                  " is not open (a closed Connection, or a Process that was closed?)");
    if (polls[i].revents != 0) ready.push_back(i);
  }
  return ready;
}

}  // namespace mp::detail
