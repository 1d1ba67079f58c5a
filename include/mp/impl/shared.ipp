// shared: definitions (see shared.hpp) — SharedMemory's named blocks.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <string>
#include <utility>

#include <mp/detail/shm_segment.hpp>
#include <mp/detail/shm_tracker.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/detail/unique_fd.hpp>
#include <mp/shared.hpp>

namespace mp {

MP_DECL SharedMemory SharedMemory::create(std::size_t size, std::string name, bool track) {
  if (size == 0) throw Error("SharedMemory::create: size must be > 0, got 0");
  const bool generated = name.empty();
  for (int attempt = 0;; ++attempt) {
    if (generated) name = generate_name();
    const std::string os_name = posix_name(name, "create");
    const int fd = detail::sys_try("shm_open", [&] { return ::shm_open(os_name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600); });
    if (fd < 0) {
      const int err = detail::last_errno();
      if (err == EEXIST && generated && attempt < 100) continue;  // a stale leftover of an earlier pid
      if (err == EEXIST) {
        throw Error("SharedMemory::create: a block named " + os_name +
                    " already exists (attach() to it, or choose another name)");
      }
      detail::throw_errno("shm_open", os_name, err);
    }
    detail::unique_fd owner(fd);
    if (detail::sys_try("ftruncate", [&] { return ::ftruncate(fd, static_cast<off_t>(size)); }) != 0) {
      const int err = detail::last_errno();
      ::shm_unlink(os_name.c_str());  // undoing our own create: nothing to do if even that fails
      detail::throw_errno("ftruncate", os_name, err);
    }
    SharedMemory block(std::move(name), os_name, map(owner.get(), size, os_name, true), size);
    if (track) detail::shm_tracker::instance().track(os_name);
    block.state_->created_here = true;
    return block;
  }
}

MP_DECL SharedMemory SharedMemory::attach(std::string name) {
  const std::string os_name = posix_name(name, "attach");
  const int fd = detail::sys_try("shm_open", [&] { return ::shm_open(os_name.c_str(), O_RDWR, 0); });
  if (fd < 0) {
    const int err = detail::last_errno();
    if (err == ENOENT) {
      throw Error("SharedMemory::attach: no block named " + os_name + " (not created yet, or already unlinked)");
    }
    detail::throw_errno("shm_open", os_name, err);
  }
  detail::unique_fd owner(fd);
  struct stat st {};
  detail::sys("fstat", os_name, [&] { return ::fstat(fd, &st); });
  const auto size = static_cast<std::size_t>(st.st_size);
  if (size == 0) throw Error("SharedMemory::attach: the block " + os_name + " has size 0 (nothing to map)");
  return SharedMemory(std::move(name), os_name, map(fd, size, os_name, false), size);
}

MP_DECL void SharedMemory::save(detail::output_archive& ar) const {
  if (state_->name.empty()) throw SerializationError("mp::serialize: a SharedMemory without a name cannot cross");
  ar(state_->name);
}

MP_DECL void SharedMemory::load(detail::input_archive& ar) {
  std::string name;
  ar(name);
  *this = attach(std::move(name));
}

MP_DECL void SharedMemory::unlink() {
  if (detail::sys_try("shm_unlink", [&] { return ::shm_unlink(state_->os_name.c_str()); }) != 0) {
    const int err = detail::last_errno();
    if (err == ENOENT) {
      throw Error("SharedMemory::unlink: no block named " + state_->os_name + " (already unlinked?)");
    }
    detail::throw_errno("shm_unlink", state_->os_name, err);
  }
  if (state_->created_here) detail::shm_tracker::instance().untrack(state_->os_name);
}

// munmap of a mapping we made cannot fail; and a destructor could not report it.
MP_DECL void SharedMemory::mapping::unmap() noexcept {
  if (data != nullptr) ::munmap(data, size);
  data = nullptr;
}

MP_DECL SharedMemory::SharedMemory(std::string name, const std::string& os_name, void* data, std::size_t size)
    : state_(std::make_shared<mapping>()) {
  state_->name = std::move(name);
  state_->os_name = os_name;
  state_->data = data;
  state_->size = size;
}

MP_DECL void* SharedMemory::mapped(const char* call) const {
  if (state_->data == nullptr) {
    throw Error(std::string("SharedMemory::") + call + ": " + state_->os_name + " is closed in this process");
  }
  return state_->data;
}

MP_DECL void* SharedMemory::map(int fd, std::size_t size, const std::string& os_name, bool created) {
  try {
    return detail::map_shared(fd, size, os_name);
  } catch (...) {
    if (created) ::shm_unlink(os_name.c_str());  // undoing our own create, as in create()
    throw;
  }
}

MP_DECL std::string SharedMemory::generate_name() {
  static std::atomic<unsigned> counter{0};
  return "/mp-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
}

MP_DECL std::string SharedMemory::posix_name(const std::string& name, const char* call) {
  const std::string os_name = (!name.empty() && name.front() == '/') ? name : "/" + name;
  if (os_name.size() < 2 || os_name.size() > 255 || os_name.find('/', 1) != std::string::npos) {
    throw Error(std::string("SharedMemory::") + call + ": invalid name \"" + name +
                "\" (use 1-254 characters without '/', optionally after one leading '/')");
  }
  return os_name;
}

}  // namespace mp
