// `kvtier controller`: the cluster controller process (controller::ControllerService configured
// from a YAML file and flags), serving until SIGINT or SIGTERM, then stopping gracefully.
#include <cstdio>

#include <fmt/format.h>

#include "kvtier/common/logging.h"
#include "kvtier/controller/controller_config.h"
#include "kvtier/controller/controller_service.h"

#include "commands.h"
#include "shutdown_signals.h"

namespace kvtier::apps {

CLI::App* AddControllerCommand(CLI::App& app, ControllerArgs* args) {
  CLI::App* cmd = app.add_subcommand(
      "controller",
      "Run the cluster controller: the index of which kvtier server holds which chunk (config: "
      "--config FILE, overridden by flags; see docs/controller.md)");
  args->flags.Register(cmd);
  cmd->add_flag("--print-config", args->print_config,
                "Print the effective configuration as YAML and exit");
  return cmd;
}

int RunController(const ControllerArgs& args) {
  auto fail = [](const Status& s) {
    std::fprintf(stderr, "kvtier controller: %s\n", s.ToString().c_str());
    return 2;
  };
  controller::ControllerConfig cfg;
  if (!args.flags.config_path().empty()) {
    auto loaded = controller::LoadControllerConfigFile(args.flags.config_path());
    if (!loaded) return fail(loaded.error());
    cfg = std::move(*loaded);
  }
  if (Status s = args.flags.Apply(&cfg); !s.ok()) return fail(s);
  if (Status s = controller::ValidateControllerConfig(cfg); !s.ok()) return fail(s);
  if (args.print_config) {
    std::fputs(controller::DumpControllerConfigYaml(cfg).c_str(), stdout);
    return 0;
  }
  if (!args.log_level_given) {
    if (Status s = InitLogging(cfg.log_level); !s.ok()) return fail(s);
  }

  const ShutdownSignals signals;  // before any thread starts

  auto service = controller::ControllerService::Start(cfg.options);
  if (!service) {
    std::fprintf(stderr, "kvtier controller: %s\n", service.error().ToString().c_str());
    return 1;
  }
  // One line on stdout that scripts can wait for.
  const controller::BoundEndpoints& e = (*service)->endpoints();
  fmt::print("kvtier controller ready: requests={} events={} heartbeats={}{} epoch={:#x}\n",
             e.requests, e.events, e.heartbeats,
             (*service)->admin_port() ? fmt::format(" admin=http://{}:{}", cfg.options.admin_host,
                                                    (*service)->admin_port())
                                      : std::string(),
             (*service)->epoch());
  std::fflush(stdout);

  signals.Wait();
  (*service)->Stop();
  return 0;
}

}  // namespace kvtier::apps
