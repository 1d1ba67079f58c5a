// shared_blocks: definitions (see shared_blocks.hpp) — the messages.
#pragma once

#include <string>

#include <mp/detail/shared_blocks.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

MP_DECL void throw_array_too_large(const char* label, std::size_t n, std::size_t element_size) {
  throw Error(std::string(label) + ": " + std::to_string(n) + " elements of " + std::to_string(element_size) +
              " bytes is too large for shared memory");
}

MP_DECL void throw_index(const char* kind, std::size_t index, std::size_t size) {
  throw Error(std::string(kind) + "::at: index " + std::to_string(index) + " is out of range for size " +
              std::to_string(size));
}

MP_DECL void throw_array_does_not_fit(const char* what, std::size_t size) {
  throw SerializationError(std::string("mp::deserialize: an ") + what + " of " + std::to_string(size) +
                           " elements does not fit the shared block that arrived");
}

}  // namespace mp::detail
