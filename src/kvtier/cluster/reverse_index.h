// ReverseIndex: chunk key -> its holders, sharded by key hash. Part of RegistryTree; not used
// on its own outside cluster/ and its tests.
//
// A holder is a (worker slot, location id) pair packed into 32 bits. Each key is stored once,
// in an entry of its shard (56 bytes: the 44-byte ObjectKey, two inline holders, a count; a
// third and later holders go to the shard's overflow map). Entries live in fixed-size blocks,
// so an entry never moves: its KeyRef (shard, entry index) is a stable 32-bit handle for as long
// as the key has a holder, and per-worker key sets store KeyRefs instead of keys. The shard's
// hash table stores only entry indices (4 bytes a slot) and hashes and compares through the
// entries.
//
// Concurrency: each shard has its own FastLock; every method takes the shard locks it needs,
// one at a time, and releases them before returning. Callers may hold a worker lock (the order
// is worker -> shard) but no shard lock. A KeyRef is only meaningful to the caller that keeps
// its holder in place: RegistryTree changes a worker's holders only under that worker's lock.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include <absl/functional/function_ref.h>

#include "kvtier/cluster/types.h"
#include "kvtier/common/status.h"

namespace kvtier::cluster {

using LocationId = uint8_t;
inline constexpr uint32_t kMaxLocations = 256;
inline constexpr uint32_t kMaxWorkerSlots = (1u << 24) - 1;

// (worker slot, location) in 32 bits: slot in the high 24, location in the low 8.
using Holder = uint32_t;
constexpr Holder MakeHolder(uint32_t slot, LocationId location) { return slot << 8 | location; }
constexpr uint32_t HolderSlot(Holder h) { return h >> 8; }
constexpr LocationId HolderLocation(Holder h) { return static_cast<LocationId>(h & 0xff); }

// An entry's handle: shard in the high bits, entry index in the low bits.
using KeyRef = uint32_t;

struct IndexOp {
  const ObjectKey* key = nullptr;
  bool admit = true;
};

struct IndexOpResult {
  KeyRef ref = 0;
  bool changed = false;  // the holder was added (admit) or removed (evict)
};

class ReverseIndex {
 public:
  // num_shards: a power of two in [1, 4096].
  explicit ReverseIndex(uint32_t num_shards);
  ~ReverseIndex();
  ReverseIndex(const ReverseIndex&) = delete;
  ReverseIndex& operator=(const ReverseIndex&) = delete;

  // Applies `ops` for holder `h`: an admit adds the holder (creating the entry), an evict
  // removes it (dropping the entry with its last holder). The ops of one key apply in order;
  // ops on different keys are grouped by shard. results[i] (results.size() == ops.size()) says
  // what ops[i] did; when results[i].changed, results[i].ref is the key's entry. A shard whose
  // entries are exhausted fails the admits of new keys in it (changed = false) and the call
  // returns kResourceExhausted; everything else is applied.
  Status Apply(std::span<const IndexOp> ops, Holder h, std::span<IndexOpResult> results);

  // Removes holder `h` from every entry in `refs` (each must have it); sorts `refs`.
  void RemoveHolder(std::span<KeyRef> refs, Holder h);

  // Whether `key` (hash = key.Hash()) has holder `h`.
  bool Contains(const ObjectKey& key, size_t hash, Holder h) const;

  // Calls fn(holders) under the key's shard lock when the key has holders; returns whether it
  // did. Holders come in no particular order. fn must be short and must not call into the
  // index or take a lock that ranks above a shard lock.
  bool VisitHolders(const ObjectKey& key, size_t hash,
                    absl::FunctionRef<void(std::span<const Holder>)> fn) const;

  // Appends the keys of `refs` (each must be live) to `out`, in KeyRef order; sorts `refs`.
  void KeysOf(std::span<KeyRef> refs, std::vector<ObjectKey>* out) const;

  // Calls fn(key, ref, holders) for every entry, a shard at a time under its lock.
  void ForEach(absl::FunctionRef<void(const ObjectKey&, KeyRef, std::span<const Holder>)> fn) const;

  uint64_t size() const { return static_cast<uint64_t>(keys_.load(std::memory_order_relaxed)); }
  uint64_t holders() const {
    return static_cast<uint64_t>(holders_.load(std::memory_order_relaxed));
  }
  uint32_t num_shards() const { return num_shards_; }

  // Adds the index's allocated bytes to `memory` (takes every shard lock in turn).
  void AddMemory(RegistryMemory* memory) const;

 private:
  struct Shard;

  uint32_t ShardOf(size_t hash) const {
    return shard_bits_ == 0
               ? 0
               : static_cast<uint32_t>(static_cast<uint64_t>(hash) >> (64 - shard_bits_));
  }
  KeyRef MakeRef(uint32_t shard, uint32_t index) const {
    return static_cast<KeyRef>((static_cast<uint64_t>(shard) << index_bits_) | index);
  }
  uint32_t RefShard(KeyRef ref) const {
    return static_cast<uint32_t>(static_cast<uint64_t>(ref) >> index_bits_);
  }
  uint32_t RefIndex(KeyRef ref) const {
    return static_cast<uint32_t>(ref & ((uint64_t{1} << index_bits_) - 1));
  }

  const uint32_t num_shards_;
  const uint32_t shard_bits_;
  const uint32_t index_bits_;  // 32 - shard_bits_
  std::unique_ptr<Shard[]> shards_;
  // Totals, updated once per call with the call's net change.
  std::atomic<int64_t> keys_{0};
  std::atomic<int64_t> holders_{0};
};

}  // namespace kvtier::cluster
