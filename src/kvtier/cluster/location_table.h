// LocationTable: storage-tier names ("L1", "fs", "redis", ...) interned to 8-bit ids for the
// life of a registry. Lookups of known names and id -> name reads take no lock; interning a new
// name takes a mutex that no other lock is ever acquired under (a leaf).
#pragma once

#include <array>
#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvtier/cluster/reverse_index.h"
#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"

namespace kvtier::cluster {

class LocationTable {
 public:
  LocationTable() = default;
  LocationTable(const LocationTable&) = delete;
  LocationTable& operator=(const LocationTable&) = delete;

  // The id of `name`, interning it when new. kInvalidArgument for an empty or over-long
  // (> kMaxLocationLength) name; kResourceExhausted past kMaxLocations names.
  Result<LocationId> Intern(std::string_view name) KVT_EXCLUDES(mu_);
  // The id of a name interned before.
  std::optional<LocationId> Find(std::string_view name) const;
  // The name of an id that Intern returned. Valid for the table's life.
  const std::string& Name(LocationId id) const;

 private:
  // Published with release after the string is built; never changed afterwards.
  std::array<std::atomic<const std::string*>, kMaxLocations> names_{};
  std::atomic<uint32_t> count_{0};
  Mutex mu_;
  std::vector<std::unique_ptr<const std::string>> storage_ KVT_GUARDED_BY(mu_);
};

}  // namespace kvtier::cluster
