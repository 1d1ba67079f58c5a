// proxy: what every manager proxy holds — the shared client, the object's id and this process's reference to it
// (refs.hpp) — and how a proxy crosses: to a Process started by spawn or forkserver as its argument (the server's
// address, the authkey, the id and a hold lent for the child), or inside a manager value (a nested proxy: the id
// only, which the server counts as a reference held by the container).
// The typed parts (a value's bytes, a reply decoded into a T) are defined in <mp/impl/manager_templates.ipp>, with
// mp::serialize: this file carries bytes only.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include <mp/detail/archive.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/manager/client.hpp>
#include <mp/detail/manager/protocol.hpp>
#include <mp/detail/manager/refs.hpp>

namespace mp::detail::manager {

/// What every proxy holds: the shared client, the object's id in the server, and this process's reference to it.
class proxy_base {
 public:
  proxy_base() = default;
  /// A proxy of an object whose id a create reply just handed to this process.
  proxy_base(std::shared_ptr<client> to, std::uint64_t id)
      : client_(std::move(to)), id_(id), ref_(client_->refs().acquire(client_, id, 1)) {}
  /// The object's id in its server.
  std::uint64_t id() const noexcept { return id_; }

  /// How a proxy crosses: as an argument of a Process started by spawn or forkserver (the server's address, the
  /// authkey, the id and a hold for the child), or inside a value stored in the same manager (the id). Anywhere
  /// else (a Queue item, plain bytes) it would carry the authkey where it was not meant to go: SerializationError.
  MP_DECL void save(output_archive& ar) const;
  /// In a spawned child, or reading a manager value: a proxy of the same object.
  MP_DECL void load(input_archive& ar);

 protected:
  request call(protocol::op code) const {
    if (!client_) empty_proxy();
    return request(*client_, code, id_);
  }
  [[noreturn]] MP_DECL static void empty_proxy();
  /// A timeout as the protocol's i64 nanoseconds (negative ones count as zero; -1 on the wire means "forever").
  static std::int64_t timeout_ns(std::chrono::nanoseconds timeout) { return timeout.count() < 0 ? 0 : timeout.count(); }

  // Reading a reply (what call(...).send() returns).
  /// The reply's next value (defined in <mp/impl/manager_templates.ipp>, which has mp::deserialize).
  template <class T>
  T decode(protocol::reader& in) const;
  /// The reply's one value.
  template <class T>
  T reply_value(protocol::reader in) const {
    return decode<T>(in);
  }
  /// The reply's value if its flag byte says there is one.
  template <class T>
  std::optional<T> reply_optional(protocol::reader in) const {
    if (!in.u8()) return std::nullopt;
    return decode<T>(in);
  }
  /// The reply's list of values: a u32 count, then the values (a list, a dict's keys or values).
  template <class T>
  std::vector<T> reply_list(protocol::reader in) const {
    std::vector<T> out;
    auto n = in.count(4);
    out.reserve(n);
    for (std::uint32_t i = 0; i < n; ++i) out.push_back(decode<T>(in));
    return out;
  }
  /// The reply's flag byte.
  static bool reply_flag(protocol::reader in) { return in.u8() != 0; }

  std::shared_ptr<client> client_;
  std::uint64_t id_ = 0;
  std::shared_ptr<object_ref> ref_;  // this process's reference: the last proxy here releases it
};

}  // namespace mp::detail::manager

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/manager/proxy.ipp>
#endif
