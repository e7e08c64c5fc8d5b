// Builds L2 adapters from configuration.
//
// One JSON object per adapter (YAML configs are converted to JSON first):
//   {"type": "fs", "name": "disk0", "base_path": "/var/lib/kvtier", "max_capacity": "500GiB"}
// "type" picks the implementation; "name" defaults to "<type><index>"; every other key belongs
// to the type, and an unknown key is an error (JsonConfig). The optional "eviction" block
// belongs to the storage layer and is removed before the adapter sees the config; it is only
// allowed at the top level (the adapter the storage layer sees), never in a wrapped adapter's
// config such as a fault_inject's "inner".
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvtier/common/result.h"
#include "kvtier/l2/adapter.h"

namespace kvtier::l2 {

// Makes one adapter of a type from its config (with "type", "name" and "eviction" removed).
using AdapterMaker = std::function<Result<std::unique_ptr<L2Adapter>>(const nlohmann::json& config,
                                                                      const std::string& name)>;

struct AdapterType {
  std::string type;
  std::string help;  // one line, shown by `kvtier server --help-l2`
  AdapterMaker make;
};

// Every adapter type, in documentation order. Defined in factory.cc.
const std::vector<AdapterType>& AdapterTypes();

// `index` is the adapter's position in the server's list (for the default name).
Result<std::unique_ptr<L2Adapter>> MakeL2Adapter(const nlohmann::json& config, size_t index);

// Makes an adapter that another one wraps (a fault_inject's "inner"): as MakeL2Adapter, except
// that an "eviction" block is an error. Eviction acts on the adapter the storage layer sees, so
// the block belongs at the top level of the outer adapter's config.
Result<std::unique_ptr<L2Adapter>> MakeWrappedL2Adapter(const nlohmann::json& config);

}  // namespace kvtier::l2
