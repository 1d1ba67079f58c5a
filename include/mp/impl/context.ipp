// context: definitions (see context.hpp).
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>

#include <mp/context.hpp>
// mp::init runs a spawned child's Process through detail::run_spawned_child, which is defined with mp::Process
// (impl/process.ipp): wherever init is defined, so is it — in either include order (process.hpp includes this
// header, and this file includes process.hpp).
#include <mp/process.hpp>

namespace mp {

namespace detail {

MP_DECL void require_init(StartMethod method, std::string_view where) {
  if (method == StartMethod::fork) return;
  if (the_init_state().load() == static_cast<int>(init_state::called)) return;
  throw Error(missing_init_message(where, to_string(method)));
}

MP_DECL StartMethod default_start_method() {
  const char* value = std::getenv("MP_START_METHOD");
  if (value == nullptr || *value == '\0') return StartMethod::fork;
  const std::string_view text(value);
  for (StartMethod method : {StartMethod::fork, StartMethod::spawn, StartMethod::forkserver}) {
    if (text == to_string(method)) return method;
  }
  throw ProcessError("MP_START_METHOD=" + std::string(text) +
                     " in the environment is not a start method: use fork, spawn or forkserver");
}

}  // namespace detail

MP_DECL void set_start_method(StartMethod method, bool force) {
  std::atomic<int>& setting = detail::the_start_method();
  int expected = -1;
  const int wanted = static_cast<int>(method);
  if (setting.compare_exchange_strong(expected, wanted) || expected == wanted) return;
  if (!force) {
    throw ProcessError("set_start_method(" + std::string(to_string(method)) + "): the start method is already " +
                       std::string(to_string(static_cast<StartMethod>(expected))) + "; pass force = true to change it");
  }
  setting.store(wanted);
}

MP_DECL StartMethod get_start_method() {
  std::atomic<int>& setting = detail::the_start_method();
  if (setting.load() != -1) return static_cast<StartMethod>(setting.load());
  int expected = -1;
  setting.compare_exchange_strong(expected, static_cast<int>(detail::default_start_method()));
  return static_cast<StartMethod>(setting.load());
}

MP_DECL std::vector<StartMethod> get_all_start_methods() {
  return {StartMethod::fork, StartMethod::spawn, StartMethod::forkserver};
}

MP_DECL void init(int argc, char** argv) {
  if (int socket = detail::take_marker(detail::spawned_child_env); socket >= 0) {
    detail::the_init_state().store(static_cast<int>(detail::init_state::called));
    detail::run_spawned_child(socket, ::getppid(), false);  // never returns
  }
  if (int control = detail::take_marker(detail::forkserver_env); control >= 0) {
    detail::the_init_state().store(static_cast<int>(detail::init_state::called));
    detail::run_forkserver(control, &detail::run_spawned_child);  // never returns
  }
  if (argc > 0 && argv != nullptr && argv[0] != nullptr) detail::program_name() = argv[0];
  detail::the_init_state().store(static_cast<int>(detail::init_state::called));
}

}  // namespace mp
