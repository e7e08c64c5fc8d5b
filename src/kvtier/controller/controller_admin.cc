#include "kvtier/controller/controller_admin.h"

#include <algorithm>
#include <array>
#include <limits>
#include <set>

#include <fmt/format.h>

#include "kvtier/admin/prometheus.h"

namespace kvtier::controller {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;

// JSON bodies nest at most this deep (a lookup body needs 2).
constexpr int kMaxBodyDepth = 8;

Status Bad(std::string what) { return Status::InvalidArgument(std::move(what)); }

// Parses `body` as one JSON object; errors name what is wrong.
Result<json> ParseObject(std::string_view body, std::string_view what) {
  bool too_deep = false;
  json::parser_callback_t limit = [&too_deep](int depth, json::parse_event_t, json&) {
    if (depth > kMaxBodyDepth) too_deep = true;
    return !too_deep;
  };
  json parsed = json::parse(body.begin(), body.end(), limit, /*allow_exceptions=*/false);
  if (too_deep) {
    return MakeError(
        Bad(fmt::format("{}: JSON nested deeper than {} levels", what, kMaxBodyDepth)));
  }
  if (parsed.is_discarded())
    return MakeError(Bad(fmt::format("{}: the body is not valid JSON", what)));
  if (!parsed.is_object())
    return MakeError(Bad(fmt::format("{}: the body must be a JSON object", what)));
  return parsed;
}

Status CheckKnownFields(const json& body, std::string_view what,
                        std::initializer_list<std::string_view> known) {
  for (const auto& [key, value] : body.items()) {
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      return Bad(
          fmt::format("{}: unknown field '{}' (known: {})", what, key, fmt::join(known, ", ")));
    }
  }
  return Status::OK();
}

// An optional string field; `max` bytes at most.
Result<std::string> StringField(const json& body, std::string_view what, const char* field,
                                size_t max, std::string fallback = {}) {
  auto it = body.find(field);
  if (it == body.end() || it->is_null()) return fallback;
  if (!it->is_string())
    return MakeError(Bad(fmt::format("{}: '{}' must be a string", what, field)));
  std::string s = it->get<std::string>();
  if (s.size() > max) {
    return MakeError(Bad(fmt::format("{}: '{}' has more than {} bytes", what, field, max)));
  }
  return s;
}

// An optional unsigned integer field in [min, max].
Result<std::optional<uint64_t>> UintField(const json& body, std::string_view what,
                                          const char* field, uint64_t min, uint64_t max) {
  auto it = body.find(field);
  if (it == body.end() || it->is_null()) return std::optional<uint64_t>();
  if (!it->is_number_integer()) {
    return MakeError(Bad(fmt::format("{}: '{}' must be an integer", what, field)));
  }
  if (it->is_number_unsigned() || it->get<int64_t>() >= 0) {
    const uint64_t v = it->get<uint64_t>();
    if (v >= min && v <= max) return std::optional<uint64_t>(v);
  }
  return MakeError(
      Bad(fmt::format("{}: '{}' must be in [{}, {}], got {}", what, field, min, max, it->dump())));
}

// Model names and cache salts follow keys.md (checked here so that a typo is a 400, not an
// empty answer).
Status CheckNames(std::string_view what, const std::string& model, const std::string& salt) {
  if (model.empty() || model.size() > keys::kMaxModelNameLength) {
    return Bad(fmt::format("{}: 'model' must have 1 to {} bytes", what, keys::kMaxModelNameLength));
  }
  if (model.find_first_of(std::string_view("@\0", 2)) != std::string::npos) {
    return Bad(fmt::format("{}: 'model' must not contain '@' or NUL", what));
  }
  if (salt.find_first_of(std::string_view("@/\\\0", 4)) != std::string::npos) {
    return Bad(fmt::format("{}: 'cache_salt' must not contain '@', '/', '\\' or NUL", what));
  }
  return Status::OK();
}

const char* SyncStateText(const cluster::WorkerSyncInfo& s) {
  switch (s.state) {
    case cluster::FullSyncState::kIdle:
      return "none";
    case cluster::FullSyncState::kSyncing:
      return s.end_received ? "missing" : "receiving";
    case cluster::FullSyncState::kCompleted:
      return "complete";
    case cluster::FullSyncState::kFailed:
      return "failed";
  }
  return "none";
}

uint64_t Load(const std::atomic<uint64_t>& v) { return v.load(std::memory_order_relaxed); }

}  // namespace

std::string HexId(uint64_t id) { return fmt::format("{:#018x}", id); }

Result<HttpLookup> ParseLookupJson(std::string_view body, const keys::TokenHasher& hasher) {
  constexpr std::string_view kWhat = "lookup";
  KVT_ASSIGN_OR_RETURN(json j, ParseObject(body, kWhat));
  KVT_RETURN_IF_ERROR(CheckKnownFields(j, kWhat,
                                       {"model", "cache_salt", "world_size", "rank", "object_group",
                                        "exclude_instance", "chunk_hashes", "token_ids"}));
  HttpLookup out;
  LookupRequest& r = out.request;
  if (!j.contains("model")) return MakeError(Bad("lookup: 'model' is required"));
  KVT_ASSIGN_OR_RETURN(r.model, StringField(j, kWhat, "model", keys::kMaxModelNameLength));
  KVT_ASSIGN_OR_RETURN(r.cache_salt,
                       StringField(j, kWhat, "cache_salt", keys::kMaxCacheSaltLength));
  KVT_RETURN_IF_ERROR(CheckNames(kWhat, r.model, r.cache_salt));
  KVT_ASSIGN_OR_RETURN(r.exclude_instance, StringField(j, kWhat, "exclude_instance", kMaxIdLength));
  KVT_ASSIGN_OR_RETURN(auto world_size, UintField(j, kWhat, "world_size", 1, 65535));
  r.world_size = static_cast<uint16_t>(world_size.value_or(1));
  KVT_ASSIGN_OR_RETURN(auto rank, UintField(j, kWhat, "rank", 0, r.world_size - 1u));
  if (rank.has_value()) r.rank = static_cast<uint16_t>(*rank);
  KVT_ASSIGN_OR_RETURN(
      auto group, UintField(j, kWhat, "object_group", 0, std::numeric_limits<uint32_t>::max()));
  r.object_group = static_cast<uint32_t>(group.value_or(0));

  const bool has_hashes = j.contains("chunk_hashes") && !j["chunk_hashes"].is_null();
  const bool has_tokens = j.contains("token_ids") && !j["token_ids"].is_null();
  if (has_hashes == has_tokens) {
    return MakeError(Bad("lookup: give exactly one of 'chunk_hashes' and 'token_ids'"));
  }
  if (has_hashes) {
    const json& hashes = j["chunk_hashes"];
    if (!hashes.is_array()) {
      return MakeError(Bad("lookup: 'chunk_hashes' must be an array of 64-hex strings"));
    }
    if (hashes.size() > kMaxKeysPerMessage) {
      return MakeError(Bad(fmt::format("lookup: at most {} chunk hashes", kMaxKeysPerMessage)));
    }
    r.hashes.reserve(hashes.size());
    for (size_t i = 0; i < hashes.size(); ++i) {
      auto h = hashes[i].is_string() ? keys::ChunkHash::FromHex(hashes[i].get<std::string>())
                                     : MakeError(Status::InvalidArgument("not a string"));
      if (!h) {
        return MakeError(Bad(fmt::format("lookup: chunk_hashes[{}] is not 64 hex characters: {}", i,
                                         h.error().message())));
      }
      r.hashes.push_back(*h);
    }
    return out;
  }
  const json& tokens = j["token_ids"];
  if (!tokens.is_array()) return MakeError(Bad("lookup: 'token_ids' must be an array of integers"));
  const size_t max_tokens = size_t{kMaxKeysPerMessage} * hasher.chunk_size();
  if (tokens.size() > max_tokens) {
    return MakeError(Bad(fmt::format("lookup: at most {} token ids ({} chunks of {})", max_tokens,
                                     kMaxKeysPerMessage, hasher.chunk_size())));
  }
  std::vector<uint32_t> ids;
  ids.reserve(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    const json& t = tokens[i];
    if (!t.is_number_integer() || (!t.is_number_unsigned() && t.get<int64_t>() < 0) ||
        t.get<uint64_t>() > std::numeric_limits<uint32_t>::max()) {
      return MakeError(Bad(fmt::format(
          "lookup: token_ids[{}] must be an integer in [0, 2^32), got {}", i, t.dump())));
    }
    ids.push_back(t.get<uint32_t>());
  }
  r.hashes = hasher.HashAll(ids);
  out.num_tokens = ids.size();
  return out;
}

json LookupJson(const HttpLookup& lookup, const LookupReply& reply, uint32_t chunk_size) {
  json matches = json::array();
  for (const LookupMatch& m : reply.matches) {
    matches.push_back({{"instance_id", m.instance_id},
                       {"address", m.address},
                       {"matched_chunks", m.matched_chunks},
                       {"matched_tokens", uint64_t{m.matched_chunks} * chunk_size}});
  }
  json out = {{"model", lookup.request.model},
              {"chunk_size", chunk_size},
              {"num_chunks", lookup.request.hashes.size()},
              {"matches", std::move(matches)}};
  if (lookup.num_tokens.has_value()) out["num_tokens"] = *lookup.num_tokens;
  return out;
}

Result<ClearRequest> ParseClearJson(std::string_view body) {
  constexpr std::string_view kWhat = "clear";
  ClearRequest r;
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) return r;  // empty: all
  KVT_ASSIGN_OR_RETURN(json j, ParseObject(body, kWhat));
  KVT_RETURN_IF_ERROR(CheckKnownFields(j, kWhat, {"instance_id", "worker_id", "location"}));
  KVT_ASSIGN_OR_RETURN(r.instance_id, StringField(j, kWhat, "instance_id", kMaxIdLength));
  KVT_ASSIGN_OR_RETURN(r.location, StringField(j, kWhat, "location", kMaxLocationLength));
  KVT_ASSIGN_OR_RETURN(auto worker,
                       UintField(j, kWhat, "worker_id", 0, std::numeric_limits<uint32_t>::max()));
  if (worker.has_value()) {
    if (r.instance_id.empty()) return MakeError(Bad("clear: 'worker_id' needs an 'instance_id'"));
    r.worker_id = static_cast<uint32_t>(*worker);
  }
  return r;
}

json WorkerJson(const ControllerCore& core, const cluster::WorkerInfo& w) {
  json locations = json::array();
  for (const cluster::LocationInfo& l : w.locations) {
    const cluster::WorkerSyncInfo& s = l.sync;
    json sync = {{"state", SyncStateText(s)}};
    if (s.state != cluster::FullSyncState::kIdle) {
      sync["sync_id"] = HexId(s.sync_id);
      sync["total_batches"] = s.expected_batch_count;
      sync["received_batches"] = s.received_batch_count;
      sync["missing_batches"] = s.missing_batches.size();
      sync["total_keys"] = s.expected_total_keys;
      sync["received_keys"] = s.received_keys;
      sync["duplicate_batches"] = s.duplicate_batches;
      sync["evicted_during_sync"] = s.evicted_during_sync;
      sync["started_ms"] = core.ToUnixMs(s.start_time);
      if (!s.failure_reason.empty()) sync["failure_reason"] = s.failure_reason;
    }
    locations.push_back({{"location", l.location},
                         {"key_count", l.keys},
                         {"last_seq", l.last_seq.has_value() ? json(*l.last_seq) : json(nullptr)},
                         {"seq_gaps", l.seq_gaps},
                         {"stale_events", l.stale_batches},
                         {"full_sync_reason", l.full_sync_reason},
                         {"full_sync_requested", l.full_sync_requested},
                         {"sync", std::move(sync)}});
  }
  const auto age = core.options().clock->Now() - w.last_heartbeat;
  return {{"instance_id", w.instance_id},
          {"worker_id", w.worker_id},
          {"registration_id", HexId(w.registration_id)},
          {"address", w.address},
          {"software_version", w.software_version},
          {"registered_at_ms", core.ToUnixMs(w.registration_time)},
          {"last_heartbeat_ms", core.ToUnixMs(w.last_heartbeat)},
          {"heartbeat_age_ms", std::chrono::duration_cast<milliseconds>(age).count()},
          {"key_count", w.total_keys},
          {"seq_gaps", w.seq_gaps},
          {"needs_full_sync", w.needs_full_sync},
          {"locations", std::move(locations)}};
}

Result<json> WorkersJson(const ControllerCore& core, std::string_view instance_id) {
  KVT_ASSIGN_OR_RETURN(auto infos, core.registry().WorkerInfos(Duration::zero()));
  json workers = json::array();
  for (const cluster::WorkerInfo& w : *infos) {
    if (instance_id.empty() || w.instance_id == instance_id) workers.push_back(WorkerJson(core, w));
  }
  const size_t n = workers.size();
  return json{{"workers", std::move(workers)}, {"total_count", n}};
}

json HealthJson(const ControllerCore& core) {
  const cluster::RegistryStats s = core.registry().Stats();
  const auto uptime = core.options().clock->Now() - core.started();
  return {{"status", "ok"},
          {"controller_epoch", HexId(core.epoch())},
          {"uptime_s", std::chrono::duration_cast<std::chrono::seconds>(uptime).count()},
          {"instances", s.instances},
          {"workers", s.workers},
          {"keys", s.keys}};
}

Result<json> DashboardJson(const ControllerCore& core, const BoundEndpoints& endpoints) {
  KVT_ASSIGN_OR_RETURN(json workers, WorkersJson(core, ""));
  const cluster::RegistryStats s = core.registry().Stats();
  const ControllerCounters& c = core.counters();
  const ControllerOptions& o = core.options();
  uint64_t dropped = 0;
  for (const auto& d : c.events_dropped) dropped += Load(d);
  json out;
  out["controller"] = HealthJson(core);
  out["settings"] = {
      {"requests", endpoints.requests},
      {"events", endpoints.events},
      {"heartbeats", endpoints.heartbeats},
      {"heartbeat_interval_ms",
       std::chrono::duration_cast<milliseconds>(o.heartbeat_interval).count()},
      {"worker_timeout_ms", o.reap_dead_workers
                                ? std::chrono::duration_cast<milliseconds>(o.worker_timeout).count()
                                : int64_t{-1}},
      {"sync_timeout_ms", std::chrono::duration_cast<milliseconds>(o.sync_timeout).count()},
      {"hash_algorithm", keys::HashAlgorithmName(core.hasher().algorithm())},
      {"chunk_size", core.hasher().chunk_size()}};
  out["totals"] = {{"holders", s.holders},
                   {"seq_gaps", s.seq_gaps},
                   {"lost_events", s.lost_events},
                   {"key_count_mismatches", s.key_count_mismatches},
                   {"full_syncs_started", s.full_syncs_started},
                   {"full_syncs_completed", s.full_syncs_completed},
                   {"full_syncs_failed", s.full_syncs_failed},
                   {"workers_reaped", Load(c.workers_reaped)},
                   {"events_dropped", dropped},
                   {"registrations", Load(c.registrations)}};
  out["workers"] = std::move(workers["workers"]);
  out["events"] = core.event_log().Json();
  return out;
}

std::string MetricsText(const ControllerCore& core) {
  admin::PrometheusWriter w;
  const cluster::RegistryStats s = core.registry().Stats();
  const ControllerCounters& c = core.counters();
  const auto uptime = core.options().clock->Now() - core.started();
  w.Gauge("kvtier_controller_info", "The controller's epoch and hashing (value 1)", 1,
          {{"epoch", HexId(core.epoch())},
           {"hash_algorithm", std::string(keys::HashAlgorithmName(core.hasher().algorithm()))},
           {"chunk_size", std::to_string(core.hasher().chunk_size())}});
  w.Gauge("kvtier_controller_uptime_seconds", "Seconds since the controller started",
          std::chrono::duration<double>(uptime).count());
  w.Gauge("kvtier_controller_instances", "Registered instances (kvtier servers)", s.instances);
  w.Gauge("kvtier_controller_workers", "Registered workers", s.workers);
  w.Gauge("kvtier_controller_keys", "Distinct keys in the index", s.keys);
  w.Gauge("kvtier_controller_holders", "(key, worker, location) memberships in the index",
          s.holders);
  const auto counter = [&w](const char* name, const char* help, uint64_t v) {
    w.Counter(name, help, static_cast<double>(v));
  };
  counter("kvtier_controller_seq_gaps_total", "Events applied after a sequence gap", s.seq_gaps);
  counter("kvtier_controller_stale_events_total", "Events with a sequence number already seen",
          s.stale_batches);
  counter("kvtier_controller_lost_events_total", "Heartbeats revealing events that never arrived",
          s.lost_events);
  counter("kvtier_controller_key_count_mismatches_total",
          "Heartbeats whose key count disagreed with the index", s.key_count_mismatches);
  counter("kvtier_controller_full_syncs_started_total", "Full syncs started", s.full_syncs_started);
  counter("kvtier_controller_full_syncs_completed_total", "Full syncs completed",
          s.full_syncs_completed);
  counter("kvtier_controller_full_syncs_failed_total",
          "Full syncs failed (timeout, gap, key count mismatch, ...)", s.full_syncs_failed);
  counter("kvtier_controller_full_syncs_superseded_total",
          "Full syncs abandoned by a new start of the same location", s.full_syncs_superseded);
  counter("kvtier_controller_full_sync_commands_total",
          "full_sync commands sent in heartbeat replies", Load(c.full_sync_commands));
  counter("kvtier_controller_sync_batches_duplicate_total", "Resent full-sync batches ignored",
          s.sync_batches_duplicate);
  counter("kvtier_controller_workers_reaped_total", "Workers reaped after missed heartbeats",
          Load(c.workers_reaped));
  counter("kvtier_controller_syncs_expired_total", "Full syncs failed by the sync timeout",
          Load(c.syncs_expired));
  counter("kvtier_controller_registrations_total", "REGISTER requests accepted",
          Load(c.registrations));
  counter("kvtier_controller_reregistrations_total",
          "REGISTER of an (instance, worker) already registered", Load(c.reregistrations));
  counter("kvtier_controller_registrations_refused_total",
          "REGISTER refused (hash algorithm or chunk size differ)", Load(c.registrations_refused));
  counter("kvtier_controller_deregistrations_total", "DEREGISTER requests that removed a worker",
          Load(c.deregistrations));
  counter("kvtier_controller_reregister_commands_total",
          "Heartbeats of unknown registrations answered with reregister",
          Load(c.reregister_commands));
  counter("kvtier_controller_request_errors_total", "Requests answered with an error reply",
          Load(c.request_errors));
  counter("kvtier_controller_wrong_socket_requests_total",
          "Requests other than HEARTBEAT sent to the heartbeat socket", Load(c.wrong_socket));
  counter("kvtier_controller_lock_timeouts_total", "Registry lock waits that timed out",
          s.lock_timeouts);
  for (size_t i = 0; i < c.events_dropped.size(); ++i) {
    w.Counter("kvtier_controller_events_dropped_total", "Events not applied, by reason",
              static_cast<double>(Load(c.events_dropped[i])),
              {{"reason", DropReasonName(static_cast<DropReason>(i))}});
  }
  // Messages and their latency, by type: every known type, and INVALID for undecodable frames.
  const auto bounds = [] {
    std::array<double, server::LatencyHistogram::kBoundsUs.size()> b{};
    for (size_t i = 0; i < b.size(); ++i) b[i] = server::LatencyHistogram::kBoundsUs[i] / 1e6;
    return b;
  }();
  for (size_t slot = 0; slot < ControllerCounters::kTypeSlots; ++slot) {
    const auto type = MessageTypeFromNumber(static_cast<uint16_t>(slot));
    if (slot != 0 && !type.has_value()) continue;
    const MessageType t = type.value_or(MessageType::kInvalid);
    const char* name = MessageTypeName(t);
    w.Counter("kvtier_controller_messages_total",
              "Messages received, by type (INVALID: undecodable)",
              static_cast<double>(Load(c.messages[slot])), {{"type", name}});
    const server::LatencyHistogram::Snapshot h = c.latency[slot].Read();
    const bool event = IsEvent(t);
    w.Histogram(event ? "kvtier_controller_event_duration_seconds"
                      : "kvtier_controller_request_duration_seconds",
                event ? "Time to apply one event, by type"
                      : "Time from a request's arrival to its reply, by type (INVALID: "
                        "undecodable frames)",
                bounds, h.cumulative, h.sum_seconds, {{"type", name}});
  }
  return w.Finish();
}

}  // namespace kvtier::controller
