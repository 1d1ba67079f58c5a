// task: definitions (see task.hpp).
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include <mp/detail/remote_error.hpp>
#include <mp/detail/type_name.hpp>
#include <mp/errors.hpp>

#include <mp/detail/pool/task.hpp>

namespace mp::detail::pool {

MP_DECL void encode_current_exception(std::vector<std::byte>& out) {
  const exception_description d = describe_current_exception();
  const std::uint8_t failed = 1;
  const std::int32_t pid = ::getpid();
  const remote_code code = current_exception_code();
  output_archive ar(out);
  ar(failed, d.type, d.message, pid, current_traceback(1), code.value, code.category);
}

MP_DECL void encode_failed_chunk(std::vector<std::byte>& out) {
  const std::uint64_t none = 0;
  out.insert(out.end(), reinterpret_cast<const std::byte*>(&none), reinterpret_cast<const std::byte*>(&none) + 8);
  encode_current_exception(out);
}

MP_DECL std::span<std::byte> result_blob::acquire(std::size_t size) noexcept {
  try {
    // With its segments all still being read, the worker sleeps until the parent has decoded one, at most as long
    // as a fresh segment would take to fill (~3 ns a byte: fresh pages fault at ~330 MB/s on an idle VM).
    const std::uint64_t patience = std::max<std::uint64_t>(2'000'000, std::uint64_t{3} * size);
    segment_ = &thread_segment_pool().acquire(size, pool_segment_budget / 2, "mp-pool-result", true, 4, patience);
    size_ = size;
    return segment_->item(size);
  } catch (...) {
    return {};
  }
}

MP_DECL void result_blob::abandon() noexcept {
  if (segment_ != nullptr) segment_->header().consumed.store(1, std::memory_order_release);
  release();
}

MP_DECL std::exception_ptr read_remote_error(input_archive& ar) {
  std::string type;
  std::string message;
  std::int32_t pid = 0;
  std::string traceback;
  remote_code code;
  ar(type, message, pid, traceback, code.value, code.category);
  return make_remote_exception(type, message, pid, std::move(traceback), code);
}

}  // namespace mp::detail::pool
