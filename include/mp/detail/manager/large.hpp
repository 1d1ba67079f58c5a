// large: how a big manager request or reply crosses a Unix socket — written once into a recycled memfd segment
// (segment_pool.hpp) whose descriptor rides beside a small frame (SCM_RIGHTS), and read in place by the other side
// through a kept mapping (segment_view_cache), instead of streaming through the socket buffer in pieces.
//
// Copies: the sender writes the request or reply into the mapped segment (the client encodes a big value or a
// custom method's arguments straight into it, request::value / serialized; the server copies a stored value, one
// just taken out by a pop or a queue get, or a custom method's serialized result straight into it,
// server::take_tail), and the receiver copies what it keeps out of the mapping (the server: the value it stores;
// the client: the value it decodes), so a big value is copied once on each side, instead of also through
// pwrite/pread and a buffer (docs/design.md, "Big values"). The one exception: a custom method's result is
// serialized into the server's scratch buffer first (the store, which knows no types, gets it only as bytes).
// Why recycled segments and kept mappings: on this project's VM a fresh page costs ~12.5 us to fault in and a
// fresh mapping of 1 MiB ~0.4 ms, far more than copying into warm pages. A connection carries one call at a time,
// so each side keeps one segment per connection (segment_pool, most 1), reused once the reader marked it consumed
// (segment_reader's destructor: the server once it handled the request, the client at its next call).
// Why sealed sizes: each side maps a segment the other side created and holds a descriptor of. A peer that shrank
// it would make the mapper take SIGBUS; the sizes are sealed (F_SEAL_SHRINK | F_SEAL_GROW) and a receiver refuses
// a segment that is not (segment_trust::sealed_required). The contents stay writable by both, so the server never
// trusts them: the store parses requests with bounds-checked readers over the mapping's fixed size and copies what
// it keeps; a client that scribbles over its own request while the server reads it garbles only that request.
// Memory bounds: a kept segment or mapping is at most protocol::kept_bytes; a larger one is let go after use; the
// server keeps mappings of clients' request segments within a byte budget (server.hpp). A received descriptor is
// checked (a regular file, size-sealed, holding the announced bytes) before it is mapped.
// TCP connections carry no descriptors: big values stream through the socket there.
#pragma once

#include <cstddef>

#include <mp/detail/config.hpp>

namespace mp::detail::manager {

/// One sendmsg(2) of `bytes` with `fd` attached (SCM_RIGHTS); what sendmsg returned (-1 with errno set).
/// `flags`: MSG_DONTWAIT on the server's non-blocking sockets.
MP_DECL long send_some_with_fd(int socket, const void* bytes, std::size_t size, int fd, int flags) noexcept;

}  // namespace mp::detail::manager

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/manager/large.ipp>
#endif
