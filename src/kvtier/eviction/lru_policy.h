// LruPolicy: least recently used first.
//
// Create (of a new or tracked key) and touch move a key to the most-recent end; victims are taken
// from the least-recent end. A batch is applied back to front, so its first key ends up most
// recent and a request's later chunks are evicted before its earlier ones.
//
// Memory: one 52-byte node per key in a block pool plus a 4-byte slot (and a control byte) in the
// hash index: 62 bytes per tracked key at 1M keys (see MemoryBytes()).
#pragma once

#include <cstddef>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

#include "kvtier/eviction/key_table.h"
#include "kvtier/eviction/policy.h"

namespace kvtier::eviction {

class LruPolicy final : public EvictionPolicy {
 public:
  LruPolicy() = default;
  LruPolicy(const LruPolicy&) = delete;
  LruPolicy& operator=(const LruPolicy&) = delete;

  std::string_view name() const override { return "lru"; }

  void OnCreated(std::span<const ObjectKey> keys) override;
  void OnTouched(std::span<const ObjectKey> keys) override;
  void OnRemoved(std::span<const ObjectKey> keys) override;
  // Walks from the least recent key and stops after `max` eligible ones: the cost is the
  // number of keys visited, not the number tracked.
  void SelectVictims(size_t max, const std::function<bool(const ObjectKey&)>& eligible,
                     std::vector<ObjectKey>* out) override;

  size_t size() const override { return table_.size(); }
  bool Contains(const ObjectKey& key) const override;

  // Approximate heap bytes held by the policy.
  size_t MemoryBytes() const { return sizeof(*this) + table_.MemoryBytes(); }

 private:
  internal::KeyTable<ObjectKey> table_;
  internal::NodeList list_;  // front = least recently used
};

}  // namespace kvtier::eviction
