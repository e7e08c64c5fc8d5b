// `kvtier controller` configuration: a YAML file (every key in docs/controller.md, "The
// controller process") overridden by command-line flags, into ControllerOptions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <CLI/CLI.hpp>

#include "kvtier/common/result.h"
#include "kvtier/controller/controller_options.h"

namespace kvtier::controller {

struct ControllerConfig {
  ControllerOptions options;
  std::string log_level = "info";
};

// Errors are kInvalidArgument "<source>:<line>:<col>: <key path>: <what>"; unknown keys are
// errors (with the closest known key suggested).
Result<ControllerConfig> ParseControllerConfigYaml(std::string_view yaml_text,
                                                   std::string_view source_name = "<yaml>");
// kNotFound when the file does not exist.
Result<ControllerConfig> LoadControllerConfigFile(const std::string& path);
// The effective configuration as YAML that ParseControllerConfigYaml reads back equal.
std::string DumpControllerConfigYaml(const ControllerConfig& config);
// ValidateControllerOptions plus the log level.
Status ValidateControllerConfig(const ControllerConfig& config);

// The `kvtier controller` flags, each overriding one key of the file.
class ControllerFlags {
 public:
  void Register(CLI::App* app);
  Status Apply(ControllerConfig* config) const;
  const std::string& config_path() const { return config_path_; }

 private:
  std::string config_path_;
  std::string request_endpoint_, events_endpoint_, heartbeat_endpoint_;
  std::string advertised_heartbeat_endpoint_;
  std::string admin_host_;
  int64_t admin_port_ = 0;
  bool no_admin_ = false;
  std::string heartbeat_interval_, worker_timeout_, sync_timeout_;
  bool no_reap_ = false;
  std::string hash_algorithm_;
  int64_t chunk_size_ = 0;
  int64_t max_workers_ = 0;
  std::string log_level_;

  struct Options {
    CLI::Option* request_endpoint = nullptr;
    CLI::Option* events_endpoint = nullptr;
    CLI::Option* heartbeat_endpoint = nullptr;
    CLI::Option* advertised_heartbeat_endpoint = nullptr;
    CLI::Option* admin_host = nullptr;
    CLI::Option* admin_port = nullptr;
    CLI::Option* no_admin = nullptr;
    CLI::Option* heartbeat_interval = nullptr;
    CLI::Option* worker_timeout = nullptr;
    CLI::Option* no_reap = nullptr;
    CLI::Option* sync_timeout = nullptr;
    CLI::Option* hash_algorithm = nullptr;
    CLI::Option* chunk_size = nullptr;
    CLI::Option* max_workers = nullptr;
    CLI::Option* log_level = nullptr;
  } options_;
};

}  // namespace kvtier::controller
