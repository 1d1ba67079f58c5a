// heap/directory: definitions (see directory.hpp).
#pragma once

#include <string>

#include <mp/detail/heap/directory.hpp>
#include <mp/errors.hpp>

namespace mp::detail::heap {

MP_DECL std::uint64_t type_id(const std::type_info& type) noexcept {
  std::uint64_t hash = 14695981039346656037ull;
  for (const char* c = type.name(); *c != '\0'; ++c) {
    hash ^= static_cast<unsigned char>(*c);
    hash *= 1099511628211ull;
  }
  return hash;
}

MP_DECL std::string checked_name(std::string_view name, const char* call) {
  if (name.empty()) throw Error(std::string("SharedHeap::") + call + ": the name is empty; give the object a name");
  if (name.find('\0') != std::string_view::npos) {
    throw Error(std::string("SharedHeap::") + call + ": the name holds a NUL character; use a name without one");
  }
  return std::string(name);
}

MP_DECL void throw_wrong_type(const char* call, std::string_view name, const std::string& requested) {
  throw Error(std::string("SharedHeap::") + call + "<" + requested + ">(\"" + std::string(name) +
              "\"): the object of that name has another type (find and destroy it with the type it was "
              "constructed with)");
}

}  // namespace mp::detail::heap
