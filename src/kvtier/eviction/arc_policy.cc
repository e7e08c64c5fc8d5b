#include "kvtier/eviction/arc_policy.h"

#include <algorithm>

namespace kvtier::eviction {

using internal::kNilIndex;

void ArcPolicy::MoveToT2(uint32_t index) {
  Meta& meta = table_.node(index).extra;
  ListOf(meta.list).Unlink(table_, index);
  meta = Meta{List::kT2, false};
  t2_.PushBack(table_, index);
}

void ArcPolicy::OnCreated(std::span<const ObjectKey> keys) {
  for (auto it = keys.rbegin(); it != keys.rend(); ++it) {
    auto [index, inserted] = table_.FindOrInsert(*it);
    if (!inserted) {
      MoveToT2(index);
      continue;
    }
    c_ = std::max(c_, table_.size());
    const uint32_t ghost = ghost_table_.Find(internal::FingerprintOf(*it));
    if (ghost == kNilIndex) {
      table_.node(index).extra = Meta{List::kT1, false};
      t1_.PushBack(table_, index);
      continue;
    }
    // A ghost hit: the list that remembered the key was too small.
    const GhostList hit = ghost_table_.node(ghost).extra.list;
    if (hit == GhostList::kB1) {
      const size_t delta = std::max<size_t>(1, b2_.size() / b1_.size());
      p_ = std::min(c_, p_ + delta);
    } else {
      const size_t delta = std::max<size_t>(1, b1_.size() / b2_.size());
      p_ = p_ > delta ? p_ - delta : 0;
    }
    GhostListOf(hit).Unlink(ghost_table_, ghost);
    ghost_table_.Erase(ghost);
    table_.node(index).extra = Meta{List::kT2, false};
    t2_.PushBack(table_, index);
  }
  TrimGhosts();
}

void ArcPolicy::OnTouched(std::span<const ObjectKey> keys) {
  for (auto it = keys.rbegin(); it != keys.rend(); ++it) {
    const uint32_t index = table_.Find(*it);
    if (index != kNilIndex) MoveToT2(index);
  }
}

void ArcPolicy::OnRemoved(std::span<const ObjectKey> keys) {
  for (const ObjectKey& key : keys) {
    const uint32_t index = table_.Remove(key);
    if (index == kNilIndex) continue;
    const Meta meta = table_.node(index).extra;
    ListOf(meta.list).Unlink(table_, index);
    table_.Free(index);
    if (meta.pending) {
      AddGhost(meta.list == List::kT1 ? GhostList::kB1 : GhostList::kB2,
               internal::FingerprintOf(key));
    }
  }
  TrimGhosts();
}

void ArcPolicy::AddGhost(GhostList list, internal::Fingerprint fingerprint) {
  auto [ghost, inserted] = ghost_table_.FindOrInsert(fingerprint);
  if (!inserted) GhostListOf(ghost_table_.node(ghost).extra.list).Unlink(ghost_table_, ghost);
  ghost_table_.node(ghost).extra.list = list;
  GhostListOf(list).PushBack(ghost_table_, ghost);
}

void ArcPolicy::DropOldestGhost(GhostList list) {
  const uint32_t ghost = GhostListOf(list).PopFront(ghost_table_);
  KVT_DCHECK(ghost != kNilIndex);
  ghost_table_.Erase(ghost);
}

void ArcPolicy::TrimGhosts() {
  while (!b1_.empty() && t1_.size() + b1_.size() > c_) DropOldestGhost(GhostList::kB1);
  while (b1_.size() + b2_.size() > c_) {
    DropOldestGhost(b2_.empty() ? GhostList::kB1 : GhostList::kB2);
  }
}

uint32_t ArcPolicy::NextEligible(uint32_t* cursor,
                                 const std::function<bool(const ObjectKey&)>& eligible) {
  while (*cursor != kNilIndex) {
    const uint32_t index = *cursor;
    *cursor = table_.node(index).next;
    if (eligible(table_.node(index).key)) return index;
  }
  return kNilIndex;
}

void ArcPolicy::SelectVictims(size_t max, const std::function<bool(const ObjectKey&)>& eligible,
                              std::vector<ObjectKey>* out) {
  uint32_t t1_cursor = t1_.front();
  uint32_t t2_cursor = t2_.front();
  size_t t1_remaining = t1_.size();  // T1 less this call's victims from it
  const size_t target = std::max<size_t>(1, p_);
  size_t taken = 0;
  while (taken < max && (t1_cursor != kNilIndex || t2_cursor != kNilIndex)) {
    const bool from_t1 =
        t1_cursor != kNilIndex && (t1_remaining >= target || t2_cursor == kNilIndex);
    const uint32_t victim = NextEligible(from_t1 ? &t1_cursor : &t2_cursor, eligible);
    if (victim == kNilIndex) continue;  // that list is exhausted; fall back to the other
    Table::Node& node = table_.node(victim);
    node.extra.pending = true;
    out->push_back(node.key);
    ++taken;
    if (from_t1) --t1_remaining;
  }
}

bool ArcPolicy::Contains(const ObjectKey& key) const { return table_.Find(key) != kNilIndex; }

bool ArcPolicy::InT2(const ObjectKey& key) const {
  const uint32_t index = table_.Find(key);
  return index != kNilIndex && table_.node(index).extra.list == List::kT2;
}

}  // namespace kvtier::eviction
