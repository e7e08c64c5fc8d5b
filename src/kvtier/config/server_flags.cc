// ServerFlags: the `kvtier server` flags, each overriding one key of the config file.
#include <limits>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kvtier/common/units.h"
#include "kvtier/config/l2_adapter_config.h"
#include "kvtier/config/server_config.h"
#include "kvtier/config/yaml_reader.h"

namespace kvtier::config {
namespace {

Status FlagError(std::string_view flag, std::string_view what) {
  return Status::InvalidArgument(fmt::format("{}: {}", flag, what));
}

bool Given(const CLI::Option* option) { return option != nullptr && option->count() > 0; }

Result<uint64_t> InRange(std::string_view flag, int64_t value, uint64_t min, uint64_t max) {
  if (value < 0 || static_cast<uint64_t>(value) < min || static_cast<uint64_t>(value) > max) {
    return MakeError(FlagError(flag, fmt::format("must be in [{}, {}], got {}", min, max, value)));
  }
  return static_cast<uint64_t>(value);
}

}  // namespace

void ServerFlags::Register(CLI::App* app) {
  const ServerConfig d;
  app->add_option("--config", config_path_,
                  "YAML config file (docs/configuration.md); flags override its values. "
                  "Default: none (built-in defaults)")
      ->type_name("FILE");
  options_.endpoint =
      app->add_option("--endpoint", endpoints_,
                      fmt::format("Endpoint to serve, tcp://HOST:PORT or ipc:///PATH; repeat for "
                                  "several (replaces the file's list) [transport.endpoints, "
                                  "default {}]",
                                  fmt::join(d.transport.endpoints, ", ")))
          ->type_name("URL")
          ->allow_extra_args(false);
  options_.admin_host = app->add_option(
      "--admin-host", admin_host_,
      fmt::format("Admin HTTP listen address [admin.host, default {}]", d.admin.host));
  options_.admin_port = app->add_option(
      "--admin-port", admin_port_,
      fmt::format("Admin HTTP port, 0 for any free port [admin.port, default {}]", d.admin.port));
  options_.no_admin =
      app->add_flag("--no-admin", no_admin_,
                    "Turn the admin HTTP endpoint off [admin.enabled: false, default on]");
  options_.no_admin->excludes(options_.admin_host);
  options_.no_admin->excludes(options_.admin_port);
  options_.l1_size =
      app->add_option("--l1-size", l1_size_,
                      fmt::format("L1 (CPU memory) capacity, e.g. 20GiB [l1.capacity, default {}]",
                                  internal::FormatSizeForYaml(d.storage.l1.capacity_bytes)))
          ->type_name("SIZE");
  options_.chunk_size = app->add_option(
      "--chunk-size", chunk_size_,
      fmt::format("Tokens per chunk [engine.chunk_size, default {}]", d.engine.chunk_size));
  options_.eviction_policy = app->add_option(
      "--eviction-policy", eviction_policy_,
      fmt::format("L1 eviction policy: lru, s3fifo, arc or noop [l1_eviction.policy, default {}]",
                  d.storage.l1_eviction_policy));
  options_.l2_fs_path =
      app->add_option("--l2-fs-path", l2_fs_paths_,
                      "Add an fs L2 adapter storing under this directory, after the file's "
                      "adapters; repeatable [l2.adapters: {type: fs, base_path: DIR}, default "
                      "no L2]")
          ->type_name("DIR")
          ->allow_extra_args(false);
  options_.l2_redis =
      app->add_option("--l2-redis", l2_redis_urls_,
                      "Add a Redis/Valkey L2 adapter, after the file's adapters; repeatable. "
                      "URL: redis://[[user][:password]@]host[:port][/db] (or the password in "
                      "$KVT_REDIS_PASSWORD) [l2.adapters: {type: redis, ...}, default no L2]")
          ->type_name("URL")
          ->allow_extra_args(false);
  options_.session_ttl = app->add_option(
      "--session-ttl", session_ttl_,
      fmt::format("Idle time before a session expires, e.g. 10m [engine.session_ttl, default {}]",
                  FormatDuration(d.engine.session_ttl)));
  options_.worker_timeout = app->add_option(
      "--worker-timeout", worker_timeout_,
      fmt::format("Silence before a worker is reaped, 0 never [engine.worker_timeout, "
                  "default {}]",
                  FormatDuration(d.engine.worker_timeout)));
  options_.control_threads =
      app->add_option("--control-threads", control_threads_,
                      fmt::format("Threads for control requests [transport.control_threads, "
                                  "default {}]",
                                  d.transport.control_threads));
  options_.transfer_threads =
      app->add_option("--transfer-threads", transfer_threads_,
                      fmt::format("Threads for STORE/RETRIEVE copies [transport.transfer_threads, "
                                  "default {}]",
                                  d.transport.transfer_threads));
  options_.server_id = app->add_option(
      "--server-id", server_id_, "Server id reported to clients [server_id, default hostname-pid]");
  options_.controller =
      app->add_option("--controller", controller_,
                      "Report this server's chunks to the cluster controller at this endpoint, "
                      "tcp://HOST:PORT (its events and heartbeats on PORT+1, PORT+2) or "
                      "ipc:///PATH [controller.endpoint, default none: reporting off]")
          ->type_name("URL");
  options_.log_level =
      app->add_option("--log-level", log_level_,
                      fmt::format("trace, debug, info, warn, error, critical or off [log_level, "
                                  "default {}]",
                                  d.log_level));
}

Status ServerFlags::Apply(ServerConfig* config) const {
  if (Given(options_.endpoint)) config->transport.endpoints = endpoints_;
  if (Given(options_.admin_host)) config->admin.host = admin_host_;
  if (Given(options_.admin_port)) {
    KVT_ASSIGN_OR_RETURN(uint64_t port, InRange("--admin-port", admin_port_, 0, 65535));
    config->admin.port = static_cast<uint16_t>(port);
  }
  if (Given(options_.no_admin) && no_admin_) config->admin.enabled = false;
  if (Given(options_.l1_size)) {
    Result<uint64_t> size = internal::ParseSizeValue(l1_size_);
    if (!size) return FlagError("--l1-size", size.error().message());
    config->storage.l1.capacity_bytes = *size;
  }
  if (Given(options_.chunk_size)) {
    KVT_ASSIGN_OR_RETURN(uint64_t chunk, InRange("--chunk-size", chunk_size_, 1,
                                                 std::numeric_limits<uint32_t>::max()));
    config->engine.chunk_size = static_cast<uint32_t>(chunk);
  }
  if (Given(options_.eviction_policy)) config->storage.l1_eviction_policy = eviction_policy_;
  if (Given(options_.session_ttl)) {
    Result<Duration> ttl = internal::ParseDurationValue(session_ttl_);
    if (!ttl) return FlagError("--session-ttl", ttl.error().message());
    config->engine.session_ttl = *ttl;
  }
  if (Given(options_.worker_timeout)) {
    Result<Duration> timeout = internal::ParseDurationValue(worker_timeout_);
    if (!timeout) return FlagError("--worker-timeout", timeout.error().message());
    config->engine.worker_timeout = *timeout;
  }
  if (Given(options_.control_threads)) {
    KVT_ASSIGN_OR_RETURN(
        config->transport.control_threads,
        InRange("--control-threads", control_threads_, 1, std::numeric_limits<int64_t>::max()));
  }
  if (Given(options_.transfer_threads)) {
    KVT_ASSIGN_OR_RETURN(
        config->transport.transfer_threads,
        InRange("--transfer-threads", transfer_threads_, 1, std::numeric_limits<int64_t>::max()));
  }
  if (Given(options_.server_id)) config->server_id = server_id_;
  if (Given(options_.log_level)) config->log_level = log_level_;
  if (Given(options_.controller)) config->controller.endpoint = controller_;

  // Adapters last: their default names depend on their position after the file's.
  std::vector<nlohmann::json>& adapters = config->storage.l2_adapters;
  if (Given(options_.l2_fs_path)) {
    for (const std::string& path : l2_fs_paths_) {
      if (path.empty()) return FlagError("--l2-fs-path", "the directory must not be empty");
      adapters.push_back(FsAdapterConfigForPath(path));
    }
  }
  if (Given(options_.l2_redis)) {
    for (const std::string& url : l2_redis_urls_) {
      Result<nlohmann::json> redis = RedisAdapterConfigFromUrl(url);
      if (!redis) return FlagError("--l2-redis", redis.error().message());
      adapters.push_back(std::move(*redis));
    }
  }
  return Status::OK();
}

}  // namespace kvtier::config
