// The controller's admin views: JSON for the HTTP API and the dashboard, Prometheus metrics, and
// parsing of the HTTP request bodies (docs/controller.md, "HTTP admin API and dashboard"). Pure
// functions over a ControllerCore; no sockets. Every parser of outside bytes returns
// kInvalidArgument naming the field.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "kvtier/cluster/types.h"
#include "kvtier/common/result.h"
#include "kvtier/controller/controller_core.h"

namespace kvtier::controller {

// POST /lookup bodies, parsed. Token ids are already hashed into request.hashes.
struct HttpLookup {
  LookupRequest request;
  std::optional<size_t> num_tokens;  // when the body gave token_ids
};

// {"model", "cache_salt"?, "world_size"?, "rank"?, "object_group"?, "exclude_instance"?, and
// exactly one of "chunk_hashes" (64-hex strings) or "token_ids" (uint32s, hashed with `hasher`:
// full chunks only)}.
Result<HttpLookup> ParseLookupJson(std::string_view body, const keys::TokenHasher& hasher);
// {"model", "chunk_size", "num_chunks", "num_tokens"?, "matches": [{"instance_id", "address",
// "matched_chunks", "matched_tokens"}]}.
nlohmann::json LookupJson(const HttpLookup& lookup, const LookupReply& reply, uint32_t chunk_size);

// POST /clear bodies: {} or {"instance_id"?, "worker_id"?, "location"?} (empty body: all).
Result<ClearRequest> ParseClearJson(std::string_view body);

// One worker, with its locations and their syncs. Ids and epochs are hex strings (JSON numbers
// lose precision beyond 2^53).
nlohmann::json WorkerJson(const ControllerCore& core, const cluster::WorkerInfo& w);
// {"workers": [...], "total_count": n} for every worker, or those of one instance.
Result<nlohmann::json> WorkersJson(const ControllerCore& core, std::string_view instance_id);
// GET /health.
nlohmann::json HealthJson(const ControllerCore& core);
// The dashboard's data: controller settings and endpoints, totals, workers, recent events.
Result<nlohmann::json> DashboardJson(const ControllerCore& core, const BoundEndpoints& endpoints);
// GET /metrics: Prometheus text format 0.0.4.
std::string MetricsText(const ControllerCore& core);

// "0x" + 16 hex digits.
std::string HexId(uint64_t id);

}  // namespace kvtier::controller
