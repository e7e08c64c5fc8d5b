// S3FifoPolicy: small/main/ghost behaviour.
#include "kvtier/eviction/s3fifo_policy.h"

#include <algorithm>
#include <vector>

#include <gtest/gtest.h>

#include "kvtier/eviction/policy_test_util.h"

namespace kvtier::eviction {
namespace {

using test_util::Select;
using test_util::TestKey;
using test_util::TestKeys;

std::vector<ObjectKey> One(const ObjectKey& key) { return {key}; }

class S3FifoPolicyTest : public ::testing::Test {
 protected:
  // Creates each key as its own request, in order: the first is the oldest.
  void CreateInOrder(const std::vector<ObjectKey>& keys) {
    for (const ObjectKey& key : keys) s3_.OnCreated(One(key));
  }
  // Puts `keys` in the main FIFO, in order, through the ghost set. Padding keys raise the peak
  // size so that every key's ghost survives; they leave ghosts of their own.
  void CreateInMain(const std::vector<ObjectKey>& keys) {
    const std::vector<ObjectKey> padding = TestKeys(1000000, keys.size());
    CreateInOrder(padding);
    CreateInOrder(keys);
    s3_.OnRemoved(padding);
    std::vector<ObjectKey> victims = Select(s3_, keys.size(), [&](const ObjectKey& key) {
      return std::find(keys.begin(), keys.end(), key) != keys.end();
    });
    ASSERT_EQ(victims.size(), keys.size());
    s3_.OnRemoved(victims);
    CreateInOrder(keys);
    for (const ObjectKey& key : keys) ASSERT_TRUE(s3_.InMain(key));
  }

  S3FifoPolicy s3_;
};

TEST_F(S3FifoPolicyTest, NewKeysEnterTheSmallFifo) {
  CreateInOrder(TestKeys(0, 5));
  EXPECT_EQ(s3_.small_size(), 5u);
  EXPECT_EQ(s3_.main_size(), 0u);
  EXPECT_EQ(s3_.ghost_size(), 0u);
}

TEST_F(S3FifoPolicyTest, OneHitWondersAreEvictedBeforeReaccessedKeys) {
  const std::vector<ObjectKey> k = TestKeys(0, 10);
  CreateInOrder(k);
  s3_.OnTouched(One(k[2]));
  s3_.OnCreated(One(k[5]));  // a create of a tracked key counts as an access
  const std::vector<ObjectKey> expected = {k[0], k[1], k[3], k[4], k[6],
                                           k[7], k[8], k[9], k[2], k[5]};
  EXPECT_EQ(Select(s3_, 10), expected);
  // Selection promoted the re-accessed keys as a side effect; the victims stay tracked.
  EXPECT_TRUE(s3_.InMain(k[2]));
  EXPECT_TRUE(s3_.InMain(k[5]));
  EXPECT_EQ(s3_.size(), 10u);
}

TEST_F(S3FifoPolicyTest, RemovalFromSmallLeavesAGhostAndAGhostHitGoesStraightToMain) {
  const ObjectKey k = TestKey(100);
  s3_.OnCreated(One(k));
  ASSERT_EQ(Select(s3_, 1), One(k));
  s3_.OnRemoved(One(k));
  EXPECT_EQ(s3_.ghost_size(), 1u);

  s3_.OnCreated(One(k));
  EXPECT_TRUE(s3_.InMain(k));
  EXPECT_EQ(s3_.ghost_size(), 0u);
  // Fresh keys arriving later are still evicted first: the small FIFO holds over 10%.
  const std::vector<ObjectKey> fresh = TestKeys(0, 20);
  CreateInOrder(fresh);
  EXPECT_EQ(Select(s3_, 20), fresh);
}

TEST_F(S3FifoPolicyTest, RemovalFromMainLeavesNoGhost) {
  const std::vector<ObjectKey> m = TestKeys(0, 2);
  CreateInMain(m);
  const size_t ghosts = s3_.ghost_size();
  s3_.OnRemoved(m);
  EXPECT_EQ(s3_.ghost_size(), ghosts);
  CreateInOrder(m);
  EXPECT_FALSE(s3_.InMain(m[0]));
}

TEST_F(S3FifoPolicyTest, SmallFifoGoesFirstOnlyWhileItHoldsTenPercent) {
  const std::vector<ObjectKey> m = TestKeys(0, 20);
  CreateInMain(m);
  CreateInOrder(TestKeys(100, 2));  // 2 of 22 tracked: under 10%
  EXPECT_EQ(Select(s3_, 1), One(m[0]));
  s3_.OnCreated(One(TestKey(102)));  // 3 of 23: over 10%
  EXPECT_EQ(Select(s3_, 1), One(TestKey(100)));
}

TEST_F(S3FifoPolicyTest, MainReinsertsWhileFrequencyIsPositive) {
  const std::vector<ObjectKey> m = TestKeys(0, 4);
  CreateInMain(m);
  s3_.OnTouched(One(m[0]));
  s3_.OnTouched(One(m[0]));
  EXPECT_EQ(Select(s3_, 4), (std::vector<ObjectKey>{m[1], m[2], m[3], m[0]}));
}

TEST_F(S3FifoPolicyTest, FrequencyIsCappedAtThree) {
  const std::vector<ObjectKey> m = TestKeys(0, 4);
  CreateInMain(m);
  for (int i = 0; i < 10; ++i) s3_.OnTouched(One(m[0]));
  for (int i = 0; i < 3; ++i) s3_.OnTouched(One(m[1]));
  // Both hold 3, so m[0] (older) goes first despite ten accesses.
  EXPECT_EQ(Select(s3_, 4), (std::vector<ObjectKey>{m[2], m[3], m[0], m[1]}));
}

TEST_F(S3FifoPolicyTest, GhostSetIsBoundedByTheMainFifoSize) {
  const std::vector<ObjectKey> k = TestKeys(0, 10);
  CreateInOrder(k);
  EXPECT_EQ(s3_.ghost_capacity(), 9u);
  s3_.OnRemoved(k);  // oldest first: k[0] is the ghost dropped
  EXPECT_EQ(s3_.ghost_size(), 9u);
  s3_.OnCreated(One(k[0]));
  EXPECT_FALSE(s3_.InMain(k[0]));
  s3_.OnCreated(One(k[1]));
  EXPECT_TRUE(s3_.InMain(k[1]));
}

TEST_F(S3FifoPolicyTest, IneligibleKeysKeepTheirPlace) {
  const std::vector<ObjectKey> k = TestKeys(0, 5);
  CreateInOrder(k);
  auto not_first = [&](const ObjectKey& key) { return key != k[0]; };
  EXPECT_EQ(Select(s3_, 2, not_first), (std::vector<ObjectKey>{k[1], k[2]}));
  EXPECT_EQ(Select(s3_, 1), One(k[0]));
}

}  // namespace
}  // namespace kvtier::eviction
