// process_child: a Process's target as a fresh child (spawn, forkserver) receives it, and that child's side.
// A forked child simply calls its copy of the target. A fresh child shares nothing with its parent, so the target
// and its arguments travel as bytes (spawn_target): a function as its code address (module + offset, see
// code_address.hpp), a lambda without captures as nothing (the child default-constructs it), a function object as
// its serialized fields, each argument serialized (a string literal as its text). A lambda with captures cannot
// cross: it may capture a reference, which C++ cannot detect and whose address means nothing there. A Process
// subclass crosses when registered (MP_REGISTER_PROCESS): a factory that default-constructs it and reads its fields.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeindex>
#include <utility>
#include <variant>
#include <vector>

#include <mp/detail/archive.hpp>
#include <mp/detail/code_address.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/spawn.hpp>
#include <mp/detail/type_name.hpp>
#include <mp/errors.hpp>

namespace mp {
class Process;
}

namespace mp::detail {

struct fd_inbox;  // detail/handle_transfer.hpp: the descriptors that arrived with a fresh child's request

/// A type-erased target(args...) that may hold move-only arguments (std::function cannot).
struct process_task {
  virtual ~process_task() = default;
  virtual void operator()() = 0;
  /// The target as bytes for a spawned child; ProcessError naming the type that cannot cross.
  virtual spawn_target encode_for_spawn() const = 0;
};

template <class T>
inline constexpr bool is_function_pointer_v = std::is_pointer_v<T> && std::is_function_v<std::remove_pointer_t<T>>;

/// A class with no state that the child can simply default-construct: a lambda without captures.
template <class T>
inline constexpr bool is_stateless_target_v = std::is_class_v<T> && std::is_empty_v<T> && std::is_default_constructible_v<T>;

// A string literal argument decays to const char*, which cannot cross (a pointer); it travels as its text and the
// child passes the target a pointer to that text.
template <class A> struct wire_arg { using type = A; };
template <> struct wire_arg<const char*> { using type = std::string; };
template <> struct wire_arg<char*> { using type = std::string; };
template <class A> using wire_arg_t = typename wire_arg<A>::type;

template <class A>
inline constexpr bool arg_crosses_v = is_serializable_v<wire_arg_t<A>> && std::is_default_constructible_v<wire_arg_t<A>>;

/// Whether a target of type F can be rebuilt in a spawned child. A lambda with captures cannot: it may capture a
/// reference, which C++ cannot detect and whose address means nothing there — pass the values as arguments.
template <class F>
consteval bool target_crosses() {
  if constexpr (is_function_pointer_v<F> || is_stateless_target_v<F>) return true;
  else if constexpr (has_member_serialize<F> || has_member_save_load<F> || has_free_serialize<F> || std::is_aggregate_v<F>)
    return is_serializable_v<F> && std::is_default_constructible_v<F>;
  else return false;
}

/// How the target itself travels: a function pointer as its code address, a stateless one as nothing.
template <class F>
using wire_target_t =
    std::conditional_t<is_function_pointer_v<F>, code_address, std::conditional_t<is_stateless_target_v<F>, std::monostate, F>>;

template <class A>
decltype(auto) unwire(wire_arg_t<A>& value) {
  if constexpr (std::is_same_v<wire_arg_t<A>, A>) return std::move(value);
  else if constexpr (std::is_same_v<A, const char*>) return static_cast<const char*>(value.c_str());
  else return static_cast<char*>(value.data());
}

/// The entry a spawned child calls: decodes target and arguments (in the child's own address space) and calls.
template <class F, class... Args>
void run_spawned_target(std::span<const std::byte> bytes) {
  input_archive archive(bytes);
  wire_target_t<F> wire_target{};
  std::tuple<wire_arg_t<Args>...> args;
  archive(wire_target);
  std::apply([&](auto&... arg) { archive(arg...); }, args);
  if (archive.remaining() != 0) {
    throw SerializationError("spawn: " + std::to_string(archive.remaining()) +
                             " bytes left over after the target's arguments: the parent runs another binary");
  }
  F target = [&]() -> F {
    if constexpr (is_function_pointer_v<F>) return reinterpret_cast<F>(resolve_code(wire_target));
    else if constexpr (is_stateless_target_v<F>) return F{};
    else return std::move(wire_target);
  }();
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    std::invoke(std::move(target), unwire<Args>(std::get<I>(args))...);
  }(std::index_sequence_for<Args...>{});
}

template <class F, class... Args>
struct bound_process_task final : process_task {
  template <class G, class... A>
  explicit bound_process_task(G&& target, A&&... args) : parts(std::forward<G>(target), std::forward<A>(args)...) {}
  // Runs once, in the child: the arguments are the child's own copies, so they are handed over as rvalues
  // (a target taking std::unique_ptr<T> by value works), as std::thread does.
  void operator()() override {
    std::apply([](auto&& target, auto&&... args) { std::invoke(std::move(target), std::move(args)...); },
               std::move(parts));
  }
  spawn_target encode_for_spawn() const override;
  std::tuple<F, Args...> parts;
};

template <class F, class... Args>
spawn_target bound_process_task<F, Args...>::encode_for_spawn() const {
  if constexpr (!target_crosses<F>()) {
    throw ProcessError("Process::start: the target, of type " + type_name<F>() +
                       ", cannot cross to a process started by spawn or forkserver: only a function, a lambda "
                       "without captures, or a function object with a serialize member can (a capture may be a "
                       "reference, meaningless in a fresh process); pass captured values as arguments, or use "
                       "StartMethod::fork");
  } else if constexpr (!(arg_crosses_v<Args> && ...)) {
    std::string refused;
    ((refused += arg_crosses_v<Args> ? std::string() : (refused.empty() ? "" : ", ") + type_name<Args>()), ...);
    throw ProcessError("Process::start: argument(s) of type " + refused +
                       " cannot cross to a process started by spawn or forkserver: arguments are serialized "
                       "(mp::serialize) there; pass values (std::string, not std::string_view or a pointer; "
                       "not std::ref), handles that support spawn, or use StartMethod::fork");
  } else {
    spawn_target result;
    result.entry = locate_code(reinterpret_cast<std::uintptr_t>(&run_spawned_target<F, Args...>));
    output_archive archive(result.bytes);  // appends, as mp::serialize_into does
    const F& target = std::get<0>(parts);
    if constexpr (is_function_pointer_v<F>) {
      archive(locate_code(reinterpret_cast<std::uintptr_t>(target)));
    } else if constexpr (!is_stateless_target_v<F>) {
      archive(target);
    }
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (archive(wire_arg_t<Args>(std::get<I + 1>(parts))), ...);
    }(std::index_sequence_for<Args...>{});
    return result;
  }
}

/// The target of a Process rebuilt in a spawned child: calls the entry the parent named, with the descriptors that
/// arrived with the bytes.
struct spawned_task final : process_task {
  spawned_task(spawn_target target, std::shared_ptr<fd_inbox> fds) : target(std::move(target)), fds(std::move(fds)) {}
  void operator()() override;
  spawn_target encode_for_spawn() const override { return target; }
  spawn_target target;
  std::shared_ptr<fd_inbox> fds;
};

// ---------------------------------------------------------------------------------------------------------------
// Registered Process subclasses (MP_REGISTER_PROCESS): a table from type to codec, consulted by Process::start.

/// How a registered Process subclass crosses to a spawned child (MP_REGISTER_PROCESS).
struct process_type_codec {
  std::vector<std::byte> (*encode)(const Process&);
  std::uintptr_t factory;  // Process* (*)(std::span<const std::byte>), located at start()
};

/// Adds (or replaces) the codec of a Process subclass.
MP_DECL void register_process_type(std::type_index type, process_type_codec codec);
/// The codec registered for `type`, if any.
MP_DECL std::optional<process_type_codec> find_process_type(std::type_index type);

/// The child's side of a registered subclass: a default-constructed T whose serialize member reads its fields.
template <class T>
Process* make_spawned_process(std::span<const std::byte> bytes) {
  auto object = std::make_unique<T>();
  input_archive archive(bytes);
  archive(*object);
  if (archive.remaining() != 0) {
    throw SerializationError("spawn: " + std::to_string(archive.remaining()) + " bytes left over after the " +
                             type_name<T>() + ": its serialize member reads fewer fields than it writes");
  }
  return object.release();
}

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/process_child.ipp>
#endif
