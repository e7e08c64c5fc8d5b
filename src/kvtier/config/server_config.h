// The kvtier server's configuration: a YAML file (`kvtier server --config FILE`) overridden by
// command-line flags, then validated before anything starts. docs/configuration.md documents
// every key; configs/kvtier.example.yaml sets every one.
//
//   ServerConfig config;                                  // defaults: a localhost server
//   if (!flags.config_path().empty()) config = LoadServerConfigFile(flags.config_path()) ...;
//   KVT_RETURN_IF_ERROR(flags.Apply(&config));            // only the flags that were given
//   KVT_RETURN_IF_ERROR(ValidateServerConfig(config));    // cross-field checks
//
// Errors are kInvalidArgument. Parse errors name the file, line and column, and the key path
// ("kvtier.yaml:12:13: l1.capacity: invalid size '12 parsecs' ..."); an unknown key is an error
// that suggests the closest valid key. Nothing here throws: yaml-cpp's exceptions are caught.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kvtier/common/clock.h"
#include "kvtier/common/result.h"
#include "kvtier/reporter/options.h"
#include "kvtier/server/engine.h"
#include "kvtier/storage/storage_manager.h"
#include "kvtier/transfer/host_backend.h"

namespace CLI {
class App;
class Option;
}  // namespace CLI

namespace kvtier::config {

struct TransportConfig {
  // tcp://HOST:PORT (PORT 0 or * picks a free port) or ipc:///PATH.
  std::vector<std::string> endpoints = {"tcp://127.0.0.1:5555"};
  size_t control_threads = 2;
  size_t transfer_threads = 4;
  size_t max_queued_requests = 4096;
};

struct AdminConfig {
  bool enabled = true;
  std::string host = "127.0.0.1";
  uint16_t port = 8080;  // 0 picks a free port
};

// L1's default capacity in a server config (L1Options has none: it must be > 0).
inline constexpr uint64_t kDefaultL1Capacity = 1ULL << 30;

// storage::StorageOptions' defaults, with L1 at kDefaultL1Capacity.
storage::StorageOptions DefaultStorageOptions();

struct ServerConfig {
  std::string server_id;  // default: hostname-pid, filled at start when empty
  std::string log_level = "info";
  TransportConfig transport;
  AdminConfig admin;
  // engine.server_id and engine.server_version are set at start (from server_id and the
  // binary), not configured.
  server::EngineOptions engine;
  storage::StorageOptions storage = DefaultStorageOptions();
  // host_transfer.pool is set at start, not configured.
  transfer::HostBackendOptions host_transfer;
  Duration tick_interval = std::chrono::seconds(1);  // session expiry / worker reaping period
  // The cluster controller this server reports its chunks to; off while controller.endpoint is
  // empty. Only its file-level keys are configured (see reporter/options.h).
  reporter::ReporterOptions controller;
};

// Parses a config file's text. Every key is optional (an empty text gives the defaults); an
// empty value (`key:` or `key: ~`) keeps the key's default. Types, units and single-field rules
// (e.g. an endpoint's syntax, sizes > 0, a known eviction policy, each L2 adapter config) are
// checked here with the file position; checks across fields are ValidateServerConfig's.
Result<ServerConfig> ParseServerConfigYaml(std::string_view yaml_text,
                                           std::string_view source_name);
// Reads and parses a file (kNotFound / kIOError when it cannot be read).
Result<ServerConfig> LoadServerConfigFile(const std::string& path);

// Every rule of the config, on the values (errors name the key path): each field's rule as in
// parsing, plus watermarks ordered, L1 alignment <= capacity, shm_name without hugepages,
// unique endpoints and L2 adapter names, the admin port not taken by a transport endpoint, the
// controller's events and heartbeat endpoints given or derivable, and each L2 adapter config
// accepted by the l2 parsers (ValidateL2AdapterConfig: nothing is built; the rest, e.g. a
// base_path that cannot be created, fails at start).
Status ValidateServerConfig(const ServerConfig& config);

// The whole config as YAML, every key written (for `kvtier server --print-config`).
// ParseServerConfigYaml(DumpServerConfigYaml(c)) gives `c` back. L2 adapter configs are written
// as they are, passwords included.
std::string DumpServerConfigYaml(const ServerConfig& config);

// Every key path the YAML schema has, in dump order ("transport.endpoints", "l1.capacity",
// "l2.adapters", ...); the keys inside an L2 adapter config belong to its type (docs/l2.md).
std::vector<std::string> ServerConfigKeyPaths();

// The server's command-line flags. Register() adds them to `app` (the `server` subcommand);
// after parsing, Apply() overrides only the values of flags that were given, so a flag beats the
// file and an absent flag leaves the file's value. --endpoint replaces the file's endpoints
// (repeat it for several); --l2-fs-path and --l2-redis append adapters after the file's (each
// repeatable). Apply's errors name the flag.
class ServerFlags {
 public:
  void Register(CLI::App* app);
  Status Apply(ServerConfig* config) const;
  // --config FILE; empty when not given.
  const std::string& config_path() const { return config_path_; }

 private:
  std::string config_path_;
  std::vector<std::string> endpoints_;
  std::string admin_host_;
  int64_t admin_port_ = 0;
  bool no_admin_ = false;
  std::string l1_size_;
  int64_t chunk_size_ = 0;
  std::string eviction_policy_;
  std::vector<std::string> l2_fs_paths_;
  std::vector<std::string> l2_redis_urls_;
  std::string session_ttl_;
  std::string worker_timeout_;
  int64_t control_threads_ = 0;
  int64_t transfer_threads_ = 0;
  std::string server_id_;
  std::string log_level_;
  std::string controller_;

  // The registered options, to tell which were given (null before Register).
  struct Options {
    CLI::Option* endpoint = nullptr;
    CLI::Option* admin_host = nullptr;
    CLI::Option* admin_port = nullptr;
    CLI::Option* no_admin = nullptr;
    CLI::Option* l1_size = nullptr;
    CLI::Option* chunk_size = nullptr;
    CLI::Option* eviction_policy = nullptr;
    CLI::Option* l2_fs_path = nullptr;
    CLI::Option* l2_redis = nullptr;
    CLI::Option* session_ttl = nullptr;
    CLI::Option* worker_timeout = nullptr;
    CLI::Option* control_threads = nullptr;
    CLI::Option* transfer_threads = nullptr;
    CLI::Option* server_id = nullptr;
    CLI::Option* log_level = nullptr;
    CLI::Option* controller = nullptr;
  } options_;
};

}  // namespace kvtier::config
