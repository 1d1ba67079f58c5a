// manager: definitions (see <mp/manager.hpp>).
#pragma once

#include <unistd.h>

#include <utility>

#include <mp/manager.hpp>

namespace mp {

MP_DECL Manager::Manager(ManagerOptions options) {
  const StartMethod method = options.start_method ? *options.start_method : get_start_method();
  if (method != StartMethod::fork && method != StartMethod::spawn && method != StartMethod::forkserver) {
    throw Error("Manager: ManagerOptions::start_method is " + std::to_string(static_cast<int>(method)) +
                ", not a start method; use StartMethod::fork, StartMethod::spawn or StartMethod::forkserver (or "
                "leave it empty for get_start_method())");
  }
  detail::require_init(method, "Manager");
  detail::manager::endpoint where = options.address.endpoint_;
  auto owner = std::make_unique<detail::manager::server_process>();
  if (where.tcp && options.authkey.empty()) {
    throw Error("Manager on " + where.to_string() +
                ": a TCP manager needs an authkey (ManagerOptions{.authkey = ...}); without one anyone who can reach "
                "the port could use it");
  }
  if (!options.authkey.empty()) detail::manager::require_libcrypto();  // fail here, not in the server
  if (where.empty_address()) {
    owner->directory = detail::manager::make_private_directory();
    where.path = owner->directory + "/socket";
  }
  detail::unique_fd listener;
  try {
    listener = detail::manager::listen_on(where, options.allow_other_users);
  } catch (...) {
    if (!owner->directory.empty()) ::rmdir(owner->directory.c_str());
    throw;
  }
  if (!where.tcp) owner->socket_path = where.path;
  owner->owner = ::getpid();
  owner->same_user_only = !options.allow_other_users;
  // Python's manager server is a Process and takes a name ("SyncManager-1"); so does this one, so that the
  // processes started after it are named as in Python.
  std::vector<unsigned> identity = detail::next_identity();
  if (method == StartMethod::fork) {
    detail::manager::start_forked_server(*owner, std::move(listener), options.authkey);
  } else {
    try {
      detail::manager::start_fresh_server(*owner, listener, options.authkey, method, std::move(identity),
                                          current_process().name());
    } catch (...) {
      // start_fresh_server reaped the server if it started one: nothing uses the socket any more.
      detail::manager::remove_server_files(owner->socket_path, owner->directory);
      throw;
    }
    listener.reset();
  }
  owner_ = std::move(owner);
  client_ = std::make_shared<detail::manager::client>(std::move(where), std::move(options.authkey),
                                                     options.connect_timeout);
}

MP_DECL Manager::Manager(std::shared_ptr<detail::manager::client> client,
                         std::unique_ptr<detail::manager::server_process> owner)
    : owner_(std::move(owner)), client_(std::move(client)) {}

MP_DECL Manager& Manager::operator=(Manager&& other) noexcept {
  if (this != &other) {
    shutdown_noexcept();
    owner_ = std::move(other.owner_);
    client_ = std::move(other.client_);
  }
  return *this;
}

MP_DECL Manager Manager::connect(Address address, std::string authkey, std::chrono::milliseconds timeout) {
  if (address.empty()) throw Error("Manager::connect: the address is empty; pass the server's Manager::address()");
  auto client = std::make_shared<detail::manager::client>(address.endpoint_, std::move(authkey), timeout);
  client->connection();  // connect and authenticate now: a wrong key fails here
  return Manager(std::move(client), nullptr);
}

MP_DECL void Manager::serve_forever(ManagerOptions options) {
  detail::manager::endpoint where = options.address.endpoint_;
  if (where.empty_address()) {
    throw Error("Manager::serve_forever: give an address to serve on (Address::tcp or Address::unix_socket)");
  }
  if (where.tcp && options.authkey.empty()) {
    throw Error("Manager::serve_forever on " + where.to_string() + ": a TCP manager needs an authkey");
  }
  if (!options.authkey.empty()) detail::manager::require_libcrypto();
  detail::manager::serve_in_this_process(std::move(where), std::move(options.authkey), !options.allow_other_users);
}

MP_DECL void Manager::serve_forever() {
  if (!owner_ || owner_->owner != ::getpid()) {
    throw Error("Manager::serve_forever(): this Manager did not start a server in this process; use the static "
                "Manager::serve_forever(ManagerOptions) to serve here");
  }
  // Wait for the server to stop, or for SIGTERM/SIGINT (Ctrl-C) to this process: then stop it cleanly.
  detail::manager::wait_for_server_or_stop_signal(owner_->pidfd.get());
  shutdown();
}

MP_DECL LockProxy Manager::lock(std::string name) { return {client(), create(kind::lock, "lock", name)}; }

MP_DECL RLockProxy Manager::rlock(std::string name) { return {client(), create(kind::rlock, "rlock", name)}; }

MP_DECL SemaphoreProxy Manager::semaphore(int value, std::string name) {
  if (value < 0) throw Error("Manager::semaphore: initial value " + std::to_string(value) + " must be >= 0");
  return {client(), create(kind::semaphore, "semaphore", name, static_cast<std::uint64_t>(value))};
}

MP_DECL BoundedSemaphoreProxy Manager::bounded_semaphore(int value, std::string name) {
  if (value < 0) throw Error("Manager::bounded_semaphore: initial value " + std::to_string(value) + " must be >= 0");
  return {client(), create(kind::bounded_semaphore, "bounded_semaphore", name, static_cast<std::uint64_t>(value))};
}

MP_DECL EventProxy Manager::event(std::string name) { return {client(), create(kind::event, "event", name)}; }

MP_DECL ConditionProxy Manager::condition(std::string name) {
  return {client(), create(kind::condition, "condition", name)};
}

MP_DECL BarrierProxy Manager::barrier(int parties, std::string name) {
  if (parties < 1) throw Error("Manager::barrier: parties is " + std::to_string(parties) + "; it must be >= 1");
  return {client(), create(kind::barrier, "barrier", name, static_cast<std::uint64_t>(parties))};
}

MP_DECL NamespaceProxy Manager::namespace_(std::string name) {
  return {client(), create(kind::namespace_, "namespace", name)};
}

MP_DECL bool Manager::erase(std::string_view name) {
  detail::manager::request request(*client(), detail::manager::protocol::op::erase_name, 0);
  return request.text(name).send().u8() != 0;
}

MP_DECL pid_t Manager::server_pid() const { return owner_ ? owner_->pid : 0; }

MP_DECL Address Manager::address() const {
  return client_ ? Address(client_->endpoint()) : Address();
}

MP_DECL void Manager::shutdown() {
  if (owner_ && owner_->owner == ::getpid()) {
    auto owner = std::move(owner_);
    if (client_) {
      try {
        detail::manager::request(*client_, detail::manager::protocol::op::shutdown, 0).send();
      } catch (const Error&) {
        // Already gone (or unreachable): the wait below and SIGKILL cover it.
      }
    }
    (void)detail::manager::reap_server(*owner);
    detail::manager::remove_server_files(owner->socket_path, owner->directory);
  }
  client_.reset();
}

MP_DECL const std::shared_ptr<detail::manager::client>& Manager::client() const {
  if (!client_) throw Error("this Manager was moved from or shut down: create a new Manager");
  return client_;
}

MP_DECL std::uint64_t Manager::create(kind k, const std::string& type, const std::string& name, std::uint64_t number,
                                      std::string_view initial) {
  detail::manager::request request(*client(), detail::manager::protocol::op::create, 0);
  request.u8(static_cast<std::uint8_t>(k)).text(type).text(name).u64(number).text(initial);
  return request.send().u64();
}

MP_DECL void Manager::shutdown_noexcept() noexcept {
  try {
    shutdown();
  } catch (...) {
  }
}

MP_DECL int BarrierProxy::n_waiting() const {
  auto in = call(op::barrier_state).send();
  in.u32();
  return static_cast<int>(in.u32());
}

MP_DECL bool BarrierProxy::broken() const {
  auto in = call(op::barrier_state).send();
  in.u32(), in.u32();
  return in.u8() != 0;
}

MP_DECL std::vector<std::string> NamespaceProxy::names() const {
  auto in = call(op::ns_names).send();
  std::vector<std::string> out;
  auto n = in.count(4);
  for (std::uint32_t i = 0; i < n; ++i) out.emplace_back(in.blob());
  return out;
}

}  // namespace mp
