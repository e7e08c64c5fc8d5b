// Internals of ReverseIndex: the entry layout, the slot tables and the shard. Included by
// reverse_index.cc only.
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <absl/container/inlined_vector.h>
#include <sys/mman.h>

#include "kvtier/cluster/reverse_index.h"
#include "kvtier/common/check.h"
#include "kvtier/sync/fast_lock.h"

namespace kvtier::cluster {
namespace index_internal {

using Word = std::atomic<uint64_t>;
constexpr auto kRelaxed = std::memory_order_relaxed;

constexpr uint32_t kIndexBits = 22;
static_assert(kMaxEntriesPerShard == 1u << kIndexBits);
static_assert(kMaxIndexShards == 1u << (32 - kIndexBits));
constexpr uint32_t kInlineHolders = 4;
constexpr int kOptimisticTries = 4;
constexpr uint64_t kInitialSlots = 16;
constexpr size_t kHugePage = 2u << 20;

// An entry is one 64-byte cache line of 8 words, all atomics so that optimistic readers never
// race:
//   0..3  chunk hash            4  namespace id | kv rank << 32
//   5     object group | holder count << 32
//   6     holder 0 | holder 1 << 32       7  holder 2 | holder 3 << 32
constexpr uint32_t kWordsPerEntry = 8;
constexpr int kNsRank = 4;
constexpr int kGroupCount = 5;
constexpr int kInline = 6;

// Entries live in segments that never move: six doubling ones (1K .. 32K entries), then 32K
// entries (2 MiB, on huge pages) each. Small registries stay small; large ones need few TLB
// entries.
constexpr uint32_t kFirstSegmentShift = 10;
constexpr uint32_t kDoublingSegments = 6;
constexpr uint32_t kBigSegmentShift = kFirstSegmentShift + kDoublingSegments - 1;  // 32K
constexpr uint32_t kDoublingEntries = ((1u << kDoublingSegments) - 1) << kFirstSegmentShift;
constexpr uint32_t kMaxSegments =
    kDoublingSegments + (kMaxEntriesPerShard - kDoublingEntries + (1u << kBigSegmentShift) - 1) /
                            (1u << kBigSegmentShift);

struct SegmentPos {
  uint32_t segment;
  uint32_t offset;
};
[[gnu::always_inline]] inline SegmentPos SegmentOf(uint32_t index) {
  if (index < kDoublingEntries) {
    // (index >> 10) + 1 is in [1, 63]: its highest bit is the segment, 0..5.
    const auto s = static_cast<uint32_t>(std::bit_width((index >> kFirstSegmentShift) + 1) - 1);
    return {s, index - (((1u << (s & 31)) - 1) << kFirstSegmentShift)};
  }
  const uint32_t rest = index - kDoublingEntries;
  return {kDoublingSegments + (rest >> kBigSegmentShift), rest & ((1u << kBigSegmentShift) - 1)};
}
inline uint32_t SegmentEntries(uint32_t segment) {
  return 1u << (segment < kDoublingSegments ? kFirstSegmentShift + segment : kBigSegmentShift);
}

// Zeroed atomic words, cache-line aligned; 2 MiB aligned and advised onto transparent huge
// pages from 2 MiB up.
struct FreeWords {
  void operator()(std::atomic<uint64_t>* p) const { std::free(p); }
};
using WordArray = std::unique_ptr<std::atomic<uint64_t>[], FreeWords>;
inline WordArray AllocateWords(size_t n) {
  const size_t align = n * sizeof(uint64_t) >= kHugePage ? kHugePage : 64;
  const size_t bytes = (n * sizeof(uint64_t) + align - 1) / align * align;
  void* p = std::aligned_alloc(align, bytes);
  KVT_CHECK_MSG(p != nullptr, "reverse index: out of memory ({} bytes)", bytes);
  if (align == kHugePage) madvise(p, bytes, MADV_HUGEPAGE);  // advice only: may be ignored
  auto* words = static_cast<std::atomic<uint64_t>*>(p);
  for (size_t i = 0; i < n; ++i) std::construct_at(words + i, uint64_t{0});
  return WordArray(words);
}

struct KeyWords {
  uint64_t w[6];  // w[5]: the object group only
};

inline KeyWords ToWords(const ObjectKey& key) {
  KeyWords k;
  std::memcpy(k.w, key.chunk_hash().bytes.data(), keys::kChunkHashBytes);
  k.w[kNsRank] = uint64_t{key.namespace_id()} | uint64_t{key.kv_rank().Packed()} << 32;
  k.w[kGroupCount] = key.object_group();
  return k;
}

inline ObjectKey FromWords(const Word* e) {
  keys::ChunkHash hash;
  for (int i = 0; i < 4; ++i) {
    const uint64_t w = e[i].load(kRelaxed);
    std::memcpy(hash.bytes.data() + static_cast<size_t>(i) * 8, &w, 8);
  }
  const uint64_t ns_rank = e[kNsRank].load(kRelaxed);
  auto key = ObjectKey::Create(hash, static_cast<keys::NamespaceId>(ns_rank),
                               keys::KvRank::FromPacked(static_cast<uint32_t>(ns_rank >> 32)),
                               static_cast<uint32_t>(e[kGroupCount].load(kRelaxed)));
  KVT_CHECK(key.has_value());
  return *key;
}

[[gnu::always_inline]] inline bool Matches(const Word* e, const KeyWords& k) {
  return e[0].load(kRelaxed) == k.w[0] && e[1].load(kRelaxed) == k.w[1] &&
         e[2].load(kRelaxed) == k.w[2] && e[3].load(kRelaxed) == k.w[3] &&
         e[kNsRank].load(kRelaxed) == k.w[kNsRank] &&
         static_cast<uint32_t>(e[kGroupCount].load(kRelaxed)) == k.w[kGroupCount];
}

inline uint32_t HolderCount(const Word* e) {
  return static_cast<uint32_t>(e[kGroupCount].load(kRelaxed) >> 32);
}
inline Holder InlineHolder(const Word* e, uint32_t k) {
  const uint64_t w = e[kInline + k / 2].load(kRelaxed);
  return static_cast<Holder>(k % 2 == 0 ? w : w >> 32);
}

// A slot: the key hash's low 32 bits (the probe start and a filter) and entry index + 1 (0 is
// an empty slot).
inline uint64_t SlotValue(uint32_t h32, uint32_t index) {
  return uint64_t{h32} << 32 | (index + 1);
}
inline uint32_t SlotHash(uint64_t v) { return static_cast<uint32_t>(v >> 32); }
inline uint32_t SlotIndex(uint64_t v) { return static_cast<uint32_t>(v) - 1; }

struct Table {
  explicit Table(uint64_t n) : mask(n - 1), slots(AllocateWords(n)) {}
  const uint64_t mask;
  const WordArray slots;
};

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Per-thread scratch of Apply: no allocation per batch once warm.
struct ApplyScratch {
  std::vector<size_t> hashes;
  std::vector<uint32_t> shard_of;
  std::vector<uint32_t> order;  // op indices grouped by shard, each group in op order
  std::vector<uint32_t> group_end;
};

// One shard of the reverse index (ReverseIndex::Shard derives from it).
struct alignas(64) Shard {
  Shard() : blocks(std::make_unique<std::atomic<Word*>[]>(kMaxSegments)) {
    tables.push_back(std::make_unique<Table>(kInitialSlots));
    table.store(tables.back().get(), std::memory_order_release);
  }

  // ---- Read by optimistic readers (atomics only).

  // nullptr when the segment is not (visibly) published yet.
  Word* EntryAt(uint32_t index) const {
    const SegmentPos pos = SegmentOf(index);
    Word* segment = blocks[pos.segment].load(std::memory_order_acquire);
    return segment == nullptr ? nullptr : segment + size_t{pos.offset} * kWordsPerEntry;
  }

  // The entry of `k` in `t`, read without the lock. *retry when the view was torn.
  [[gnu::always_inline]] const Word* ProbeOptimistic(const Table& t, const KeyWords& k,
                                                     uint32_t h32, bool* retry) const {
    uint64_t pos = h32 & t.mask;
    for (uint64_t n = 0; n <= t.mask; ++n) {
      const uint64_t v = t.slots[pos].load(kRelaxed);
      if (v == 0) return nullptr;
      if (SlotHash(v) == h32) {
        const uint32_t index = SlotIndex(v);
        const Word* e = index < kMaxEntriesPerShard ? EntryAt(index) : nullptr;
        if (e == nullptr) break;
        if (Matches(e, k)) return e;
      }
      pos = (pos + 1) & t.mask;
    }
    *retry = true;
    return nullptr;
  }

  // ---- Writers (under lock).

  // Changes between BeginWrite and EndWrite invalidate concurrent optimistic reads.
  void BeginWrite() KVT_REQUIRES(lock) {
    seq.store(seq.load(kRelaxed) + 1, kRelaxed);
    std::atomic_thread_fence(std::memory_order_release);
  }
  void EndWrite() KVT_REQUIRES(lock) {
    seq.store(seq.load(kRelaxed) + 1, std::memory_order_release);
  }

  struct Found {
    uint64_t pos;  // the key's slot, or the empty slot that ends its probe
    bool found;
    uint32_t index;
  };
  Found Find(const KeyWords& k, uint32_t h32) const KVT_REQUIRES(lock) {
    const Table& t = *tables.back();
    uint64_t pos = h32 & t.mask;
    for (;;) {  // the table is never full
      const uint64_t v = t.slots[pos].load(kRelaxed);
      if (v == 0) return {pos, false, 0};
      if (SlotHash(v) == h32 && Matches(EntryAt(SlotIndex(v)), k)) {
        return {pos, true, SlotIndex(v)};
      }
      pos = (pos + 1) & t.mask;
    }
  }

  // Creates the entry of `k` with holder `h` (`pos` from a Find that missed). False when the
  // shard is out of entries.
  bool Insert(const KeyWords& k, uint32_t h32, uint64_t pos, Holder h, uint32_t* out)
      KVT_REQUIRES(lock) {
    uint32_t index;
    if (!free_list.empty()) {
      index = free_list.back();
      free_list.pop_back();
    } else {
      if (used >= kMaxEntriesPerShard) return false;
      index = used++;
      const SegmentPos at = SegmentOf(index);
      if (at.offset == 0) {
        storage.push_back(AllocateWords(size_t{SegmentEntries(at.segment)} * kWordsPerEntry));
        blocks[at.segment].store(storage.back().get(), std::memory_order_release);
      }
    }
    Word* e = EntryAt(index);
    for (int i = 0; i < kGroupCount; ++i) e[i].store(k.w[i], kRelaxed);
    e[kGroupCount].store(k.w[kGroupCount] | uint64_t{1} << 32, kRelaxed);
    e[kInline].store(h, kRelaxed);
    e[kInline + 1].store(0, kRelaxed);
    const Table* t = tables.back().get();
    if ((live + 1) * 10 > (t->mask + 1) * 7) {
      Grow();
      pos = Find(k, h32).pos;  // the new entry is not in the table yet: an empty slot
    }
    tables.back()->slots[pos].store(SlotValue(h32, index), kRelaxed);
    ++live;
    *out = index;
    return true;
  }

  void Grow() KVT_REQUIRES(lock) {
    const Table& old = *tables.back();
    auto bigger = std::make_unique<Table>((old.mask + 1) * 2);
    for (uint64_t p = 0; p <= old.mask; ++p) {
      const uint64_t v = old.slots[p].load(kRelaxed);
      if (v == 0) continue;
      uint64_t q = SlotHash(v) & bigger->mask;
      while (bigger->slots[q].load(kRelaxed) != 0) q = (q + 1) & bigger->mask;
      bigger->slots[q].store(v, kRelaxed);
    }
    table.store(bigger.get(), std::memory_order_release);
    tables.push_back(std::move(bigger));  // the old table stays: readers may be probing it
  }

  // Drops the slot at `pos` and the entry `index` behind it (backward-shift deletion: no
  // tombstones, probes stay short).
  void Erase(uint64_t pos, uint32_t index) KVT_REQUIRES(lock) {
    const Table& t = *tables.back();
    uint64_t hole = pos;
    uint64_t j = pos;
    for (;;) {
      j = (j + 1) & t.mask;
      const uint64_t v = t.slots[j].load(kRelaxed);
      if (v == 0) break;
      const uint64_t home = SlotHash(v) & t.mask;
      // v may fill the hole unless its home lies cyclically in (hole, j].
      const bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
      if (stays) continue;
      t.slots[hole].store(v, kRelaxed);
      hole = j;
    }
    t.slots[hole].store(0, kRelaxed);
    --live;
    free_list.push_back(index);
  }

  bool HasHolder(uint32_t index, const Word* e, Holder h) const KVT_REQUIRES(lock) {
    const uint32_t n = HolderCount(e);
    for (uint32_t k = 0; k < std::min(n, kInlineHolders); ++k) {
      if (InlineHolder(e, k) == h) return true;
    }
    if (n > kInlineHolders) {
      const auto& more = overflow.at(index);
      return std::find(more.begin(), more.end(), h) != more.end();
    }
    return false;
  }

  void SetInline(Word* e, uint32_t k, Holder h) KVT_REQUIRES(lock) {
    Word& word = e[kInline + k / 2];
    const uint64_t w = word.load(kRelaxed);
    word.store(k % 2 == 0 ? (w & ~uint64_t{0xffffffff}) | h : (w & 0xffffffff) | uint64_t{h} << 32,
               kRelaxed);
  }
  void SetCount(Word* e, uint32_t n) KVT_REQUIRES(lock) {
    const uint64_t group = e[kGroupCount].load(kRelaxed) & 0xffffffff;
    e[kGroupCount].store(group | uint64_t{n} << 32, kRelaxed);
  }

  // Adds `h` unless present; true when added.
  bool AddHolder(uint32_t index, Word* e, Holder h) KVT_REQUIRES(lock) {
    if (HasHolder(index, e, h)) return false;
    const uint32_t n = HolderCount(e);
    if (n < kInlineHolders) {
      SetInline(e, n, h);
    } else {
      overflow[index].push_back(h);
    }
    SetCount(e, n + 1);
    return true;
  }

  // Removes `h` if present (the last holder takes its place); true when removed.
  bool RemoveHolder(uint32_t index, Word* e, Holder h) KVT_REQUIRES(lock) {
    const uint32_t n = HolderCount(e);
    std::vector<Holder>* more = n > kInlineHolders ? &overflow.at(index) : nullptr;
    const Holder last = more != nullptr ? more->back() : InlineHolder(e, n - 1);
    bool removed = false;
    for (uint32_t k = 0; k < std::min(n, kInlineHolders) && !removed; ++k) {
      if (InlineHolder(e, k) == h) {
        SetInline(e, k, last);
        removed = true;
      }
    }
    if (!removed && more != nullptr) {
      auto it = std::find(more->begin(), more->end(), h);
      if (it != more->end()) {
        *it = last;
        removed = true;
      }
    }
    if (!removed) return false;
    if (more != nullptr) {
      more->pop_back();
      if (more->empty()) overflow.erase(index);
    }
    SetCount(e, n - 1);
    return true;
  }

  void Holders(uint32_t index, const Word* e, absl::InlinedVector<Holder, 8>* out) const
      KVT_REQUIRES(lock) {
    out->clear();
    const uint32_t n = HolderCount(e);
    for (uint32_t k = 0; k < std::min(n, kInlineHolders); ++k) out->push_back(InlineHolder(e, k));
    if (n > kInlineHolders) {
      const auto& more = overflow.at(index);
      out->insert(out->end(), more.begin(), more.end());
    }
  }

  mutable sync::FastLock lock;
  std::atomic<uint64_t> seq{0};  // odd while a writer changes the shard
  std::atomic<const Table*> table{nullptr};
  const std::unique_ptr<std::atomic<Word*>[]> blocks;  // entry blocks by block number

  std::vector<std::unique_ptr<Table>> tables KVT_GUARDED_BY(lock);  // back() is live
  std::vector<WordArray> storage KVT_GUARDED_BY(lock);
  uint32_t used KVT_GUARDED_BY(lock) = 0;  // entry indices handed out so far
  uint64_t live KVT_GUARDED_BY(lock) = 0;  // occupied slots of the live table
  std::vector<uint32_t> free_list KVT_GUARDED_BY(lock);
  absl::flat_hash_map<uint32_t, std::vector<Holder>> overflow KVT_GUARDED_BY(lock);
};

}  // namespace index_internal
}  // namespace kvtier::cluster
