#include <filesystem>

#include <CLI/CLI.hpp>
#include <gtest/gtest.h>

#include "kvtier/common/units.h"
#include "kvtier/config/server_config.h"
#include "kvtier/l2/factory.h"

namespace kvtier::config {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

// A `server` subcommand as the kvtier command registers it.
struct Cli {
  CLI::App app{"kvtier"};
  CLI::App* server = nullptr;
  ServerFlags flags;

  Cli() {
    server = app.add_subcommand("server");
    flags.Register(server);
  }
  // Throws CLI::ParseError like CLI11_PARSE would report.
  void Parse(const std::string& args) { app.parse("server " + args, false); }
};

ServerConfig FromFile(const std::string& yaml) {
  auto c = ParseServerConfigYaml(yaml, "file.yaml");
  EXPECT_TRUE(c) << c.error().ToString();
  return c ? *c : ServerConfig();
}

constexpr char kFile[] = R"(
server_id: from-file
log_level: warn
transport:
  endpoints: [tcp://127.0.0.1:7000]
  control_threads: 5
  transfer_threads: 6
admin:
  host: 0.0.0.0
  port: 9000
engine:
  chunk_size: 512
  session_ttl: 1h
  worker_timeout: 5m
l1:
  capacity: 8GiB
l1_eviction:
  policy: arc
l2:
  adapters:
    - {type: mock, capacity: 1GiB}
)";

TEST(ServerFlagsTest, NoFlagsLeaveTheFileAlone) {
  Cli cli;
  cli.Parse("");
  ServerConfig c = FromFile(kFile);
  const std::string before = DumpServerConfigYaml(c);
  ASSERT_TRUE(cli.flags.Apply(&c).ok());
  EXPECT_EQ(DumpServerConfigYaml(c), before);
  EXPECT_EQ(cli.flags.config_path(), "");
}

TEST(ServerFlagsTest, EveryFlagOverridesItsKey) {
  Cli cli;
  cli.Parse(
      "--config /etc/kvtier.yaml --endpoint tcp://0.0.0.0:1 --endpoint ipc:///tmp/k.sock "
      "--admin-host ::1 --admin-port 0 --l1-size 3GiB --chunk-size 64 --eviction-policy s3fifo "
      "--session-ttl 90s --worker-timeout 0 --control-threads 7 --transfer-threads 8 "
      "--server-id flag-id --log-level debug --l2-fs-path /data/a --l2-fs-path /data/b "
      "--l2-redis redis://cache:6380 --controller tcp://10.0.0.1:9100");
  EXPECT_EQ(cli.flags.config_path(), "/etc/kvtier.yaml");
  ServerConfig c = FromFile(kFile);
  ASSERT_TRUE(cli.flags.Apply(&c).ok());
  EXPECT_EQ(c.transport.endpoints,
            (std::vector<std::string>{"tcp://0.0.0.0:1", "ipc:///tmp/k.sock"}));
  EXPECT_EQ(c.admin.host, "::1");
  EXPECT_EQ(c.admin.port, 0);
  EXPECT_TRUE(c.admin.enabled);
  EXPECT_EQ(c.storage.l1.capacity_bytes, 3 * kGiB);
  EXPECT_EQ(c.engine.chunk_size, 64u);
  EXPECT_EQ(c.storage.l1_eviction_policy, "s3fifo");
  EXPECT_EQ(c.engine.session_ttl, 90s);
  EXPECT_EQ(c.engine.worker_timeout, 0s);
  EXPECT_EQ(c.transport.control_threads, 7u);
  EXPECT_EQ(c.transport.transfer_threads, 8u);
  EXPECT_EQ(c.server_id, "flag-id");
  EXPECT_EQ(c.log_level, "debug");
  EXPECT_EQ(c.controller.endpoint, "tcp://10.0.0.1:9100");
  // Flag adapters come after the file's.
  ASSERT_EQ(c.storage.l2_adapters.size(), 4u);
  EXPECT_EQ(c.storage.l2_adapters[0]["type"], "mock");
  EXPECT_EQ(c.storage.l2_adapters[1], (json{{"type", "fs"}, {"base_path", "/data/a"}}));
  EXPECT_EQ(c.storage.l2_adapters[2], (json{{"type", "fs"}, {"base_path", "/data/b"}}));
  EXPECT_EQ(c.storage.l2_adapters[3], (json{{"type", "redis"}, {"host", "cache"}, {"port", 6380}}));
  ::unsetenv("KVT_REDIS_PASSWORD");
  EXPECT_TRUE(ValidateServerConfig(c).ok()) << ValidateServerConfig(c).ToString();
}

TEST(ServerFlagsTest, OnlyGivenFlagsOverride) {
  Cli cli;
  cli.Parse("--chunk-size 128 --no-admin");
  ServerConfig c = FromFile(kFile);
  ASSERT_TRUE(cli.flags.Apply(&c).ok());
  EXPECT_EQ(c.engine.chunk_size, 128u);
  EXPECT_FALSE(c.admin.enabled);
  // Everything else is the file's.
  EXPECT_EQ(c.storage.l1.capacity_bytes, 8 * kGiB);
  EXPECT_EQ(c.transport.endpoints, std::vector<std::string>{"tcp://127.0.0.1:7000"});
  EXPECT_EQ(c.admin.host, "0.0.0.0");
  EXPECT_EQ(c.admin.port, 9000);
  EXPECT_EQ(c.engine.session_ttl, 1h);
  EXPECT_EQ(c.engine.worker_timeout, 5min);
  EXPECT_EQ(c.transport.control_threads, 5u);
  EXPECT_EQ(c.transport.transfer_threads, 6u);
  EXPECT_EQ(c.storage.l1_eviction_policy, "arc");
  EXPECT_EQ(c.server_id, "from-file");
  EXPECT_EQ(c.log_level, "warn");
  EXPECT_EQ(c.storage.l2_adapters.size(), 1u);
}

TEST(ServerFlagsTest, BadValuesNameTheFlag) {
  struct Case {
    std::string args;
    std::string message;
  };
  const Case cases[] = {
      {"--l1-size 12parsecs", "--l1-size: invalid size unit 'parsecs'"},
      {"--l1-size -1GiB", "--l1-size: a size must not be negative"},
      {"--session-ttl 5x", "--session-ttl: invalid duration unit 'x'"},
      {"--worker-timeout=-1s", "--worker-timeout: a duration must not be negative"},
      {"--admin-port 70000", "--admin-port: must be in [0, 65535], got 70000"},
      {"--chunk-size 0", "--chunk-size: must be in [1, 4294967295], got 0"},
      {"--control-threads 0", "--control-threads: must be in [1, "},
      {"--transfer-threads=-2", "--transfer-threads: must be in [1, "},
      {"--l2-redis http://x:1", "--l2-redis: invalid Redis URL 'http://x:1': it must start with"},
  };
  for (const Case& c : cases) {
    Cli cli;
    cli.Parse(c.args);
    ServerConfig config;
    Status s = cli.flags.Apply(&config);
    ASSERT_FALSE(s.ok()) << c.args;
    EXPECT_EQ(s.message().substr(0, c.message.size()), c.message) << c.args << ": " << s.message();
  }
  // Values that parse but break a rule are ValidateServerConfig's, naming the key.
  Cli cli;
  cli.Parse("--eviction-policy lfu --endpoint udp://x:1");
  ServerConfig config;
  ASSERT_TRUE(cli.flags.Apply(&config).ok());
  EXPECT_NE(
      ValidateServerConfig(config).message().find("transport.endpoints[0]: endpoint 'udp://x:1'"),
      std::string::npos);
}

TEST(ServerFlagsTest, CliRejectsConflictsAndNonNumbers) {
  {
    Cli cli;
    EXPECT_THROW(cli.Parse("--no-admin --admin-port 9000"), CLI::ParseError);
  }
  {
    Cli cli;
    EXPECT_THROW(cli.Parse("--chunk-size many"), CLI::ParseError);
  }
  {
    Cli cli;
    EXPECT_THROW(cli.Parse("--unknown-flag 1"), CLI::ParseError);
  }
}

TEST(ServerFlagsTest, HelpNamesEachYamlKeyAndDefault) {
  Cli cli;
  const std::string help = cli.server->help();
  for (const char* text :
       {"--config", "[transport.endpoints, default tcp://127.0.0.1:5555]",
        "[admin.host, default 127.0.0.1]", "[admin.port, default 8080]", "[admin.enabled: false",
        "[l1.capacity, default 1GiB]", "[engine.chunk_size, default 256]",
        "[l1_eviction.policy, default lru]", "[l2.adapters: {type: fs",
        "[l2.adapters: {type: redis", "[engine.session_ttl, default 600s]",
        "[engine.worker_timeout,", "default 120s]", "[transport.control_threads,",
        "[transport.transfer_threads,", "[server_id, default hostname-pid]",
        "[log_level, default info]", "[controller.endpoint, default none: reporting off]"}) {
    EXPECT_NE(help.find(text), std::string::npos) << text << "\n" << help;
  }
}

TEST(ServerFlagsTest, FsPathFlagMakesAnAdapterTheFactoryBuilds) {
  const std::string dir = testing::TempDir() + "/kvtier_flags_fs_" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  Cli cli;
  cli.Parse("--l2-fs-path " + dir);
  ServerConfig c;
  ASSERT_TRUE(cli.flags.Apply(&c).ok());
  ASSERT_TRUE(ValidateServerConfig(c).ok());
  EXPECT_FALSE(std::filesystem::exists(dir)) << "validation must not touch the disk";
  ASSERT_EQ(c.storage.l2_adapters.size(), 1u);
  auto adapter = l2::MakeL2Adapter(c.storage.l2_adapters[0], 0);
  ASSERT_TRUE(adapter) << adapter.error().ToString();
  EXPECT_EQ((*adapter)->name(), "fs0");
  EXPECT_TRUE(std::filesystem::is_directory(dir));
  adapter->reset();
  std::filesystem::remove_all(dir);
}

TEST(ServerFlagsTest, RedisFlagMakesAnAdapterTheFactoryBuilds) {
  ::unsetenv("KVT_REDIS_PASSWORD");
  Cli cli;
  // Nothing listens on port 1: the adapter is built and starts unhealthy, reconnecting.
  cli.Parse("--l2-redis redis://127.0.0.1:1/2");
  ServerConfig c;
  ASSERT_TRUE(cli.flags.Apply(&c).ok());
  ASSERT_TRUE(ValidateServerConfig(c).ok()) << ValidateServerConfig(c).ToString();
  auto adapter = l2::MakeL2Adapter(c.storage.l2_adapters[0], 0);
  ASSERT_TRUE(adapter) << adapter.error().ToString();
  EXPECT_EQ((*adapter)->name(), "redis0");
  EXPECT_EQ((*adapter)->type(), "redis");
}

}  // namespace
}  // namespace kvtier::config
