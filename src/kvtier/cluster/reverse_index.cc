#include "kvtier/cluster/reverse_index.h"

#include <algorithm>
#include <array>
#include <bit>

#include <absl/container/flat_hash_map.h>
#include <absl/container/flat_hash_set.h>
#include <absl/container/inlined_vector.h>

#include "kvtier/common/check.h"
#include "kvtier/sync/fast_lock.h"

namespace kvtier::cluster {
namespace {

constexpr uint32_t kBlockShift = 10;
constexpr uint32_t kBlockEntries = 1u << kBlockShift;  // 56 KiB blocks
constexpr uint32_t kInlineHolders = 2;

struct Entry {
  ObjectKey key;
  Holder inline_holders[kInlineHolders];
  uint32_t num_holders;  // 0: free; > kInlineHolders: the rest are in the shard's overflow
};
static_assert(sizeof(Entry) == 56, "an index entry should stay at 56 bytes");

// A key being looked up, with its hash computed once.
struct Probe {
  const ObjectKey* key;
  size_t hash;
};

uint32_t Log2(uint32_t v) { return static_cast<uint32_t>(std::countr_zero(v)); }

// Per-thread scratch of Apply: no allocation per batch once warm.
struct ApplyScratch {
  std::vector<size_t> hashes;
  std::vector<uint32_t> shard_of;
  std::vector<uint32_t> order;  // op indices grouped by shard, each group in op order
  std::vector<uint32_t> group_start;
};

}  // namespace

struct ReverseIndex::Shard {
  // The table stores entry indices; it hashes and compares through the entries. Its functors
  // run only inside table calls, which all happen under `lock`.
  struct IndexHash {
    using is_transparent = void;
    const Shard* shard;
    size_t operator()(uint32_t index) const KVT_NO_THREAD_SAFETY_ANALYSIS {
      return shard->At(index).key.Hash();
    }
    size_t operator()(const Probe& p) const { return p.hash; }
  };
  struct IndexEq {
    using is_transparent = void;
    const Shard* shard;
    bool operator()(uint32_t a, uint32_t b) const { return a == b; }
    bool operator()(uint32_t index, const Probe& p) const KVT_NO_THREAD_SAFETY_ANALYSIS {
      return shard->At(index).key == *p.key;
    }
    bool operator()(const Probe& p, uint32_t index) const { return (*this)(index, p); }
  };

  Shard() : table(0, IndexHash{this}, IndexEq{this}) {}

  Entry& At(uint32_t i) KVT_REQUIRES(lock) {
    return blocks[i >> kBlockShift][i & (kBlockEntries - 1)];
  }
  const Entry& At(uint32_t i) const KVT_REQUIRES(lock) {
    return blocks[i >> kBlockShift][i & (kBlockEntries - 1)];
  }

  // A free entry index, or false when `max_entries` are in use.
  bool Allocate(uint32_t max_entries, uint32_t* out) KVT_REQUIRES(lock) {
    if (!free_list.empty()) {
      *out = free_list.back();
      free_list.pop_back();
      return true;
    }
    if (used >= max_entries) return false;
    if ((used & (kBlockEntries - 1)) == 0) {
      blocks.push_back(std::make_unique_for_overwrite<Entry[]>(kBlockEntries));
    }
    *out = used++;
    return true;
  }

  bool HasHolder(uint32_t i, const Entry& e, Holder h) const KVT_REQUIRES(lock) {
    uint32_t n = std::min(e.num_holders, kInlineHolders);
    for (uint32_t k = 0; k < n; ++k) {
      if (e.inline_holders[k] == h) return true;
    }
    if (e.num_holders > kInlineHolders) {
      const auto& more = overflow.at(i);
      return std::find(more.begin(), more.end(), h) != more.end();
    }
    return false;
  }

  // Adds `h` unless present; true when added.
  bool AddHolder(uint32_t i, Entry& e, Holder h) KVT_REQUIRES(lock) {
    if (HasHolder(i, e, h)) return false;
    if (e.num_holders < kInlineHolders) {
      e.inline_holders[e.num_holders] = h;
    } else {
      overflow[i].push_back(h);
    }
    ++e.num_holders;
    return true;
  }

  // Removes `h` if present (the last holder takes its place); true when removed.
  bool RemoveHolder(uint32_t i, Entry& e, Holder h) KVT_REQUIRES(lock) {
    Holder* slot = nullptr;
    uint32_t n = std::min(e.num_holders, kInlineHolders);
    for (uint32_t k = 0; k < n && slot == nullptr; ++k) {
      if (e.inline_holders[k] == h) slot = &e.inline_holders[k];
    }
    std::vector<Holder>* more = nullptr;
    if (e.num_holders > kInlineHolders) {
      more = &overflow.at(i);
      if (slot == nullptr) {
        auto it = std::find(more->begin(), more->end(), h);
        if (it != more->end()) slot = &*it;
      }
    }
    if (slot == nullptr) return false;
    if (more != nullptr) {
      *slot = more->back();
      more->pop_back();
      if (more->empty()) overflow.erase(i);
    } else {
      *slot = e.inline_holders[e.num_holders - 1];
    }
    --e.num_holders;
    return true;
  }

  // Drops the entry of a key whose last holder left.
  void Release(uint32_t i, const Entry& e, size_t hash) KVT_REQUIRES(lock) {
    table.erase(Probe{&e.key, hash});
    free_list.push_back(i);
  }

  // The holders of a live entry, contiguous.
  void Holders(uint32_t i, const Entry& e, absl::InlinedVector<Holder, 8>* out) const
      KVT_REQUIRES(lock) {
    out->assign(e.inline_holders, e.inline_holders + std::min(e.num_holders, kInlineHolders));
    if (e.num_holders > kInlineHolders) {
      const auto& more = overflow.at(i);
      out->insert(out->end(), more.begin(), more.end());
    }
  }

  mutable sync::FastLock lock;
  absl::flat_hash_set<uint32_t, IndexHash, IndexEq> table KVT_GUARDED_BY(lock);
  std::vector<std::unique_ptr<Entry[]>> blocks KVT_GUARDED_BY(lock);
  uint32_t used KVT_GUARDED_BY(lock) = 0;  // entry indices handed out so far
  std::vector<uint32_t> free_list KVT_GUARDED_BY(lock);
  absl::flat_hash_map<uint32_t, std::vector<Holder>> overflow KVT_GUARDED_BY(lock);
  // Keep neighbouring shards' locks off each other's cache lines.
  char pad[64];
};

ReverseIndex::ReverseIndex(uint32_t num_shards)
    : num_shards_(num_shards),
      shard_bits_(Log2(num_shards)),
      index_bits_(32 - shard_bits_),
      shards_(std::make_unique<Shard[]>(num_shards)) {
  KVT_CHECK_MSG(num_shards >= 1 && num_shards <= 4096 && std::has_single_bit(num_shards),
                "ReverseIndex: num_shards {} is not a power of two in [1, 4096]", num_shards);
}

ReverseIndex::~ReverseIndex() = default;

Status ReverseIndex::Apply(std::span<const IndexOp> ops, Holder h,
                           std::span<IndexOpResult> results) {
  KVT_DCHECK(results.size() == ops.size());
  thread_local ApplyScratch scratch;
  const size_t n = ops.size();
  auto& hashes = scratch.hashes;
  auto& shard_of = scratch.shard_of;
  auto& order = scratch.order;
  auto& start = scratch.group_start;
  hashes.resize(n);
  shard_of.resize(n);
  order.resize(n);
  // Counting sort of the ops by shard (stable: a key's ops keep their order).
  start.assign(num_shards_ + 1, 0);
  for (size_t i = 0; i < n; ++i) {
    hashes[i] = ops[i].key->Hash();
    shard_of[i] = ShardOf(hashes[i]);
    ++start[shard_of[i] + 1];
  }
  for (uint32_t s = 0; s < num_shards_; ++s) start[s + 1] += start[s];
  for (size_t i = 0; i < n; ++i) order[start[shard_of[i]]++] = static_cast<uint32_t>(i);
  // start[s] is now the end of group s; group s begins where group s - 1 ends.

  const uint32_t max_entries =
      index_bits_ >= 32 ? UINT32_MAX : static_cast<uint32_t>(uint64_t{1} << index_bits_);
  int64_t keys_delta = 0;
  int64_t holders_delta = 0;
  bool exhausted = false;
  uint32_t begin = 0;
  for (uint32_t s = 0; s < num_shards_; ++s) {
    const uint32_t end = start[s];
    if (begin == end) continue;
    Shard& shard = shards_[s];
    sync::FastLockHolder hold(&shard.lock);
    for (uint32_t k = begin; k < end; ++k) {
      const uint32_t i = order[k];
      shard.table.prefetch(Probe{ops[i].key, hashes[i]});
    }
    for (uint32_t k = begin; k < end; ++k) {
      const uint32_t i = order[k];
      const Probe probe{ops[i].key, hashes[i]};
      IndexOpResult& r = results[i];
      r = IndexOpResult{};
      if (ops[i].admit) {
        uint32_t index = 0;
        bool created = false;
        if (shard.free_list.empty() && shard.used >= max_entries) {
          auto it = shard.table.find(probe);
          if (it == shard.table.end()) {
            exhausted = true;
            continue;
          }
          index = *it;
        } else {
          auto it = shard.table.lazy_emplace(
              probe, [&](const auto& construct) KVT_NO_THREAD_SAFETY_ANALYSIS {
                uint32_t fresh = 0;
                KVT_CHECK(shard.Allocate(max_entries, &fresh));
                Entry& e = shard.At(fresh);
                e.key = *ops[i].key;
                e.num_holders = 0;
                created = true;
                construct(fresh);
              });
          index = *it;
        }
        Entry& e = shard.At(index);
        r.ref = MakeRef(s, index);
        r.changed = shard.AddHolder(index, e, h);
        keys_delta += created ? 1 : 0;
        holders_delta += r.changed ? 1 : 0;
      } else {
        auto it = shard.table.find(probe);
        if (it == shard.table.end()) continue;
        const uint32_t index = *it;
        Entry& e = shard.At(index);
        r.ref = MakeRef(s, index);
        r.changed = shard.RemoveHolder(index, e, h);
        if (!r.changed) continue;
        --holders_delta;
        if (e.num_holders == 0) {
          shard.Release(index, e, hashes[i]);
          --keys_delta;
        }
      }
    }
    begin = end;
  }
  if (keys_delta != 0) keys_.fetch_add(keys_delta, std::memory_order_relaxed);
  if (holders_delta != 0) holders_.fetch_add(holders_delta, std::memory_order_relaxed);
  if (exhausted) {
    return Status::ResourceExhausted("cluster registry: reverse-index shard is full");
  }
  return Status::OK();
}

void ReverseIndex::RemoveHolder(std::span<KeyRef> refs, Holder h) {
  std::sort(refs.begin(), refs.end());
  int64_t keys_delta = 0;
  int64_t holders_delta = 0;
  size_t k = 0;
  while (k < refs.size()) {
    const uint32_t s = RefShard(refs[k]);
    Shard& shard = shards_[s];
    sync::FastLockHolder hold(&shard.lock);
    for (; k < refs.size() && RefShard(refs[k]) == s; ++k) {
      const uint32_t index = RefIndex(refs[k]);
      Entry& e = shard.At(index);
      const bool removed = shard.RemoveHolder(index, e, h);
      KVT_DCHECK_MSG(removed, "reverse index: holder {:#x} missing from entry {:#x}", h, refs[k]);
      if (!removed) continue;
      --holders_delta;
      if (e.num_holders == 0) {
        shard.Release(index, e, e.key.Hash());
        --keys_delta;
      }
    }
  }
  if (keys_delta != 0) keys_.fetch_add(keys_delta, std::memory_order_relaxed);
  if (holders_delta != 0) holders_.fetch_add(holders_delta, std::memory_order_relaxed);
}

bool ReverseIndex::Contains(const ObjectKey& key, size_t hash, Holder h) const {
  const Shard& shard = shards_[ShardOf(hash)];
  sync::FastLockHolder hold(&shard.lock);
  auto it = shard.table.find(Probe{&key, hash});
  if (it == shard.table.end()) return false;
  return shard.HasHolder(*it, shard.At(*it), h);
}

bool ReverseIndex::VisitHolders(const ObjectKey& key, size_t hash,
                                absl::FunctionRef<void(std::span<const Holder>)> fn) const {
  const Shard& shard = shards_[ShardOf(hash)];
  sync::FastLockHolder hold(&shard.lock);
  auto it = shard.table.find(Probe{&key, hash});
  if (it == shard.table.end()) return false;
  const Entry& e = shard.At(*it);
  if (e.num_holders <= kInlineHolders) {
    fn(std::span<const Holder>(e.inline_holders, e.num_holders));
  } else {
    absl::InlinedVector<Holder, 8> all;
    shard.Holders(*it, e, &all);
    fn(std::span<const Holder>(all.data(), all.size()));
  }
  return true;
}

void ReverseIndex::KeysOf(std::span<KeyRef> refs, std::vector<ObjectKey>* out) const {
  std::sort(refs.begin(), refs.end());
  out->reserve(out->size() + refs.size());
  size_t k = 0;
  while (k < refs.size()) {
    const uint32_t s = RefShard(refs[k]);
    const Shard& shard = shards_[s];
    sync::FastLockHolder hold(&shard.lock);
    for (; k < refs.size() && RefShard(refs[k]) == s; ++k) {
      const Entry& e = shard.At(RefIndex(refs[k]));
      KVT_DCHECK(e.num_holders > 0);
      out->push_back(e.key);
    }
  }
}

void ReverseIndex::ForEach(
    absl::FunctionRef<void(const ObjectKey&, KeyRef, std::span<const Holder>)> fn) const {
  absl::InlinedVector<Holder, 8> holders;
  for (uint32_t s = 0; s < num_shards_; ++s) {
    const Shard& shard = shards_[s];
    sync::FastLockHolder hold(&shard.lock);
    for (uint32_t index : shard.table) {
      const Entry& e = shard.At(index);
      shard.Holders(index, e, &holders);
      fn(e.key, MakeRef(s, index), std::span<const Holder>(holders.data(), holders.size()));
    }
  }
}

void ReverseIndex::AddMemory(RegistryMemory* memory) const {
  for (uint32_t s = 0; s < num_shards_; ++s) {
    const Shard& shard = shards_[s];
    sync::FastLockHolder hold(&shard.lock);
    memory->index_table_bytes += shard.table.capacity() * (sizeof(uint32_t) + 1);
    memory->entry_bytes += shard.blocks.size() * kBlockEntries * sizeof(Entry) +
                           shard.free_list.capacity() * sizeof(uint32_t);
    memory->overflow_bytes +=
        shard.overflow.capacity() * (sizeof(std::pair<uint32_t, std::vector<Holder>>) + 1);
    for (const auto& [index, more] : shard.overflow) {
      memory->overflow_bytes += more.capacity() * sizeof(Holder);
    }
  }
}

}  // namespace kvtier::cluster
