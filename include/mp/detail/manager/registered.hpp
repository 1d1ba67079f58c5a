// registered: custom shared types (Python's BaseManager.register) — a process-wide table from a registered name to
// the type's methods, type-erased so that the server (which never sees the types) can run them.
//
// The table lives in every process: a registration made before a Manager forks its server is in the server's copy
// of memory; a server started by spawn or forkserver is a fresh copy of the program, which has only what static
// initialization registered — hence MP_REGISTER_TYPE at namespace scope, the way that works for every start method
// and for servers run by serve_forever in another program. A client finds a method's index by comparing member
// pointers with its own registration; the server runs index i of the type registered under the object's name.
// Construction (make<T>(args...)) names a function of this program by its code address (code_address.hpp), checked
// against a marker so that a server running another program refuses it instead of jumping into its own code.
#pragma once

#include <any>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <typeindex>
#include <vector>

#include <mp/detail/config.hpp>

namespace mp::detail::manager {

/// Runs one method on an object: `args` is the serialized tuple of its parameters; the serialized result (nothing
/// for void) is appended to `result` (the server's reused scratch: a call allocates nothing once it has grown).
/// Throws what the method throws.
using method_invoker = std::function<void(void* object, std::string_view args, std::vector<std::byte>& result)>;
/// Makes a T from the serialized tuple of its constructor's arguments; `made` names the type made.
using construct_entry = std::shared_ptr<void> (*)(std::string_view args, std::type_index& made);

/// One registered type.
struct registered_type {
  std::string name;
  std::type_index type = typeid(void);
  std::uint64_t signature = 0;               // hash of the name and the method types: both sides must agree
  std::vector<std::any> pointers;            // the member pointers, in registration order (client side)
  std::vector<method_invoker> methods;       // the same, runnable (server side)
};

/// Adds (or replaces) a registration; mp::Error if another type holds the name.
MP_DECL void register_type_entry(registered_type entry);
/// The type registered under `name` (nullptr if none). Entries are never removed: the pointer stays valid.
MP_DECL const registered_type* find_registered(std::string_view name);
/// The registration of a C++ type (nullptr if none).
MP_DECL const registered_type* find_registered(std::type_index type);
/// Bumped by every register_type_entry: a cached method index (ObjectProxy::call) is valid while it is unchanged.
MP_DECL std::uint64_t registration_epoch() noexcept;

/// A function whose address tells whether two processes run the same program (code_address.hpp).
MP_DECL void image_marker();

}  // namespace mp::detail::manager

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/manager/registered.ipp>
#endif
