// sync: definitions (see sync.hpp); the primitives' algorithms are in detail/sync_state.ipp.
#pragma once

#include <string>
#include <utility>

#include <mp/sync.hpp>

namespace mp {

MP_DECL Semaphore::Semaphore(int value, int bound, const char* kind) {
  if (value < 0) throw Error(std::string(kind) + ": initial value must be >= 0, got " + std::to_string(value));
  state_ = detail::make_shared_state<detail::semaphore_state>(kind, static_cast<std::uint32_t>(value),
                                                              static_cast<std::uint32_t>(bound));
}

MP_DECL int BoundedSemaphore::checked_bound(int value) {
  if (value < 1) throw Error("BoundedSemaphore: initial value must be >= 1, got " + std::to_string(value));
  return value;
}

MP_DECL Condition::Condition(detail::shared_ref<detail::lock_state> lock, bool recursive)
    : lock_(std::move(lock)), recursive_(recursive),
      state_(detail::make_shared_state<detail::condition_state>("Condition")) {}

MP_DECL void Condition::save(detail::output_archive& ar) const {
  lock_.save(ar, "Condition");
  ar(recursive_);
  state_.save(ar, "Condition");
}

MP_DECL void Condition::load(detail::input_archive& ar) {
  lock_.load(ar, "Condition");
  ar(recursive_);
  state_.load(ar, "Condition");
}

namespace detail {
MP_DECL int checked_parties(int parties) {
  if (parties < 1) throw Error("Barrier: parties must be >= 1, got " + std::to_string(parties));
  return parties;
}
}  // namespace detail

MP_DECL Barrier::Barrier(int parties, std::function<void()> action, std::optional<std::chrono::milliseconds> timeout)
    : state_(detail::make_shared_state<detail::barrier_state>("Barrier", detail::checked_parties(parties))),
      action_(std::move(action)), timeout_(timeout) {}

MP_DECL int Barrier::wait() {
  return detail::barrier_wait(*state_, action_, timeout_ ? detail::deadline(detail::deadline_after(*timeout_))
                                                         : detail::deadline());
}

MP_DECL void Barrier::save(detail::output_archive& ar) const {
  if (action_) {
    throw SerializationError(
        "mp::serialize: a Barrier with an action cannot cross to a process started by spawn or forkserver (the "
        "action is a std::function of this process); use StartMethod::fork, or run the action after wait() "
        "in the process that gets index parties() - 1");
  }
  state_.save(ar, "Barrier");
  ar(timeout_);
}

MP_DECL void Barrier::load(detail::input_archive& ar) {
  state_.load(ar, "Barrier");
  ar(timeout_);
  action_ = nullptr;
}

}  // namespace mp
