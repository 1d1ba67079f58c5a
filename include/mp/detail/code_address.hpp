// code_address: a function's address as "module + offset", so a spawned child (a fresh exec of the same program)
// can find the same function although ASLR loads every module at another base.
// Why dl_iterate_phdr rather than dladdr: dladdr names the main program by argv[0], which differs between the
// parent and the child; dl_iterate_phdr lists the main program first under the empty name in every process, and
// gives each shared library its load path. The offset is relative to the load bias (dlpi_addr), so it is the same
// for PIE and non-PIE programs.
#pragma once

#include <elf.h>
#include <link.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

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

/// One loaded module as another process sees it: the name locate_code gives it, its load bias, and its executable
/// segments [begin, end) as absolute addresses.
struct loaded_module {
  std::string module;  // "" for the main program
  std::uint64_t bias = 0;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> code;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(module, bias, code);
  }
};

/// This process's modules, in dl_iterate_phdr order (the main program first).
inline std::vector<loaded_module> loaded_modules() {
  std::vector<loaded_module> modules;
  ::dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* data) {
        auto* list = static_cast<std::vector<loaded_module>*>(data);
        loaded_module m;
        m.module = list->empty() ? std::string() : std::string(info->dlpi_name ? info->dlpi_name : "");
        m.bias = info->dlpi_addr;
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const ElfW(Phdr)& segment = info->dlpi_phdr[i];
          if (segment.p_type != PT_LOAD || (segment.p_flags & PF_X) == 0) continue;
          const std::uint64_t begin = info->dlpi_addr + segment.p_vaddr;
          m.code.emplace_back(begin, begin + segment.p_memsz);
        }
        list->push_back(std::move(m));
        return 0;
      },
      &modules);
  return modules;
}

/// Where `address` (a function) lives; ProcessError if no loaded module holds it (code made at run time).
inline code_address locate_code(std::uintptr_t address) {
  for (const loaded_module& m : loaded_modules()) {
    for (const auto& [begin, end] : m.code) {
      if (address >= begin && address < end) return code_address{m.module, address - m.bias};
    }
  }
  throw ProcessError("spawn: the function at address " + std::to_string(address) +
                     " is not code in any loaded module (was it generated at run time?), so a spawned child "
                     "cannot find it; use a named function or a lambda without captures");
}

/// The address of `where` in this process; ProcessError if its module is not loaded here (a library the parent
/// loaded with dlopen) or the offset is not code in it.
inline std::uintptr_t resolve_code(const code_address& where) {
  const std::string module = where.module.empty() ? "the main program" : where.module;
  for (const loaded_module& m : loaded_modules()) {
    if (m.module != where.module) continue;
    const std::uint64_t address = m.bias + where.offset;
    for (const auto& [begin, end] : m.code) {
      if (address >= begin && address < end) return static_cast<std::uintptr_t>(address);
    }
    throw ProcessError("spawn: offset " + std::to_string(where.offset) + " is not code in " + module +
                       " in the child: the parent and the child do not run the same binary");
  }
  throw ProcessError("spawn: the target's module " + module +
                     " is not loaded in the child (was it loaded with dlopen after start?); a spawned child "
                     "can run only functions of the program and the libraries it links");
}

// ---------------------------------------------------------------------------------------------------------------
// Many addresses, one table: a process that must run many code addresses of another process running the same
// program (a Pool worker started by spawn or forkserver: every task names its trampoline by the parent's raw
// address, so the fork hot path pays nothing) receives the parent's module table once and translates each
// address as parent module + offset -> this process's load bias of that module + offset.

/// Translates code addresses of another process (given its loaded_modules()) into this process's. Modules are
/// matched by name and, for equal names, by their rank among them. Not thread-safe (a small cache): one per thread.
class code_translator {
 public:
  explicit code_translator(const std::vector<loaded_module>& theirs) {
    const std::vector<loaded_module> ours = loaded_modules();
    std::map<std::string, std::vector<const loaded_module*>> by_name;  // ours, in order
    for (const loaded_module& m : ours) by_name[m.module].push_back(&m);
    std::map<std::string, std::size_t> rank;
    for (const loaded_module& m : theirs) {
      const std::size_t r = rank[m.module]++;
      const auto found = by_name.find(m.module);
      const loaded_module* here = found != by_name.end() && r < found->second.size() ? found->second[r] : nullptr;
      names_.push_back(m.module);
      for (const auto& [begin, end] : m.code) {
        regions_.push_back({begin, end, here != nullptr ? here->bias - m.bias : 0, here != nullptr, names_.size() - 1});
      }
    }
    std::sort(regions_.begin(), regions_.end(), [](const region& a, const region& b) { return a.begin < b.begin; });
    cache_.fill({0, 0});
  }

  /// The address in this process of the code at `address` in the other; ProcessError if it is not code there or
  /// its module is not loaded here.
  std::uintptr_t translate(std::uint64_t address) const {
    std::pair<std::uint64_t, std::uint64_t>& slot = cache_[(address >> 4) % cache_.size()];
    if (slot.first == address && address != 0) return static_cast<std::uintptr_t>(slot.second);
    auto it = std::upper_bound(regions_.begin(), regions_.end(), address,
                               [](std::uint64_t a, const region& r) { return a < r.begin; });
    if (it == regions_.begin() || address >= std::prev(it)->end) {
      throw ProcessError("code address " + std::to_string(address) + " of the parent process is not code in any "
                         "module it had loaded when it sent its module table (a library loaded later with dlopen, "
                         "or code generated at run time); use functions of the program or of the libraries it links");
    }
    const region& r = *std::prev(it);
    if (!r.loaded_here) {
      throw ProcessError("module " + names_[r.name] + " of the parent process is not loaded in this process (was "
                         "it loaded with dlopen?); a process started by spawn or forkserver can run only functions "
                         "of the program and the libraries it links");
    }
    slot = {address, address + r.delta};
    return static_cast<std::uintptr_t>(slot.second);
  }

 private:
  struct region {
    std::uint64_t begin, end;
    std::uint64_t delta;  // ours - theirs, modulo 2^64
    bool loaded_here;
    std::size_t name;
  };
  std::vector<region> regions_;  // sorted by begin
  std::vector<std::string> names_;
  mutable std::array<std::pair<std::uint64_t, std::uint64_t>, 16> cache_{};  // address -> translated
};

}  // namespace mp::detail
