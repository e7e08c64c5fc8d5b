// EvictionPolicy: decides which keys leave a cache first.
//
// A policy only orders keys; it never deletes anything. The owner (the L1 or L2 eviction
// controller) feeds it the cache's events and asks it for victims, deletes those it can, and
// reports what it actually deleted through OnRemoved.
//
// Not thread-safe: one controller thread drives a policy (events reach that thread through a
// queue), so policies hold no locks.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "kvtier/common/result.h"
#include "kvtier/keys/object_key.h"

namespace kvtier::eviction {

using keys::ObjectKey;

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;

  virtual std::string_view name() const = 0;

  // Keys became present. A key already tracked counts as touched. Order within a batch
  // matters: the batch is one request's chunks in prefix order, and a prefix is only useful
  // from its start, so policies keep earlier keys longer than later ones.
  virtual void OnCreated(std::span<const ObjectKey> keys) = 0;
  // Keys were used. Unknown keys are ignored. Same batch-order rule as OnCreated.
  virtual void OnTouched(std::span<const ObjectKey> keys) = 0;
  // Keys left the cache (evicted or deleted). Unknown keys are ignored.
  virtual void OnRemoved(std::span<const ObjectKey> keys) = 0;

  // Appends up to `max` victims to `out`, best victim first, skipping keys for which
  // `eligible` returns false (those keep their place). Selection does not stop tracking a key:
  // only OnRemoved does, so a victim the caller fails to delete stays tracked. `eligible` may
  // be called several times per key and must not call back into the policy.
  virtual void SelectVictims(size_t max, const std::function<bool(const ObjectKey&)>& eligible,
                             std::vector<ObjectKey>* out) = 0;

  // Number of keys tracked (0 for a policy that tracks nothing).
  virtual size_t size() const = 0;
  virtual bool Contains(const ObjectKey& key) const = 0;
};

// Case-insensitive names: "lru", "s3fifo" (also "s3-fifo"), "arc", "noop".
// kInvalidArgument naming the valid choices for anything else.
Result<std::unique_ptr<EvictionPolicy>> MakeEvictionPolicy(std::string_view name);

}  // namespace kvtier::eviction
