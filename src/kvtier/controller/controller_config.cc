#include "kvtier/controller/controller_config.h"

#include <algorithm>
#include <array>
#include <limits>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "kvtier/common/units.h"
#include "kvtier/config/yaml_reader.h"

namespace kvtier::controller {
namespace {

using config::internal::LoadOneDocument;
using config::internal::MapReader;
using config::internal::YamlSource;

constexpr std::array<std::string_view, 7> kLogLevels = {"trace", "debug",    "info", "warn",
                                                        "error", "critical", "off"};

Status Read(const YamlSource* source, const YAML::Node& root, ControllerConfig* c) {
  ControllerOptions& o = c->options;
  KVT_ASSIGN_OR_RETURN(MapReader top, MapReader::Open(source, root, ""));
  KVT_RETURN_IF_ERROR(top.String("log_level", &c->log_level));
  KVT_RETURN_IF_ERROR(top.Duration("tick_interval", &o.tick_interval));
  {
    KVT_ASSIGN_OR_RETURN(MapReader m, MapReader::Open(source, top.Get("endpoints"), "endpoints"));
    KVT_RETURN_IF_ERROR(m.String("requests", &o.request_endpoint));
    KVT_RETURN_IF_ERROR(m.String("events", &o.events_endpoint));
    KVT_RETURN_IF_ERROR(m.String("heartbeats", &o.heartbeat_endpoint));
    KVT_RETURN_IF_ERROR(m.String("advertised_heartbeats", &o.advertised_heartbeat_endpoint));
    KVT_RETURN_IF_ERROR(m.Finish());
  }
  {
    KVT_ASSIGN_OR_RETURN(MapReader m, MapReader::Open(source, top.Get("admin"), "admin"));
    KVT_RETURN_IF_ERROR(m.Bool("enabled", &o.admin_enabled));
    KVT_RETURN_IF_ERROR(m.String("host", &o.admin_host));
    uint64_t port = o.admin_port;
    KVT_RETURN_IF_ERROR(m.Unsigned("port", 65535, &port));
    o.admin_port = static_cast<uint16_t>(port);
    uint64_t threads = o.admin_threads;
    KVT_RETURN_IF_ERROR(m.Unsigned("threads", 64, &threads));
    o.admin_threads = threads;
    KVT_RETURN_IF_ERROR(m.Finish());
  }
  {
    KVT_ASSIGN_OR_RETURN(MapReader m, MapReader::Open(source, top.Get("heartbeat"), "heartbeat"));
    KVT_RETURN_IF_ERROR(m.Duration("interval", &o.heartbeat_interval));
    KVT_RETURN_IF_ERROR(m.Duration("worker_timeout", &o.worker_timeout));
    KVT_RETURN_IF_ERROR(m.Bool("reap", &o.reap_dead_workers));
    KVT_RETURN_IF_ERROR(m.Finish());
  }
  {
    KVT_ASSIGN_OR_RETURN(MapReader m, MapReader::Open(source, top.Get("full_sync"), "full_sync"));
    KVT_RETURN_IF_ERROR(m.Duration("timeout", &o.sync_timeout));
    KVT_RETURN_IF_ERROR(m.Finish());
  }
  {
    KVT_ASSIGN_OR_RETURN(MapReader m, MapReader::Open(source, top.Get("hashing"), "hashing"));
    KVT_RETURN_IF_ERROR(m.String("algorithm", &o.hash_algorithm));
    uint64_t chunk = o.chunk_size;
    KVT_RETURN_IF_ERROR(m.Unsigned("chunk_size", kMaxChunkSize, &chunk));
    o.chunk_size = static_cast<uint32_t>(chunk);
    KVT_RETURN_IF_ERROR(m.Finish());
  }
  {
    KVT_ASSIGN_OR_RETURN(MapReader m, MapReader::Open(source, top.Get("limits"), "limits"));
    uint64_t workers = o.max_workers;
    KVT_RETURN_IF_ERROR(m.Unsigned("max_workers", (1u << 24) - 1, &workers));
    o.max_workers = static_cast<uint32_t>(workers);
    uint64_t keys = o.max_keys_per_message;
    KVT_RETURN_IF_ERROR(m.Unsigned("max_keys_per_message", kMaxKeysPerMessage, &keys));
    o.max_keys_per_message = static_cast<uint32_t>(keys);
    uint64_t recent = o.recent_events;
    KVT_RETURN_IF_ERROR(m.Unsigned("recent_events", 100000, &recent));
    o.recent_events = recent;
    KVT_RETURN_IF_ERROR(m.Finish());
  }
  return top.Finish();
}

Status FlagError(std::string_view flag, std::string_view what) {
  return Status::InvalidArgument(fmt::format("{}: {}", flag, what));
}

bool Given(const CLI::Option* option) { return option != nullptr && option->count() > 0; }

Result<Duration> FlagDuration(std::string_view flag, const std::string& text) {
  auto d = ParseDuration(text);
  if (!d) return MakeError(FlagError(flag, d.error().message()));
  return *d;
}

Result<uint64_t> FlagRange(std::string_view flag, int64_t v, uint64_t min, uint64_t max) {
  if (v < 0 || static_cast<uint64_t>(v) < min || static_cast<uint64_t>(v) > max) {
    return MakeError(FlagError(flag, fmt::format("must be in [{}, {}], got {}", min, max, v)));
  }
  return static_cast<uint64_t>(v);
}

}  // namespace

Result<ControllerConfig> ParseControllerConfigYaml(std::string_view yaml_text,
                                                   std::string_view source_name) {
  const YamlSource source{std::string(source_name)};
  try {
    KVT_ASSIGN_OR_RETURN(YAML::Node root, LoadOneDocument(source, yaml_text));
    ControllerConfig config;
    KVT_RETURN_IF_ERROR(Read(&source, root, &config));
    return config;
  } catch (const YAML::Exception& e) {
    return MakeError(source.Error(e.mark, "", fmt::format("invalid YAML: {}", e.msg)));
  } catch (const std::exception& e) {
    return MakeError(Status::InvalidArgument(fmt::format("{}: {}", source.name(), e.what())));
  }
}

Result<ControllerConfig> LoadControllerConfigFile(const std::string& path) {
  KVT_ASSIGN_OR_RETURN(std::string text, config::internal::ReadConfigFile(path));
  return ParseControllerConfigYaml(text, path);
}

std::string DumpControllerConfigYaml(const ControllerConfig& c) {
  const ControllerOptions& o = c.options;
  using config::internal::EmitString;
  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "log_level" << YAML::Value;
  EmitString(out, c.log_level);
  out << YAML::Key << "tick_interval" << YAML::Value << FormatDuration(o.tick_interval);
  out << YAML::Key << "endpoints" << YAML::Value << YAML::BeginMap;
  for (const auto& [key, value] :
       {std::pair<const char*, const std::string&>{"requests", o.request_endpoint},
        {"events", o.events_endpoint},
        {"heartbeats", o.heartbeat_endpoint},
        {"advertised_heartbeats", o.advertised_heartbeat_endpoint}}) {
    out << YAML::Key << key << YAML::Value;
    EmitString(out, value);
  }
  out << YAML::EndMap;
  out << YAML::Key << "admin" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "enabled" << YAML::Value << o.admin_enabled;
  out << YAML::Key << "host" << YAML::Value;
  EmitString(out, o.admin_host);
  out << YAML::Key << "port" << YAML::Value << o.admin_port;
  out << YAML::Key << "threads" << YAML::Value << o.admin_threads;
  out << YAML::EndMap;
  out << YAML::Key << "heartbeat" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "interval" << YAML::Value << FormatDuration(o.heartbeat_interval);
  out << YAML::Key << "worker_timeout" << YAML::Value << FormatDuration(o.worker_timeout);
  out << YAML::Key << "reap" << YAML::Value << o.reap_dead_workers;
  out << YAML::EndMap;
  out << YAML::Key << "full_sync" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "timeout" << YAML::Value << FormatDuration(o.sync_timeout);
  out << YAML::EndMap;
  out << YAML::Key << "hashing" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "algorithm" << YAML::Value;
  EmitString(out, o.hash_algorithm);
  out << YAML::Key << "chunk_size" << YAML::Value << o.chunk_size;
  out << YAML::EndMap;
  out << YAML::Key << "limits" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "max_workers" << YAML::Value << o.max_workers;
  out << YAML::Key << "max_keys_per_message" << YAML::Value << o.max_keys_per_message;
  out << YAML::Key << "recent_events" << YAML::Value << o.recent_events;
  out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

Status ValidateControllerConfig(const ControllerConfig& config) {
  if (std::find(kLogLevels.begin(), kLogLevels.end(), config.log_level) == kLogLevels.end()) {
    return Status::InvalidArgument(
        fmt::format("log_level must be trace, debug, info, warn, error, critical or off, got '{}'",
                    config.log_level));
  }
  return ValidateControllerOptions(config.options);
}

void ControllerFlags::Register(CLI::App* app) {
  const ControllerOptions d;
  app->add_option("--config", config_path_,
                  "YAML config file (docs/controller.md); flags override its values. Default: "
                  "none (built-in defaults)")
      ->type_name("FILE");
  options_.request_endpoint = app->add_option(
      "--request-endpoint", request_endpoint_,
      fmt::format("ROUTER for requests [endpoints.requests, default {}]", d.request_endpoint));
  options_.events_endpoint = app->add_option(
      "--events-endpoint", events_endpoint_,
      fmt::format("PULL for worker events [endpoints.events, default {}]", d.events_endpoint));
  options_.heartbeat_endpoint =
      app->add_option("--heartbeat-endpoint", heartbeat_endpoint_,
                      fmt::format("ROUTER for heartbeats [endpoints.heartbeats, default {}]",
                                  d.heartbeat_endpoint));
  options_.advertised_heartbeat_endpoint =
      app->add_option("--advertise-heartbeat-endpoint", advertised_heartbeat_endpoint_,
                      "Heartbeat endpoint named in REGISTER replies; empty: each worker's own "
                      "[endpoints.advertised_heartbeats, default empty]");
  options_.admin_host = app->add_option(
      "--admin-host", admin_host_,
      fmt::format("HTTP admin/dashboard listen address [admin.host, default {}]", d.admin_host));
  options_.admin_port = app->add_option(
      "--admin-port", admin_port_,
      fmt::format("HTTP admin port, 0 for any free port [admin.port, default {}]", d.admin_port));
  options_.no_admin =
      app->add_flag("--no-admin", no_admin_, "Turn the HTTP admin API off [admin.enabled: false]");
  options_.no_admin->excludes(options_.admin_host);
  options_.no_admin->excludes(options_.admin_port);
  options_.heartbeat_interval = app->add_option(
      "--heartbeat-interval", heartbeat_interval_,
      fmt::format("Heartbeat interval asked of workers [heartbeat.interval, default {}]",
                  FormatDuration(d.heartbeat_interval)));
  options_.worker_timeout = app->add_option(
      "--worker-timeout", worker_timeout_,
      fmt::format("Silence before a worker is reaped [heartbeat.worker_timeout, default {}]",
                  FormatDuration(d.worker_timeout)));
  options_.no_reap =
      app->add_flag("--no-reap", no_reap_, "Never reap silent workers [heartbeat.reap: false]");
  options_.sync_timeout = app->add_option(
      "--sync-timeout", sync_timeout_,
      fmt::format("Inactivity before a full sync fails [full_sync.timeout, default {}]",
                  FormatDuration(d.sync_timeout)));
  options_.hash_algorithm = app->add_option(
      "--hash-algorithm", hash_algorithm_,
      fmt::format("The cluster's chunk hash, sha256 or xxh3_128 [hashing.algorithm, default {}]",
                  d.hash_algorithm));
  options_.chunk_size = app->add_option(
      "--chunk-size", chunk_size_,
      fmt::format("Tokens per chunk [hashing.chunk_size, default {}]", d.chunk_size));
  options_.max_workers = app->add_option(
      "--max-workers", max_workers_,
      fmt::format("Registered workers at most [limits.max_workers, default {}]", d.max_workers));
  options_.log_level =
      app->add_option("--log-level", log_level_,
                      "trace, debug, info, warn, error, critical or off [log_level, default info]");
}

Status ControllerFlags::Apply(ControllerConfig* c) const {
  ControllerOptions& o = c->options;
  if (Given(options_.request_endpoint)) o.request_endpoint = request_endpoint_;
  if (Given(options_.events_endpoint)) o.events_endpoint = events_endpoint_;
  if (Given(options_.heartbeat_endpoint)) o.heartbeat_endpoint = heartbeat_endpoint_;
  if (Given(options_.advertised_heartbeat_endpoint)) {
    o.advertised_heartbeat_endpoint = advertised_heartbeat_endpoint_;
  }
  if (Given(options_.admin_host)) o.admin_host = admin_host_;
  if (Given(options_.admin_port)) {
    KVT_ASSIGN_OR_RETURN(uint64_t port, FlagRange("--admin-port", admin_port_, 0, 65535));
    o.admin_port = static_cast<uint16_t>(port);
  }
  if (Given(options_.no_admin) && no_admin_) o.admin_enabled = false;
  if (Given(options_.heartbeat_interval)) {
    KVT_ASSIGN_OR_RETURN(o.heartbeat_interval,
                         FlagDuration("--heartbeat-interval", heartbeat_interval_));
  }
  if (Given(options_.worker_timeout)) {
    KVT_ASSIGN_OR_RETURN(o.worker_timeout, FlagDuration("--worker-timeout", worker_timeout_));
  }
  if (Given(options_.no_reap) && no_reap_) o.reap_dead_workers = false;
  if (Given(options_.sync_timeout)) {
    KVT_ASSIGN_OR_RETURN(o.sync_timeout, FlagDuration("--sync-timeout", sync_timeout_));
  }
  if (Given(options_.hash_algorithm)) o.hash_algorithm = hash_algorithm_;
  if (Given(options_.chunk_size)) {
    KVT_ASSIGN_OR_RETURN(uint64_t chunk, FlagRange("--chunk-size", chunk_size_, 1, kMaxChunkSize));
    o.chunk_size = static_cast<uint32_t>(chunk);
  }
  if (Given(options_.max_workers)) {
    KVT_ASSIGN_OR_RETURN(uint64_t n, FlagRange("--max-workers", max_workers_, 1, (1u << 24) - 1));
    o.max_workers = static_cast<uint32_t>(n);
  }
  if (Given(options_.log_level)) c->log_level = log_level_;
  return Status::OK();
}

}  // namespace kvtier::controller
