// type_name: definitions (see type_name.hpp).
#pragma once

#include <cxxabi.h>

#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <typeinfo>

#include <mp/detail/type_name.hpp>

namespace mp::detail {

MP_DECL std::string demangle(const char* mangled) {
  int status = 0;
  // __cxa_demangle mallocs its result; free it on every path.
  std::unique_ptr<char, void (*)(void*)> readable(abi::__cxa_demangle(mangled, nullptr, nullptr, &status), std::free);
  return status == 0 && readable ? std::string(readable.get()) : std::string(mangled);
}

MP_DECL std::string readable_type_name(const std::type_info& info) {
  std::string name = demangle(info.name());
  constexpr std::string_view long_string =
      "std::__cxx11::basic_string<char, std::char_traits<char>, std::allocator<char> >";
  for (auto at = name.find(long_string); at != std::string::npos; at = name.find(long_string, at)) {
    name.replace(at, long_string.size(), "std::string");
  }
  return name;
}

MP_DECL exception_description describe_current_exception() {
  exception_description description;
  // The thrown object's static type as the runtime recorded it, which is also its dynamic type.
  if (const std::type_info* thrown = abi::__cxa_current_exception_type()) {
    description.type = type_name(*thrown);
  } else {
    description.type = "unknown exception";
  }
  try {
    throw;
  } catch (const std::exception& e) {
    description.type = type_name(typeid(e));
    description.message = e.what();
  } catch (...) {
  }
  return description;
}

}  // namespace mp::detail
