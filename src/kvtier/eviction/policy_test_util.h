// Helpers for the eviction tests and benchmarks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "kvtier/common/check.h"
#include "kvtier/eviction/policy.h"
#include "kvtier/keys/object_key.h"

namespace kvtier::eviction::test_util {

// A distinct, deterministic key per id (the chunk hash is a splitmix64 stream seeded by id).
inline ObjectKey TestKey(uint64_t id) {
  keys::ChunkHash hash;
  uint64_t state = id;
  for (size_t i = 0; i < hash.bytes.size(); i += 8) {
    state += 0x9e3779b97f4a7c15ULL;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    for (size_t b = 0; b < 8; ++b) hash.bytes[i + b] = static_cast<uint8_t>(z >> (8 * b));
  }
  static const keys::NamespaceId ns = [] {
    auto id_or = keys::InternNamespace("test/model", "");
    KVT_CHECK(id_or.has_value());
    return *id_or;
  }();
  auto key = ObjectKey::Create(hash, ns, keys::KvRank{1, 0}, 0);
  KVT_CHECK(key.has_value());
  return *key;
}

// Keys for ids [first, first + count).
inline std::vector<ObjectKey> TestKeys(uint64_t first, size_t count) {
  std::vector<ObjectKey> out;
  out.reserve(count);
  for (size_t i = 0; i < count; ++i) out.push_back(TestKey(first + i));
  return out;
}

inline bool AcceptAll(const ObjectKey&) { return true; }

inline std::vector<ObjectKey> Select(
    EvictionPolicy& policy, size_t max,
    const std::function<bool(const ObjectKey&)>& eligible = AcceptAll) {
  std::vector<ObjectKey> out;
  policy.SelectVictims(max, eligible, &out);
  return out;
}

}  // namespace kvtier::eviction::test_util
