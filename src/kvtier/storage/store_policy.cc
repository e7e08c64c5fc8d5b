#include "kvtier/storage/store_policy.h"

#include <numeric>

#include <fmt/format.h>

namespace kvtier::storage {
namespace {

class DefaultStorePolicy : public StorePolicy {
 public:
  std::string_view name() const override { return "default"; }
  std::vector<size_t> SelectStoreTargets(std::span<const ObjectKey>,
                                         size_t num_adapters) const override {
    std::vector<size_t> all(num_adapters);
    std::iota(all.begin(), all.end(), 0);
    return all;
  }
  std::vector<ObjectKey> SelectL1DeletionsAfterStore(std::span<const ObjectKey>,
                                                     size_t) const override {
    return {};
  }
};

class SkipL1StorePolicy : public DefaultStorePolicy {
 public:
  std::string_view name() const override { return "skip_l1"; }
  std::vector<ObjectKey> SelectL1DeletionsAfterStore(std::span<const ObjectKey> keys,
                                                     size_t adapter) const override {
    if (adapter != 0) return {};
    return {keys.begin(), keys.end()};
  }
};

}  // namespace

Result<std::unique_ptr<StorePolicy>> MakeStorePolicy(std::string_view name) {
  if (name == "default") return std::make_unique<DefaultStorePolicy>();
  if (name == "skip_l1") return std::make_unique<SkipL1StorePolicy>();
  return MakeError(Status::InvalidArgument(
      fmt::format("unknown L2 store policy '{}' (choices: default, skip_l1)", name)));
}

}  // namespace kvtier::storage
