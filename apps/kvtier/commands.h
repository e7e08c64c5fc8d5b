// Subcommands of the `kvtier` command. Each Add*Command registers its flags; each Run* returns
// the process exit code (0 success, 1 failure, 2 usage error).
#pragma once

#include <string>

#include <CLI/CLI.hpp>

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
  std::string l1_size = "96MiB";
  std::string eviction = "lru";
  std::string hash = "sha256";
  uint32_t chunk_size = 256;
  int documents = 3;
  int document_tokens = 4096;
  int question_tokens = 300;
  int requests = 12;
  uint64_t seed = 42;
};
CLI::App* AddDemoCommand(CLI::App& app, DemoArgs* args);
int RunDemo(const DemoArgs& args);

}  // namespace kvtier::apps
