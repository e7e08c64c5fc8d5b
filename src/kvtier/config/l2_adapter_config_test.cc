#include "kvtier/config/l2_adapter_config.h"

#include <filesystem>

#include <gtest/gtest.h>

#include "kvtier/l2/redis/redis_adapter.h"

namespace kvtier::config {
namespace {

using nlohmann::json;

std::string Error(const json& config, size_t index = 0) {
  Status s = ValidateL2AdapterConfig(config, index);
  EXPECT_FALSE(s.ok()) << config.dump();
  return std::string(s.message());
}

class L2AdapterConfigTest : public testing::Test {
 protected:
  void SetUp() override { ::unsetenv("KVT_REDIS_PASSWORD"); }
};

TEST_F(L2AdapterConfigTest, AcceptsEveryTypeWithoutIo) {
  const std::string dir = testing::TempDir() + "/kvtier_l2cfg_" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  EXPECT_TRUE(ValidateL2AdapterConfig({{"type", "fs"},
                                       {"base_path", dir},
                                       {"max_capacity", "1GiB"},
                                       {"io_engine", "pread"},
                                       {"eviction", {{"policy", "arc"}}}},
                                      0)
                  .ok());
  EXPECT_FALSE(std::filesystem::exists(dir)) << "the fs adapter must not be created";
  // Nothing listens on port 1; validation does not connect.
  EXPECT_TRUE(ValidateL2AdapterConfig({{"type", "redis"},
                                       {"port", 1},
                                       {"max_capacity", "1GiB"},
                                       {"eviction", {{"policy", "lru"}}}},
                                      0)
                  .ok());
  EXPECT_TRUE(ValidateL2AdapterConfig({{"type", "mock"}, {"capacity", "64MiB"}}, 0).ok());
  // Nothing listens on port 1; validation does not connect.
  EXPECT_TRUE(ValidateL2AdapterConfig(
                  {{"type", "peer"}, {"controller", "tcp://127.0.0.1:1"}, {"instance_id", "a"}}, 0)
                  .ok());
  EXPECT_TRUE(ValidateL2AdapterConfig(
                  {{"type", "fault_inject"},
                   {"inner", {{"type", "fs"}, {"base_path", dir}, {"max_capacity", "1GiB"}}},
                   {"hang_rate", 0.1},
                   {"eviction", {{"policy", "lru"}}}},
                  0)
                  .ok());
  EXPECT_FALSE(std::filesystem::exists(dir));
}

TEST_F(L2AdapterConfigTest, RejectsWhatTheFactoryWould) {
  EXPECT_EQ(Error(json::array()), "L2 adapter #0: expected a mapping, got []");
  EXPECT_EQ(Error({{"base_path", "/x"}}, 2),
            "L2 adapter #2: 'type' (a string) is required; known types: mock, fault_inject, fs, "
            "redis, peer");
  EXPECT_EQ(Error({{"type", "redi"}}),
            "L2 adapter #0: 'type': unknown type 'redi'; did you mean 'redis'? (known types: mock, "
            "fault_inject, fs, redis, peer)");
  EXPECT_EQ(Error({{"type", "fs"}, {"name", ""}, {"base_path", "/x"}}),
            "L2 adapter #0: 'name' must be a non-empty string, got \"\"");
  EXPECT_EQ(Error({{"type", "fs"}, {"base_path", "/x"}, {"io_engine", "aio"}}),
            "fs adapter 'fs0': 'io_engine': 'aio' is not one of io_uring, pread");
  EXPECT_EQ(Error({{"type", "redis"}, {"name", "r"}, {"username", "u"}}),
            "redis adapter 'r': 'username': needs a password ('password' or $KVT_REDIS_PASSWORD)");
  EXPECT_EQ(Error({{"type", "peer"}, {"controller", "tcp://c:1"}, {"instance_id", ""}}),
            "peer adapter 'peer0': 'instance_id' (this server's) must not be empty");
  EXPECT_EQ(Error({{"type", "fault_inject"}}),
            "fault_inject adapter 'fault_inject0': 'inner': an adapter config (a mapping) is "
            "required");
  EXPECT_EQ(Error({{"type", "fault_inject"}, {"inner", {{"type", "fs"}}}}),
            "fault_inject adapter 'fault_inject0': 'inner': fs adapter 'fault_inject0.inner': "
            "'base_path': required setting is missing");
  // Eviction: parsed, policy known, interval positive, and a capacity to keep under.
  EXPECT_EQ(Error({{"type", "fs"}, {"base_path", "/x"}, {"eviction", {{"policy", "lru"}}}}),
            "L2 adapter 'fs0' has an eviction block but no capacity (set max_capacity)");
  EXPECT_EQ(Error({{"type", "fault_inject"},
                   {"inner", {{"type", "fs"}, {"base_path", "/x"}}},
                   {"eviction", json::object()}}),
            "L2 adapter 'fault_inject0' has an eviction block but no capacity (set max_capacity)");
  EXPECT_NE(Error({{"type", "mock"}, {"capacity", 1}, {"eviction", {{"policy", "fifo"}}}})
                .find("eviction of L2 adapter 'mock0': 'policy'"),
            std::string::npos);
  EXPECT_EQ(Error({{"type", "mock"}, {"capacity", 1}, {"eviction", {{"check_interval", 0}}}}),
            "eviction of L2 adapter 'mock0': 'check_interval': must be greater than 0");
  EXPECT_NE(
      Error({{"type", "mock"}, {"capacity", 1}, {"eviction", nullptr}}).find("expected an object"),
      std::string::npos);
  EXPECT_NE(Error({{"type", "mock"},
                   {"capacity", 1},
                   {"eviction", {{"target_watermark", 0.9}, {"trigger_watermark", 0.5}}}})
                .find("target_watermark 0.9 must be below trigger_watermark 0.5"),
            std::string::npos);
}

TEST_F(L2AdapterConfigTest, LeavesSettingsWithoutABuildFreeParserToStartUp) {
  // A mock's settings and a fault_inject's rates have no parser that builds nothing (building
  // starts threads): the factory checks them when the server starts.
  EXPECT_TRUE(ValidateL2AdapterConfig({{"type", "mock"}}, 0).ok());
  EXPECT_TRUE(
      ValidateL2AdapterConfig({{"type", "mock"}, {"eviction", {{"policy", "lru"}}}}, 0).ok());
  EXPECT_TRUE(ValidateL2AdapterConfig(
                  {{"type", "fault_inject"}, {"inner", {{"type", "mock"}}}, {"hang_rate", 2}}, 0)
                  .ok());
}

TEST_F(L2AdapterConfigTest, Names) {
  EXPECT_EQ(L2AdapterName({{"type", "fs"}}, 3), "fs3");
  EXPECT_EQ(L2AdapterName({{"type", "fs"}, {"name", "disk"}}, 3), "disk");
  EXPECT_EQ(L2AdapterName(json::array(), 1), "adapter1");
}

TEST_F(L2AdapterConfigTest, FsConfigForPath) {
  EXPECT_EQ(FsAdapterConfigForPath("/d"), (json{{"type", "fs"}, {"base_path", "/d"}}));
  EXPECT_TRUE(ValidateL2AdapterConfig(FsAdapterConfigForPath("/d"), 0).ok());
}

TEST_F(L2AdapterConfigTest, RedisUrls) {
  struct Case {
    std::string url;
    json config;
  };
  const Case cases[] = {
      {"redis://cache", {{"type", "redis"}, {"host", "cache"}, {"port", 6379}}},
      {"redis://cache:6380", {{"type", "redis"}, {"host", "cache"}, {"port", 6380}}},
      {"redis://cache:6380/", {{"type", "redis"}, {"host", "cache"}, {"port", 6380}}},
      {"redis://10.0.0.5:7000/3",
       {{"type", "redis"}, {"host", "10.0.0.5"}, {"port", 7000}, {"db", 3}}},
      {"redis://[::1]:7000", {{"type", "redis"}, {"host", "::1"}, {"port", 7000}}},
      {"redis://[::1]", {{"type", "redis"}, {"host", "::1"}, {"port", 6379}}},
      {"redis://kv:s3cret@h:1",
       {{"type", "redis"}, {"host", "h"}, {"port", 1}, {"username", "kv"}, {"password", "s3cret"}}},
      {"redis://:s3cret@h",
       {{"type", "redis"}, {"host", "h"}, {"port", 6379}, {"password", "s3cret"}}},
      {"redis://kv:p%40ss%3Aw%2Fd@h",
       {{"type", "redis"},
        {"host", "h"},
        {"port", 6379},
        {"username", "kv"},
        {"password", "p@ss:w/d"}}},
      {"redis://kv@h", {{"type", "redis"}, {"host", "h"}, {"port", 6379}, {"username", "kv"}}},
  };
  for (const Case& c : cases) {
    auto config = RedisAdapterConfigFromUrl(c.url);
    ASSERT_TRUE(config) << c.url << ": " << config.error().ToString();
    EXPECT_EQ(*config, c.config) << c.url;
  }
  // What the redis parser makes of it.
  auto config = RedisAdapterConfigFromUrl("redis://kv:pw@cache.local:6390/4");
  ASSERT_TRUE(config);
  ASSERT_TRUE(ValidateL2AdapterConfig(*config, 0).ok());
  auto options = l2::RedisAdapterOptions::FromJson(
      [&] {
        json rest = *config;
        rest.erase("type");
        return rest;
      }(),
      "r");
  ASSERT_TRUE(options) << options.error().ToString();
  EXPECT_EQ(options->connect.host, "cache.local");
  EXPECT_EQ(options->connect.port, 6390);
  EXPECT_EQ(options->connect.username, "kv");
  EXPECT_EQ(options->connect.password, "pw");
  EXPECT_EQ(options->connect.db, 4);
}

TEST_F(L2AdapterConfigTest, BadRedisUrls) {
  const std::pair<const char*, const char*> cases[] = {
      {"cache:6379", "it must start with redis://"},
      {"rediss://cache", "TLS (rediss://) is not supported"},
      {"redis://", "the host is empty"},
      {"redis://:6379", "the host is empty"},
      {"redis://cache:", "the port is empty"},
      {"redis://cache:0", "the port '0' is not in [1, 65535]"},
      {"redis://cache:65536", "the port '65536' is not in [1, 65535]"},
      {"redis://cache:x", "the port 'x' is not in [1, 65535]"},
      {"redis://cache/db1", "the database 'db1' is not a number"},
      {"redis://[::1:6379", "an IPv6 host needs its closing ']'"},
      {"redis://[::1]x", "unexpected text after the IPv6 host"},
      {"redis://u:@h", "the password is empty"},
      {"redis://u:%zz@h", "bad percent-escape in the password"},
      {"redis://u%4:p@h", "bad percent-escape in the user name"},
  };
  for (const auto& [url, why] : cases) {
    auto config = RedisAdapterConfigFromUrl(url);
    ASSERT_FALSE(config) << url;
    EXPECT_NE(config.error().message().find(why), std::string::npos)
        << url << ": " << config.error().message();
    EXPECT_NE(config.error().message().find("expected redis://"), std::string::npos);
  }
}

}  // namespace
}  // namespace kvtier::config
