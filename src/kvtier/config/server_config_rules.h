// The server config's schema and its single-field rules (internal to config/): every key, the
// field it sets and the rule its value must pass, written once (VisitServerConfig) and walked by
// the YAML reader, the dumper and the key lister (server_config.cc) and by the validator
// (server_config_rules.cc, which defines the rules).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kvtier/common/clock.h"
#include "kvtier/common/result.h"
#include "kvtier/config/server_config.h"

namespace kvtier::config::internal {

// ---- single-field rules: shared by the parser (with a file position) and the validator ----

Status Invalid(std::string msg);

Status NoRule(const auto& /*value*/) { return Status::OK(); }

inline auto AtLeast(uint64_t min) {
  return [min](uint64_t v) {
    return v >= min ? Status::OK() : Invalid(fmt::format("must be at least {}, got {}", min, v));
  };
}

// Durations and sizes.
Status Positive(Duration d);
Status NonNegative(Duration d);
Status PositiveSize(uint64_t bytes);

// The top-level keys, transport and admin.
Status CheckLogLevel(const std::string& level);
Status CheckServerId(const std::string& id);
Status CheckAdminHost(const std::string& host);
Status CheckEndpoint(std::string_view endpoint);
// The list as a whole (each endpoint is CheckEndpoint's).
Status CheckEndpointList(const std::vector<std::string>& endpoints);

// controller.
// Where the controller listens (connect side): "" (reporting off), tcp://HOST:PORT with a real
// host and port, or ipc:///PATH.
Status CheckControllerEndpoint(const std::string& endpoint);
Status CheckAdvertiseAddress(const std::string& address);
Status CheckBatchKeys(uint64_t n);

// engine and l1.
Status CheckChunkSize(uint64_t chunk_size);
Status CheckAlignment(uint64_t alignment);
Status CheckNumShards(uint64_t shards);
Status CheckShmName(const std::string& name);

// l1_eviction and l2.
Status CheckEvictionPolicy(const std::string& name);
Status CheckTrigger(double v);
Status CheckTarget(double v);
Status CheckStorePolicy(const std::string& name);

// Duplicate adapter names: the factory's StorageManager refuses them at start. On an error,
// `*duplicate` is the index of the second adapter with the name.
Status CheckAdapterNames(const std::vector<nlohmann::json>& adapters, size_t* duplicate);

// ---- the schema: every key, its field and its rule, once ----
//
// A visitor V has String, Bool, Count, Size, Duration, Double, StringList, Hash, Adapters and
// Section(key, body); C is ServerConfig or const ServerConfig.
template <typename V, typename C>
void VisitServerConfig(V& v, C& c) {
  v.String("server_id", c.server_id, CheckServerId);
  v.String("log_level", c.log_level, CheckLogLevel);
  v.Duration("tick_interval", c.tick_interval, Positive);
  v.Section("transport", [&] {
    v.StringList("endpoints", c.transport.endpoints, CheckEndpoint, CheckEndpointList);
    v.Count("control_threads", c.transport.control_threads, AtLeast(1));
    v.Count("transfer_threads", c.transport.transfer_threads, AtLeast(1));
    v.Count("max_queued_requests", c.transport.max_queued_requests, AtLeast(1));
  });
  v.Section("admin", [&] {
    v.Bool("enabled", c.admin.enabled);
    v.String("host", c.admin.host, CheckAdminHost);
    v.Count("port", c.admin.port, NoRule<uint64_t>);
  });
  v.Section("engine", [&] {
    v.Count("chunk_size", c.engine.chunk_size, CheckChunkSize);
    v.Hash("hash", c.engine.hash);
    v.Duration("session_ttl", c.engine.session_ttl, Positive);
    v.Duration("worker_timeout", c.engine.worker_timeout, NonNegative);
    v.Duration("registration_grace", c.engine.registration_grace, Positive);
    v.Duration("max_wait", c.engine.max_wait, Positive);
  });
  v.Section("l1", [&] {
    auto& l1 = c.storage.l1;
    v.Size("capacity", l1.capacity_bytes, PositiveSize);
    v.Size("alignment", l1.alignment, CheckAlignment);
    v.Bool("use_hugepages", l1.use_hugepages);
    v.String("shm_name", l1.shm_name, CheckShmName);
    v.Bool("populate", l1.populate);
    v.Bool("register_with_cuda", l1.register_with_cuda);
    v.Duration("read_ttl", l1.read_ttl, Positive);
    v.Duration("write_ttl", l1.write_ttl, Positive);
    v.Duration("allocation_wait", l1.allocation_wait, NonNegative);
    v.Count("num_shards", l1.num_shards, CheckNumShards);
  });
  v.Section("l1_eviction", [&] {
    auto& e = c.storage.l1_eviction;
    v.String("policy", c.storage.l1_eviction_policy, CheckEvictionPolicy);
    v.Double("trigger_watermark", e.trigger_watermark, CheckTrigger);
    v.Double("target_watermark", e.target_watermark, CheckTarget);
    v.Duration("check_interval", e.check_interval, Positive);
    v.Count("victims_per_round", e.victims_per_round, AtLeast(1));
    v.Count("queue_wake_threshold", e.queue_wake_threshold, AtLeast(1));
  });
  v.Section("l2", [&] {
    v.Adapters("adapters", c.storage.l2_adapters);
    v.String("store_policy", c.storage.store_policy, CheckStorePolicy);
    v.Section("store", [&] {
      auto& s = c.storage.store;
      v.Count("max_pending_keys", s.max_pending_keys, AtLeast(1));
      v.Count("max_keys_per_task", s.max_keys_per_task, AtLeast(1));
      v.Duration("store_timeout", s.store_timeout, NonNegative);
      v.Duration("poll_interval", s.poll_interval, Positive);
    });
    v.Section("prefetch", [&] {
      auto& p = c.storage.prefetch;
      v.Count("max_in_flight", p.max_in_flight, AtLeast(1));
      v.Duration("poll_interval", p.poll_interval, Positive);
    });
  });
  v.Section("host_transfer", [&] {
    v.Size("min_parallel_bytes", c.host_transfer.min_parallel_bytes, NoRule<uint64_t>);
    v.Size("stream_min_bytes", c.host_transfer.stream_min_bytes, NoRule<uint64_t>);
  });
  v.Section("controller", [&] {
    auto& r = c.controller;
    v.String("endpoint", r.endpoint, CheckControllerEndpoint);
    v.String("events_endpoint", r.events_endpoint, CheckControllerEndpoint);
    v.String("heartbeat_endpoint", r.heartbeat_endpoint, CheckControllerEndpoint);
    v.String("advertise_address", r.advertise_address, CheckAdvertiseAddress);
    v.Count("batch_keys", r.batch_keys, CheckBatchKeys);
    v.Duration("batch_interval", r.batch_interval, Positive);
    v.Duration("request_timeout", r.request_timeout, Positive);
    v.Count("max_pending_keys", r.max_pending_keys, AtLeast(1));
  });
}

}  // namespace kvtier::config::internal
