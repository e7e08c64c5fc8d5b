#include "kvtier/controller/messages.h"

#include <gtest/gtest.h>

#include "kvtier/common/check.h"
#include "kvtier/controller/codec_test_util.h"

namespace kvtier::controller {
namespace {

using testing::MakeHash;

keys::ObjectKey Key(uint32_t seed, std::string_view model, uint16_t world, uint16_t rank,
                    uint32_t group = 0, std::string_view salt = "") {
  Result<keys::ObjectKey> key =
      keys::ObjectKey::Create(MakeHash(seed), model, keys::KvRank{world, rank}, group, salt);
  KVT_CHECK(key.has_value());
  return *key;
}

TEST(ControllerMessagesTest, GroupKeysKeepsFirstAppearanceOrder) {
  const std::vector<keys::ObjectKey> keys = {
      Key(1, "a", 2, 0), Key(1, "a", 2, 1),    Key(2, "a", 2, 0), Key(3, "b", 1, 0, 0, "t"),
      Key(2, "a", 2, 1), Key(4, "a", 2, 0, 7), Key(3, "a", 2, 0),
  };
  const std::vector<KeyGroup> groups = GroupKeys(keys);
  ASSERT_EQ(groups.size(), 4u);
  EXPECT_EQ(groups[0].space, (KeySpace{"a", "", 2, 0, 0}));
  EXPECT_EQ(groups[0].hashes, (std::vector{MakeHash(1), MakeHash(2), MakeHash(3)}));
  EXPECT_EQ(groups[1].space, (KeySpace{"a", "", 2, 1, 0}));
  EXPECT_EQ(groups[1].hashes, (std::vector{MakeHash(1), MakeHash(2)}));
  EXPECT_EQ(groups[2].space, (KeySpace{"b", "t", 1, 0, 0}));
  EXPECT_EQ(groups[3].space, (KeySpace{"a", "", 2, 0, 7}));
  EXPECT_EQ(CountKeys(groups), keys.size());
  EXPECT_TRUE(GroupKeys({}).empty());
}

TEST(ControllerMessagesTest, ToObjectKeysRebuildsTheKeys) {
  std::vector<keys::ObjectKey> keys;
  for (uint32_t i = 0; i < 100; ++i) keys.push_back(Key(i, "m", 4, static_cast<uint16_t>(i % 4)));
  Result<std::vector<keys::ObjectKey>> back = ToObjectKeys(GroupKeys(keys));
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  // Grouped by rank: same keys, rank-major.
  ASSERT_EQ(back->size(), keys.size());
  size_t i = 0;
  for (uint16_t rank = 0; rank < 4; ++rank) {
    for (uint32_t seed = rank; seed < 100; seed += 4) EXPECT_EQ((*back)[i++], keys[seed]);
  }
}

TEST(ControllerMessagesTest, InvalidSpacesFailToIntern) {
  const KeyGroup bad_model{KeySpace{"a@b", "", 1, 0, 0}, {MakeHash(1)}};
  std::vector<keys::ObjectKey> out;
  EXPECT_FALSE(bad_model.AppendObjectKeys(&out).ok());
  const KeyGroup bad_rank{KeySpace{"m", "", 2, 2, 0}, {MakeHash(1)}};
  EXPECT_FALSE(bad_rank.AppendObjectKeys(&out).ok());
  EXPECT_TRUE(out.empty());
}

TEST(ControllerMessagesTest, TypeNumbersAndClasses) {
  for (uint16_t n = 0; n < 300; ++n) {
    const std::optional<MessageType> type = MessageTypeFromNumber(n);
    const bool known = (n >= 1 && n <= 5) || (n >= 32 && n <= 40);
    ASSERT_EQ(type.has_value(), known) << n;
    if (!known) continue;
    EXPECT_NE(std::string(MessageTypeName(*type)), "INVALID");
    EXPECT_NE(IsEvent(*type), IsRequest(*type));
    EXPECT_EQ(ReplyIndexFor(*type) == std::variant_npos, IsEvent(*type));
  }
  EXPECT_STREQ(MessageTypeName(MessageType::kFullSyncStatus), "FULL_SYNC_STATUS");
  for (const auto& [name, request] : testing::SampleRequests()) {
    EXPECT_EQ(MessageTypeName(TypeOf(request)), name);
  }
  for (const auto& [name, event] : testing::SampleEvents()) {
    EXPECT_EQ(MessageTypeName(TypeOf(event)), name);
  }
}

TEST(ControllerMessagesTest, ErrorRepliesMapStatuses) {
  const Status s(StatusCode::kResourceExhausted, "too many workers", true);
  const ErrorReply e = ToErrorReply(s);
  EXPECT_EQ(e.code, StatusCode::kResourceExhausted);
  EXPECT_TRUE(e.retryable);
  EXPECT_EQ(FromErrorReply(e), s);
  EXPECT_EQ(FromErrorReply(ErrorReply{static_cast<StatusCode>(-3), "x", false}).code(),
            StatusCode::kProtocolError);
}

}  // namespace
}  // namespace kvtier::controller
