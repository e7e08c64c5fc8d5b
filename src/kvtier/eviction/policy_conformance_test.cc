// The EvictionPolicy contract, run over every policy the factory makes.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include <absl/container/flat_hash_set.h>
#include <gtest/gtest.h>

#include "kvtier/eviction/policy.h"
#include "kvtier/eviction/policy_test_util.h"

namespace kvtier::eviction {
namespace {

using test_util::AcceptAll;
using test_util::Select;
using test_util::TestKey;
using test_util::TestKeys;
using KeySet = absl::flat_hash_set<ObjectKey, keys::ObjectKeyHash>;

struct PolicyTraits {
  std::string name;
  // False for a policy that tracks nothing (noop): tracking and eviction tests then expect it to
  // track and select nothing.
  bool evicts;
};

void PrintTo(const PolicyTraits& traits, std::ostream* os) { *os << traits.name; }

class PolicyConformanceTest : public ::testing::TestWithParam<PolicyTraits> {
 protected:
  void SetUp() override { policy_ = MakePolicy(); }

  std::unique_ptr<EvictionPolicy> MakePolicy() const {
    auto policy = MakeEvictionPolicy(GetParam().name);
    EXPECT_TRUE(policy.has_value()) << policy.error().ToString();
    return policy.has_value() ? std::move(*policy) : nullptr;
  }
  bool evicts() const { return GetParam().evicts; }

  // Selects `per_round` victims and removes them until nothing is selected. Fails the test on a
  // victim selected twice.
  std::vector<ObjectKey> Drain(EvictionPolicy& policy, size_t per_round,
                               const std::function<bool(const ObjectKey&)>& eligible) {
    std::vector<ObjectKey> all;
    KeySet seen;
    for (int round = 0; round < 100000; ++round) {
      std::vector<ObjectKey> victims = Select(policy, per_round, eligible);
      EXPECT_LE(victims.size(), per_round);
      if (victims.empty()) break;
      for (const ObjectKey& key : victims) {
        EXPECT_TRUE(seen.insert(key).second) << "selected twice: " << key.ToString();
        EXPECT_TRUE(eligible(key));
      }
      policy.OnRemoved(victims);
      all.insert(all.end(), victims.begin(), victims.end());
    }
    return all;
  }

  // A seeded mix of creates (batches), touches, removes and partial evictions. Returns the keys
  // a tracking policy must hold afterwards.
  KeySet RandomWorkload(EvictionPolicy& policy, uint64_t seed, size_t steps) {
    std::mt19937_64 rng(seed);
    KeySet tracked;
    uint64_t next_id = 0;
    auto pick = [&](size_t n) {
      std::vector<ObjectKey> keys;
      std::uniform_int_distribution<uint64_t> id(0, next_id + 4);  // some unknown ids
      for (size_t i = 0; i < n; ++i) keys.push_back(TestKey(id(rng)));
      return keys;
    };
    for (size_t step = 0; step < steps; ++step) {
      switch (rng() % 6) {
        case 0:
        case 1: {  // a new request: fresh chunks, sometimes re-creating known ones
          std::vector<ObjectKey> batch = TestKeys(next_id, 1 + rng() % 8);
          next_id += batch.size();
          if (rng() % 3 == 0) {
            std::vector<ObjectKey> again = pick(2);
            batch.insert(batch.end(), again.begin(), again.end());
          }
          policy.OnCreated(batch);
          for (const ObjectKey& key : batch) tracked.insert(key);
          break;
        }
        case 2:
        case 3:
          policy.OnTouched(pick(1 + rng() % 6));
          break;
        case 4: {
          std::vector<ObjectKey> keys = pick(1 + rng() % 3);
          policy.OnRemoved(keys);
          for (const ObjectKey& key : keys) tracked.erase(key);
          break;
        }
        case 5: {  // evict a few, deleting only some of the victims
          std::vector<ObjectKey> victims = Select(policy, 1 + rng() % 4);
          std::vector<ObjectKey> deleted;
          for (const ObjectKey& key : victims) {
            if (rng() % 4 != 0) deleted.push_back(key);
          }
          policy.OnRemoved(deleted);
          for (const ObjectKey& key : deleted) tracked.erase(key);
          break;
        }
      }
    }
    return tracked;
  }

  std::unique_ptr<EvictionPolicy> policy_;
};

TEST_P(PolicyConformanceTest, NameIsTheCanonicalFactoryName) {
  EXPECT_EQ(policy_->name(), GetParam().name == "s3-fifo" ? "s3fifo" : GetParam().name);
}

TEST_P(PolicyConformanceTest, CreatedKeysAreTracked) {
  const std::vector<ObjectKey> keys = TestKeys(0, 10);
  policy_->OnCreated(std::span(keys).first(4));
  policy_->OnCreated(std::span(keys).subspan(4));
  EXPECT_EQ(policy_->size(), evicts() ? 10u : 0u);
  for (const ObjectKey& key : keys) EXPECT_EQ(policy_->Contains(key), evicts());
  EXPECT_FALSE(policy_->Contains(TestKey(99)));
}

TEST_P(PolicyConformanceTest, DuplicateCreateDoesNotDoubleCount) {
  const std::vector<ObjectKey> keys = TestKeys(0, 5);
  policy_->OnCreated(keys);
  policy_->OnCreated(std::vector<ObjectKey>{keys[2]});
  policy_->OnCreated(std::vector<ObjectKey>{keys[3], keys[3], TestKey(5), TestKey(5)});
  EXPECT_EQ(policy_->size(), evicts() ? 6u : 0u);
  const std::vector<ObjectKey> victims = Drain(*policy_, 100, AcceptAll);
  EXPECT_EQ(victims.size(), evicts() ? 6u : 0u);
  EXPECT_EQ(policy_->size(), 0u);
}

TEST_P(PolicyConformanceTest, RemovedKeysAreNeverSelectedAgain) {
  const std::vector<ObjectKey> keys = TestKeys(0, 20);
  for (size_t i = 0; i < keys.size(); i += 5) policy_->OnCreated(std::span(keys).subspan(i, 5));
  std::vector<ObjectKey> removed;
  for (size_t i = 0; i < keys.size(); i += 3) removed.push_back(keys[i]);
  policy_->OnRemoved(removed);
  EXPECT_EQ(policy_->size(), evicts() ? keys.size() - removed.size() : 0u);
  const KeySet removed_set(removed.begin(), removed.end());
  for (const ObjectKey& key : removed) EXPECT_FALSE(policy_->Contains(key));
  for (const ObjectKey& key : Drain(*policy_, 3, AcceptAll)) {
    EXPECT_FALSE(removed_set.contains(key)) << key.ToString();
  }
}

TEST_P(PolicyConformanceTest, UnknownKeysAreIgnored) {
  const std::vector<ObjectKey> keys = TestKeys(0, 5);
  const std::vector<ObjectKey> unknown = TestKeys(100, 3);
  policy_->OnRemoved(unknown);  // on an empty policy
  policy_->OnTouched(unknown);
  policy_->OnCreated(keys);
  policy_->OnRemoved(unknown);
  policy_->OnTouched(unknown);
  EXPECT_EQ(policy_->size(), evicts() ? 5u : 0u);
  for (const ObjectKey& key : unknown) EXPECT_FALSE(policy_->Contains(key));
  const std::vector<ObjectKey> victims = Drain(*policy_, 2, AcceptAll);
  EXPECT_EQ(KeySet(victims.begin(), victims.end()),
            evicts() ? KeySet(keys.begin(), keys.end()) : KeySet());
}

TEST_P(PolicyConformanceTest, EmptySpansAreNoOps) {
  std::unique_ptr<EvictionPolicy> twin = MakePolicy();
  const std::vector<ObjectKey> keys = TestKeys(0, 8);
  for (EvictionPolicy* p : {policy_.get(), twin.get()}) {
    p->OnCreated(std::span(keys).first(4));
    p->OnCreated(std::span(keys).subspan(4));
    p->OnTouched(std::span(keys).subspan(2, 2));
  }
  policy_->OnCreated({});
  policy_->OnTouched({});
  policy_->OnRemoved({});
  EXPECT_EQ(policy_->size(), twin->size());
  EXPECT_EQ(Select(*policy_, 100), Select(*twin, 100));
}

TEST_P(PolicyConformanceTest, SelectZeroReturnsNothingAndSelectAppends) {
  policy_->OnCreated(TestKeys(0, 5));
  const ObjectKey sentinel = TestKey(1000);
  std::vector<ObjectKey> out = {sentinel};
  policy_->SelectVictims(0, AcceptAll, &out);
  EXPECT_EQ(out, std::vector<ObjectKey>{sentinel});
  policy_->SelectVictims(3, AcceptAll, &out);
  ASSERT_EQ(out.size(), evicts() ? 4u : 1u);
  EXPECT_EQ(out[0], sentinel);
}

TEST_P(PolicyConformanceTest, SelectReturnsAtMostMax) {
  policy_->OnCreated(TestKeys(0, 20));
  EXPECT_EQ(Select(*policy_, 5).size(), evicts() ? 5u : 0u);
  EXPECT_EQ(Select(*policy_, 100).size(), evicts() ? 20u : 0u);
}

TEST_P(PolicyConformanceTest, IneligibleKeysAreNeverSelectedAndStayTracked) {
  const std::vector<ObjectKey> keys = TestKeys(0, 30);
  for (size_t i = 0; i < keys.size(); i += 6) policy_->OnCreated(std::span(keys).subspan(i, 6));
  policy_->OnTouched(std::span(keys).subspan(10, 5));
  KeySet ineligible;
  for (size_t i = 0; i < keys.size(); i += 2) ineligible.insert(keys[i]);
  auto eligible = [&](const ObjectKey& key) { return !ineligible.contains(key); };

  EXPECT_TRUE(Select(*policy_, 100, [](const ObjectKey&) { return false; }).empty());
  const std::vector<ObjectKey> victims = Drain(*policy_, 4, eligible);
  EXPECT_EQ(victims.size(), evicts() ? 15u : 0u);
  for (const ObjectKey& key : victims) EXPECT_FALSE(ineligible.contains(key));
  EXPECT_EQ(policy_->size(), evicts() ? 15u : 0u);
  for (const ObjectKey& key : ineligible) EXPECT_EQ(policy_->Contains(key), evicts());
}

TEST_P(PolicyConformanceTest, VictimNotRemovedStaysTrackedAndSelectable) {
  policy_->OnCreated(TestKeys(0, 10));
  const std::vector<ObjectKey> victims = Select(*policy_, 3);
  ASSERT_EQ(victims.size(), evicts() ? 3u : 0u);
  EXPECT_EQ(policy_->size(), evicts() ? 10u : 0u);
  for (const ObjectKey& key : victims) EXPECT_TRUE(policy_->Contains(key));
  // Nothing changed, so the same keys come first again.
  EXPECT_EQ(Select(*policy_, 3), victims);
  const std::vector<ObjectKey> drained = Drain(*policy_, 4, AcceptAll);
  const KeySet drained_set(drained.begin(), drained.end());
  for (const ObjectKey& key : victims) EXPECT_TRUE(drained_set.contains(key));
}

TEST_P(PolicyConformanceTest, SelectingEverythingReturnsEachTrackedKeyOnce) {
  for (uint64_t seed : {1, 2, 3}) {
    std::unique_ptr<EvictionPolicy> policy = MakePolicy();
    const KeySet tracked = RandomWorkload(*policy, seed, 2000);
    ASSERT_EQ(policy->size(), evicts() ? tracked.size() : 0u) << "seed " << seed;
    for (const ObjectKey& key : tracked) ASSERT_EQ(policy->Contains(key), evicts());
    const std::vector<ObjectKey> victims = Select(*policy, tracked.size() + 10);
    const KeySet victim_set(victims.begin(), victims.end());
    EXPECT_EQ(victim_set.size(), victims.size()) << "duplicates, seed " << seed;
    EXPECT_EQ(victim_set, evicts() ? tracked : KeySet()) << "seed " << seed;
  }
}

TEST_P(PolicyConformanceTest, FullDrainEvictsEveryEligibleKeyExactlyOnce) {
  for (uint64_t seed : {7, 8}) {
    std::unique_ptr<EvictionPolicy> policy = MakePolicy();
    const KeySet tracked = RandomWorkload(*policy, seed, 3000);
    KeySet ineligible;
    size_t i = 0;
    for (const ObjectKey& key : tracked) {
      if (i++ % 5 == 0) ineligible.insert(key);
    }
    auto eligible = [&](const ObjectKey& key) { return !ineligible.contains(key); };
    const std::vector<ObjectKey> victims = Drain(*policy, 7, eligible);
    KeySet expected;
    if (evicts()) {
      for (const ObjectKey& key : tracked) {
        if (eligible(key)) expected.insert(key);
      }
    }
    EXPECT_EQ(KeySet(victims.begin(), victims.end()), expected) << "seed " << seed;
    EXPECT_EQ(victims.size(), expected.size()) << "seed " << seed;
    EXPECT_EQ(policy->size(), evicts() ? ineligible.size() : 0u) << "seed " << seed;
    for (const ObjectKey& key : ineligible) EXPECT_EQ(policy->Contains(key), evicts());
  }
}

TEST_P(PolicyConformanceTest, LaterKeysOfABatchAreEvictedFirst) {
  if (!evicts()) GTEST_SKIP() << "tracks nothing";
  const std::vector<ObjectKey> keys = TestKeys(0, 8);
  policy_->OnCreated(keys);
  std::vector<ObjectKey> reversed(keys.rbegin(), keys.rend());
  EXPECT_EQ(Select(*policy_, 8), reversed);
}

TEST_P(PolicyConformanceTest, OlderBatchesAreEvictedBeforeNewerOnes) {
  if (!evicts()) GTEST_SKIP() << "tracks nothing";
  const std::vector<ObjectKey> first = TestKeys(0, 3);
  const std::vector<ObjectKey> second = TestKeys(10, 3);
  policy_->OnCreated(first);
  policy_->OnCreated(second);
  const std::vector<ObjectKey> expected = {first[2],  first[1],  first[0],
                                           second[2], second[1], second[0]};
  EXPECT_EQ(Select(*policy_, 6), expected);
}

TEST_P(PolicyConformanceTest, NonEvictingPolicyTracksAndSelectsNothing) {
  if (evicts()) GTEST_SKIP() << "tracks keys";
  const KeySet tracked = RandomWorkload(*policy_, 5, 500);
  EXPECT_FALSE(tracked.empty());
  EXPECT_EQ(policy_->size(), 0u);
  for (const ObjectKey& key : tracked) EXPECT_FALSE(policy_->Contains(key));
  EXPECT_TRUE(Select(*policy_, 1000).empty());
}

std::string PolicyTestName(const ::testing::TestParamInfo<PolicyTraits>& param) {
  return param.param.name;
}

INSTANTIATE_TEST_SUITE_P(AllPolicies, PolicyConformanceTest,
                         ::testing::Values(PolicyTraits{"lru", true}, PolicyTraits{"s3fifo", true},
                                           PolicyTraits{"arc", true}, PolicyTraits{"noop", false}),
                         PolicyTestName);

TEST(MakeEvictionPolicyTest, AcceptsNamesInAnyCase) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"lru", "lru"},        {"LRU", "lru"}, {"S3FIFO", "s3fifo"},
      {"s3-fifo", "s3fifo"}, {"Arc", "arc"}, {"NoOp", "noop"}};
  for (const auto& [input, name] : cases) {
    auto policy = MakeEvictionPolicy(input);
    ASSERT_TRUE(policy.has_value()) << input;
    EXPECT_EQ((*policy)->name(), name);
  }
}

TEST(MakeEvictionPolicyTest, RejectsUnknownNamesListingTheChoices) {
  for (const char* input : {"", "fifo", "lru ", "s3_fifo", "IsolatedLRU"}) {
    auto policy = MakeEvictionPolicy(input);
    ASSERT_FALSE(policy.has_value()) << input;
    EXPECT_EQ(policy.error().code(), StatusCode::kInvalidArgument);
    for (const char* choice : {"lru", "s3fifo", "arc", "noop"}) {
      EXPECT_NE(policy.error().message().find(choice), std::string::npos) << choice;
    }
  }
}

}  // namespace
}  // namespace kvtier::eviction
