// code_address: definitions (see code_address.hpp).
#pragma once

#include <elf.h>
#include <link.h>

#include <algorithm>
#include <iterator>
#include <map>

#include <mp/detail/code_address.hpp>
#include <mp/errors.hpp>

namespace mp::detail {

MP_DECL std::vector<loaded_module> loaded_modules() {
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

MP_DECL code_address locate_code(std::uintptr_t address) {
  for (const loaded_module& m : loaded_modules()) {
    for (const auto& [begin, end] : m.code) {
      if (address >= begin && address < end) return code_address{m.module, address - m.bias};
    }
  }
  throw ProcessError("spawn: the function at address " + std::to_string(address) +
                     " is not code in any loaded module (was it generated at run time?), so a spawned child "
                     "cannot find it; use a named function or a lambda without captures");
}

MP_DECL std::uintptr_t resolve_code(const code_address& where) {
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

MP_DECL code_translator::code_translator(const std::vector<loaded_module>& theirs) {
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

MP_DECL std::uintptr_t code_translator::translate_uncached(std::uint64_t address) const {
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
  std::pair<std::uint64_t, std::uint64_t>& slot = cache_[(address >> 4) % cache_.size()];
  slot = {address, address + r.delta};
  return static_cast<std::uintptr_t>(slot.second);
}

}  // namespace mp::detail
