#include "kvtier/l2/factory.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "kvtier/common/units.h"

namespace kvtier::l2 {
namespace {

using nlohmann::json;

std::string ErrorOf(const json& config, size_t index = 0) {
  auto a = MakeL2Adapter(config, index);
  if (a) {
    (*a)->Close();
    return "";
  }
  EXPECT_EQ(a.error().code(), StatusCode::kInvalidArgument);
  return std::string(a.error().message());
}

TEST(L2FactoryTest, TypesAreListedWithHelp) {
  std::vector<std::string> types;
  for (const AdapterType& t : AdapterTypes()) {
    types.push_back(t.type);
    EXPECT_FALSE(t.help.empty()) << t.type;
    EXPECT_TRUE(static_cast<bool>(t.make)) << t.type;
  }
  EXPECT_EQ(types, (std::vector<std::string>{"mock", "fault_inject", "fs", "redis", "peer"}));
}

TEST(L2FactoryTest, UnknownOrMissingTypeListsTheChoices) {
  for (const json& config : {json{{"type", "tape"}}, json::object(), json{{"type", 3}}}) {
    std::string error = ErrorOf(config, 2);
    EXPECT_NE(error.find("L2 adapter #2"), std::string::npos) << error;
    EXPECT_NE(error.find("known types: mock, fault_inject, fs, redis, peer"), std::string::npos)
        << error;
  }
  EXPECT_NE(ErrorOf({{"type", "tape"}}).find("unknown type 'tape'"), std::string::npos);
  EXPECT_NE(ErrorOf(json::array()).find("expected a JSON object"), std::string::npos);
}

TEST(L2FactoryTest, NameDefaultsToTypeAndIndex) {
  auto a = MakeL2Adapter({{"type", "mock"}, {"capacity", "1MiB"}}, 3);
  ASSERT_TRUE(a.has_value()) << a.error().ToString();
  EXPECT_EQ((*a)->name(), "mock3");
  EXPECT_EQ((*a)->type(), "mock");
  EXPECT_EQ((*a)->Usage().capacity_bytes, kMiB);
  (*a)->Close();

  a = MakeL2Adapter({{"type", "mock"}, {"name", "fast"}, {"capacity", "1MiB"}}, 3);
  ASSERT_TRUE(a.has_value()) << a.error().ToString();
  EXPECT_EQ((*a)->name(), "fast");
  (*a)->Close();

  EXPECT_NE(ErrorOf({{"type", "mock"}, {"name", 7}, {"capacity", "1MiB"}}).find("'name'"),
            std::string::npos);
  EXPECT_NE(ErrorOf({{"type", "mock"}, {"name", ""}, {"capacity", "1MiB"}}).find("'name'"),
            std::string::npos);
}

TEST(L2FactoryTest, EvictionBlockIsAcceptedAndRemoved) {
  // The mock rejects unknown keys, so success means "eviction" never reached it.
  auto a = MakeL2Adapter({{"type", "mock"},
                          {"capacity", "1MiB"},
                          {"eviction", {{"eviction_policy", "lru"}, {"trigger_watermark", 0.8}}}},
                         0);
  ASSERT_TRUE(a.has_value()) << a.error().ToString();
  (*a)->Close();
}

// Eviction acts on the adapter the storage layer sees: inside a wrapper's "inner" it would be
// silently ignored, so it is an error that says where the block belongs.
TEST(L2FactoryTest, EvictionInsideAWrappedAdapterIsAnError) {
  const json eviction = {{"policy", "lru"}, {"trigger_watermark", 0.8}};
  std::string error =
      ErrorOf({{"type", "fault_inject"},
               {"name", "flaky"},
               {"inner", {{"type", "mock"}, {"capacity", "1MiB"}, {"eviction", eviction}}}});
  EXPECT_NE(error.find("fault_inject adapter 'flaky': 'inner'"), std::string::npos) << error;
  EXPECT_NE(error.find("'eviction' is not allowed"), std::string::npos) << error;
  EXPECT_NE(error.find("eviction belongs at the top level of the adapter config"),
            std::string::npos)
      << error;
  // Nested wrappers are checked at every level.
  error =
      ErrorOf({{"type", "fault_inject"},
               {"inner",
                {{"type", "fault_inject"},
                 {"inner", {{"type", "mock"}, {"capacity", "1MiB"}, {"eviction", eviction}}}}}});
  EXPECT_NE(error.find("eviction belongs at the top level"), std::string::npos) << error;
  // At the top level, next to the wrapper's type, it is the storage layer's.
  auto a = MakeL2Adapter({{"type", "fault_inject"},
                          {"inner", {{"type", "mock"}, {"capacity", "1MiB"}}},
                          {"eviction", eviction}},
                         0);
  ASSERT_TRUE(a.has_value()) << a.error().ToString();
  (*a)->Close();
}

TEST(L2FactoryTest, UnknownKeysAreRejectedByName) {
  std::string error = ErrorOf({{"type", "mock"}, {"capacity", "1MiB"}, {"max_size_gb", 1}});
  EXPECT_NE(error.find("mock adapter 'mock0'"), std::string::npos) << error;
  EXPECT_NE(error.find("unknown setting 'max_size_gb'"), std::string::npos) << error;
  // Inner configs of a wrapper are checked the same way.
  error = ErrorOf({{"type", "fault_inject"},
                   {"inner", {{"type", "mock"}, {"capacity", "1MiB"}, {"bogus", true}}}});
  EXPECT_NE(error.find("'bogus'"), std::string::npos) << error;
}

}  // namespace
}  // namespace kvtier::l2
