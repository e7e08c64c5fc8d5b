// `kvtier controller` configuration: YAML, flags, dump and validation.
#include "kvtier/controller/controller_config.h"

#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace kvtier::controller {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;

TEST(ControllerConfigTest, EmptyYamlGivesTheDefaults) {
  auto c = ParseControllerConfigYaml("");
  ASSERT_TRUE(c.has_value()) << c.error().ToString();
  const ControllerOptions d;
  EXPECT_EQ(c->options.request_endpoint, d.request_endpoint);
  EXPECT_EQ(c->options.heartbeat_interval, d.heartbeat_interval);
  EXPECT_EQ(c->log_level, "info");
  EXPECT_TRUE(ValidateControllerConfig(*c).ok());
}

TEST(ControllerConfigTest, ReadsEverySection) {
  auto c = ParseControllerConfigYaml(R"(
log_level: debug
tick_interval: 50ms
endpoints:
  requests: tcp://127.0.0.1:7100
  events: tcp://127.0.0.1:7101
  heartbeats: tcp://127.0.0.1:7102
  advertised_heartbeats: tcp://ctl.example:7102
admin:
  enabled: false
  host: 0.0.0.0
  port: 7103
  threads: 4
heartbeat:
  interval: 2s
  worker_timeout: 9s
  reap: false
full_sync:
  timeout: 2m
hashing:
  algorithm: xxh3_128
  chunk_size: 128
limits:
  max_workers: 100
  max_keys_per_message: 1024
  recent_events: 50
)");
  ASSERT_TRUE(c.has_value()) << c.error().ToString();
  const ControllerOptions& o = c->options;
  EXPECT_EQ(c->log_level, "debug");
  EXPECT_EQ(o.tick_interval, 50ms);
  EXPECT_EQ(o.request_endpoint, "tcp://127.0.0.1:7100");
  EXPECT_EQ(o.events_endpoint, "tcp://127.0.0.1:7101");
  EXPECT_EQ(o.heartbeat_endpoint, "tcp://127.0.0.1:7102");
  EXPECT_EQ(o.advertised_heartbeat_endpoint, "tcp://ctl.example:7102");
  EXPECT_FALSE(o.admin_enabled);
  EXPECT_EQ(o.admin_host, "0.0.0.0");
  EXPECT_EQ(o.admin_port, 7103);
  EXPECT_EQ(o.admin_threads, 4u);
  EXPECT_EQ(o.heartbeat_interval, 2s);
  EXPECT_EQ(o.worker_timeout, 9s);
  EXPECT_FALSE(o.reap_dead_workers);
  EXPECT_EQ(o.sync_timeout, 120s);
  EXPECT_EQ(o.hash_algorithm, "xxh3_128");
  EXPECT_EQ(o.chunk_size, 128u);
  EXPECT_EQ(o.max_workers, 100u);
  EXPECT_EQ(o.max_keys_per_message, 1024u);
  EXPECT_EQ(o.recent_events, 50u);
  EXPECT_TRUE(ValidateControllerConfig(*c).ok());

  // The dump reads back to the same configuration.
  const std::string dump = DumpControllerConfigYaml(*c);
  auto again = ParseControllerConfigYaml(dump);
  ASSERT_TRUE(again.has_value()) << again.error().ToString() << "\n" << dump;
  EXPECT_EQ(DumpControllerConfigYaml(*again), dump);
}

TEST(ControllerConfigTest, ErrorsPointIntoTheFile) {
  auto c = ParseControllerConfigYaml("heartbeat:\n  intervall: 2s\n", "ctl.yaml");
  ASSERT_FALSE(c.has_value());
  EXPECT_THAT(std::string(c.error().message()), HasSubstr("ctl.yaml:2"));
  EXPECT_THAT(std::string(c.error().message()), HasSubstr("interval"));
  c = ParseControllerConfigYaml("admin:\n  port: 70000\n");
  ASSERT_FALSE(c.has_value());
  EXPECT_THAT(std::string(c.error().message()), HasSubstr("admin.port"));
  EXPECT_FALSE(ParseControllerConfigYaml("a: 1\n---\nb: 2\n").has_value());
  EXPECT_EQ(LoadControllerConfigFile("/nonexistent/ctl.yaml").error().code(),
            StatusCode::kNotFound);
}

TEST(ControllerConfigTest, ValidationNamesTheBadOption) {
  ControllerConfig c;
  c.options.worker_timeout = c.options.heartbeat_interval;
  EXPECT_THAT(std::string(ValidateControllerConfig(c).message()), HasSubstr("worker timeout"));
  c = ControllerConfig{};
  c.options.hash_algorithm = "md5";
  EXPECT_THAT(std::string(ValidateControllerConfig(c).message()), HasSubstr("md5"));
  c = ControllerConfig{};
  c.options.events_endpoint = "";
  EXPECT_THAT(std::string(ValidateControllerConfig(c).message()), HasSubstr("events endpoint"));
  c = ControllerConfig{};
  c.log_level = "loud";
  EXPECT_THAT(std::string(ValidateControllerConfig(c).message()), HasSubstr("log_level"));
}

TEST(ControllerConfigTest, FlagsOverrideTheFile) {
  CLI::App app;
  ControllerFlags flags;
  flags.Register(&app);
  const char* argv[] = {"controller",
                        "--request-endpoint",
                        "tcp://127.0.0.1:1",
                        "--heartbeat-interval",
                        "250ms",
                        "--worker-timeout",
                        "1s",
                        "--no-reap",
                        "--chunk-size",
                        "64",
                        "--admin-port",
                        "0",
                        "--log-level",
                        "warn"};
  ASSERT_NO_THROW(app.parse(static_cast<int>(std::size(argv)), argv));
  ControllerConfig c;
  c.options.events_endpoint = "tcp://127.0.0.1:2";  // from a file: kept
  ASSERT_TRUE(flags.Apply(&c).ok());
  EXPECT_EQ(c.options.request_endpoint, "tcp://127.0.0.1:1");
  EXPECT_EQ(c.options.events_endpoint, "tcp://127.0.0.1:2");
  EXPECT_EQ(c.options.heartbeat_interval, 250ms);
  EXPECT_EQ(c.options.worker_timeout, 1s);
  EXPECT_FALSE(c.options.reap_dead_workers);
  EXPECT_EQ(c.options.chunk_size, 64u);
  EXPECT_EQ(c.options.admin_port, 0);
  EXPECT_EQ(c.log_level, "warn");

  CLI::App bad_app;
  ControllerFlags bad;
  bad.Register(&bad_app);
  const char* bad_argv[] = {"controller", "--sync-timeout", "soon"};
  ASSERT_NO_THROW(bad_app.parse(3, bad_argv));
  ControllerConfig d;
  EXPECT_THAT(std::string(bad.Apply(&d).message()), HasSubstr("--sync-timeout"));
}

}  // namespace
}  // namespace kvtier::controller
