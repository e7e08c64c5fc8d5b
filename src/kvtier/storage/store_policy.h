// StorePolicy: which L2 adapters receive the objects L1 just admitted, and what L1 drops once
// they are stored.
#pragma once

#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "kvtier/common/result.h"
#include "kvtier/keys/object_key.h"

namespace kvtier::storage {

using keys::ObjectKey;

class StorePolicy {
 public:
  virtual ~StorePolicy() = default;
  virtual std::string_view name() const = 0;
  // Indices (into the adapter list) that should store `keys`.
  virtual std::vector<size_t> SelectStoreTargets(std::span<const ObjectKey> keys,
                                                 size_t num_adapters) const = 0;
  // Keys to delete from L1 once adapter `adapter` stored `keys` successfully.
  virtual std::vector<ObjectKey> SelectL1DeletionsAfterStore(std::span<const ObjectKey> keys,
                                                             size_t adapter) const = 0;
};

// "default": every key to every adapter; L1 keeps its copy.
// "skip_l1": every key to every adapter; L1 drops a key once adapter 0 stored it (L1 is then a
// write buffer in front of L2).
Result<std::unique_ptr<StorePolicy>> MakeStorePolicy(std::string_view name);

}  // namespace kvtier::storage
