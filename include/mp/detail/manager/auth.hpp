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

}  // namespace mp::detail::manager

#if MP_INCLUDE_DEFINITIONS
#include <mp/detail/manager/auth.ipp>
#endif
