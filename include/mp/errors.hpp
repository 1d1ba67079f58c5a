// Every exception mp throws: Python's multiprocessing exceptions as C++ types.
// All derive from mp::Error (a std::runtime_error), so `catch (const mp::Error&)` catches everything mp throws.
// Process safety: exception objects are plain values; RemoteError carries an exception across a process boundary
// as its demangled type name and message.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

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

/// An exception thrown in another process: what() is "<remote_type>: <message>".
class RemoteError : public Error {
 public:
  RemoteError(std::string remote_type, const std::string& message)
      : Error(remote_type + ": " + message), remote_type_(std::move(remote_type)) {}
  /// The demangled type name of the exception in the other process.
  const std::string& remote_type() const noexcept { return remote_type_; }

 private:
  std::string remote_type_;
};

/// The process running a task died before finishing it: exitcode() is its exit status, -N if killed by signal N.
class WorkerLost : public RemoteError {
 public:
  WorkerLost(int exitcode, const std::string& message) : RemoteError("mp::WorkerLost", message), exitcode_(exitcode) {}
  int exitcode() const noexcept { return exitcode_; }

 private:
  int exitcode_;
};

}  // namespace mp
