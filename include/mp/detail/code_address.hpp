// code_address: a function's address as "module + offset", so a spawned child (a fresh exec of the same program)
// can find the same function although ASLR loads every module at another base.
// Why dl_iterate_phdr rather than dladdr: dladdr names the main program by argv[0], which differs between the
// parent and the child; dl_iterate_phdr lists the main program first under the empty name in every process, and
// gives each shared library its load path. The offset is relative to the load bias (dlpi_addr), so it is the same
// for PIE and non-PIE programs.
#pragma once

#include <elf.h>
#include <link.h>

#include <cstdint>
#include <string>
#include <utility>

#include <mp/errors.hpp>

namespace mp::detail {

struct code_address {
  std::string module;       // "" for the main program, else the shared library's load path
  std::uint64_t offset = 0;  // from the module's load bias

  template <class Archive>
  void serialize(Archive& ar) {
    ar(module, offset);
  }
};

namespace code_address_impl {

struct search {
  std::uintptr_t address = 0;
  bool found = false;
  bool executable = false;
  bool first = true;
  code_address result;
};

inline bool segment_holds(const dl_phdr_info* info, std::uintptr_t address, bool* executable) {
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& segment = info->dlpi_phdr[i];
    if (segment.p_type != PT_LOAD) continue;
    const std::uintptr_t begin = info->dlpi_addr + segment.p_vaddr;
    if (address >= begin && address < begin + segment.p_memsz) {
      *executable = (segment.p_flags & PF_X) != 0;
      return true;
    }
  }
  return false;
}

}  // namespace code_address_impl

/// Where `address` (a function) lives; ProcessError if no loaded module holds it (code made at run time).
inline code_address locate_code(std::uintptr_t address) {
  code_address_impl::search search;
  search.address = address;
  ::dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* data) {
        auto* s = static_cast<code_address_impl::search*>(data);
        const bool first = std::exchange(s->first, false);
        if (!code_address_impl::segment_holds(info, s->address, &s->executable)) return 0;
        s->found = true;
        s->result.module = first ? std::string() : std::string(info->dlpi_name ? info->dlpi_name : "");
        s->result.offset = s->address - info->dlpi_addr;
        return 1;
      },
      &search);
  if (!search.found || !search.executable) {
    throw ProcessError("spawn: the function at address " + std::to_string(address) +
                       " is not code in any loaded module (was it generated at run time?), so a spawned child "
                       "cannot find it; use a named function or a lambda without captures");
  }
  return search.result;
}

/// The address of `where` in this process; ProcessError if its module is not loaded here (a library the parent
/// loaded with dlopen) or the offset is not code in it.
inline std::uintptr_t resolve_code(const code_address& where) {
  struct lookup {
    const code_address* where;
    bool first = true;
    bool module_found = false;
    bool executable = false;
    std::uintptr_t address = 0;
  } state{&where};
  ::dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* data) {
        auto* s = static_cast<lookup*>(data);
        const bool first = std::exchange(s->first, false);
        const std::string name = first ? std::string() : std::string(info->dlpi_name ? info->dlpi_name : "");
        if (name != s->where->module) return 0;
        s->module_found = true;
        const std::uintptr_t address = info->dlpi_addr + s->where->offset;
        bool executable = false;
        if (code_address_impl::segment_holds(info, address, &executable) && executable) {
          s->executable = true;
          s->address = address;
        }
        return 1;
      },
      &state);
  const std::string module = where.module.empty() ? "the main program" : where.module;
  if (!state.module_found) {
    throw ProcessError("spawn: the target's module " + module +
                       " is not loaded in the child (was it loaded with dlopen after start?); a spawned child "
                       "can run only functions of the program and the libraries it links");
  }
  if (!state.executable) {
    throw ProcessError("spawn: offset " + std::to_string(where.offset) + " is not code in " + module +
                       " in the child: the parent and the child do not run the same binary");
  }
  return state.address;
}

}  // namespace mp::detail
