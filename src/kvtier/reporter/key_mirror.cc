#include "kvtier/reporter/key_mirror.h"

#include <algorithm>

#include <absl/container/flat_hash_map.h>

#include "kvtier/common/check.h"

namespace kvtier::reporter {

KeyMirror::KeyMirror(std::string location, PresentFn present, size_t max_pending_keys)
    : location_(std::move(location)),
      present_(std::move(present)),
      max_pending_(std::max<size_t>(max_pending_keys, 1)) {
  KVT_CHECK(present_ != nullptr);
}

void KeyMirror::SetWake(size_t threshold, std::function<void()> wake) {
  wake_threshold_ = std::max<size_t>(threshold, 1);
  wake_ = std::move(wake);
}

void KeyMirror::Reconcile(std::span<const keys::ObjectKey> keys) {
  bool wake = false;
  for (const keys::ObjectKey& key : keys) {
    const size_t hash = key.Hash();
    Shard& shard = ShardFor(hash);
    MutexLock lock(&shard.mu);
    const bool present = present_(key);
    bool changed = false;
    if (present) {
      changed = shard.keys.insert(key).second;
      if (changed) size_.fetch_add(1, std::memory_order_relaxed);
    } else {
      changed = shard.keys.erase(key) > 0;
      if (changed) size_.fetch_sub(1, std::memory_order_relaxed);
    }
    if (!changed) continue;
    const size_t before = pending_.fetch_add(1, std::memory_order_acq_rel);
    if (before >= max_pending_) {
      pending_.fetch_sub(1, std::memory_order_acq_rel);
      ++shard.dropped;
      dropped_total_.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    shard.pending.emplace_back(key, present);
    if (before + 1 == wake_threshold_) wake = true;
  }
  if (wake && wake_) wake_();
}

KeyMirror::Changes KeyMirror::Drain() {
  Changes changes;
  std::vector<std::pair<keys::ObjectKey, bool>> all;
  for (Shard& shard : shards_) {
    MutexLock lock(&shard.mu);
    changes.key_count += shard.keys.size();
    changes.dropped += shard.dropped;
    shard.dropped = 0;
    if (shard.pending.empty()) continue;
    pending_.fetch_sub(shard.pending.size(), std::memory_order_acq_rel);
    if (all.empty()) {
      all.swap(shard.pending);
    } else {
      all.insert(all.end(), shard.pending.begin(), shard.pending.end());
      shard.pending.clear();
    }
  }
  // A key's transitions alternate (absent -> present -> absent ...): an odd number of them is
  // one net change, to its last state; an even number cancels out. With drops the run may not
  // alternate, but then `dropped` already says the changes are incomplete.
  struct Net {
    bool first;
    bool last;
  };
  absl::flat_hash_map<keys::ObjectKey, Net, keys::ObjectKeyHash> net;
  net.reserve(all.size());
  for (const auto& [key, admitted] : all) {
    auto [it, inserted] = net.try_emplace(key, Net{admitted, admitted});
    if (!inserted) it->second.last = admitted;
  }
  // In the order the keys first changed, so one request's chunks stay together.
  for (const auto& [key, admitted] : all) {
    auto it = net.find(key);
    if (it == net.end()) continue;
    if (it->second.first == it->second.last) {
      (it->second.last ? changes.admitted : changes.evicted).push_back(key);
    }
    net.erase(it);
  }
  return changes;
}

std::vector<keys::ObjectKey> KeyMirror::Snapshot() {
  std::vector<keys::ObjectKey> out;
  out.reserve(size_.load(std::memory_order_relaxed));
  for (Shard& shard : shards_) {
    MutexLock lock(&shard.mu);
    out.insert(out.end(), shard.keys.begin(), shard.keys.end());
    pending_.fetch_sub(shard.pending.size(), std::memory_order_acq_rel);
    shard.pending.clear();
    shard.dropped = 0;
  }
  return out;
}

void KeyMirror::DiscardPending() {
  for (Shard& shard : shards_) {
    MutexLock lock(&shard.mu);
    pending_.fetch_sub(shard.pending.size(), std::memory_order_acq_rel);
    shard.pending.clear();
    shard.dropped = 0;
  }
}

}  // namespace kvtier::reporter
