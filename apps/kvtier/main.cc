// The `kvtier` command: one binary, one subcommand per job.
#include <cstdio>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "kvtier/common/logging.h"

#include "commands.h"

int main(int argc, char** argv) {
  CLI::App app{"kvtier: a tiered KV-cache server for LLM inference"};
  app.require_subcommand(1);
  std::string log_level = "info";
  CLI::Option* log_level_option =
      app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical or off")
          ->capture_default_str();

  kvtier::apps::BenchArgs bench_args;
  CLI::App* bench = kvtier::apps::AddBenchCommand(app, &bench_args);
  kvtier::apps::DemoArgs demo_args;
  CLI::App* demo = kvtier::apps::AddDemoCommand(app, &demo_args);
  kvtier::apps::ServerArgs server_args;
  CLI::App* server = kvtier::apps::AddServerCommand(app, &server_args);
  kvtier::apps::ControllerArgs controller_args;
  CLI::App* controller = kvtier::apps::AddControllerCommand(app, &controller_args);
  CLI::App* version = app.add_subcommand("version", "Print the version");

  CLI11_PARSE(app, argc, argv);

  if (kvtier::Status s = kvtier::InitLogging(log_level); !s.ok()) {
    std::fprintf(stderr, "kvtier: %s\n", s.ToString().c_str());
    return 2;
  }
  if (*version) {
    fmt::print("kvtier {}\n", KVT_VERSION);
    return 0;
  }
  if (*server) {
    server_args.log_level_given = log_level_option->count() > 0;
    return kvtier::apps::RunServer(server_args);
  }
  if (*controller) {
    controller_args.log_level_given = log_level_option->count() > 0;
    return kvtier::apps::RunController(controller_args);
  }
  if (*bench) return kvtier::apps::RunBench(bench_args);
  if (*demo) return kvtier::apps::RunDemo(demo_args);
  return 2;
}
