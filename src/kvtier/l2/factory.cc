#include "kvtier/l2/factory.h"

#include <fmt/format.h>

#include "kvtier/l2/fault_inject_adapter.h"
#include "kvtier/l2/fs/fs_adapter.h"
#include "kvtier/l2/mock_adapter.h"
#include "kvtier/l2/peer/peer_adapter.h"
#include "kvtier/l2/redis/redis_adapter.h"

namespace kvtier::l2 {

namespace {

Result<std::unique_ptr<L2Adapter>> MakeAdapter(const nlohmann::json& config, size_t index,
                                               bool wrapped);

std::string KnownTypes() {
  std::string known;
  for (const AdapterType& t : AdapterTypes()) known += (known.empty() ? "" : ", ") + t.type;
  return known;
}

}  // namespace

const std::vector<AdapterType>& AdapterTypes() {
  // One entry per type; adapters in subdirectories add theirs here as they land.
  static const std::vector<AdapterType> kTypes = {
      {"mock", "in-memory reference adapter: capacity (required), bandwidth (bytes/s), latency",
       MakeMockAdapter},
      {"fault_inject",
       "wraps an adapter ('inner') and injects failures, hangs and delays: "
       "store_failure_rate, load_failure_rate, lookup_failure_rate, hang_rate, delay, seed",
       MakeFaultInjectAdapter},
      {"fs",
       "one file per chunk on a local filesystem: base_path (required), max_capacity, use_odirect, "
       "io_engine (io_uring|pread), io_threads, queue_depth, recover_on_start, fsync",
       MakeFsAdapter},
      {"redis",
       "Redis or Valkey: host, port, username, password, db, connections, connect_timeout, "
       "command_timeout, reconnect_backoff_min, reconnect_backoff_max, max_value_size, key_prefix, "
       "max_capacity, checksum",
       MakeRedisAdapter},
      {"peer",
       "read-only: fetches chunks other servers of the cluster hold (peer fetch): controller "
       "(required), instance_id (required), controller_timeout, peer_timeout, max_peers, "
       "max_read_bytes",
       MakePeerAdapter},
  };
  return kTypes;
}

Result<std::unique_ptr<L2Adapter>> MakeL2Adapter(const nlohmann::json& config, size_t index) {
  return MakeAdapter(config, index, /*wrapped=*/false);
}

Result<std::unique_ptr<L2Adapter>> MakeWrappedL2Adapter(const nlohmann::json& config) {
  return MakeAdapter(config, 0, /*wrapped=*/true);
}

namespace {

Result<std::unique_ptr<L2Adapter>> MakeAdapter(const nlohmann::json& config, size_t index,
                                               bool wrapped) {
  const std::string where = fmt::format("L2 adapter #{}", index);
  if (!config.is_object()) {
    return MakeError(Status::InvalidArgument(
        fmt::format("{}: expected a JSON object, got {}", where, config.dump())));
  }
  auto type_it = config.find("type");
  if (type_it == config.end() || !type_it->is_string()) {
    return MakeError(Status::InvalidArgument(
        fmt::format("{}: 'type' (a string) is required; known types: {}", where, KnownTypes())));
  }
  const std::string type = type_it->get<std::string>();
  const AdapterType* entry = nullptr;
  for (const AdapterType& t : AdapterTypes()) {
    if (t.type == type) entry = &t;
  }
  if (entry == nullptr) {
    return MakeError(Status::InvalidArgument(
        fmt::format("{}: unknown type '{}'; known types: {}", where, type, KnownTypes())));
  }
  std::string name = fmt::format("{}{}", type, index);
  if (auto name_it = config.find("name"); name_it != config.end()) {
    if (!name_it->is_string() || name_it->get<std::string>().empty()) {
      return MakeError(Status::InvalidArgument(
          fmt::format("{}: 'name' must be a non-empty string, got {}", where, name_it->dump())));
    }
    name = name_it->get<std::string>();
  }
  if (wrapped && config.contains("eviction")) {
    return MakeError(Status::InvalidArgument(fmt::format(
        "{} adapter '{}': 'eviction' is not allowed in a wrapped adapter's config: eviction "
        "belongs at the top level of the adapter config (next to the wrapper's \"type\")",
        type, name)));
  }
  nlohmann::json rest = config;
  rest.erase("type");
  rest.erase("name");
  rest.erase("eviction");  // the storage layer's (top level only)
  return entry->make(rest, name);
}

}  // namespace

}  // namespace kvtier::l2
