// ArcPolicy: recency and frequency lists, adaptation of p, ghost bookkeeping.
#include "kvtier/eviction/arc_policy.h"

#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kvtier/eviction/policy_test_util.h"

namespace kvtier::eviction {
namespace {

using test_util::Select;
using test_util::TestKey;
using test_util::TestKeys;

std::vector<ObjectKey> One(const ObjectKey& key) { return {key}; }

class ArcPolicyTest : public ::testing::Test {
 protected:
  void CreateInOrder(const std::vector<ObjectKey>& keys) {
    for (const ObjectKey& key : keys) arc_.OnCreated(One(key));
  }
  // Selects `n` victims (all expected from T1) and removes them, leaving ghosts in B1.
  std::vector<ObjectKey> EvictFromT1(size_t n) {
    std::vector<ObjectKey> victims = Select(arc_, n);
    arc_.OnRemoved(victims);
    return victims;
  }

  ArcPolicy arc_;
};

TEST_F(ArcPolicyTest, NewKeysEnterT1AndAccessesMoveThemToT2) {
  const std::vector<ObjectKey> k = TestKeys(0, 4);
  CreateInOrder(k);
  EXPECT_EQ(arc_.t1_size(), 4u);
  EXPECT_EQ(arc_.t2_size(), 0u);
  arc_.OnTouched(One(k[1]));
  arc_.OnCreated(One(k[2]));
  EXPECT_EQ(arc_.t1_size(), 2u);
  EXPECT_EQ(arc_.t2_size(), 2u);
  EXPECT_TRUE(arc_.InT2(k[1]));
  EXPECT_TRUE(arc_.InT2(k[2]));
  EXPECT_FALSE(arc_.InT2(k[0]));
  EXPECT_EQ(arc_.capacity(), 4u);
}

TEST_F(ArcPolicyTest, RecencyListIsEvictedBeforeFrequencyList) {
  const std::vector<ObjectKey> k = TestKeys(0, 4);
  CreateInOrder(k);
  arc_.OnTouched(One(k[1]));
  arc_.OnTouched(One(k[0]));
  // p = 0: T1 goes first, least recent first, then T2.
  EXPECT_EQ(Select(arc_, 4), (std::vector<ObjectKey>{k[2], k[3], k[1], k[0]}));
}

TEST_F(ArcPolicyTest, B1HitGrowsTargetAndEntersT2) {
  CreateInOrder(TestKeys(0, 10));
  const std::vector<ObjectKey> victims = EvictFromT1(2);
  ASSERT_EQ(victims, (std::vector<ObjectKey>{TestKey(0), TestKey(1)}));
  EXPECT_EQ(arc_.b1_size(), 2u);
  EXPECT_EQ(arc_.target_t1(), 0u);
  arc_.OnCreated(One(TestKey(0)));
  EXPECT_EQ(arc_.target_t1(), 1u);
  EXPECT_TRUE(arc_.InT2(TestKey(0)));
  EXPECT_EQ(arc_.b1_size(), 1u);
}

TEST_F(ArcPolicyTest, B2HitShrinksTarget) {
  const std::vector<ObjectKey> k = TestKeys(0, 10);
  CreateInOrder(k);
  arc_.OnTouched(std::vector<ObjectKey>(k.begin(), k.begin() + 3));  // T2: k2, k1, k0
  // Two B1 hits: p = 2.
  const std::vector<ObjectKey> t1_victims = EvictFromT1(2);
  ASSERT_EQ(t1_victims, (std::vector<ObjectKey>{k[3], k[4]}));
  arc_.OnCreated(t1_victims);
  ASSERT_EQ(arc_.target_t1(), 2u);
  // Evict from T2 by making every T1 key ineligible.
  auto in_t2 = [&](const ObjectKey& key) { return arc_.InT2(key); };
  const std::vector<ObjectKey> t2_victims = Select(arc_, 1, in_t2);
  ASSERT_EQ(t2_victims, One(k[2]));
  arc_.OnRemoved(t2_victims);
  EXPECT_EQ(arc_.b2_size(), 1u);
  arc_.OnCreated(t2_victims);
  EXPECT_EQ(arc_.target_t1(), 1u);
  EXPECT_TRUE(arc_.InT2(k[2]));
  EXPECT_EQ(arc_.b2_size(), 0u);
}

TEST_F(ArcPolicyTest, VictimsComeFromT2OnceT1ReachesItsTarget) {
  const std::vector<ObjectKey> k = TestKeys(0, 10);
  CreateInOrder(k);
  CreateInOrder(EvictFromT1(4));  // four B1 hits: p = 4, T2 = k0..k3, T1 = k4..k9
  ASSERT_EQ(arc_.target_t1(), 4u);
  ASSERT_EQ(arc_.t1_size(), 6u);
  // T1 gives victims while it would keep at least p keys, then T2 does.
  EXPECT_EQ(Select(arc_, 5), (std::vector<ObjectKey>{k[4], k[5], k[6], k[0], k[1]}));
}

TEST_F(ArcPolicyTest, OnlyConfirmedPolicyVictimsLeaveGhosts) {
  const std::vector<ObjectKey> k = TestKeys(0, 4);
  CreateInOrder(k);
  arc_.OnRemoved(One(k[3]));  // an explicit delete
  EXPECT_EQ(arc_.b1_size() + arc_.b2_size(), 0u);
  ASSERT_EQ(Select(arc_, 1), One(k[0]));
  arc_.OnTouched(One(k[0]));  // used again after selection: no longer a victim
  arc_.OnRemoved(One(k[0]));
  EXPECT_EQ(arc_.b1_size() + arc_.b2_size(), 0u);
  ASSERT_EQ(Select(arc_, 1), One(k[1]));
  arc_.OnRemoved(One(k[1]));
  EXPECT_EQ(arc_.b1_size(), 1u);

  arc_.OnCreated(One(k[3]));
  EXPECT_FALSE(arc_.InT2(k[3]));
  arc_.OnCreated(One(k[1]));
  EXPECT_TRUE(arc_.InT2(k[1]));
}

TEST_F(ArcPolicyTest, CapacityIsTheMostKeysEverTracked) {
  CreateInOrder(TestKeys(0, 10));
  arc_.OnRemoved(TestKeys(0, 6));
  CreateInOrder(TestKeys(100, 3));
  EXPECT_EQ(arc_.size(), 7u);
  EXPECT_EQ(arc_.capacity(), 10u);
}

TEST_F(ArcPolicyTest, GhostsStayBounded) {
  std::mt19937_64 rng(11);
  uint64_t next_id = 0;
  for (int round = 0; round < 300; ++round) {
    // New requests, re-creates of old (possibly ghost) keys, touches, then eviction.
    std::vector<ObjectKey> batch = TestKeys(next_id, 1 + rng() % 16);
    next_id += batch.size();
    for (int i = 0; i < 4; ++i) batch.push_back(TestKey(rng() % next_id));
    arc_.OnCreated(batch);
    arc_.OnTouched(std::vector<ObjectKey>{TestKey(rng() % next_id), TestKey(rng() % next_id)});
    if (arc_.size() > 100) arc_.OnRemoved(Select(arc_, arc_.size() - 80));
    ASSERT_LE(arc_.b1_size() + arc_.b2_size(), arc_.capacity()) << "round " << round;
    ASSERT_LE(arc_.t1_size() + arc_.b1_size(), arc_.capacity()) << "round " << round;
    ASSERT_LE(arc_.target_t1(), arc_.capacity()) << "round " << round;
    ASSERT_EQ(arc_.t1_size() + arc_.t2_size(), arc_.size());
  }
  EXPECT_GT(arc_.b1_size() + arc_.b2_size(), 0u);
  EXPECT_LE(arc_.capacity(), 120u);
}

}  // namespace
}  // namespace kvtier::eviction
