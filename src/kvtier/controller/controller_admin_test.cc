// The admin views and HTTP body parsers (no HTTP server: controller_service_test has that).
#include "kvtier/controller/controller_admin.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kvtier/controller/controller_test_util.h"

namespace kvtier::controller {
namespace {

using testing::Admit;
using testing::As;
using ::testing::HasSubstr;
using testing::Keys;
using testing::MakeHash;
using testing::Registration;

keys::TokenHasher Hasher() { return *keys::TokenHasher::Create(keys::HashAlgorithm::kSha256, 4); }

std::string ErrorOf(std::string_view body) {
  auto r = ParseLookupJson(body, Hasher());
  EXPECT_FALSE(r.has_value()) << body;
  if (r.has_value()) return "";
  EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument);
  return std::string(r.error().message());
}

TEST(ParseLookupJsonTest, ReadsHashesAndDefaults) {
  const std::string hex = MakeHash(1).ToHex();
  auto r = ParseLookupJson(R"({"model": "m", "chunk_hashes": [")" + hex + R"("]})", Hasher());
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->request.model, "m");
  EXPECT_EQ(r->request.cache_salt, "");
  EXPECT_EQ(r->request.world_size, 1);
  EXPECT_FALSE(r->request.rank.has_value());
  EXPECT_EQ(r->request.object_group, 0u);
  ASSERT_EQ(r->request.hashes.size(), 1u);
  EXPECT_EQ(r->request.hashes[0], MakeHash(1));
  EXPECT_FALSE(r->num_tokens.has_value());

  r = ParseLookupJson(R"({"model": "m", "cache_salt": "t", "world_size": 4, "rank": 3,
                          "object_group": 2, "exclude_instance": "me", "chunk_hashes": []})",
                      Hasher());
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->request.world_size, 4);
  EXPECT_EQ(r->request.rank, 3);
  EXPECT_EQ(r->request.object_group, 2u);
  EXPECT_EQ(r->request.exclude_instance, "me");
}

TEST(ParseLookupJsonTest, HashesFullChunksOfTokenIds) {
  auto r = ParseLookupJson(R"({"model": "m", "token_ids": [1, 2, 3, 4, 5, 6, 7, 8, 9]})", Hasher());
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  const std::vector<uint32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  EXPECT_EQ(r->request.hashes, Hasher().HashAll(tokens));
  EXPECT_EQ(r->request.hashes.size(), 2u);
  EXPECT_EQ(r->num_tokens, 9u);
}

TEST(ParseLookupJsonTest, RefusesBadInputNamingTheField) {
  EXPECT_THAT(ErrorOf("{not json"), HasSubstr("not valid JSON"));
  EXPECT_THAT(ErrorOf("[1]"), HasSubstr("JSON object"));
  EXPECT_THAT(ErrorOf(R"({"chunk_hashes": []})"), HasSubstr("'model' is required"));
  EXPECT_THAT(ErrorOf(R"({"model": 3, "chunk_hashes": []})"),
              HasSubstr("'model' must be a string"));
  EXPECT_THAT(ErrorOf(R"({"model": "a@b", "chunk_hashes": []})"), HasSubstr("'@'"));
  EXPECT_THAT(ErrorOf(R"({"model": "m"})"), HasSubstr("exactly one of"));
  EXPECT_THAT(ErrorOf(R"({"model": "m", "chunk_hashes": [], "token_ids": []})"),
              HasSubstr("exactly one of"));
  EXPECT_THAT(ErrorOf(R"({"model": "m", "chunk_hashes": ["abc"]})"), HasSubstr("chunk_hashes[0]"));
  EXPECT_THAT(ErrorOf(R"({"model": "m", "chunk_hashes": [7]})"), HasSubstr("chunk_hashes[0]"));
  EXPECT_THAT(ErrorOf(R"({"model": "m", "token_ids": [1, -2]})"), HasSubstr("token_ids[1]"));
  EXPECT_THAT(ErrorOf(R"({"model": "m", "token_ids": [4294967296]})"), HasSubstr("token_ids[0]"));
  EXPECT_THAT(ErrorOf(R"({"model": "m", "token_ids": [1.5]})"), HasSubstr("token_ids[0]"));
  EXPECT_THAT(ErrorOf(R"({"model": "m", "world_size": 0, "token_ids": []})"),
              HasSubstr("'world_size'"));
  EXPECT_THAT(ErrorOf(R"({"model": "m", "world_size": 2, "rank": 2, "token_ids": []})"),
              HasSubstr("'rank'"));
  EXPECT_THAT(ErrorOf(R"({"model": "m", "chunk_hash": []})"),
              HasSubstr("unknown field 'chunk_hash'"));
  EXPECT_THAT(ErrorOf(R"({"model": "m", "token_ids": [[[[[[[[[[1]]]]]]]]]]})"),
              HasSubstr("nested"));
}

TEST(ParseClearJsonTest, EmptyBodyClearsAllAndFieldsNarrowIt) {
  auto all = ParseClearJson("");
  ASSERT_TRUE(all.has_value());
  EXPECT_EQ(*all, ClearRequest{});
  auto one = ParseClearJson(R"({"instance_id": "a", "worker_id": 2, "location": "fs"})");
  ASSERT_TRUE(one.has_value()) << one.error().ToString();
  EXPECT_EQ(*one, (ClearRequest{"a", 2, "fs"}));
  EXPECT_FALSE(ParseClearJson(R"({"worker_id": 2})").has_value());
  EXPECT_FALSE(ParseClearJson(R"({"instance_id": 5})").has_value());
  EXPECT_FALSE(ParseClearJson(R"({"bogus": 1})").has_value());
}

class AdminViewsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ControllerOptions o;
    o.clock = &clock_;
    core_ = std::move(*ControllerCore::Create(o));
    auto reply = As<RegisterReply>(
        core_->HandleRequest(Registration("node-<a>", 0, "tcp://a:1", {"L1", "fs"})));
    origin_ = Origin{"node-<a>", 0, reply.registration_id};
    core_->HandleEvent(Admit(origin_, 1, Keys(0, 3)));
  }
  FakeClock clock_;
  std::unique_ptr<ControllerCore> core_;
  Origin origin_;
};

TEST_F(AdminViewsTest, WorkersJsonDescribesWorkersAndLocations) {
  auto j = WorkersJson(*core_, "");
  ASSERT_TRUE(j.has_value());
  ASSERT_EQ((*j)["total_count"], 1);
  const nlohmann::json& w = (*j)["workers"][0];
  EXPECT_EQ(w["instance_id"], "node-<a>");
  EXPECT_EQ(w["address"], "tcp://a:1");
  EXPECT_EQ(w["key_count"], 3);
  EXPECT_EQ(w["registration_id"], HexId(origin_.registration_id));
  ASSERT_EQ(w["locations"].size(), 2u);
  EXPECT_EQ(w["locations"][0]["location"], "L1");
  EXPECT_EQ(w["locations"][0]["key_count"], 3);
  EXPECT_EQ(w["locations"][0]["last_seq"], 1);
  EXPECT_EQ(w["locations"][0]["sync"]["state"], "none");
  EXPECT_EQ((*WorkersJson(*core_, "other"))["total_count"], 0);
}

TEST_F(AdminViewsTest, DashboardJsonHasTotalsWorkersAndEvents) {
  auto d = DashboardJson(*core_, BoundEndpoints{"tcp://r", "tcp://e", "tcp://h"});
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ((*d)["controller"]["status"], "ok");
  EXPECT_EQ((*d)["controller"]["keys"], 3);
  EXPECT_EQ((*d)["workers"].size(), 1u);
  EXPECT_EQ((*d)["settings"]["events"], "tcp://e");
  EXPECT_EQ((*d)["settings"]["chunk_size"], 256);
  ASSERT_GE((*d)["events"].size(), 1u);
  EXPECT_EQ((*d)["events"][0]["kind"], "registered");
}

TEST_F(AdminViewsTest, MetricsNameEveryFamily) {
  core_->counters().latency[static_cast<size_t>(MessageType::kLookup)].Record(
      std::chrono::microseconds(70));
  const std::string text = MetricsText(*core_);
  for (const char* family :
       {"kvtier_controller_workers 1", "kvtier_controller_keys 3",
        "kvtier_controller_seq_gaps_total", "kvtier_controller_full_syncs_started_total",
        "kvtier_controller_full_syncs_completed_total", "kvtier_controller_full_syncs_failed_total",
        "kvtier_controller_workers_reaped_total",
        "kvtier_controller_events_dropped_total{reason=\"unknown_registration\"}",
        "kvtier_controller_messages_total{type=\"ADMIT\"} 0",
        "kvtier_controller_request_duration_seconds_bucket{type=\"LOOKUP\",le=\"1e-04\"} 1",
        "kvtier_controller_event_duration_seconds_count{type=\"ADMIT\"}"}) {
    EXPECT_THAT(text, HasSubstr(family));
  }
}

}  // namespace
}  // namespace kvtier::controller
