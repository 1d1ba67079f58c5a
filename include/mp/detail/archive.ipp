// archive: definitions (see archive.hpp): the cold paths that build error messages.
#pragma once

#include <string>
#include <string_view>

#include <mp/detail/archive.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

MP_DECL void output_archive::overflow_presized() {
  throw SerializationError(
      "serialize: a serialize member wrote more bytes than when it was measured; it must write the same "
      "fields every time it is called");
}

MP_DECL void input_archive::fail(std::string_view what, const std::string& problem) const {
  std::string message = "deserialize " + std::string(what) + ": " + problem + " (byte " +
                        std::to_string(position_) + " of " + std::to_string(bytes_.size());
  if (outer_name_ != nullptr) {
    const std::string outer = outer_name_();
    if (outer != what) message += ", inside " + outer;
  }
  throw SerializationError(message + ")");
}

}  // namespace mp::detail
