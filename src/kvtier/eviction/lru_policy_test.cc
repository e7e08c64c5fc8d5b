// LruPolicy: the LMCache LRU cases (test_lru_eviction_policy.py) and the memory budget.
#include "kvtier/eviction/lru_policy.h"

#include <vector>

#include <gtest/gtest.h>

#include "kvtier/eviction/policy_test_util.h"

namespace kvtier::eviction {
namespace {

using test_util::Select;
using test_util::TestKey;
using test_util::TestKeys;

std::vector<ObjectKey> One(const ObjectKey& key) { return {key}; }

class LruPolicyTest : public ::testing::Test {
 protected:
  // Creates a, b, c in three separate requests: a is the least recent.
  void CreateAbc() {
    for (const ObjectKey& key : {a_, b_, c_}) lru_.OnCreated(One(key));
  }

  LruPolicy lru_;
  const ObjectKey a_ = TestKey(1);
  const ObjectKey b_ = TestKey(2);
  const ObjectKey c_ = TestKey(3);
};

TEST_F(LruPolicyTest, TracksCreatedAndRemovedKeys) {
  lru_.OnCreated(TestKeys(0, 10));
  EXPECT_EQ(lru_.size(), 10u);
  lru_.OnRemoved(TestKeys(0, 4));
  EXPECT_EQ(lru_.size(), 6u);
  EXPECT_FALSE(lru_.Contains(TestKey(0)));
  EXPECT_TRUE(lru_.Contains(TestKey(9)));
}

TEST_F(LruPolicyTest, DuplicateCreateKeepsOneEntry) {
  lru_.OnCreated(One(a_));
  lru_.OnCreated(One(a_));
  EXPECT_EQ(lru_.size(), 1u);
  EXPECT_EQ(Select(lru_, 10), One(a_));
}

TEST_F(LruPolicyTest, RemovingOrTouchingUnknownKeysIsSafe) {
  CreateAbc();
  lru_.OnRemoved(One(TestKey(42)));
  lru_.OnTouched(One(TestKey(42)));
  EXPECT_EQ(lru_.size(), 3u);
  EXPECT_FALSE(lru_.Contains(TestKey(42)));
  EXPECT_EQ(Select(lru_, 10), (std::vector<ObjectKey>{a_, b_, c_}));
}

TEST_F(LruPolicyTest, EvictsLeastRecentlyCreatedFirst) {
  CreateAbc();
  EXPECT_EQ(Select(lru_, 1), One(a_));
  EXPECT_EQ(Select(lru_, 3), (std::vector<ObjectKey>{a_, b_, c_}));
}

TEST_F(LruPolicyTest, TouchMovesToMostRecent) {
  CreateAbc();
  lru_.OnTouched(One(a_));
  EXPECT_EQ(Select(lru_, 3), (std::vector<ObjectKey>{b_, c_, a_}));
}

TEST_F(LruPolicyTest, RecreateMovesToMostRecent) {
  CreateAbc();
  lru_.OnCreated(One(a_));
  EXPECT_EQ(Select(lru_, 3), (std::vector<ObjectKey>{b_, c_, a_}));
}

TEST_F(LruPolicyTest, TouchedBatchKeepsItsFirstKeyLongest) {
  CreateAbc();
  lru_.OnTouched(std::vector<ObjectKey>{a_, b_});
  EXPECT_EQ(Select(lru_, 3), (std::vector<ObjectKey>{c_, b_, a_}));
}

TEST_F(LruPolicyTest, CandidateListingSkipsIneligibleKeysInOrder) {
  CreateAbc();
  lru_.OnCreated(One(TestKey(4)));
  auto not_b = [&](const ObjectKey& key) { return key != b_; };
  EXPECT_EQ(Select(lru_, 2, not_b), (std::vector<ObjectKey>{a_, c_}));
  EXPECT_EQ(Select(lru_, 10, not_b), (std::vector<ObjectKey>{a_, c_, TestKey(4)}));
  EXPECT_TRUE(lru_.Contains(b_));
}

TEST_F(LruPolicyTest, SelectVisitsOnlyTheKeysItNeeds) {
  const std::vector<ObjectKey> keys = TestKeys(0, 10000);
  for (const ObjectKey& key : keys) lru_.OnCreated(One(key));
  size_t calls = 0;
  auto counting = [&](const ObjectKey& key) {
    ++calls;
    return key != keys[1];
  };
  EXPECT_EQ(Select(lru_, 5, counting),
            (std::vector<ObjectKey>{keys[0], keys[2], keys[3], keys[4], keys[5]}));
  EXPECT_EQ(calls, 6u);
}

TEST_F(LruPolicyTest, StaysWithinEightyBytesPerKey) {
  constexpr size_t kKeys = 300000;
  const std::vector<ObjectKey> keys = TestKeys(0, kKeys);
  for (size_t i = 0; i < kKeys; i += 64) {
    lru_.OnCreated(std::span(keys).subspan(i, std::min<size_t>(64, kKeys - i)));
  }
  ASSERT_EQ(lru_.size(), kKeys);
  const size_t bytes = lru_.MemoryBytes();
  EXPECT_LE(bytes / kKeys, 80u) << bytes << " bytes for " << kKeys << " keys";
  EXPECT_GE(bytes / kKeys, 52u);  // at least a key and two links per entry
}

TEST_F(LruPolicyTest, RemovedEntriesAreReused) {
  lru_.OnCreated(TestKeys(0, 20000));
  const size_t bytes = lru_.MemoryBytes();
  lru_.OnRemoved(TestKeys(0, 20000));
  EXPECT_EQ(lru_.size(), 0u);
  lru_.OnCreated(TestKeys(100000, 20000));
  EXPECT_EQ(lru_.MemoryBytes(), bytes);
  EXPECT_EQ(Select(lru_, 1), One(TestKey(100000 + 19999)));
}

}  // namespace
}  // namespace kvtier::eviction
