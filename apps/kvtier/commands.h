// Subcommands of the `kvtier` command. Each Add*Command registers its flags; each Run* returns
// the process exit code (0 success, 1 failure, 2 usage error).
#pragma once

#include <string>

#include <CLI/CLI.hpp>

#include "kvtier/config/server_config.h"
#include "kvtier/controller/controller_config.h"

namespace kvtier::apps {

struct BenchArgs {
  std::string suite;
  bool json = false;
  bool quick = false;
  bool list = false;
  double min_seconds = 1.0;
};
CLI::App* AddBenchCommand(CLI::App& app, BenchArgs* args);
int RunBench(const BenchArgs& args);

struct DemoArgs {
  std::string endpoint;
  std::string l1_size = "96MiB";
  std::string eviction = "lru";
  std::string l2_dir;
  int conversations = 4;
  int turns = 6;
  int system_tokens = 2048;
  int user_tokens = 256;
  int answer_tokens = 192;
  uint64_t seed = 42;
};
CLI::App* AddDemoCommand(CLI::App& app, DemoArgs* args);
int RunDemo(const DemoArgs& args);

struct ServerArgs {
  config::ServerFlags flags;
  bool print_config = false;
  bool log_level_given = false;  // the global --log-level wins over the config's log_level
};
CLI::App* AddServerCommand(CLI::App& app, ServerArgs* args);
int RunServer(const ServerArgs& args);

struct ControllerArgs {
  controller::ControllerFlags flags;
  bool print_config = false;
  bool log_level_given = false;  // the global --log-level wins over the config's log_level
};
CLI::App* AddControllerCommand(CLI::App& app, ControllerArgs* args);
int RunController(const ControllerArgs& args);

}  // namespace kvtier::apps
