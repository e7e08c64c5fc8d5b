#include <cstdio>

#include <fmt/format.h>

#include "commands.h"
#include "suites.h"

namespace kvtier::apps {

CLI::App* AddBenchCommand(CLI::App& app, BenchArgs* args) {
  std::string suites;
  for (const auto& s : bench::AllSuites()) suites += (suites.empty() ? "" : ", ") + s.name;
  CLI::App* cmd = app.add_subcommand("bench", "Run a benchmark suite (" + suites + ")");
  cmd->add_option("suite", args->suite, "Suite to run");
  cmd->add_flag("--json", args->json, "Print one JSON object as the last stdout line");
  cmd->add_flag("--quick", args->quick, "Short smoke run (not for reporting numbers)");
  cmd->add_flag("--list", args->list, "List the suites and exit");
  cmd->add_option("--min-time", args->min_seconds, "Minimum seconds per measurement")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  return cmd;
}

int RunBench(const BenchArgs& args) {
  if (args.list) {
    for (const auto& s : bench::AllSuites()) fmt::print("{:<8} {}\n", s.name, s.description);
    return 0;
  }
  for (const auto& s : bench::AllSuites()) {
    if (s.name != args.suite) continue;
    bench::SuiteOptions options;
    options.json = args.json;
    options.quick = args.quick;
    options.min_seconds = args.quick ? std::min(args.min_seconds, 0.1) : args.min_seconds;
    bench::Reporter reporter(s.name);
    Status status = s.run(options, &reporter);
    if (!status.ok()) {
      std::fprintf(stderr, "kvtier bench %s: %s\n", s.name.c_str(), status.ToString().c_str());
      return 1;
    }
    if (args.json) {
      fmt::print("{}\n", reporter.ToJson());
    } else {
      fmt::print("{}", reporter.ToTable());
    }
    return 0;
  }
  std::fprintf(stderr, "kvtier bench: unknown suite '%s' (try --list)\n", args.suite.c_str());
  return 2;
}

}  // namespace kvtier::apps
