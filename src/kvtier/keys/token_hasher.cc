#include "kvtier/keys/token_hasher.h"

#include <bit>
#include <cstring>
#include <memory>
#include <string>

#include <fmt/format.h>
#include <openssl/evp.h>
#include <xxhash.h>

#include "kvtier/common/check.h"

namespace kvtier::keys {
namespace {

constexpr std::string_view kRootPrefix = "kvtier/token-hasher/v1/";
constexpr uint32_t kMaxChunkSize = 1u << 20;
constexpr size_t kTokenBytes = sizeof(uint32_t);

// Tokens are hashed as little-endian bytes: copied as-is on little-endian hosts, byte-swapped
// on big-endian ones, so every host computes the same chain.
static_assert(std::endian::native == std::endian::little || std::endian::native == std::endian::big,
              "mixed-endian hosts are not supported");

// Fetched once: an implicit fetch per digest (SHA256(), EVP_sha256()) costs ~40% throughput.
const EVP_MD* Sha256Md() {
  static const EVP_MD* const md = EVP_MD_fetch(nullptr, "SHA256", nullptr);  // never freed
  return md;
}

struct EvpMdCtxDeleter {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};

// One context per thread, re-initialised for every digest, so TokenHasher stays a
// freely shared value type.
EVP_MD_CTX* ThreadSha256Ctx() {
  thread_local std::unique_ptr<EVP_MD_CTX, EvpMdCtxDeleter> ctx(EVP_MD_CTX_new());
  return ctx.get();
}

bool Sha256(const uint8_t* data, size_t size, ChunkHash* out) {
  const EVP_MD* md = Sha256Md();
  EVP_MD_CTX* ctx = ThreadSha256Ctx();
  if (md == nullptr || ctx == nullptr) return false;
  static_assert(kChunkHashBytes == 32);
  unsigned int len = 0;
  return EVP_DigestInit_ex2(ctx, md, nullptr) == 1 && EVP_DigestUpdate(ctx, data, size) == 1 &&
         EVP_DigestFinal_ex(ctx, out->bytes.data(), &len) == 1 && len == kChunkHashBytes;
}

void Xxh3_128(const uint8_t* data, size_t size, ChunkHash* out) {
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, XXH3_128bits(data, size));
  static_assert(sizeof(canonical.digest) == 16);
  std::memcpy(out->bytes.data(), canonical.digest, sizeof(canonical.digest));
  std::memset(out->bytes.data() + sizeof(canonical.digest), 0,
              kChunkHashBytes - sizeof(canonical.digest));
}

// False only when OpenSSL fails (no SHA-256 provider, out of memory).
bool Digest(HashAlgorithm algorithm, const uint8_t* data, size_t size, ChunkHash* out) {
  switch (algorithm) {
    case HashAlgorithm::kSha256:
      return Sha256(data, size, out);
    case HashAlgorithm::kXxh3_128:
      Xxh3_128(data, size, out);
      return true;
  }
  return false;
}

void StoreTokens(std::span<const uint32_t> tokens, uint8_t* out) {
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(out, tokens.data(), tokens.size_bytes());
  } else {
    for (uint32_t token : tokens) {
      uint32_t le = __builtin_bswap32(token);
      std::memcpy(out, &le, kTokenBytes);
      out += kTokenBytes;
    }
  }
}

// The contiguous input of one chain link, prev hash || token bytes, reused across the chunks
// of a call. Default-size chunks live on the stack.
class LinkBuffer {
 public:
  explicit LinkBuffer(uint32_t chunk_size)
      : size_(kChunkHashBytes + size_t{chunk_size} * kTokenBytes) {
    if (size_ > inline_.size()) heap_ = std::make_unique_for_overwrite<uint8_t[]>(size_);
  }

  void SetPrev(const ChunkHash& prev) { std::memcpy(data(), prev.bytes.data(), kChunkHashBytes); }
  void SetTokens(std::span<const uint32_t> tokens) {
    KVT_DCHECK(kChunkHashBytes + tokens.size_bytes() == size_);
    StoreTokens(tokens, data() + kChunkHashBytes);
  }
  ChunkHash Hash(HashAlgorithm algorithm) {
    ChunkHash out;
    KVT_CHECK_MSG(Digest(algorithm, data(), size_, &out), "{} digest failed",
                  HashAlgorithmName(algorithm));
    return out;
  }

 private:
  uint8_t* data() { return heap_ ? heap_.get() : inline_.data(); }

  size_t size_;
  std::array<uint8_t, kChunkHashBytes + 1024 * kTokenBytes> inline_;
  std::unique_ptr<uint8_t[]> heap_;
};

char AsciiLower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (AsciiLower(a[i]) != AsciiLower(b[i])) return false;
  }
  return true;
}

}  // namespace

std::string_view HashAlgorithmName(HashAlgorithm algorithm) {
  switch (algorithm) {
    case HashAlgorithm::kSha256:
      return "sha256";
    case HashAlgorithm::kXxh3_128:
      return "xxh3_128";
  }
  return "unknown";
}

Result<HashAlgorithm> ParseHashAlgorithm(std::string_view name) {
  for (HashAlgorithm algorithm : {HashAlgorithm::kSha256, HashAlgorithm::kXxh3_128}) {
    if (EqualsIgnoreCase(name, HashAlgorithmName(algorithm))) return algorithm;
  }
  return MakeError(Status::InvalidArgument(
      fmt::format("unknown hash algorithm '{}' (choices: sha256, xxh3_128)", name)));
}

Result<TokenHasher> TokenHasher::Create(HashAlgorithm algorithm, uint32_t chunk_size) {
  if (algorithm != HashAlgorithm::kSha256 && algorithm != HashAlgorithm::kXxh3_128) {
    return MakeError(Status::InvalidArgument(
        fmt::format("unknown hash algorithm {}", static_cast<int>(algorithm))));
  }
  if (chunk_size == 0 || chunk_size > kMaxChunkSize) {
    return MakeError(Status::InvalidArgument(
        fmt::format("chunk size must be in [1, {}], got {}", kMaxChunkSize, chunk_size)));
  }
  std::string seed = fmt::format("{}{}", kRootPrefix, HashAlgorithmName(algorithm));
  ChunkHash root;
  // Also proves the algorithm usable here, so later digests fail only on a broken invariant.
  if (!Digest(algorithm, reinterpret_cast<const uint8_t*>(seed.data()), seed.size(), &root)) {
    return MakeError(Status(
        StatusCode::kHashError,
        fmt::format("{} is unavailable in this OpenSSL build", HashAlgorithmName(algorithm))));
  }
  return TokenHasher(algorithm, chunk_size, root);
}

ChunkHash TokenHasher::HashChunk(const ChunkHash& prev, std::span<const uint32_t> tokens) const {
  KVT_CHECK_MSG(tokens.size() == chunk_size_, "HashChunk got {} tokens, the chunk size is {}",
                tokens.size(), chunk_size_);
  LinkBuffer buffer(chunk_size_);
  buffer.SetPrev(prev);
  buffer.SetTokens(tokens);
  return buffer.Hash(algorithm_);
}

void TokenHasher::Extend(std::span<const uint32_t> tokens, std::vector<ChunkHash>* hashes) const {
  size_t done = hashes->size();
  size_t total = NumFullChunks(tokens.size());
  KVT_CHECK_MSG(done <= total, "{} hashes given for only {} full chunks", done, total);
  if (done == total) return;
  hashes->reserve(total);
  LinkBuffer buffer(chunk_size_);
  buffer.SetPrev(done == 0 ? root_ : hashes->back());
  for (size_t i = done; i < total; ++i) {
    buffer.SetTokens(tokens.subspan(i * chunk_size_, chunk_size_));
    hashes->push_back(buffer.Hash(algorithm_));
    buffer.SetPrev(hashes->back());
  }
}

std::vector<ChunkHash> TokenHasher::HashAll(std::span<const uint32_t> tokens) const {
  std::vector<ChunkHash> hashes;
  Extend(tokens, &hashes);
  return hashes;
}

}  // namespace kvtier::keys
