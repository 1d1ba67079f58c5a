// proxy: definitions (see proxy.hpp).
#pragma once

#include <string>
#include <utility>

#include <mp/detail/manager/proxy.hpp>
#include <mp/detail/handle_transfer.hpp>
#include <mp/errors.hpp>

namespace mp::detail::manager {

MP_DECL void proxy_base::save(output_archive& ar) const {
  if (!client_) throw SerializationError("mp::serialize: this manager proxy is empty (default-constructed)");
  if (auto* context = current_encoding()) {
    // A nested proxy: only the id, which the server counts as a reference held by the value.
    if (context->target != client_.get() && context->target->endpoint().to_string() != client_->endpoint().to_string()) {
      throw SerializationError("a proxy of the manager at " + client_->endpoint().to_string() +
                               " cannot be stored in an object of the manager at " +
                               context->target->endpoint().to_string() + ": nested proxies live in one server");
    }
    context->ids.push_back(id_);
    ar(id_);
    return;
  }
  if (current_fd_outbox() == nullptr) {
    throw SerializationError(
        "mp::serialize: a manager proxy crosses only as an argument of a Process started by spawn or forkserver "
        "(it carries the manager's authkey), or as a value stored in the same manager; pass the values it holds, "
        "or the proxy as a Process argument");
  }
  const manager::endpoint& where = client_->endpoint();
  // A hold on the object for the child: this process may drop its proxies as soon as the child has started.
  const std::uint64_t hold = lend(*client_, {id_});
  ar(where.tcp, where.host, where.port, where.path, client_->authkey(), id_, hold);
}

MP_DECL void proxy_base::load(input_archive& ar) {
  if (auto* context = current_decoding()) {
    ar(id_);
    client_ = *context->from;
    ref_ = client_->refs().acquire(client_, id_, 1);  // the server counted this hand-over for our session
    return;
  }
  manager::endpoint where;
  std::string authkey;
  std::uint64_t hold = 0;
  ar(where.tcp, where.host, where.port, where.path, authkey, id_, hold);
  client_ = std::make_shared<client>(std::move(where), std::move(authkey));
  ref_ = client_->refs().acquire(client_, id_, 0);
  client_->refs().adopt_later(hold);
  try {
    client_->connection();  // adopt the hold now: the parent may let go of the object at any time
  } catch (const Error&) {
    // The server is gone or unreachable: the first call through this proxy reports it.
  }
}

MP_DECL void proxy_base::empty_proxy() {
  throw Error("this manager proxy is empty (default-constructed): get one from a Manager");
}

}  // namespace mp::detail::manager
