// NoopPolicy: tracks nothing and selects nothing. Pairs with a store policy that uses L1 only as
// a write buffer, where eviction is never wanted.
#pragma once

#include <cstddef>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

#include "kvtier/eviction/policy.h"

namespace kvtier::eviction {

class NoopPolicy final : public EvictionPolicy {
 public:
  std::string_view name() const override;

  void OnCreated(std::span<const ObjectKey> keys) override;
  void OnTouched(std::span<const ObjectKey> keys) override;
  void OnRemoved(std::span<const ObjectKey> keys) override;
  void SelectVictims(size_t max, const std::function<bool(const ObjectKey&)>& eligible,
                     std::vector<ObjectKey>* out) override;

  size_t size() const override;
  bool Contains(const ObjectKey& key) const override;

  size_t MemoryBytes() const { return sizeof(*this); }
};

}  // namespace kvtier::eviction
