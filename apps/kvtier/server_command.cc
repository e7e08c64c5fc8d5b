// `kvtier server`: the kvtier server process (a service::Service configured from a YAML file and
// flags), running until SIGINT or SIGTERM, then shutting down gracefully.
#include <cstdio>

#include <fmt/format.h>
#include <unistd.h>

#include "kvtier/common/logging.h"
#include "kvtier/config/server_config.h"
#include "kvtier/service/service.h"

#include "commands.h"
#include "shutdown_signals.h"

namespace kvtier::apps {
namespace {

service::ServiceOptions ToServiceOptions(const config::ServerConfig& c) {
  service::ServiceOptions o;
  o.transport.endpoints = c.transport.endpoints;
  o.transport.control_threads = c.transport.control_threads;
  o.transport.transfer_threads = c.transport.transfer_threads;
  o.transport.max_queued_requests = c.transport.max_queued_requests;
  o.engine = c.engine;
  o.engine.server_id = c.server_id;
  o.engine.server_version = KVT_VERSION;
  o.storage = c.storage;
  o.host_transfer = c.host_transfer;
  o.copy_threads = c.transport.transfer_threads;
  o.admin_enabled = c.admin.enabled;
  o.admin.host = c.admin.host;
  o.admin.port = c.admin.port;
  o.tick_interval = c.tick_interval;
  o.reporter = c.controller;
  return o;
}

std::string DefaultServerId() {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0) std::snprintf(host, sizeof(host), "kvtier");
  return fmt::format("{}-{}", host, ::getpid());
}

}  // namespace

CLI::App* AddServerCommand(CLI::App& app, ServerArgs* args) {
  CLI::App* cmd = app.add_subcommand("server",
                                     "Run the kvtier server (config: --config FILE, overridden by "
                                     "flags; see docs/configuration.md)");
  args->flags.Register(cmd);
  cmd->add_flag("--print-config", args->print_config,
                "Print the effective configuration as YAML and exit");
  return cmd;
}

int RunServer(const ServerArgs& args) {
  auto fail = [](const Status& s) {
    std::fprintf(stderr, "kvtier server: %s\n", s.ToString().c_str());
    return 2;
  };
  config::ServerConfig cfg;
  if (!args.flags.config_path().empty()) {
    auto loaded = config::LoadServerConfigFile(args.flags.config_path());
    if (!loaded) return fail(loaded.error());
    cfg = std::move(*loaded);
  }
  if (Status s = args.flags.Apply(&cfg); !s.ok()) return fail(s);
  if (Status s = config::ValidateServerConfig(cfg); !s.ok()) return fail(s);
  if (args.print_config) {
    std::fputs(config::DumpServerConfigYaml(cfg).c_str(), stdout);
    return 0;
  }
  if (cfg.server_id.empty()) cfg.server_id = DefaultServerId();
  if (!args.log_level_given) {
    if (Status s = InitLogging(cfg.log_level); !s.ok()) return fail(s);
  }

  const ShutdownSignals signals;  // before any thread starts

  auto service = service::Service::Start(ToServiceOptions(cfg));
  if (!service) {
    std::fprintf(stderr, "kvtier server: %s\n", service.error().ToString().c_str());
    return 1;
  }
  // One line on stdout that scripts can wait for.
  fmt::print("kvtier server ready: {}{}\n", fmt::join((*service)->endpoints(), " "),
             (*service)->admin_port()
                 ? fmt::format(" admin=http://{}:{}", cfg.admin.host, (*service)->admin_port())
                 : std::string());
  std::fflush(stdout);

  signals.Wait();
  const bool flushed = (*service)->Shutdown();
  return flushed ? 0 : 1;
}

}  // namespace kvtier::apps
