// Every exception mp throws: Python's multiprocessing exceptions as C++ types.
// All derive from mp::Error (a std::runtime_error), so `catch (const mp::Error&)` catches everything mp throws.
// An exception thrown in another process (a Pool task) arrives as mp::Remote<E> (deriving from E) when E is a
// standard exception or registered with register_exception<E>(), else as RemoteError; both derive from RemoteInfo.
// Process safety: exception objects are plain values; register_exception may be called from any thread.
#pragma once

#include <exception>
#include <stdexcept>
#include <string>
#include <system_error>
#include <type_traits>
#include <typeinfo>
#include <utility>

#include <mp/detail/config.hpp>

namespace mp {

/// Base of every mp exception.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Misuse of a Process: started twice, joined before start, joined by itself, closed while running, …
class ProcessError : public Error { using Error::Error; };
/// A blocking call ran out of time (AsyncResult::get(timeout), a Pool task over its task_timeout, …).
class TimeoutError : public Error { using Error::Error; };
/// get_nowait() / get(timeout) on an empty queue.
class Empty : public Error { using Error::Error; };
/// put_nowait() / put(timeout) on a full queue.
class Full : public Error { using Error::Error; };
/// recv() on a connection whose other end is closed and drained.
class EOFError : public Error { using Error::Error; };
/// A receive buffer too small for the message.
class BufferTooShort : public Error { using Error::Error; };
/// The manager's authkey challenge failed.
class AuthenticationError : public Error { using Error::Error; };
/// Bytes that do not decode to the requested type: truncated, hostile or of another type.
class SerializationError : public Error { using Error::Error; };
/// A Barrier was aborted, reset, or a wait on it timed out.
class BrokenBarrierError : public Error { using Error::Error; };
/// Python's KeyError: a missing key of a manager dict (DictProxy::at, d[k] read).
class KeyError : public Error { using Error::Error; };
/// Python's IndexError: an index out of range of a manager list, or pop from an empty one.
class IndexError : public Error { using Error::Error; };
/// Python's ValueError: a value not in a manager list (ListProxy::remove, ListProxy::index).
class ValueError : public Error { using Error::Error; };

/// What every exception that came from another process carries: the remote type, the remote process's pid, and
/// its stack. Not an exception type itself (so `std::exception` stays an unambiguous base of everything mp throws):
/// `catch (const mp::RemoteInfo& e)` catches Remote<E>, RemoteError and WorkerLost alike.
class RemoteInfo {
 public:
  RemoteInfo(std::string remote_type, int pid = 0, std::string remote_traceback = {})
      : remote_type_(std::move(remote_type)), remote_traceback_(std::move(remote_traceback)), pid_(pid) {}
  RemoteInfo(const RemoteInfo&) = default;
  RemoteInfo(RemoteInfo&&) = default;
  RemoteInfo& operator=(const RemoteInfo&) = default;
  RemoteInfo& operator=(RemoteInfo&&) = default;
  virtual ~RemoteInfo() = default;
  /// The demangled type name of the exception in the other process ("std::invalid_argument").
  const std::string& remote_type() const noexcept { return remote_type_; }
  /// The other process's frames (symbolized where the platform allows), one per line; empty if unknown.
  const std::string& remote_traceback() const noexcept { return remote_traceback_; }
  /// The process the exception came from; 0 if unknown.
  int pid() const noexcept { return pid_; }

 private:
  std::string remote_type_;
  std::string remote_traceback_;
  int pid_ = 0;
};

/// A standard exception (logic_error, runtime_error and their std subclasses, bad_alloc and bad_array_new_length)
/// or a type registered with register_exception<E>() thrown in another process: `catch (const
/// std::invalid_argument&)` matches it; what() is the remote message. A std::system_error (ios_base::failure,
/// filesystem::filesystem_error) or std::future_error keeps its code() when the category is one of the standard
/// ones (generic, system, iostream, future); another category's codes arrive in mp's "mp.remote" category.
template <class E>
class Remote final : public E, public RemoteInfo {
 public:
  Remote(const std::string& message, RemoteInfo info) : E(make(message)), RemoteInfo(std::move(info)), message_(message) {}
  /// From an E built by the caller: a type whose constructor needs more than the message (std::system_error and
  /// its kind, std::future_error: the remote error code).
  Remote(E base, const std::string& message, RemoteInfo info)
      : E(std::move(base)), RemoteInfo(std::move(info)), message_(message) {}
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  static E make(const std::string& message) {
    if constexpr (std::is_constructible_v<E, const std::string&>) return E(message);
    else if constexpr (std::is_default_constructible_v<E>) return E();
    else static_assert(std::is_default_constructible_v<E>, "mp::Remote<E>: build this E and pass it as `base`");
  }
  std::string message_;
};

/// An exception of a type that is neither standard nor registered, thrown in another process: what() is
/// "<remote_type>: <message>".
class RemoteError : public Error, public RemoteInfo {
 public:
  RemoteError(std::string remote_type, const std::string& message, int pid = 0, std::string remote_traceback = {})
      : Error(remote_type + ": " + message), RemoteInfo(std::move(remote_type), pid, std::move(remote_traceback)) {}
};

/// The process running a task died before finishing it: exitcode() is its exit status, -N if killed by signal N.
class WorkerLost : public RemoteError {
 public:
  WorkerLost(int exitcode, const std::string& message, int pid = 0)
      : RemoteError("mp::WorkerLost", message, pid), exitcode_(exitcode) {}
  int exitcode() const noexcept { return exitcode_; }

 private:
  int exitcode_;
};

/// A pool task cancelled while it was still queued (AsyncResult::cancel()); concurrent.futures.CancelledError.
class CancelledError : public Error { using Error::Error; };

namespace detail {
/// Rebuilds a remote exception of one registered type from its message.
using remote_factory = std::exception_ptr (*)(const std::string& message, RemoteInfo info);
/// Registers (or replaces) the factory for the exception type `type` (impl/errors.ipp).
MP_DECL void register_remote_type(const std::type_info& type, remote_factory factory);
/// Rebuilds a remote exception of a type built from an error code (the remote code's value, in `code`).
using remote_code_factory = std::exception_ptr (*)(const std::string& message, RemoteInfo info, std::error_code code);
/// Registers (or replaces) the code factory for `type` (detail/remote_error.ipp).
MP_DECL void register_remote_code_type(const std::type_info& type, remote_code_factory factory);

/// E is built from the enum its code() returns (std::regex_error: regex_constants::error_type).
template <class E>
concept built_from_its_code = requires(const E& e) {
  requires std::is_enum_v<std::remove_cvref_t<decltype(e.code())>>;
  E(e.code());
};
}  // namespace detail

/// Makes exceptions of type E thrown in pool tasks arrive as Remote<E> (catchable as E) instead of RemoteError.
/// E must be constructible from a std::string (its what()), or from the enum its code() returns (std::regex_error:
/// `mp::register_exception<std::regex_error>()` where <regex> is included; the remote code() comes along).
/// Register in the parent, before the results arrive.
template <class E>
void register_exception() {
  static_assert(std::is_class_v<E> && std::is_copy_constructible_v<E> &&
                    (std::is_constructible_v<E, const std::string&> || detail::built_from_its_code<E>),
                "mp::register_exception<E>: E must be a copyable class constructible from a std::string (the "
                "remote what()); give it a constructor `explicit E(const std::string& message)`");
  if constexpr (std::is_constructible_v<E, const std::string&>) {
    detail::register_remote_type(typeid(E), [](const std::string& message, RemoteInfo info) {
      return std::make_exception_ptr(Remote<E>(message, std::move(info)));
    });
  } else {
    detail::register_remote_code_type(typeid(E), [](const std::string& message, RemoteInfo info, std::error_code code) {
      using code_type = std::remove_cvref_t<decltype(std::declval<const E&>().code())>;
      return std::make_exception_ptr(Remote<E>(E(static_cast<code_type>(code.value())), message, std::move(info)));
    });
  }
}

}  // namespace mp

#if MP_INCLUDE_DEFINITIONS
#include <mp/impl/errors.ipp>
#endif
