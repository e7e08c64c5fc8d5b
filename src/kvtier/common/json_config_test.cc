#include "kvtier/common/json_config.h"

#include <gtest/gtest.h>

namespace kvtier {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

TEST(JsonConfigTest, ReadsTypedValuesAndFallbacks) {
  json j = {{"path", "/tmp/x"},   {"odirect", true}, {"workers", 4},   {"ratio", 0.5},
            {"capacity", "2GiB"}, {"raw", 1024},     {"ttl", "250ms"}, {"ttl2", 3}};
  JsonConfig c(j, "fs adapter 'a'");
  EXPECT_EQ(c.String("path").value(), "/tmp/x");
  EXPECT_TRUE(c.Bool("odirect").value());
  EXPECT_EQ(c.Int("workers", std::nullopt, 1, 64).value(), 4);
  EXPECT_DOUBLE_EQ(c.Double("ratio").value(), 0.5);
  EXPECT_EQ(c.Size("capacity").value(), 2ull << 30);
  EXPECT_EQ(c.Size("raw").value(), 1024u);
  EXPECT_EQ(c.Seconds("ttl").value(), 250ms);
  EXPECT_EQ(c.Seconds("ttl2").value(), 3s);
  EXPECT_EQ(c.Int("absent", 7).value(), 7);
  EXPECT_TRUE(c.Finish().ok());
}

TEST(JsonConfigTest, ErrorsNameSectionAndKey) {
  json j = {{"workers", "four"}, {"capacity", "12 parsecs"}, {"ratio", 2.0}};
  JsonConfig c(j, "redis adapter 'r'");
  auto w = c.Int("workers");
  ASSERT_FALSE(w);
  EXPECT_EQ(w.error().message(), "redis adapter 'r': 'workers': expected an integer, got \"four\"");
  auto cap = c.Size("capacity");
  ASSERT_FALSE(cap);
  EXPECT_NE(cap.error().message().find("'capacity'"), std::string::npos);
  EXPECT_NE(c.Double("ratio", std::nullopt, 0, 1).error().message().find("outside"),
            std::string::npos);
  EXPECT_NE(c.String("host").error().message().find("required"), std::string::npos);
}

TEST(JsonConfigTest, UnknownKeysAreErrors) {
  json j = {{"base_path", "/x"}, {"max_capcity", "1GiB"}};
  JsonConfig c(j, "fs adapter 'disk'");
  ASSERT_TRUE(c.String("base_path"));
  ASSERT_TRUE(c.Size("max_capacity", 0));
  Status s = c.Finish();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("unknown setting 'max_capcity'"), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("max_capacity"), std::string::npos);  // the known keys are listed
}

TEST(JsonConfigTest, NonObjectIsAnError) {
  JsonConfig c(json::array({1, 2}), "section");
  EXPECT_FALSE(c.String("x"));
  EXPECT_FALSE(c.Finish().ok());
}

}  // namespace
}  // namespace kvtier
