// ObjectKey: the identity of one cached object = one chunk x one kv rank x one object group,
// in one (model, cache salt) namespace.
//
// Keys are small (44 bytes) and cheap to hash and compare: the model name and the cache salt
// are interned once into a process-local NamespaceId. Never persist a NamespaceId; persist
// ToString() instead, which spells the names out and parses back.
#pragma once

#include <array>
#include <bit>
#include <compare>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <string_view>

#include "kvtier/common/result.h"

namespace kvtier::keys {

inline constexpr size_t kChunkHashBytes = 32;
inline constexpr size_t kMaxModelNameLength = 256;
inline constexpr size_t kMaxCacheSaltLength = 128;

// A chunk's prefix-chained hash. Algorithms with shorter digests (xxh3_128) zero-fill the tail.
struct ChunkHash {
  std::array<uint8_t, kChunkHashBytes> bytes{};

  // 64 lowercase hex characters.
  std::string ToHex() const;
  // Accepts exactly 64 hex characters, either case.
  static Result<ChunkHash> FromHex(std::string_view hex);
  // The first 8 bytes as a little-endian integer: already uniformly distributed.
  uint64_t Prefix64() const {
    uint64_t v;
    std::memcpy(&v, bytes.data(), sizeof(v));
    if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
    return v;
  }

  friend auto operator<=>(const ChunkHash&, const ChunkHash&) = default;
  // Four word compares, inline: keys are compared on every hash-table probe.
  friend bool operator==(const ChunkHash& a, const ChunkHash& b) {
    uint64_t x[4], y[4];
    std::memcpy(x, a.bytes.data(), sizeof(x));
    std::memcpy(y, b.bytes.data(), sizeof(y));
    return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3])) == 0;
  }
};

// Which rank of a tensor-parallel world an object belongs to.
struct KvRank {
  uint16_t world_size = 1;
  uint16_t rank = 0;

  uint32_t Packed() const { return (static_cast<uint32_t>(world_size) << 16) | rank; }
  static KvRank FromPacked(uint32_t packed) {
    return KvRank{static_cast<uint16_t>(packed >> 16), static_cast<uint16_t>(packed & 0xffff)};
  }
  // world_size >= 1 and rank < world_size.
  Status Validate() const;

  friend auto operator<=>(const KvRank&, const KvRank&) = default;
};

// An interned (model name, cache salt) pair. Process-local; 0 is never a valid id.
using NamespaceId = uint32_t;

// Validates and interns. Model name: 1..256 bytes, no '@' and no NUL ('/' is allowed, as in
// "meta-llama/Llama-3.1-8B"). Cache salt: at most 128 bytes, none of '@', '/', '\\', NUL.
// Thread-safe; the same pair always yields the same id.
Result<NamespaceId> InternNamespace(std::string_view model_name, std::string_view cache_salt);
// The names behind an id. The views stay valid for the life of the process.
// Aborts (KVT_CHECK) on an id that InternNamespace never returned.
std::string_view NamespaceModelName(NamespaceId id);
std::string_view NamespaceCacheSalt(NamespaceId id);

class ObjectKey {
 public:
  // Validates every field (names as InternNamespace, rank as KvRank::Validate).
  static Result<ObjectKey> Create(const ChunkHash& hash, std::string_view model_name, KvRank rank,
                                  uint32_t object_group, std::string_view cache_salt = {});
  // Hot-path form for a namespace interned once per request. Validates the rank only.
  static Result<ObjectKey> Create(const ChunkHash& hash, NamespaceId ns, KvRank rank,
                                  uint32_t object_group);

  // Default-constructed keys are placeholders (namespace 0); only Create() makes real ones.
  ObjectKey() = default;

  const ChunkHash& chunk_hash() const { return hash_; }
  NamespaceId namespace_id() const { return ns_; }
  std::string_view model_name() const { return NamespaceModelName(ns_); }
  std::string_view cache_salt() const { return NamespaceCacheSalt(ns_); }
  KvRank kv_rank() const { return KvRank::FromPacked(rank_); }
  uint32_t object_group() const { return group_; }

  // The same key for another rank of the world (lookups expand a chunk to every rank).
  ObjectKey WithRank(KvRank rank) const;

  // Stable text form, parsed back by Parse():
  //   <model_name>@w<world_size>r<rank>@g<object_group>@<chunk hash hex>[@<cache_salt>]
  // e.g. "meta-llama/Llama-3.1-8B@w2r1@g0@3fa4...9c" (the salt part is absent when empty).
  // Parse accepts only this canonical spelling (decimals without sign or leading zeros,
  // lowercase hex), so each key has exactly one text form.
  std::string ToString() const;
  static Result<ObjectKey> Parse(std::string_view text);

  size_t Hash() const;

  friend bool operator==(const ObjectKey& a, const ObjectKey& b) {
    return a.ns_ == b.ns_ && a.rank_ == b.rank_ && a.group_ == b.group_ && a.hash_ == b.hash_;
  }

 private:
  ChunkHash hash_;
  NamespaceId ns_ = 0;
  uint32_t rank_ = KvRank{}.Packed();
  uint32_t group_ = 0;
};

static_assert(sizeof(ObjectKey) == 44, "ObjectKey should stay compact: it is stored per object");

struct ObjectKeyHash {
  size_t operator()(const ObjectKey& k) const { return k.Hash(); }
};

}  // namespace kvtier::keys

template <>
struct std::hash<kvtier::keys::ObjectKey> {
  size_t operator()(const kvtier::keys::ObjectKey& k) const { return k.Hash(); }
};
