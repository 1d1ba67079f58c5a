// code_address: a function's address as "module + offset", so a spawned child (a fresh exec of the same program)
// can find the same function although ASLR loads every module at another base.
// Why dl_iterate_phdr rather than dladdr: dladdr names the main program by argv[0], which differs between the
// parent and the child; dl_iterate_phdr lists the main program first under the empty name in every process, and
// gives each shared library its load path. The offset is relative to the load bias (dlpi_addr), so it is the same
// for PIE and non-PIE programs.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <mp/detail/config.hpp>

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
MP_DECL std::vector<loaded_module> loaded_modules();

/// Where `address` (a function) lives; ProcessError if no loaded module holds it (code made at run time).
MP_DECL code_address locate_code(std::uintptr_t address);

/// The address of `where` in this process; ProcessError if its module is not loaded here (a library the parent
/// loaded with dlopen) or the offset is not code in it.
MP_DECL std::uintptr_t resolve_code(const code_address& where);

// ---------------------------------------------------------------------------------------------------------------
// Many addresses, one table: a process that must run many code addresses of another process running the same
// program (a Pool worker started by spawn or forkserver: every task names its trampoline by the parent's raw
// address, so the fork hot path pays nothing) receives the parent's module table once and translates each
// address as parent module + offset -> this process's load bias of that module + offset.

/// Translates code addresses of another process (given its loaded_modules()) into this process's. Modules are
/// matched by name and, for equal names, by their rank among them. Not thread-safe (a small cache): one per thread.
class code_translator {
 public:
  explicit code_translator(const std::vector<loaded_module>& theirs);

  /// The address in this process of the code at `address` in the other; ProcessError if it is not code there or
  /// its module is not loaded here. Inline: a worker translates once per task, and a cache hit costs a compare.
  std::uintptr_t translate(std::uint64_t address) const {
    const std::pair<std::uint64_t, std::uint64_t>& slot = cache_[(address >> 4) % cache_.size()];
    if (slot.first == address && address != 0) return static_cast<std::uintptr_t>(slot.second);
    return translate_uncached(address);
  }

 private:
  /// translate() on a cache miss: finds the region holding `address` and fills its cache slot.
  std::uintptr_t translate_uncached(std::uint64_t address) const;

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

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/code_address.ipp>
#endif
