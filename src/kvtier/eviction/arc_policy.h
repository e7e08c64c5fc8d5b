// ArcPolicy: Adaptive Replacement Cache (Megiddo & Modha, FAST'03) adapted to select-then-remove
// eviction, counted in entries.
//
// T1 holds keys seen once, T2 keys seen again; B1 and B2 remember 32-bit fingerprints of keys the
// policy evicted from T1 and T2. The capacity c is the most keys ever tracked, and the target
// size p of T1 adapts within [0, c]: a create of a key in B1 grows p by max(1, |B2|/|B1|), one
// in B2 shrinks it by max(1, |B1|/|B2|); either way the key enters T2. A new key enters T1; a
// touch (or a create of a tracked key) moves a key to the most-recent end of T2.
//
// Victims: the least recent eligible key of T1 while T1 (less this call's victims) holds at
// least max(1, p) keys, else of T2, falling back to the other list. Selection moves nothing and
// marks the keys as pending; a ghost is made only when OnRemoved confirms a pending key, so a
// key deleted for another reason leaves no ghost. A touch clears the mark. Ghosts are bounded:
// |T1| + |B1| <= c and |B1| + |B2| <= c.
//
// A batch is applied back to front, so its first key ends up most recent.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

#include "kvtier/eviction/key_table.h"
#include "kvtier/eviction/policy.h"

namespace kvtier::eviction {

class ArcPolicy final : public EvictionPolicy {
 public:
  ArcPolicy() = default;
  ArcPolicy(const ArcPolicy&) = delete;
  ArcPolicy& operator=(const ArcPolicy&) = delete;

  std::string_view name() const override { return "arc"; }

  void OnCreated(std::span<const ObjectKey> keys) override;
  void OnTouched(std::span<const ObjectKey> keys) override;
  void OnRemoved(std::span<const ObjectKey> keys) override;
  void SelectVictims(size_t max, const std::function<bool(const ObjectKey&)>& eligible,
                     std::vector<ObjectKey>* out) override;

  size_t size() const override { return table_.size(); }
  bool Contains(const ObjectKey& key) const override;

  // State, for tests and metrics.
  size_t t1_size() const { return t1_.size(); }
  size_t t2_size() const { return t2_.size(); }
  size_t b1_size() const { return b1_.size(); }
  size_t b2_size() const { return b2_.size(); }
  size_t target_t1() const { return p_; }
  size_t capacity() const { return c_; }
  // Whether `key` sits in T2 (false when untracked).
  bool InT2(const ObjectKey& key) const;

  // Approximate heap bytes held by the policy, ghosts included.
  size_t MemoryBytes() const {
    return sizeof(*this) + table_.MemoryBytes() + ghost_table_.MemoryBytes();
  }

 private:
  enum class List : uint8_t { kT1, kT2 };
  struct Meta {
    List list = List::kT1;
    bool pending = false;  // selected as a victim and not touched since
  };
  enum class GhostList : uint8_t { kB1, kB2 };
  struct GhostMeta {
    GhostList list = GhostList::kB1;
  };
  using Table = internal::KeyTable<ObjectKey, Meta>;
  using GhostTable = internal::KeyTable<internal::Fingerprint, GhostMeta>;

  internal::NodeList& ListOf(List list) { return list == List::kT1 ? t1_ : t2_; }
  internal::NodeList& GhostListOf(GhostList list) { return list == GhostList::kB1 ? b1_ : b2_; }
  void MoveToT2(uint32_t index);
  void AddGhost(GhostList list, internal::Fingerprint fingerprint);
  void DropOldestGhost(GhostList list);
  // Restores |T1| + |B1| <= c and |B1| + |B2| <= c.
  void TrimGhosts();
  // Advances *cursor along its list to the next eligible key, which it returns and passes;
  // kNilIndex once the list is exhausted.
  uint32_t NextEligible(uint32_t* cursor, const std::function<bool(const ObjectKey&)>& eligible);

  Table table_;
  internal::NodeList t1_;  // front = least recent
  internal::NodeList t2_;  // front = least recent
  GhostTable ghost_table_;
  internal::NodeList b1_;  // front = oldest
  internal::NodeList b2_;  // front = oldest
  size_t p_ = 0;
  size_t c_ = 0;
};

}  // namespace kvtier::eviction
