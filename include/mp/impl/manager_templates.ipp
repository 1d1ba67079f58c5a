// manager: the template definitions of <mp/manager.hpp> (included at its end; kept apart so that the public header
// reads as a synopsis).
#pragma once

#include <algorithm>
#include <iterator>
#include <numeric>
#include <any>
#include <cstring>
#include <functional>
#include <span>
#include <tuple>
#include <typeindex>
#include <utility>

#include <mp/detail/code_address.hpp>
#include <mp/detail/manager/registered.hpp>
#include <mp/manager.hpp>

namespace mp {

namespace detail::manager {

// A value's bytes on the wire and in the server: a tag byte, then mp::serialize bytes. Tag 0: plain. Tag 1: the
// value holds proxies (nested proxies, refs.hpp): u32 n and their n object ids come first, so that the server, which
// never decodes values, knows which objects the value keeps alive.
template <class T>
void encode_value(std::vector<std::byte>& out, const T& v, const client* target) {
  const std::size_t tag = out.size();
  out.push_back(std::byte{0});
  encoding_context context{target, {}};
  auto* outer = std::exchange(current_encoding(), &context);
  try {
    mp::serialize_into(out, v);
  } catch (...) {
    current_encoding() = outer;
    throw;
  }
  current_encoding() = outer;
  if (context.ids.empty()) return;
  std::vector<std::byte> header;
  protocol::writer w(header);
  w.u32(static_cast<std::uint32_t>(context.ids.size()));
  for (auto id : context.ids) w.u64(id);
  out[tag] = std::byte{1};
  out.insert(out.begin() + static_cast<std::ptrdiff_t>(tag + 1), header.begin(), header.end());
}

template <class T>
T decode_value(std::string_view bytes, const std::shared_ptr<client>& from) {
  if (bytes.empty() || static_cast<unsigned char>(bytes[0]) > 1) {
    throw SerializationError("a manager value without its tag byte: the server runs another version of mp");
  }
  if (bytes[0] == 1) {
    protocol::reader in(bytes.substr(1));
    std::uint32_t n = 0;
    try {
      n = in.count(8);
    } catch (const protocol::malformed&) {
      throw SerializationError("a manager value with a truncated list of nested proxies");
    }
    bytes.remove_prefix(1 + 4 + std::size_t{n} * 8);
  } else {
    bytes.remove_prefix(1);
  }
  decoding_context context{&from};
  auto* outer = std::exchange(current_decoding(), &context);
  try {
    T value = mp::deserialize<T>(std::as_bytes(std::span(bytes.data(), bytes.size())));
    current_decoding() = outer;
    return value;
  } catch (...) {
    current_decoding() = outer;
    throw;
  }
}

template <class T>
bool request::value_in_segment(const T& v, bool tagged) {
  if (segment_ != nullptr || target_.endpoint().tcp) return false;  // one value per request; TCP: no descriptors
  const std::size_t head = tagged ? 5 : 4;                          // the blob's length, then a value's tag
  if constexpr (is_bitwise_v<T> || is_single_block_v<T>) {
    // The common case, decided cheaply: a number or a short string or vector (no proxies can be inside).
    if (frame_.size() - 4 + head + mp::serialized_size(v) < protocol::large_bytes) return false;
  }
  // A value's nested proxies cross as ids (encode_value); a custom method's arguments are encoded as they are.
  encoding_context context{&target_, {}};
  auto* outer = current_encoding();
  if (tagged) current_encoding() = &context;
  struct restore {
    encoding_context* outer;
    ~restore() { current_encoding() = outer; }
  } restored{outer};
  const std::size_t size = mp::serialized_size(v);
  const std::size_t before = frame_.size() - 4;  // payload bytes before the value's blob
  if (!context.ids.empty() || before + head + size < protocol::large_bytes || size + 1 > 0xFFFFFFFFu) return false;
  // Room for a few more fields after the value (a flag, a timeout: send() checks they fit).
  pooled_segment* segment = connection_.request_segment(before + head + size + 256);
  if (segment == nullptr) return false;
  std::byte* at = segment->item(before + head + size).data();
  std::memcpy(at, frame_.data() + 4, before);
  context.ids.clear();
  output_archive archive(output_archive::presized_tag{}, std::span(at + before + head, size));
  try {
    archive(v);
  } catch (...) {
    connection_.return_request_segment();
    throw;
  }
  if (!context.ids.empty()) {  // a serialize member that met proxies only the second time: encode it as usual
    connection_.return_request_segment();
    return false;
  }
  const std::size_t written = size - archive.unfilled();
  const auto blob = static_cast<std::uint32_t>(head - 4 + written);
  for (std::size_t i = 0; i < 4; ++i) at[before + i] = static_cast<std::byte>(blob >> (8 * i));
  if (tagged) at[before + 4] = std::byte{0};  // the tag of a value without nested proxies
  segment_ = segment;
  segment_end_ = before + head + written;
  frame_mark_ = frame_.size();
  return true;
}

template <class T>
request& request::value(const T& v) {
  if (value_in_segment(v, true)) return *this;
  auto mark = out_.start_blob();
  encode_value(frame_, v, &target_);
  out_.finish_blob(mark);
  return *this;
}

template <class T>
request& request::serialized(const T& v) {
  if (value_in_segment(v, false)) return *this;
  auto mark = out_.start_blob();
  mp::serialize_into(frame_, v);
  out_.finish_blob(mark);
  return *this;
}

template <class T>
T proxy_base::decode(protocol::reader& in) const {
  return decode_value<T>(in.blob(), client_);
}

}  // namespace detail::manager

template <class K, class V>
V DictProxy<K, V>::at(const K& k) const {
  auto found = get(k);
  if (!found) throw KeyError("manager dict has no such key (KeyError): use get(k) or get(k, default) for optional keys");
  return std::move(*found);
}

template <class K, class V>
std::vector<std::pair<K, V>> DictProxy<K, V>::items() const {
  auto in = call(op::dict_items).send();
  std::vector<std::pair<K, V>> out;
  auto n = in.count(8);
  out.reserve(n);
  for (std::uint32_t i = 0; i < n; ++i) {
    auto k = decode<K>(in);
    out.emplace_back(std::move(k), decode<V>(in));
  }
  return out;
}

template <class K, class V>
template <std::ranges::input_range R>
void DictProxy<K, V>::update(R&& pairs) const {
  auto request = call(op::dict_update);
  auto at = request.count_placeholder();
  std::uint32_t n = 0;
  for (const auto& [k, v] : pairs) request.value(k).value(v), ++n;
  request.patch_count(at, n);
  request.send();
}

template <class K, class V>
template <class Map>
Map DictProxy<K, V>::copy() const {
  auto all = items();
  return Map(std::make_move_iterator(all.begin()), std::make_move_iterator(all.end()));
}

template <class K, class V>
std::optional<std::pair<K, V>> DictProxy<K, V>::popitem() const {
  auto in = call(op::dict_popitem).send();
  if (!in.u8()) return std::nullopt;
  auto k = decode<K>(in);
  return std::pair<K, V>(std::move(k), decode<V>(in));
}

template <class T>
template <class Compare>
void ListProxy<T>::sort(Compare comp) const {
  for (;;) {
    auto in = call(op::list_snapshot).send();
    auto version = in.u64();
    auto n = in.count(4);
    std::vector<T> items;
    items.reserve(n);
    for (std::uint32_t i = 0; i < n; ++i) items.push_back(decode<T>(in));
    std::vector<std::uint32_t> order(n);
    std::iota(order.begin(), order.end(), 0u);
    std::stable_sort(order.begin(), order.end(),
                     [&](std::uint32_t a, std::uint32_t b) { return std::invoke(comp, items[a], items[b]); });
    auto request = call(op::list_permute);
    request.u64(version).u32(n);
    for (auto i : order) request.u32(i);
    if (reply_flag(request.send())) return;  // else another process changed the list meanwhile: sort again
  }
}

template <class T>
template <std::ranges::input_range R>
void ListProxy<T>::extend(R&& items) const {
  auto request = call(op::list_extend);
  auto at = request.count_placeholder();
  std::uint32_t n = 0;
  for (const auto& item : items) request.value(item), ++n;
  request.patch_count(at, n);
  request.send();
}

template <class T>
bool QueueProxy<T>::try_put(const T& item) const {
  try {
    put_nowait(item);
    return true;
  } catch (const Full&) {
    return false;
  }
}

template <class T>
std::optional<T> QueueProxy<T>::try_get() const {
  try {
    return take(0);
  } catch (const Empty&) {
    return std::nullopt;
  }
}

template <class T>
bool QueueProxy<T>::full() const {
  auto in = call(op::queue_state).send();
  auto size = in.u64();
  auto maxsize = in.u64();
  return maxsize != 0 && size >= maxsize;
}

template <class Pred, class R, class P>
bool ConditionProxy::wait_for(Pred pred, std::chrono::duration<R, P> timeout) const {
  const detail::deadline until = detail::deadline_or_forever(timeout);
  bool result = pred();
  while (!result && !detail::expired(until)) {
    if (until) {
      wait(*until - std::chrono::steady_clock::now());
    } else {
      wait();
    }
    result = pred();
  }
  return result;
}

template <class T>
T NamespaceProxy::get(std::string_view name) const {
  auto found = try_get<T>(name);
  if (!found) throw Error("manager namespace has no attribute '" + std::string(name) + "' (AttributeError)");
  return std::move(*found);
}

template <class K, class V>
DictProxy<K, V> Manager::dict(std::string name) {
  return {client(), create(kind::dict, "dict<" + detail::type_name<K>() + ", " + detail::type_name<V>() + ">", name)};
}

template <class T>
ListProxy<T> Manager::list(std::string name) {
  return {client(), create(kind::list, "list<" + detail::type_name<T>() + ">", name)};
}

template <class T>
ValueProxy<T> Manager::value(T initial, std::string name) {
  auto bytes = value_bytes(initial);
  return {client(), create(kind::value, "value<" + detail::type_name<T>() + ">", name, 0, bytes)};
}

template <class T>
std::string Manager::value_bytes(const T& v) const {
  std::vector<std::byte> bytes;
  detail::manager::encode_value(bytes, v, client().get());
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

template <class T>
JoinableQueueProxy<T> Manager::joinable_queue(std::size_t maxsize, std::string name) {
  return {client(), create(kind::joinable_queue, "joinable_queue<" + detail::type_name<T>() + ">", name, maxsize)};
}

template <class T>
ArrayProxy<T> Manager::array(std::size_t n, std::string name) {
  auto bytes = value_bytes(T{});
  return {client(), create(kind::array, "array<" + detail::type_name<T>() + ">", name, n, bytes)};
}

template <class T>
QueueProxy<T> Manager::queue(std::size_t maxsize, std::string name) {
  return {client(), create(kind::queue, "queue<" + detail::type_name<T>() + ">", name, maxsize)};
}

// ---- custom types ----------------------------------------------------------------------------------------------

namespace detail::manager {

/// What a member function pointer takes and returns.
template <class M>
struct method_traits;
template <class R, class C, class... P>
struct method_traits<R (C::*)(P...)> {
  using result = R;
  using args = std::tuple<std::decay_t<P>...>;
};
template <class R, class C, class... P>
struct method_traits<R (C::*)(P...) const> : method_traits<R (C::*)(P...)> {};
template <class R, class C, class... P>
struct method_traits<R (C::*)(P...) noexcept> : method_traits<R (C::*)(P...)> {};
template <class R, class C, class... P>
struct method_traits<R (C::*)(P...) const noexcept> : method_traits<R (C::*)(P...)> {};

/// How ObjectProxy::call holds its arguments while serializing them (held_as_t, archive.hpp): the same bytes as
/// Params.
template <class Params, class... A>
struct held_params;
template <class... P, class... A>
struct held_params<std::tuple<P...>, A...> {
  static_assert(sizeof...(P) == sizeof...(A),
                "ObjectProxy::call: pass as many arguments as the registered method takes");
  using type = std::tuple<held_as_t<A, P>...>;
};

inline std::span<const std::byte> as_byte_span(std::string_view bytes) {
  return std::as_bytes(std::span(bytes.data(), bytes.size()));
}

template <class T, class M>
method_invoker make_invoker(M method) {
  return [method](void* object, std::string_view args, std::vector<std::byte>& result) {
    using traits = method_traits<M>;
    auto arguments = mp::deserialize<typename traits::args>(as_byte_span(args));
    auto run = [&](auto&&... a) -> decltype(auto) { return (static_cast<T*>(object)->*method)(std::move(a)...); };
    if constexpr (std::is_void_v<typename traits::result>) {
      std::apply(run, std::move(arguments));
    } else {
      mp::serialize_into(result, std::apply(run, std::move(arguments)));
    }
  };
}

/// The server's side of make<T>(args...): T(args...) from their serialized tuple.
template <class T, class... A>
std::shared_ptr<void> construct(std::string_view args, std::type_index& made) {
  auto arguments = mp::deserialize<std::tuple<A...>>(as_byte_span(args));
  made = typeid(T);
  return std::apply([](auto&&... a) { return std::static_pointer_cast<void>(std::make_shared<T>(std::move(a)...)); },
                    std::move(arguments));
}

}  // namespace detail::manager

template <class T, class... Methods>
bool register_type(std::string name, Methods... methods) {
  static_assert((std::is_member_function_pointer_v<Methods> && ...),
                "mp::register_type<T>(name, &T::method...): pass pointers to T's member functions");
  detail::manager::registered_type entry;
  entry.name = std::move(name);
  entry.type = typeid(T);
  std::string signature = entry.name;
  ((signature += '|', signature += typeid(Methods).name()), ...);
  entry.signature = std::hash<std::string>{}(signature);
  (entry.pointers.emplace_back(methods), ...);
  (entry.methods.push_back(detail::manager::make_invoker<T>(methods)), ...);
  detail::manager::register_type_entry(std::move(entry));
  return true;
}

template <class T, class... Methods>
void Manager::register_type(std::string name, Methods... methods) {
  const std::string registered = name;
  mp::register_type<T>(std::move(name), methods...);
  auto in = detail::manager::request(*client(), detail::manager::protocol::op::type_info, 0).text(registered).send();
  const bool known = in.u8() != 0;
  const auto signature = in.u64();
  if (!known || signature != detail::manager::find_registered(std::string_view(registered))->signature) {
    throw Error("Manager::register_type: the manager server " + std::string(known ? "registered '" + registered +
                "' with other methods" : "does not know the type '" + registered + "'") +
                ": register it before the Manager starts its server (mp::register_type), or at namespace scope with "
                "MP_REGISTER_TYPE(T, \"" + registered + "\", &T::method...) so that servers started by spawn and "
                "forkserver, and other programs, see it too");
  }
}

template <class T, class... A>
ObjectProxy<T> Manager::make(ObjectName name, A&&... args) {
  const auto* registered = detail::manager::find_registered(std::type_index(typeid(T)));
  if (!registered) {
    throw Error("Manager::make<" + detail::type_name<T>() + ">: the type is not registered; call "
                "mp::register_type<T>(name, &T::method...) or use MP_REGISTER_TYPE first");
  }
  auto entry = detail::locate_code(reinterpret_cast<std::uintptr_t>(&detail::manager::construct<T, std::decay_t<A>...>));
  auto marker = detail::locate_code(reinterpret_cast<std::uintptr_t>(&detail::manager::image_marker));
  auto arguments = mp::serialize(std::tuple<std::decay_t<A>...>(std::forward<A>(args)...));
  std::string initial;
  detail::manager::protocol::writer w(initial);
  w.blob(entry.module), w.u64(entry.offset), w.blob(marker.module), w.u64(marker.offset);
  w.blob({reinterpret_cast<const char*>(arguments.data()), arguments.size()});
  return {client(), create(kind::object, registered->name, name.value, 0, initial)};
}

template <class T, class... A>
ObjectProxy<T> Manager::make(A&&... args) {
  return make<T>(ObjectName{}, std::forward<A>(args)...);
}

template <class T>
template <class Method, class... A>
auto ObjectProxy<T>::call(Method method, A&&... args) const {
  using traits = detail::manager::method_traits<Method>;
  using result = std::decay_t<typename traits::result>;
  // The method's index in T's registration, found once per thread and method: the lookup takes the table's lock
  // and compares type names, a cost a call in a loop should not pay every time. Any registration invalidates it.
  struct cached {
    std::uint64_t epoch = 0;
    Method method{};
    std::uint32_t index = 0;
  };
  thread_local cached last;
  const std::uint64_t epoch = detail::manager::registration_epoch();
  if (last.epoch != epoch || !(last.method == method)) {
    const auto* registered = detail::manager::find_registered(std::type_index(typeid(T)));
    std::uint32_t index = 0;
    if (registered) {
      for (; index < registered->pointers.size(); ++index) {
        const auto* candidate = std::any_cast<Method>(&registered->pointers[index]);
        if (candidate && *candidate == method) break;
      }
    }
    if (!registered || index == registered->pointers.size()) {
      throw Error("ObjectProxy<" + detail::type_name<T>() + ">::call: this method is not registered for the type; "
                  "list it in register_type / MP_REGISTER_TYPE (Python's exposed=)");
    }
    last = {epoch, method, index};
  }
  // The arguments are serialized straight into the request frame, or a big set into the request segment (no
  // buffer of their own, no copy first).
  auto in = proxy_base::call(detail::manager::protocol::op::object_call)
                .u32(last.index)
                .serialized(typename detail::manager::held_params<typename traits::args, A...>::type(
                    std::forward<A>(args)...))
                .send();
  if constexpr (std::is_void_v<result>) {
    return;
  } else {
    return mp::deserialize<result>(detail::manager::as_byte_span(in.blob()));
  }
}

}  // namespace mp
