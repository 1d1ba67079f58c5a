// heap/names_lock: definitions (see names_lock.hpp).
#pragma once

#include <algorithm>
#include <string>

#include <mp/detail/heap/names_lock.hpp>
#include <mp/errors.hpp>

namespace mp::detail::heap {

MP_DECL names_lock::writing::writing(names_lock& lock, std::string_view name) noexcept : lock_(lock) {
  const std::size_t n = std::min(name.size(), name_capacity - 1);
  std::copy_n(name.data(), n, lock_.name_.data());
  lock_.name_[n] = '\0';
  lock_.writing_ = 1;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  if (const seam_hook hook = the_seam_hook().load(std::memory_order_relaxed)) hook(seam_point::names_writing);
}

MP_DECL void names_lock::settle_dead_holder() noexcept {
  if (writing_ == 0) return;
  broken_by_ = holder_;
  broken_name_ = name_;
  broken_.store(1, std::memory_order_release);
}

MP_DECL void names_lock::throw_broken() const {
  throw Error("SharedHeap: a process was killed while adding or removing the named object \"" +
              std::string(broken_name_.data()) + "\" (thread " + std::to_string(broken_by_) +
              "), which may have left the heap's index of names half-updated; find, find_or_construct and destroy "
              "can no longer be used on this heap. Objects already found, and the containers in the heap, still "
              "work: copy what you need into a new SharedHeap");
}

}  // namespace mp::detail::heap
