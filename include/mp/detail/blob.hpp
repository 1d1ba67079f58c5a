// blob: one large item in a memfd segment of its own, crossing to another process as a descriptor (SCM_RIGHTS or
// a slot in shared memory that names it), so that it is copied once on each side: written straight into the
// segment by the sender, read straight out of a read-only mapping by the receiver. Used by the Pipe's big messages;
// the Queue's large items and the Pool's big payloads use recycled, unsealed segments instead (segment_pool.hpp),
// because a fresh segment per item is bound by first-touch page faults.
//
// Why a segment per item rather than streaming through a ring: a ring smaller than the item needs a hand-off per
// piece (measured: 16 MiB Queue items at 73-84 MB/s through the 1 MiB ring), and the producer cannot finish before
// a consumer takes the pieces — the put-then-exit trap. A segment holds the whole item at once: the producer is
// done when it is written, and the kernel frees it when the last descriptor and mapping are gone, whoever dies when.
// Why sealed: the receiver treats the sender as hostile. A segment that could still shrink would SIGBUS the
// reader; F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL make its size and bytes final before it is sent,
// and open_blob() refuses a descriptor that is not such a segment of the announced size.
#pragma once

#include <cstddef>
#include <span>
#include <utility>

#include <mp/detail/config.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail {

/// Items from this size up travel as blobs by default: below it a ring or socket copy is cheaper than creating,
/// mapping and faulting in a segment (measured in docs/performance.md, "Big data").
inline constexpr std::size_t blob_threshold = std::size_t{256} << 10;

/// A blob being written: a writable mapping of `size` bytes. publish() ends writing and returns the descriptor.
class blob_writer {
 public:
  /// A new segment of `size` bytes (> 0); `label` names it in /proc/<pid>/fd and in error messages.
  MP_DECL blob_writer(std::size_t size, const char* label);
  blob_writer(const blob_writer&) = delete;
  blob_writer& operator=(const blob_writer&) = delete;
  MP_DECL ~blob_writer();

  std::span<std::byte> bytes() const noexcept { return {data_, size_}; }
  /// Ends writing and returns the descriptor to send (the receiver opens it with blob_reader).
  MP_DECL unique_fd publish();

 private:
  unique_fd fd_;
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

/// A received blob, mapped read-only for as long as this object lives.
class blob_reader {
 public:
  /// Maps `fd` after checking that it is a sealed memfd of exactly `size` bytes; SerializationError if not (a
  /// hostile or confused sender), mp::Error if mapping fails.
  MP_DECL blob_reader(unique_fd fd, std::size_t size);
  blob_reader(const blob_reader&) = delete;
  blob_reader& operator=(const blob_reader&) = delete;
  MP_DECL ~blob_reader();

  std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }

 private:
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/blob.ipp>
#endif
