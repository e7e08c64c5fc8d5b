#include "kvtier/cluster/reverse_index.h"

#include <algorithm>

#include <absl/container/inlined_vector.h>

#include "kvtier/cluster/index_shard.h"
#include "kvtier/common/check.h"
#include "kvtier/sync/fast_lock.h"

namespace kvtier::cluster {

using index_internal::ApplyScratch;
using index_internal::CpuRelax;
using index_internal::FromWords;
using index_internal::HolderCount;
using index_internal::InlineHolder;
using index_internal::KeyWords;
using index_internal::kIndexBits;
using index_internal::kInlineHolders;
using index_internal::kMaxSegments;
using index_internal::kOptimisticTries;
using index_internal::kRelaxed;
using index_internal::kWordsPerEntry;
using index_internal::SegmentEntries;
using index_internal::SlotIndex;
using index_internal::Table;
using index_internal::ToWords;
using index_internal::Word;

struct ReverseIndex::Shard : index_internal::Shard {};

ReverseIndex::ReverseIndex(uint32_t num_shards, const SlotTable* slots)
    : num_shards_(num_shards),
      shard_bits_(static_cast<uint32_t>(std::countr_zero(num_shards))),
      slots_(slots),
      shards_(std::make_unique<Shard[]>(num_shards)) {
  KVT_CHECK_MSG(num_shards >= 1 && num_shards <= kMaxIndexShards && std::has_single_bit(num_shards),
                "ReverseIndex: num_shards {} is not a power of two in [1, {}]", num_shards,
                kMaxIndexShards);
}

ReverseIndex::~ReverseIndex() = default;

namespace {
KeyRef MakeRef(uint32_t shard, uint32_t index) { return shard << kIndexBits | index; }
uint32_t RefShard(KeyRef ref) { return ref >> kIndexBits; }
uint32_t RefIndex(KeyRef ref) { return ref & (kMaxEntriesPerShard - 1); }
}  // namespace

Status ReverseIndex::Apply(std::span<const IndexOp> ops, Holder h,
                           std::span<IndexOpResult> results) {
  KVT_DCHECK(results.size() == ops.size());
  thread_local ApplyScratch scratch;
  const size_t n = ops.size();
  auto& hashes = scratch.hashes;
  auto& shard_of = scratch.shard_of;
  auto& order = scratch.order;
  auto& end = scratch.group_end;
  hashes.resize(n);
  shard_of.resize(n);
  order.resize(n);
  // Counting sort of the ops by shard (stable: a key's ops keep their order).
  end.assign(num_shards_ + 1, 0);
  for (size_t i = 0; i < n; ++i) {
    hashes[i] = ops[i].key->Hash();
    shard_of[i] = ShardOf(hashes[i]);
    ++end[shard_of[i] + 1];
  }
  for (uint32_t s = 0; s < num_shards_; ++s) end[s + 1] += end[s];
  for (size_t i = 0; i < n; ++i) order[end[shard_of[i]]++] = static_cast<uint32_t>(i);
  // end[s] is now where group s ends; it begins where group s - 1 ends.

  int64_t keys_delta = 0;
  int64_t holders_delta = 0;
  bool exhausted = false;
  uint32_t begin = 0;
  for (uint32_t s = 0; s < num_shards_; ++s) {
    if (begin == end[s]) continue;
    Shard& shard = shards_[s];
    sync::FastLockHolder hold(&shard.lock);
    {
      const Table& t = *shard.tables.back();
      for (uint32_t k = begin; k < end[s]; ++k) {
        __builtin_prefetch(&t.slots[static_cast<uint32_t>(hashes[order[k]]) & t.mask]);
      }
    }
    shard.BeginWrite();
    for (uint32_t k = begin; k < end[s]; ++k) {
      const uint32_t i = order[k];
      const KeyWords kw = ToWords(*ops[i].key);
      const auto h32 = static_cast<uint32_t>(hashes[i]);
      IndexOpResult& r = results[i];
      r = IndexOpResult{};
      const Shard::Found f = shard.Find(kw, h32);
      if (ops[i].admit) {
        uint32_t index = f.index;
        if (f.found) {
          r.changed = shard.AddHolder(index, shard.EntryAt(index), h);
        } else if (shard.Insert(kw, h32, f.pos, h, &index)) {
          r.changed = true;
          ++keys_delta;
        } else {
          exhausted = true;
          continue;
        }
        r.ref = MakeRef(s, index);
        holders_delta += r.changed ? 1 : 0;
      } else {
        if (!f.found) continue;
        Word* e = shard.EntryAt(f.index);
        r.ref = MakeRef(s, f.index);
        r.changed = shard.RemoveHolder(f.index, e, h);
        if (!r.changed) continue;
        --holders_delta;
        if (HolderCount(e) == 0) {
          shard.Erase(f.pos, f.index);
          --keys_delta;
        }
      }
    }
    shard.EndWrite();
    begin = end[s];
  }
  if (keys_delta != 0) keys_.fetch_add(keys_delta, kRelaxed);
  if (holders_delta != 0) holders_.fetch_add(holders_delta, kRelaxed);
  if (exhausted) {
    return Status::ResourceExhausted("cluster registry: a reverse-index shard is full");
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
    shard.BeginWrite();
    for (; k < refs.size() && RefShard(refs[k]) == s; ++k) {
      const uint32_t index = RefIndex(refs[k]);
      Word* e = shard.EntryAt(index);
      const bool removed = shard.RemoveHolder(index, e, h);
      KVT_DCHECK_MSG(removed, "reverse index: holder {:#x} missing from entry {:#x}", h, refs[k]);
      if (!removed) continue;
      --holders_delta;
      if (HolderCount(e) == 0) {
        const ObjectKey key = FromWords(e);
        const Shard::Found f = shard.Find(ToWords(key), static_cast<uint32_t>(key.Hash()));
        KVT_DCHECK(f.found && f.index == index);
        shard.Erase(f.pos, index);
        --keys_delta;
      }
    }
    shard.EndWrite();
  }
  if (keys_delta != 0) keys_.fetch_add(keys_delta, kRelaxed);
  if (holders_delta != 0) holders_.fetch_add(holders_delta, kRelaxed);
}

bool ReverseIndex::ReadHolders(const ObjectKey& key, size_t hash, ResolvedHolders* out) const {
  const Shard& shard = shards_[ShardOf(hash)];
  const KeyWords kw = ToWords(key);
  const auto h32 = static_cast<uint32_t>(hash);
  for (int attempt = 0; attempt < kOptimisticTries; ++attempt) {
    out->clear();
    const uint64_t before = shard.seq.load(std::memory_order_acquire);
    if ((before & 1) != 0) {
      CpuRelax();
      continue;
    }
    bool retry = false;
    bool needs_lock = false;
    const Word* e =
        shard.ProbeOptimistic(*shard.table.load(std::memory_order_acquire), kw, h32, &retry);
    if (e != nullptr) {
      const uint32_t n = HolderCount(e);
      if (n > kInlineHolders) {
        needs_lock = true;
      } else {
        for (uint32_t k = 0; k < n; ++k) {
          const Holder holder = InlineHolder(e, k);
          out->push_back(ResolvedHolder{holder, slots_->Identity(HolderSlot(holder))});
        }
      }
    }
    std::atomic_thread_fence(std::memory_order_acquire);
    if (retry || shard.seq.load(kRelaxed) != before) continue;
    if (needs_lock) break;
    return e != nullptr;
  }
  out->clear();
  sync::FastLockHolder hold(&shard.lock);
  const Shard::Found f = shard.Find(kw, h32);
  if (!f.found) return false;
  absl::InlinedVector<Holder, 8> holders;
  shard.Holders(f.index, shard.EntryAt(f.index), &holders);
  for (Holder holder : holders) {
    out->push_back(ResolvedHolder{holder, slots_->Identity(HolderSlot(holder))});
  }
  return true;
}

bool ReverseIndex::Contains(const ObjectKey& key, size_t hash, Holder h) const {
  const Shard& shard = shards_[ShardOf(hash)];
  const KeyWords kw = ToWords(key);
  const auto h32 = static_cast<uint32_t>(hash);
  for (int attempt = 0; attempt < kOptimisticTries; ++attempt) {
    const uint64_t before = shard.seq.load(std::memory_order_acquire);
    if ((before & 1) != 0) {
      CpuRelax();
      continue;
    }
    bool retry = false;
    bool has = false;
    bool needs_lock = false;
    const Word* e =
        shard.ProbeOptimistic(*shard.table.load(std::memory_order_acquire), kw, h32, &retry);
    if (e != nullptr) {
      const uint32_t n = HolderCount(e);
      needs_lock = n > kInlineHolders;
      for (uint32_t k = 0; k < std::min(n, kInlineHolders); ++k) {
        has = has || InlineHolder(e, k) == h;
      }
    }
    std::atomic_thread_fence(std::memory_order_acquire);
    if (retry || shard.seq.load(kRelaxed) != before) continue;
    if (needs_lock && !has) break;
    return has;
  }
  sync::FastLockHolder hold(&shard.lock);
  const Shard::Found f = shard.Find(kw, h32);
  return f.found && shard.HasHolder(f.index, shard.EntryAt(f.index), h);
}

bool ReverseIndex::VisitHoldersLocked(const ObjectKey& key, size_t hash,
                                      absl::FunctionRef<void(std::span<const Holder>)> fn) const {
  const Shard& shard = shards_[ShardOf(hash)];
  sync::FastLockHolder hold(&shard.lock);
  const Shard::Found f = shard.Find(ToWords(key), static_cast<uint32_t>(hash));
  if (!f.found) return false;
  absl::InlinedVector<Holder, 8> holders;
  shard.Holders(f.index, shard.EntryAt(f.index), &holders);
  fn(std::span<const Holder>(holders.data(), holders.size()));
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
      const Word* e = shard.EntryAt(RefIndex(refs[k]));
      KVT_DCHECK(HolderCount(e) > 0);
      out->push_back(FromWords(e));
    }
  }
}

void ReverseIndex::ForEach(
    absl::FunctionRef<void(const ObjectKey&, KeyRef, std::span<const Holder>)> fn) const {
  absl::InlinedVector<Holder, 8> holders;
  for (uint32_t s = 0; s < num_shards_; ++s) {
    const Shard& shard = shards_[s];
    sync::FastLockHolder hold(&shard.lock);
    const Table& t = *shard.tables.back();
    for (uint64_t p = 0; p <= t.mask; ++p) {
      const uint64_t v = t.slots[p].load(kRelaxed);
      if (v == 0) continue;
      const uint32_t index = SlotIndex(v);
      const Word* e = shard.EntryAt(index);
      shard.Holders(index, e, &holders);
      fn(FromWords(e), MakeRef(s, index), std::span<const Holder>(holders.data(), holders.size()));
    }
  }
}

void ReverseIndex::AddMemory(RegistryMemory* memory) const {
  for (uint32_t s = 0; s < num_shards_; ++s) {
    const Shard& shard = shards_[s];
    sync::FastLockHolder hold(&shard.lock);
    for (const auto& t : shard.tables) memory->index_table_bytes += (t->mask + 1) * sizeof(Word);
    for (uint32_t seg = 0; seg < shard.storage.size(); ++seg) {
      memory->entry_bytes += uint64_t{SegmentEntries(seg)} * kWordsPerEntry * sizeof(Word);
    }
    memory->entry_bytes +=
        kMaxSegments * sizeof(Word*) + shard.free_list.capacity() * sizeof(uint32_t);
    memory->overflow_bytes +=
        shard.overflow.capacity() * (sizeof(std::pair<uint32_t, std::vector<Holder>>) + 1);
    for (const auto& [index, more] : shard.overflow) {
      memory->overflow_bytes += more.capacity() * sizeof(Holder);
    }
  }
}

}  // namespace kvtier::cluster
