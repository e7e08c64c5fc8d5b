// TokenHasher: prefix-chained chunk hashes over full chunks of token ids.
//
//   h[0] = H(root  || tokens[0 : C])
//   h[i] = H(h[i-1] || tokens[i*C : (i+1)*C])
//
// where C is the chunk size (default 256), each previous hash enters as its 32 raw bytes and
// each token as a 4-byte little-endian unsigned integer on every host (big-endian hosts
// byte-swap). xxh3_128 digests are written big-endian (XXH128_canonicalFromHash, as xxh128sum
// prints them) and zero-filled to 32 bytes. A trailing partial chunk is never hashed.
// The root is H("kvtier/token-hasher/v1/" + algorithm name), so chains made with different
// algorithms never share hashes, and persisted L2 data is never reused under another scheme. The
// chunk size is not in the root: keys only compare within one server's chunk size.
//
// Algorithms: sha256 (default; collision-resistant, so tenants sharing a cache cannot poison
// each other's entries) and xxh3_128 (fast, non-cryptographic: trusted deployments only).
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "kvtier/common/result.h"
#include "kvtier/keys/object_key.h"

namespace kvtier::keys {

enum class HashAlgorithm : uint8_t {
  kSha256 = 1,
  kXxh3_128 = 2,
};

// "sha256", "xxh3_128".
std::string_view HashAlgorithmName(HashAlgorithm algorithm);
Result<HashAlgorithm> ParseHashAlgorithm(std::string_view name);

inline constexpr uint32_t kDefaultChunkSize = 256;

// An immutable value: copy it freely and call it from any number of threads.
class TokenHasher {
 public:
  // chunk_size must be in [1, 1 << 20].
  static Result<TokenHasher> Create(HashAlgorithm algorithm = HashAlgorithm::kSha256,
                                    uint32_t chunk_size = kDefaultChunkSize);

  HashAlgorithm algorithm() const { return algorithm_; }
  uint32_t chunk_size() const { return chunk_size_; }
  const ChunkHash& root() const { return root_; }
  size_t NumFullChunks(size_t num_tokens) const { return num_tokens / chunk_size_; }

  // One link of the chain. `tokens` must hold exactly chunk_size() ids (KVT_CHECK).
  ChunkHash HashChunk(const ChunkHash& prev, std::span<const uint32_t> tokens) const;

  // Incremental: `hashes` holds the chain of the first hashes->size() chunks of `tokens` (for
  // instance from a shorter, earlier call); appends the hashes of the remaining full chunks.
  // The caller guarantees the existing entries match `tokens` (the session layer resets them
  // when the token prefix changes).
  void Extend(std::span<const uint32_t> tokens, std::vector<ChunkHash>* hashes) const;

  // The chain of every full chunk of `tokens`.
  std::vector<ChunkHash> HashAll(std::span<const uint32_t> tokens) const;

 private:
  TokenHasher(HashAlgorithm algorithm, uint32_t chunk_size, const ChunkHash& root)
      : algorithm_(algorithm), chunk_size_(chunk_size), root_(root) {}

  HashAlgorithm algorithm_;
  uint32_t chunk_size_;
  ChunkHash root_;
};

}  // namespace kvtier::keys
