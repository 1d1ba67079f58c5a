// auth: definitions (see auth.hpp).
#pragma once

#include <dlfcn.h>
#include <sys/random.h>

#include <mutex>
#include <span>

#include <mp/detail/manager/auth.hpp>
#include <mp/detail/syscall.hpp>
#include <mp/errors.hpp>

namespace mp::detail::manager {

/// The few libcrypto functions the handshake needs, resolved once per process.
class libcrypto {
 public:
  /// The loaded library; throws mp::Error naming the missing library or symbol and what to install.
  static const libcrypto& get() {
    static std::once_flag once;
    static libcrypto instance;
    static std::string failure;
    std::call_once(once, [] { failure = instance.load(); });
    if (!failure.empty()) throw Error(failure);
    return instance;
  }

  hmac_digest hmac_sha256(std::string_view key, std::span<const unsigned char> message) const {
    hmac_digest digest{};
    unsigned int length = 0;
    if (!hmac_(sha256_(), key.data(), static_cast<int>(key.size()), message.data(), message.size(), digest.data(),
               &length) ||
        length != hmac_size) {
      throw Error("HMAC-SHA256 failed in libcrypto: the manager handshake cannot run");
    }
    return digest;
  }

  /// Constant-time comparison, so a wrong answer reveals nothing about where it differs.
  bool equal(const hmac_digest& a, const hmac_digest& b) const { return memcmp_(a.data(), b.data(), hmac_size) == 0; }

 private:
  using evp_md = void;
  using sha256_fn = const evp_md* (*)();
  using hmac_fn = unsigned char* (*)(const evp_md*, const void*, int, const unsigned char*, std::size_t,
                                     unsigned char*, unsigned int*);
  using memcmp_fn = int (*)(const void*, const void*, std::size_t);

  std::string load() {
    // The handle is kept for the life of the process: the functions are used until exit.
    void* handle = ::dlopen("libcrypto.so.3", RTLD_NOW | RTLD_LOCAL);
    if (!handle) handle = ::dlopen("libcrypto.so", RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      return "mp::Manager authentication needs OpenSSL's libcrypto (libcrypto.so.3), which could not be loaded: " +
             std::string(::dlerror()) + "; install it (Debian: apt install libssl3) or use a manager without an authkey";
    }
    sha256_ = reinterpret_cast<sha256_fn>(::dlsym(handle, "EVP_sha256"));
    hmac_ = reinterpret_cast<hmac_fn>(::dlsym(handle, "HMAC"));
    memcmp_ = reinterpret_cast<memcmp_fn>(::dlsym(handle, "CRYPTO_memcmp"));
    if (!sha256_ || !hmac_ || !memcmp_) {
      return "libcrypto was loaded but lacks EVP_sha256, HMAC or CRYPTO_memcmp: install OpenSSL 1.1 or 3";
    }
    return {};
  }

  sha256_fn sha256_ = nullptr;
  hmac_fn hmac_ = nullptr;
  memcmp_fn memcmp_ = nullptr;
};

MP_DECL void require_libcrypto() { (void)libcrypto::get(); }

MP_DECL std::string random_bytes(std::size_t n) {
  std::string bytes(n, '\0');
  std::size_t filled = 0;
  while (filled < n) {
    auto got = sys("getrandom", [&] { return ::getrandom(bytes.data() + filled, n - filled, 0); });
    filled += static_cast<std::size_t>(got);
  }
  return bytes;
}

MP_DECL std::string make_challenge() { return std::string(challenge_tag) + random_bytes(challenge_size); }

MP_DECL hmac_digest answer_challenge(std::string_view authkey, std::string_view challenge) {
  return libcrypto::get().hmac_sha256(
      authkey, {reinterpret_cast<const unsigned char*>(challenge.data()), challenge.size()});
}

MP_DECL bool check_answer(std::string_view authkey, std::string_view challenge, std::string_view answer) {
  if (answer.size() != hmac_size) return false;
  hmac_digest got{};
  for (std::size_t i = 0; i < hmac_size; ++i) got[i] = static_cast<unsigned char>(answer[i]);
  const auto& crypto = libcrypto::get();
  return crypto.equal(got, answer_challenge(authkey, challenge));
}

}  // namespace mp::detail::manager
