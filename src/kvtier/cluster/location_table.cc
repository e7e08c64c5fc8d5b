#include "kvtier/cluster/location_table.h"

#include <fmt/format.h>

#include "kvtier/common/check.h"

namespace kvtier::cluster {

std::optional<LocationId> LocationTable::Find(std::string_view name) const {
  const uint32_t n = count_.load(std::memory_order_acquire);
  for (uint32_t i = 0; i < n; ++i) {
    if (*names_[i].load(std::memory_order_acquire) == name) return static_cast<LocationId>(i);
  }
  return std::nullopt;
}

Result<LocationId> LocationTable::Intern(std::string_view name) {
  if (auto id = Find(name)) return *id;
  if (name.empty() || name.size() > kMaxLocationLength) {
    return MakeError(Status::InvalidArgument(
        fmt::format("cluster registry: a location name has 1..{} bytes (got {})",
                    kMaxLocationLength, name.size())));
  }
  MutexLock lock(&mu_);
  if (auto id = Find(name)) return *id;  // interned meanwhile
  const uint32_t n = count_.load(std::memory_order_relaxed);
  if (n >= kMaxLocations) {
    return MakeError(Status::ResourceExhausted(
        fmt::format("cluster registry: more than {} location names", kMaxLocations)));
  }
  storage_.push_back(std::make_unique<const std::string>(name));
  names_[n].store(storage_.back().get(), std::memory_order_release);
  count_.store(n + 1, std::memory_order_release);
  return static_cast<LocationId>(n);
}

const std::string& LocationTable::Name(LocationId id) const {
  const std::string* name = names_[id].load(std::memory_order_acquire);
  KVT_DCHECK(name != nullptr);
  return *name;
}

}  // namespace kvtier::cluster
