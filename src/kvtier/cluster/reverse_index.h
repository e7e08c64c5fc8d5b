// ReverseIndex: chunk key -> its holders, sharded by key hash. Part of RegistryTree; not used
// on its own outside cluster/ and its tests.
//
// A holder is a (worker slot, location id) pair packed into 32 bits. Each key is stored once,
// in a 64-byte (one cache line) entry of its shard: the 44-byte ObjectKey, a holder count and
// four inline holders (a fifth and later holders go to the shard's overflow map). Entries live
// in segments that never move (doubling from 1K entries to 32K = 2 MiB, then 2 MiB each,
// advised onto transparent huge pages), so an entry's KeyRef (shard, entry index) is a stable
// 32-bit handle for as long as the key has a holder: per-worker key sets store KeyRefs, not
// keys. Each shard finds entries through its own open-addressing table (linear probing,
// backward-shift deletion) of 8-byte slots: 32 bits of the key's hash and the entry index.
// Tables grow x2 at 70% load and never shrink; a replaced table is kept until the index is
// destroyed, because a lock-free reader may still be probing it (at most the size of the live
// table: growth is geometric).
//
// Concurrency:
//  - Writers (Apply, RemoveHolder) hold the shard's FastLock and bracket their changes with
//    the shard's sequence number (odd while changing). Callers may hold a worker lock (order:
//    worker -> shard) but no shard lock.
//  - ReadHolders and Contains read optimistically, without any read-modify-write: every
//    shared word is an atomic, and an unchanged sequence number validates what was read (the
//    seqlock pattern). After a few failed tries, or for a key with more than two holders, they
//    take the shard lock instead. So independent lookups overlap their cache misses.
//  - KeysOf, ForEach and VisitHoldersLocked take the shard lock.
// A KeyRef is only meaningful to the caller that keeps its holder in place: RegistryTree
// changes a worker's holders only under that worker's lock.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include <absl/container/inlined_vector.h>
#include <absl/functional/function_ref.h>

#include "kvtier/cluster/slot_table.h"
#include "kvtier/cluster/types.h"
#include "kvtier/common/status.h"

namespace kvtier::cluster {

using LocationId = uint8_t;
inline constexpr uint32_t kMaxLocations = 256;
inline constexpr uint32_t kMaxWorkerSlots = (1u << 24) - 1;
inline constexpr uint32_t kMaxIndexShards = 1024;
// Entries per shard (keys x 1 at a time): 4M, so 256M keys with 64 shards.
inline constexpr uint32_t kMaxEntriesPerShard = 1u << 22;

// (worker slot, location) in 32 bits: slot in the high 24, location in the low 8.
using Holder = uint32_t;
constexpr Holder MakeHolder(uint32_t slot, LocationId location) { return slot << 8 | location; }
constexpr uint32_t HolderSlot(Holder h) { return h >> 8; }
constexpr LocationId HolderLocation(Holder h) { return static_cast<LocationId>(h & 0xff); }

// An entry's handle: shard in the high 10 bits, entry index in the low 22.
using KeyRef = uint32_t;

struct IndexOp {
  const ObjectKey* key = nullptr;
  bool admit = true;
};

struct IndexOpResult {
  KeyRef ref = 0;
  bool changed = false;  // the holder was added (admit) or removed (evict)
};

// A holder with the identity its slot named at the moment the holder was read.
struct ResolvedHolder {
  Holder holder = 0;
  const WorkerIdentity* identity = nullptr;
};
using ResolvedHolders = absl::InlinedVector<ResolvedHolder, 4>;

class ReverseIndex {
 public:
  // num_shards: a power of two in [1, kMaxIndexShards]. `slots` resolves holders to
  // identities and must outlive the index.
  ReverseIndex(uint32_t num_shards, const SlotTable* slots);
  ~ReverseIndex();
  ReverseIndex(const ReverseIndex&) = delete;
  ReverseIndex& operator=(const ReverseIndex&) = delete;

  // Applies `ops` for holder `h`: an admit adds the holder (creating the entry), an evict
  // removes it (dropping the entry with its last holder). The ops of one key apply in order;
  // ops on different keys are grouped by shard. results[i] (results.size() == ops.size()) says
  // what ops[i] did; when results[i].changed, results[i].ref is the key's entry. A shard out of
  // entries fails the admits of new keys in it (changed = false) and the call returns
  // kResourceExhausted; everything else is applied.
  Status Apply(std::span<const IndexOp> ops, Holder h, std::span<IndexOpResult> results);

  // Removes holder `h` from every entry in `refs` (each must have it); sorts `refs`.
  void RemoveHolder(std::span<KeyRef> refs, Holder h);

  // The holders of `key` (hash = key.Hash()) as of one instant during the call, each with its
  // slot's identity at that instant; false (and `out` empty) when the key has none.
  bool ReadHolders(const ObjectKey& key, size_t hash, ResolvedHolders* out) const;

  // Whether `key` has holder `h`.
  bool Contains(const ObjectKey& key, size_t hash, Holder h) const;

  // Calls fn(holders) under the key's shard lock when the key has holders; returns whether it
  // did. fn must be short and must not call into the index or take a lock.
  bool VisitHoldersLocked(const ObjectKey& key, size_t hash,
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

  const uint32_t num_shards_;
  const uint32_t shard_bits_;
  const SlotTable* const slots_;
  std::unique_ptr<Shard[]> shards_;
  // Totals, updated once per call with the call's net change.
  std::atomic<int64_t> keys_{0};
  std::atomic<int64_t> holders_{0};
};

}  // namespace kvtier::cluster
