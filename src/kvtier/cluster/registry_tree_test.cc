// RegistryTree: registration, liveness, incremental batches and sequence numbers, admin views.
#include "kvtier/cluster/registry_tree.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kvtier/cluster/registry_test_util.h"

namespace kvtier::cluster {
namespace {

using namespace std::chrono_literals;
using ::testing::ElementsAre;
using ::testing::UnorderedElementsAreArray;

using RegistryTreeTest = RegistryTestBase;

TEST_F(RegistryTreeTest, CreateValidatesOptions) {
  RegistryOptions o;
  o.num_shards = 3;
  EXPECT_EQ(RegistryTree::Create(o).error().code(), StatusCode::kInvalidArgument);
  o.num_shards = 8192;
  EXPECT_EQ(RegistryTree::Create(o).error().code(), StatusCode::kInvalidArgument);
  o = RegistryOptions{};
  o.max_workers = 0;
  EXPECT_EQ(RegistryTree::Create(o).error().code(), StatusCode::kInvalidArgument);
  o = RegistryOptions{};
  o.clock = nullptr;
  EXPECT_EQ(RegistryTree::Create(o).error().code(), StatusCode::kInvalidArgument);
  o = RegistryOptions{};
  o.full_sync_timeout = Duration::zero();
  EXPECT_EQ(RegistryTree::Create(o).error().code(), StatusCode::kInvalidArgument);
  o = RegistryOptions{};
  o.num_shards = 1;
  EXPECT_TRUE(RegistryTree::Create(o).has_value());
}

TEST_F(RegistryTreeTest, RegisterCreatesInstancesAndWorkers) {
  Register("b", 2);
  Register("b", 0);
  Register("a", 1);
  EXPECT_THAT(tree_->InstanceIds(), ElementsAre("a", "b"));
  EXPECT_THAT(tree_->WorkerIds("b").value(), ElementsAre(0, 2));  // sorted
  EXPECT_EQ(tree_->WorkerIds("zz").error().code(), StatusCode::kNotFound);
  RegistryStats s = tree_->Stats();
  EXPECT_EQ(s.instances, 2u);
  EXPECT_EQ(s.workers, 3u);
  WorkerInfo info = tree_->GetWorkerInfo({"b", 2}).value();
  EXPECT_EQ(info.address, "tcp://b:5602");
  EXPECT_EQ(info.registration_time, clock_.Now());
  EXPECT_EQ(info.last_heartbeat, clock_.Now());
  EXPECT_TRUE(info.locations.empty());
  EXPECT_NE(info.registration_id, 0u);
}

TEST_F(RegistryTreeTest, RegisterValidatesIds) {
  WorkerRegistration r;
  EXPECT_EQ(tree_->RegisterWorker(r).error().code(), StatusCode::kInvalidArgument);
  r.instance_id = std::string(kMaxInstanceIdLength + 1, 'x');
  EXPECT_EQ(tree_->RegisterWorker(r).error().code(), StatusCode::kInvalidArgument);
  r.instance_id = "ok";
  r.address = std::string(kMaxAddressLength + 1, 'a');
  EXPECT_EQ(tree_->RegisterWorker(r).error().code(), StatusCode::kInvalidArgument);
  r.address = "";  // no P2P endpoint: allowed
  EXPECT_TRUE(tree_->RegisterWorker(r).has_value());
}

TEST_F(RegistryTreeTest, ReRegistrationRefreshesAddressAndDropsStaleKeys) {
  Register("a", 0, "tcp://old:1");
  Register("a", 1);
  const auto keys = Keys(0, 10);
  Admit("a", 0, "L1", 0, keys);
  Admit("a", 1, "L1", 0, Pick(keys, {0}));
  clock_.Advance(5s);
  WorkerRegistration r = Registration("a", 0, "tcp://new:2", true);
  auto result = tree_->RegisterWorker(r);
  ASSERT_TRUE(result.has_value());
  EXPECT_TRUE(result->re_registered);
  EXPECT_EQ(result->stale_keys_removed, 10u);
  EXPECT_EQ(tree_->Stats().workers, 2u);  // a single entry for (a, 0)
  WorkerInfo info = tree_->GetWorkerInfo({"a", 0}).value();
  EXPECT_EQ(info.address, "tcp://new:2");
  EXPECT_EQ(info.registration_time, clock_.Now());
  EXPECT_EQ(info.total_keys, 0u);
  EXPECT_TRUE(info.locations.empty());  // sequence trackers gone too
  // The other worker's holder of key 0 survives.
  EXPECT_EQ(tree_->FindKv(keys[0]), H("a", 1, "L1"));
  EXPECT_FALSE(tree_->FindKv(keys[1]).has_value());
  EXPECT_EQ(tree_->TotalKeyCount(), 1u);
  // A new sequence baseline: any first number is accepted.
  EXPECT_EQ(Admit("a", 0, "L1", 0, Pick(keys, {1})).outcome, BatchOutcome::kApplied);
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistryTreeTest, DeregisterWorkerRemovesOnlyItsKeys) {
  Register("a", 0);
  Register("a", 1);
  const auto keys = Keys(0, 4);
  Admit("a", 0, "L1", 0, keys);
  Admit("a", 0, "fs", 0, keys);
  Admit("a", 1, "L1", 0, Pick(keys, {0, 1}));
  auto removed = tree_->DeregisterWorker({"a", 0});
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ(removed->workers, 1u);
  EXPECT_EQ(removed->keys_removed, 8u);
  EXPECT_EQ(tree_->TotalKeyCount(), 2u);
  EXPECT_EQ(KeyCount("a", 1, "L1"), 2u);
  EXPECT_EQ(tree_->GetWorkerInfo({"a", 0}).error().code(), StatusCode::kNotFound);
  EXPECT_EQ(tree_->DeregisterWorker({"a", 0}).error().code(), StatusCode::kNotFound);
  EXPECT_EQ(tree_->DeregisterWorker({"nope", 0}).error().code(), StatusCode::kNotFound);
  // The instance leaves with its last worker.
  ASSERT_TRUE(tree_->DeregisterWorker({"a", 1}).has_value());
  EXPECT_TRUE(tree_->InstanceIds().empty());
  EXPECT_EQ(tree_->Stats().instances, 0u);
  EXPECT_EQ(tree_->TotalKeyCount(), 0u);
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistryTreeTest, DeregisterInstanceRemovesEveryWorker) {
  Register("a", 0);
  Register("a", 1);
  Register("b", 0);
  Admit("a", 0, "L1", 0, Keys(0, 3));
  Admit("a", 1, "L1", 0, Keys(3, 3));
  Admit("b", 0, "L1", 0, Keys(0, 3));
  auto removed = tree_->DeregisterInstance("a");
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ(removed->workers, 2u);
  EXPECT_EQ(removed->keys_removed, 6u);
  EXPECT_THAT(tree_->InstanceIds(), ElementsAre("b"));
  EXPECT_EQ(tree_->Stats().workers, 1u);
  EXPECT_EQ(tree_->TotalKeyCount(), 3u);
  EXPECT_EQ(tree_->DeregisterInstance("a").error().code(), StatusCode::kNotFound);
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistryTreeTest, HeartbeatRefreshesLastSeen) {
  Register("a", 0);
  clock_.Advance(7s);
  ASSERT_TRUE(tree_->Heartbeat({"a", 0}).has_value());
  EXPECT_EQ(tree_->GetWorkerInfo({"a", 0})->last_heartbeat, clock_.Now());
  // An unknown worker: the caller registers it again.
  EXPECT_EQ(tree_->Heartbeat({"a", 9}).error().code(), StatusCode::kNotFound);
  EXPECT_EQ(tree_->Heartbeat({"x", 0}).error().code(), StatusCode::kNotFound);
}

TEST_F(RegistryTreeTest, ReapDeadRemovesSilentWorkersAndReportsThem) {
  Register("a", 0, "tcp://a:1");
  Register("a", 1);
  Register("b", 0, "", /*expects_heartbeats=*/false);
  Admit("a", 0, "L1", 0, Keys(0, 5));
  Admit("b", 0, "L1", 0, Keys(0, 5));
  const TimePoint registered = clock_.Now();
  clock_.Advance(20s);
  ASSERT_TRUE(tree_->Heartbeat({"a", 1}).has_value());
  clock_.Advance(20s);  // a/0: silent for 40 s; a/1 for 20 s; b/0 never heartbeats
  auto reaped = tree_->ReapDead(30s);
  ASSERT_TRUE(reaped.has_value());
  ASSERT_EQ(reaped->size(), 1u);
  const ReapedWorker& dead = (*reaped)[0];
  EXPECT_EQ(dead.instance_id, "a");
  EXPECT_EQ(dead.worker_id, 0u);
  EXPECT_EQ(dead.address, "tcp://a:1");
  EXPECT_EQ(dead.last_heartbeat, registered);
  EXPECT_EQ(dead.keys_removed, 5u);
  EXPECT_EQ(tree_->Stats().workers_reaped, 1u);
  EXPECT_EQ(tree_->Heartbeat({"a", 0}).error().code(), StatusCode::kNotFound);
  EXPECT_EQ(tree_->FindKv(Keys(0, 1)[0]), H("b", 0, "L1"));
  // Nothing else is silent for longer than 30 s: a second reap finds nobody.
  EXPECT_TRUE(tree_->ReapDead(30s)->empty());
  clock_.Advance(11s);
  reaped = tree_->ReapDead(30s);
  ASSERT_EQ(reaped->size(), 1u);
  EXPECT_EQ((*reaped)[0].worker_id, 1u);
  EXPECT_THAT(tree_->InstanceIds(), ElementsAre("b"));  // a left with its last worker
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistryTreeTest, AdmitAndEvictBatches) {
  Register("a", 0);
  const auto keys = Keys(0, 100);
  BatchResult r = Admit("a", 0, "L1", 0, keys);
  EXPECT_EQ(r.outcome, BatchOutcome::kApplied);
  EXPECT_FALSE(r.expected_seq.has_value());  // the baseline
  EXPECT_EQ(r.keys_added, 100u);
  EXPECT_EQ(KeyCount("a", 0, "L1"), 100u);
  std::vector<ObjectKey> half(keys.begin(), keys.begin() + 50);
  r = Evict("a", 0, "L1", 1, half);
  EXPECT_EQ(r.keys_removed, 50u);
  EXPECT_EQ(r.expected_seq, 1u);
  EXPECT_EQ(KeyCount("a", 0, "L1"), 50u);
  EXPECT_EQ(tree_->TotalKeyCount(), 50u);
  EXPECT_FALSE(tree_->FindKv(keys[0]).has_value());
  EXPECT_TRUE(tree_->FindKv(keys[99]).has_value());
  // Evicting absent keys and re-admitting held ones change nothing.
  r = Evict("a", 0, "L1", 2, half);
  EXPECT_EQ(r.keys_removed, 0u);
  r = Admit("a", 0, "L1", 3, std::vector<ObjectKey>(keys.begin() + 50, keys.end()));
  EXPECT_EQ(r.keys_added, 0u);
  EXPECT_EQ(KeyCount("a", 0, "L1"), 50u);
  RegistryStats s = tree_->Stats();
  EXPECT_EQ(s.batches_applied, 4u);
  EXPECT_EQ(s.keys_admitted, 100u);
  EXPECT_EQ(s.keys_evicted, 50u);
  EXPECT_EQ(s.seq_gaps, 0u);
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistryTreeTest, MixedOpsApplyInOrder) {
  Register("a", 0);
  const auto keys = Keys(0, 3);
  std::vector<KvOp> ops = {{KvOpType::kAdmit, keys[0]}, {KvOpType::kEvict, keys[0]},
                           {KvOpType::kAdmit, keys[1]}, {KvOpType::kAdmit, keys[0]},
                           {KvOpType::kAdmit, keys[2]}, {KvOpType::kEvict, keys[2]}};
  auto r = tree_->ApplyOps({"a", 0}, "L1", 0, ops);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->keys_added, 4u);
  EXPECT_EQ(r->keys_removed, 2u);
  EXPECT_THAT(tree_->ListWorkerKeys({"a", 0}, "L1").value(),
              UnorderedElementsAreArray(Pick(keys, {0, 1})));
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistryTreeTest, BatchForUnknownWorkerIsDroppedAndCounted) {
  const auto keys = Keys(0, 3);
  EXPECT_EQ(tree_->Admit({"a", 0}, "L1", 0, keys).error().code(), StatusCode::kNotFound);
  Register("a", 0);
  EXPECT_EQ(tree_->Admit({"a", 1}, "L1", 0, keys).error().code(), StatusCode::kNotFound);
  EXPECT_EQ(tree_->Stats().unknown_worker_batches, 2u);
  EXPECT_EQ(tree_->TotalKeyCount(), 0u);
}

TEST_F(RegistryTreeTest, ContinuousSequencesHaveNoGapsAndAGapIsCountedButApplied) {
  Register("a", 0);
  const auto keys = Keys(0, 8);
  Admit("a", 0, "L1", 0, Pick(keys, {0, 1, 2}));
  Admit("a", 0, "L1", 1, Pick(keys, {3, 4, 5}));
  EXPECT_EQ(tree_->Stats().seq_gaps, 0u);
  EXPECT_FALSE(tree_->GetWorkerInfo({"a", 0})->needs_full_sync);
  BatchResult r = Admit("a", 0, "L1", 5, Pick(keys, {6, 7}));  // 2, 3 and 4 never came
  EXPECT_EQ(r.outcome, BatchOutcome::kAppliedAfterGap);
  EXPECT_EQ(r.expected_seq, 2u);
  EXPECT_EQ(KeyCount("a", 0, "L1"), 8u);
  EXPECT_EQ(tree_->Stats().seq_gaps, 1u);
  WorkerInfo info = tree_->GetWorkerInfo({"a", 0}).value();
  EXPECT_TRUE(info.needs_full_sync);
  EXPECT_EQ(info.seq_gaps, 1u);
  ASSERT_EQ(info.locations.size(), 1u);
  EXPECT_EQ(info.locations[0].last_seq, 5u);
  EXPECT_EQ(info.locations[0].full_sync_reason, "seq_gap");
  // Evict batches in sequence: no further gaps.
  Evict("a", 0, "L1", 6, Pick(keys, {0}));
  Evict("a", 0, "L1", 7, Pick(keys, {1}));
  EXPECT_EQ(tree_->Stats().seq_gaps, 1u);
}

TEST_F(RegistryTreeTest, FirstBatchSetsTheBaseline) {
  Register("a", 0);
  EXPECT_EQ(Admit("a", 0, "L1", 5, Keys(0, 1)).outcome, BatchOutcome::kApplied);
  EXPECT_EQ(Admit("a", 0, "L1", 6, Keys(1, 1)).outcome, BatchOutcome::kApplied);
  EXPECT_EQ(tree_->Stats().seq_gaps, 0u);
}

TEST_F(RegistryTreeTest, StaleBatchIsIgnoredAndCannotUndoNewerState) {
  Register("a", 0);
  const auto keys = Keys(0, 2);
  Admit("a", 0, "L1", 0, keys);
  Evict("a", 0, "L1", 1, Pick(keys, {0}));
  // The admit of seq 0 arrives again (a resend): applying it would resurrect key 0.
  BatchResult r = Admit("a", 0, "L1", 0, keys);
  EXPECT_EQ(r.outcome, BatchOutcome::kIgnoredStale);
  EXPECT_EQ(r.expected_seq, 2u);
  EXPECT_EQ(r.keys_added, 0u);
  EXPECT_FALSE(tree_->FindKv(keys[0]).has_value());
  EXPECT_EQ(tree_->Stats().stale_batches, 1u);
  WorkerInfo info = tree_->GetWorkerInfo({"a", 0}).value();
  EXPECT_EQ(info.locations[0].stale_batches, 1u);
  EXPECT_FALSE(info.needs_full_sync);  // a resend: counted only (registration ids catch restarts)
  EXPECT_EQ(info.locations[0].last_seq, 1u);
}

TEST_F(RegistryTreeTest, SequencesAreTrackedPerWorkerAndLocation) {
  Register("a", 0);
  Register("a", 1);
  const auto keys = Keys(0, 4);
  Admit("a", 0, "L1", 0, Pick(keys, {0}));
  Admit("a", 0, "fs", 0, Pick(keys, {0}));  // its own stream
  Admit("a", 1, "L1", 0, Pick(keys, {1}));
  Admit("a", 0, "L1", 1, Pick(keys, {2}));
  Admit("a", 0, "fs", 1, Pick(keys, {2}));
  EXPECT_EQ(tree_->Stats().seq_gaps, 0u);
  EXPECT_EQ(tree_->Stats().stale_batches, 0u);
}

TEST_F(RegistryTreeTest, FindKvExcludesAnInstanceAndFollowsADefinedOrder) {
  Register("b", 0);
  Register("a", 1);
  Register("a", 0);
  const auto key = Keys(0, 1);
  Admit("b", 0, "L1", 0, key);  // first admitted, but not first in order
  Admit("b", 0, "fs", 0, key);
  Admit("a", 1, "fs", 0, key);
  Admit("a", 1, "L1", 0, key);
  Admit("a", 0, "fs", 0, key);
  EXPECT_EQ(tree_->FindKv(key[0]), H("a", 0, "fs"));
  EXPECT_EQ(tree_->FindKv(key[0], "a"), H("b", 0, "L1"));
  EXPECT_EQ(tree_->FindKv(key[0], "b"), H("a", 0, "fs"));
  EXPECT_FALSE(tree_->FindKv(Keys(1, 1)[0]).has_value());
  // Every holder (five: four inline, one in the overflow), sorted.
  EXPECT_THAT(tree_->FindKvAll(key[0]),
              ElementsAre(H("a", 0, "fs"), H("a", 1, "L1"), H("a", 1, "fs"), H("b", 0, "L1"),
                          H("b", 0, "fs")));
  EXPECT_THAT(tree_->FindKvAll(key[0], "a"), ElementsAre(H("b", 0, "L1"), H("b", 0, "fs")));
  EXPECT_TRUE(tree_->FindKvAll(Keys(1, 1)[0]).empty());
  EXPECT_EQ(tree_->FindKvAll(key[0]).front(), *tree_->FindKv(key[0]));
  EXPECT_EQ(tree_->TotalKeyCount(), 1u);
  EXPECT_EQ(tree_->Stats().holders, 5u);
  // Removing holders from the middle keeps the rest (the overflowed one moves inline).
  Evict("a", 1, "L1", 1, key);
  EXPECT_THAT(tree_->FindKvAll(key[0]),
              ElementsAre(H("a", 0, "fs"), H("a", 1, "fs"), H("b", 0, "L1"), H("b", 0, "fs")));
  Evict("b", 0, "L1", 1, key);
  Evict("a", 0, "fs", 1, key);
  EXPECT_THAT(tree_->FindKvAll(key[0]), ElementsAre(H("a", 1, "fs"), H("b", 0, "fs")));
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistryTreeTest, FindKvWithWorkerInfoCountsTheLeadingRunOfOneWorker) {
  Register("req", 0);
  Register("a", 0, "tcp://a0:9");
  Register("b", 0, "tcp://b0:9");
  const auto keys = Keys(0, 4);
  Admit("req", 0, "L1", 0, keys);
  Admit("a", 0, "L1", 0, Pick(keys, {0, 1, 3}));  // run of 2
  Admit("b", 0, "L1", 0, Pick(keys, {0, 1, 2}));  // run of 3: the best
  auto match = tree_->FindKvWithWorkerInfo(keys, "req");
  ASSERT_TRUE(match.has_value());
  ASSERT_TRUE(match->has_value());
  EXPECT_EQ((*match)->holder.instance_id, "b");
  EXPECT_EQ((*match)->holder.location, "L1");
  EXPECT_EQ((*match)->holder.address, "tcp://b0:9");
  EXPECT_EQ((*match)->num_hit_chunks, 3u);
  auto only_a = tree_->FindKvWithWorkerInfo(Pick(keys, {3}), "req");
  ASSERT_TRUE(only_a->has_value());
  EXPECT_EQ((*only_a)->holder.instance_id, "a");
  EXPECT_EQ((*only_a)->num_hit_chunks, 1u);
  // The requester's own instance never answers.
  auto not_b = tree_->FindKvWithWorkerInfo(Pick(keys, {2}), "b");
  ASSERT_TRUE(not_b->has_value());
  EXPECT_EQ((*not_b)->holder.instance_id, "req");
  EXPECT_FALSE(tree_->FindKvWithWorkerInfo(Keys(10, 2), "req")->has_value());
  EXPECT_FALSE(tree_->FindKvWithWorkerInfo({}, "req")->has_value());
  // a now holds all four.
  Admit("a", 0, "L1", 1, Pick(keys, {2}));
  match = tree_->FindKvWithWorkerInfo(keys, "req");
  EXPECT_EQ((*match)->holder.instance_id, "a");
  EXPECT_EQ((*match)->num_hit_chunks, 4u);
}

TEST_F(RegistryTreeTest, PrefixLookupCreditsEveryInstanceContiguouslyFromChunkZero) {
  for (const char* inst : {"a", "b", "c"}) Register(inst, 0);
  const auto k = Keys(0, 4);
  EXPECT_TRUE(tree_->PrefixLookup(k).empty());  // miss everywhere
  Admit("a", 0, "L1", 0, Pick(k, {0, 1, 2}));
  Admit("b", 0, "L1", 0, Pick(k, {0, 1}));
  Admit("c", 0, "L1", 0, Pick(k, {1, 2}));  // no chunk 0: not credited
  EXPECT_THAT(tree_->PrefixLookup(k), ElementsAre(PrefixMatch{"a", 3}, PrefixMatch{"b", 2}));
  // b holds chunks 0 and 2: credit stops at its gap.
  Evict("b", 0, "L1", 1, Pick(k, {1}));
  Admit("b", 0, "L1", 2, Pick(k, {2}));
  EXPECT_THAT(tree_->PrefixLookup(k), ElementsAre(PrefixMatch{"a", 3}, PrefixMatch{"b", 1}));
  // The walk stops when nobody holds the next chunk (a's chunk 2 after a's gap is not seen).
  Evict("a", 0, "L1", 1, Pick(k, {1}));
  EXPECT_THAT(tree_->PrefixLookup(k), ElementsAre(PrefixMatch{"a", 1}, PrefixMatch{"b", 1}));
  EXPECT_TRUE(tree_->PrefixLookup({}).empty());
}

TEST_F(RegistryTreeTest, PrefixLookupCountsAnyWorkerAndLocationOfAnInstance) {
  Register("a", 0);
  Register("a", 1);
  const auto k = Keys(0, 3);
  Admit("a", 0, "L1", 0, Pick(k, {0}));
  Admit("a", 1, "fs", 0, Pick(k, {1}));
  Admit("a", 0, "fs", 0, Pick(k, {2}));
  Admit("a", 1, "L1", 0, Pick(k, {0, 2}));
  EXPECT_THAT(tree_->PrefixLookup(k), ElementsAre(PrefixMatch{"a", 3}));
}

TEST_F(RegistryTreeTest, LookupsHonourTheRankInTheKey) {
  Register("a", 0);
  Register("a", 1);
  std::vector<ObjectKey> rank0, rank1;
  for (uint64_t i = 0; i < 3; ++i) {
    rank0.push_back(WorkloadKey(i, keys::KvRank{2, 0}));
    rank1.push_back(WorkloadKey(i, keys::KvRank{2, 1}));
  }
  Admit("a", 0, "L1", 0, rank0);
  Admit("a", 1, "L1", 0, Pick(rank1, {0}));
  EXPECT_THAT(tree_->PrefixLookup(rank0), ElementsAre(PrefixMatch{"a", 3}));
  EXPECT_THAT(tree_->PrefixLookup(rank1), ElementsAre(PrefixMatch{"a", 1}));
  EXPECT_EQ(tree_->FindKv(rank1[0])->worker_id, 1u);
  EXPECT_EQ(tree_->FindKv(rank0[0])->worker_id, 0u);
}

TEST_F(RegistryTreeTest, ListWorkerKeysReturnsACopy) {
  Register("a", 0);
  const auto keys = Keys(0, 20);
  Admit("a", 0, "L1", 0, keys);
  auto listed = tree_->ListWorkerKeys({"a", 0}, "L1");
  ASSERT_TRUE(listed.has_value());
  EXPECT_THAT(*listed, UnorderedElementsAreArray(keys));
  Evict("a", 0, "L1", 1, keys);
  EXPECT_EQ(listed->size(), 20u);  // unaffected
  EXPECT_TRUE(tree_->ListWorkerKeys({"a", 0}, "never")->empty());
  EXPECT_EQ(tree_->ListWorkerKeys({"a", 7}, "L1").error().code(), StatusCode::kNotFound);
}

TEST_F(RegistryTreeTest, ClearWorkerAndClear) {
  Register("a", 0);
  Register("b", 0);
  const auto keys = Keys(0, 10);
  Admit("a", 0, "L1", 0, keys);
  Admit("a", 0, "fs", 0, keys);
  Admit("b", 0, "L1", 0, keys);
  EXPECT_EQ(tree_->ClearWorker({"a", 0}, "fs").value(), 10u);
  EXPECT_EQ(KeyCount("a", 0, "fs"), 0u);
  EXPECT_EQ(KeyCount("a", 0, "L1"), 10u);
  EXPECT_EQ(tree_->ClearWorker({"a", 0}, "unknown-location").value(), 0u);
  // A cleared location starts a new sequence baseline.
  EXPECT_EQ(Admit("a", 0, "fs", 0, keys).outcome, BatchOutcome::kApplied);
  EXPECT_EQ(tree_->ClearWorker({"a", 0}).value(), 20u);
  EXPECT_EQ(tree_->Clear().value(), 10u);
  EXPECT_EQ(tree_->TotalKeyCount(), 0u);
  EXPECT_EQ(tree_->Stats().holders, 0u);
  EXPECT_EQ(tree_->Stats().workers, 2u);  // registrations stay
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistryTreeTest, WorkerInfosSnapshotIsCachedUntilTheWorkerSetChanges) {
  Register("b", 0);
  Register("a", 1);
  Admit("a", 1, "L1", 0, Keys(0, 4));
  Admit("a", 1, "fs", 0, Keys(0, 2));
  auto infos = tree_->WorkerInfos(10s).value();
  ASSERT_EQ(infos->size(), 2u);
  EXPECT_EQ((*infos)[0].instance_id, "a");
  EXPECT_EQ((*infos)[0].total_keys, 6u);
  ASSERT_EQ((*infos)[0].locations.size(), 2u);
  EXPECT_EQ((*infos)[0].locations[0].location, "L1");
  EXPECT_EQ((*infos)[0].locations[0].keys, 4u);
  EXPECT_EQ((*infos)[0].locations[1].location, "fs");
  EXPECT_EQ((*infos)[0].locations[1].last_seq, 0u);
  Admit("a", 1, "L1", 1, Keys(4, 1));
  EXPECT_EQ(tree_->WorkerInfos(10s).value(), infos);  // served from the snapshot
  EXPECT_NE(tree_->WorkerInfos(Duration::zero()).value(), infos);
  infos = tree_->WorkerInfos(10s).value();
  clock_.Advance(11s);
  EXPECT_NE(tree_->WorkerInfos(10s).value(), infos);  // too old
  infos = tree_->WorkerInfos(10s).value();
  Register("c", 0);
  auto fresh = tree_->WorkerInfos(10s).value();  // a registration invalidates it at once
  EXPECT_EQ(fresh->size(), 3u);
  ASSERT_TRUE(tree_->DeregisterWorker({"c", 0}).has_value());
  EXPECT_EQ(tree_->WorkerInfos(10s).value()->size(), 2u);
}

TEST_F(RegistryTreeTest, LocationNamesAreValidatedAndBounded) {
  Register("a", 0);
  const auto key = Keys(0, 1);
  EXPECT_EQ(tree_->Admit({"a", 0}, "", 0, key).error().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(tree_->Admit({"a", 0}, std::string(kMaxLocationLength + 1, 'x'), 0, key).error().code(),
            StatusCode::kInvalidArgument);
  for (uint32_t i = 0; i < kMaxLocations; ++i) {
    ASSERT_TRUE(tree_->Admit({"a", 0}, "loc" + std::to_string(i), 0, key).has_value()) << i;
  }
  EXPECT_EQ(tree_->Admit({"a", 0}, "one-too-many", 0, key).error().code(),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(tree_->FindKvAll(key[0]).size(), kMaxLocations);
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistryTreeTest, MaxWorkersBoundsRegistrationsAndSlotsAreReused) {
  RegistryOptions o;
  o.max_workers = 2;
  Make(o);
  Register("a", 0);
  Register("a", 1);
  WorkerRegistration r = Registration("a", 2, DefaultAddress("a", 2));
  EXPECT_EQ(tree_->RegisterWorker(r).error().code(), StatusCode::kResourceExhausted);
  Admit("a", 0, "L1", 0, Keys(0, 3));
  ASSERT_TRUE(tree_->DeregisterWorker({"a", 0}).has_value());
  ASSERT_TRUE(tree_->RegisterWorker(r).has_value());  // reuses the freed slot
  Admit("a", 2, "L1", 0, Keys(0, 1));
  EXPECT_EQ(tree_->FindKvAll(Keys(0, 1)[0]), (std::vector<KvHolder>{H("a", 2, "L1")}));
  // Re-registration needs a spare slot while the old node is retired.
  WorkerRegistration again = Registration("a", 1, "", true);
  EXPECT_EQ(tree_->RegisterWorker(again).error().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistryTreeTest, MemoryIsReported) {
  Register("a", 0);
  Admit("a", 0, "L1", 0, Keys(0, 1000));
  RegistryMemory m = tree_->Memory();
  EXPECT_GT(m.index_table_bytes, 0u);
  EXPECT_GT(m.entry_bytes, 1000u * 56);
  EXPECT_GT(m.worker_set_bytes, 1000u * 4);
  EXPECT_EQ(m.total(), m.index_table_bytes + m.entry_bytes + m.overflow_bytes + m.worker_set_bytes);
}

}  // namespace
}  // namespace kvtier::cluster
