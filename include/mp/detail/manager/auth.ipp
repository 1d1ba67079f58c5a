// auth: definitions (see auth.hpp).
#pragma once

#include <dlfcn.h>
#include <sys/random.h>

#include <initializer_list>
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

  /// HMAC-SHA256 of the concatenation of `parts`, without copying them together.
  hmac_digest hmac_sha256_parts(std::span<const unsigned char> key,
                                std::initializer_list<std::span<const unsigned char>> parts) const {
    hmac_digest digest{};
    unsigned int length = 0;
    void* ctx = ctx_new_();
    bool ok = ctx && init_(ctx, key.data(), static_cast<int>(key.size()), sha256_(), nullptr);
    for (auto part : parts) ok = ok && update_(ctx, part.data(), part.size());
    ok = ok && final_(ctx, digest.data(), &length) && length == hmac_size;
    if (ctx) ctx_free_(ctx);
    if (!ok) throw Error("HMAC-SHA256 failed in libcrypto: the manager connection cannot authenticate its frames");
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
  using ctx_new_fn = void* (*)();
  using ctx_free_fn = void (*)(void*);
  using init_fn = int (*)(void*, const void*, int, const evp_md*, void*);
  using update_fn = int (*)(void*, const unsigned char*, std::size_t);
  using final_fn = int (*)(void*, unsigned char*, unsigned int*);

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
    ctx_new_ = reinterpret_cast<ctx_new_fn>(::dlsym(handle, "HMAC_CTX_new"));
    ctx_free_ = reinterpret_cast<ctx_free_fn>(::dlsym(handle, "HMAC_CTX_free"));
    init_ = reinterpret_cast<init_fn>(::dlsym(handle, "HMAC_Init_ex"));
    update_ = reinterpret_cast<update_fn>(::dlsym(handle, "HMAC_Update"));
    final_ = reinterpret_cast<final_fn>(::dlsym(handle, "HMAC_Final"));
    if (!sha256_ || !hmac_ || !memcmp_ || !ctx_new_ || !ctx_free_ || !init_ || !update_ || !final_) {
      return "libcrypto was loaded but lacks EVP_sha256, HMAC, HMAC_CTX_new/free, HMAC_Init_ex/Update/Final or "
             "CRYPTO_memcmp: install OpenSSL 1.1 or 3";
    }
    return {};
  }

  sha256_fn sha256_ = nullptr;
  hmac_fn hmac_ = nullptr;
  memcmp_fn memcmp_ = nullptr;
  ctx_new_fn ctx_new_ = nullptr;
  ctx_free_fn ctx_free_ = nullptr;
  init_fn init_ = nullptr;
  update_fn update_ = nullptr;
  final_fn final_ = nullptr;
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

// Text as the unsigned bytes libcrypto takes.
inline std::span<const unsigned char> bytes_of(std::string_view text) {
  return {reinterpret_cast<const unsigned char*>(text.data()), text.size()};
}

MP_DECL hmac_digest session_key(std::string_view authkey, std::string_view server_challenge,
                                std::string_view client_challenge) {
  return libcrypto::get().hmac_sha256_parts(bytes_of(authkey), {bytes_of("mp-session-v1"), bytes_of(server_challenge),
                                                                 bytes_of(client_challenge)});
}

MP_DECL hmac_digest frame_mac(const hmac_digest& key, direction way, std::uint64_t sequence, std::string_view payload) {
  unsigned char header[9];
  header[0] = static_cast<unsigned char>(way);
  for (std::size_t i = 0; i < 8; ++i) header[1 + i] = static_cast<unsigned char>(sequence >> (8 * i));
  return libcrypto::get().hmac_sha256_parts(key, {header, bytes_of(payload)});
}

MP_DECL bool frame_mac_matches(const hmac_digest& key, direction way, std::uint64_t sequence, std::string_view payload,
                               std::string_view mac) {
  if (mac.size() != hmac_size) return false;
  hmac_digest got{};
  for (std::size_t i = 0; i < hmac_size; ++i) got[i] = static_cast<unsigned char>(mac[i]);
  return libcrypto::get().equal(got, frame_mac(key, way, sequence, payload));
}

}  // namespace mp::detail::manager
