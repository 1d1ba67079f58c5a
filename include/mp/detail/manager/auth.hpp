// auth: HMAC-SHA256 challenge-response for manager connections, the handshake of Python's
// multiprocessing.connection.deliver_challenge / answer_challenge, run in both directions.
//
// Why libcrypto is loaded with dlopen: only programs that authenticate (TCP managers, or any manager given an
// authkey) need it, so it stays out of every user's link line; a program without OpenSSL's libcrypto installed
// gets a clear mp::Error the first time it needs HMAC, and managers without an authkey keep working.
// Randomness comes from getrandom(2), the kernel's CSPRNG, so challenges never depend on libcrypto's state.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <mp/detail/config.hpp>

namespace mp::detail::manager {

inline constexpr std::size_t hmac_size = 32;                 // SHA-256 digest
inline constexpr std::size_t challenge_size = 32;            // random bytes per challenge, as Python 3.12
inline constexpr std::string_view challenge_tag = "#CHALLENGE#";
inline constexpr std::string_view welcome_tag = "#WELCOME#";
inline constexpr std::string_view failure_tag = "#FAILURE#";

using hmac_digest = std::array<unsigned char, hmac_size>;

/// Loads libcrypto now (once per process); throws mp::Error naming the missing library or symbol and what to
/// install. A Manager with an authkey calls it first, so a missing library fails there, not in the server.
MP_DECL void require_libcrypto();

/// n bytes from the kernel's CSPRNG.
MP_DECL std::string random_bytes(std::size_t n);

/// The challenge message: "#CHALLENGE#" followed by fresh random bytes.
MP_DECL std::string make_challenge();

/// The answer to a challenge message: HMAC-SHA256(authkey, the whole challenge message).
MP_DECL hmac_digest answer_challenge(std::string_view authkey, std::string_view challenge);

/// True if `answer` (raw bytes as received) is the right answer to `challenge` under `authkey`; the comparison
/// takes constant time, so a wrong answer reveals nothing about where it differs.
MP_DECL bool check_answer(std::string_view authkey, std::string_view challenge, std::string_view answer);

// After the handshake both ends hold a session key only they can know: HMAC-SHA256(authkey, "mp-session-v1" ||
// server's challenge || client's challenge). Every later non-empty socket frame carries, after its payload, the
// HMAC-SHA256 under that key of (direction, sequence number, payload): a relay that passed the handshake through
// (it cannot answer a challenge itself) can neither inject, alter, replay, reorder nor reflect a frame. Empty
// frames (doorbells of the shared-memory channel) carry nothing and are not authenticated; the channel's shared
// memory is reachable only by processes the connection handed its descriptor to.

/// Which way a frame goes: bound into its MAC so a frame cannot be reflected back to its sender.
enum class direction : unsigned char { to_server = 'C', to_client = 'S' };

/// The session key of a handshake that exchanged these two challenges.
MP_DECL hmac_digest session_key(std::string_view authkey, std::string_view server_challenge,
                                std::string_view client_challenge);

/// One frame's MAC: HMAC-SHA256(key, direction || sequence (u64 little-endian) || payload).
MP_DECL hmac_digest frame_mac(const hmac_digest& key, direction way, std::uint64_t sequence, std::string_view payload);

/// True if `mac` (raw bytes as received) is frame_mac of the payload; constant-time comparison.
MP_DECL bool frame_mac_matches(const hmac_digest& key, direction way, std::uint64_t sequence, std::string_view payload,
                               std::string_view mac);

}  // namespace mp::detail::manager

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/manager/auth.ipp>
#endif
