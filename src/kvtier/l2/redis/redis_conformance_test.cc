// The L2Adapter conformance suite over the redis adapter, against a real redis-server (no
// instances when none is installed). Adapters share one server per test process; each gets
// its own key prefix, so no two share stored data.
#include <atomic>
#include <memory>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "kvtier/l2/redis/redis_adapter.h"
#include "kvtier/l2/redis/testing/redis_server.h"
#include "kvtier/l2/testing/adapter_conformance.h"

namespace kvtier::l2::testing {
namespace {

RedisServer* SharedServer() {
  static std::unique_ptr<RedisServer> server = [] {
    auto s = RedisServer::Start();
    EXPECT_TRUE(s) << s.error().ToString();
    return s ? std::move(*s) : nullptr;
  }();
  return server.get();
}

std::unique_ptr<L2Adapter> MakeRedisForTest() {
  static std::atomic<int> next_prefix{0};
  RedisServer* server = SharedServer();
  if (server == nullptr) return nullptr;
  nlohmann::json config = server->AdapterConfig();
  config["key_prefix"] = fmt::format("conformance{}:", next_prefix++);
  // kvtier owns the capacity: the adapter's usage is exact (see RedisAdapter, accounting).
  config["max_capacity"] = "1GiB";
  auto adapter = MakeRedisAdapter(config, "redis0");
  EXPECT_TRUE(adapter) << adapter.error().ToString();
  return adapter ? std::move(*adapter) : nullptr;
}

std::vector<AdapterCase> RedisCases() {
  if (!RedisServer::Available()) return {};
  return {AdapterCase{"redis", MakeRedisForTest}};
}

}  // namespace

INSTANTIATE_TEST_SUITE_P(Redis, AdapterConformanceTest, ::testing::ValuesIn(RedisCases()),
                         AdapterCaseName);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(AdapterConformanceTest);

}  // namespace kvtier::l2::testing
