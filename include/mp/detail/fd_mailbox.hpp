// fd_mailbox: a place where descriptors wait, held by the kernel, for whichever process takes them next — the way a
// Queue's large items (segment_pool.hpp segments) reach their consumer, even after their producer has exited.
//
// A mailbox is one unix datagram socket bound to an automatic abstract address and connected to itself: a message
// sent on it lands in its own receive queue, with its descriptors (SCM_RIGHTS). Every process holding the socket can
// post and take; no other process can post (a datagram socket connected to a peer accepts only from that peer, here
// itself: EPERM for anyone else), and the address is never used after set-up. A descriptor in the receive queue
// belongs to the socket, not to a process: its producer may exit at once, and it is freed when the last holder of
// the socket closes it (the kernel purges the queue) — nothing to clean up, whoever dies when.
// Each message carries a 64-bit tag; the owner (ring_buffer) tags messages in the order of its records, so that a
// taker can recognise a message whose record was never published (its producer died in between: a lower tag) or a
// record whose message was taken by a consumer that then died (a higher tag, or none).
// Why not pidfd_getfd(2) from the producer: the producer may have exited (put-then-exit), and it needs ptrace rights.
// Why one socket and not a socketpair: one descriptor per queue instead of two, the same guarantees.
#pragma once

#include <cstdint>
#include <optional>

#include <mp/detail/clock.hpp>
#include <mp/detail/config.hpp>
#include <mp/detail/unique_fd.hpp>

namespace mp::detail {

/// A new mailbox socket (close-on-exec).
MP_DECL unique_fd make_fd_mailbox();

/// Posts `fd` (a dup travels; the caller keeps its own) under `tag`. When the socket's buffer is full (some
/// hundreds of messages waiting), waits for a taker until `until`; false if none came. mp::Error on a failure,
/// e.g. the per-user limit of descriptors in flight (RLIMIT_NOFILE; ETOOMANYREFS).
MP_DECL bool fd_mailbox_post(int mailbox, std::uint64_t tag, int fd, const deadline& until);

/// The tag of the oldest message, or nullopt if the mailbox is empty. Takes nothing.
MP_DECL std::optional<std::uint64_t> fd_mailbox_peek(int mailbox);

/// Takes the oldest message and returns its descriptor (empty if it carried none).
MP_DECL unique_fd fd_mailbox_take(int mailbox);

}  // namespace mp::detail

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/fd_mailbox.ipp>
#endif
