// RegistryTree: the full-sync state machine.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kvtier/cluster/registry_test_util.h"
#include "kvtier/cluster/registry_tree.h"

namespace kvtier::cluster {
namespace {

using namespace std::chrono_literals;
using ::testing::ElementsAre;
using ::testing::UnorderedElementsAreArray;

class RegistrySyncTest : public RegistryTestBase {
 protected:
  void SetUp() override {
    RegistryOptions o;
    o.full_sync_timeout = 60s;
    Make(o);
    Register("a", 0);
  }

  Status Start(const std::string& sync_id, uint32_t batches, uint64_t total = 0,
               const std::string& location = "L1") {
    return tree_->StartFullSync("a", 0, location, sync_id, total, batches);
  }
  Result<SyncBatchResult> Batch(const std::string& sync_id, uint32_t index,
                                const std::vector<ObjectKey>& keys,
                                const std::string& location = "L1") {
    return tree_->AddFullSyncBatch("a", 0, location, sync_id, index, keys);
  }
  Result<SyncEndResult> End(const std::string& sync_id, uint64_t total,
                            const std::string& location = "L1") {
    return tree_->EndFullSync("a", 0, location, sync_id, total);
  }
  FullSyncState State() { return tree_->GetSyncInfo("a", 0)->state; }
};

TEST_F(RegistrySyncTest, StartMarksSyncingAndClearsTheLocation) {
  Admit("a", 0, "L1", 0, Keys(0, 10));
  Admit("a", 0, "fs", 0, Keys(0, 10));
  EXPECT_EQ(State(), FullSyncState::kIdle);
  ASSERT_TRUE(Start("s1", 2, 20).ok());
  EXPECT_EQ(State(), FullSyncState::kSyncing);
  EXPECT_EQ(KeyCount("a", 0, "L1"), 0u);
  EXPECT_EQ(KeyCount("a", 0, "fs"), 10u);  // another location: untouched
  EXPECT_EQ(tree_->Stats().full_syncs_started, 1u);
  WorkerSyncInfo info = tree_->GetSyncInfo("a", 0).value();
  EXPECT_EQ(info.sync_id, "s1");
  EXPECT_EQ(info.location, "L1");
  EXPECT_EQ(info.start_time, clock_.Now());
  EXPECT_EQ(info.deadline, clock_.Now() + 60s);
  EXPECT_EQ(info.expected_total_keys, 20u);
  EXPECT_EQ(info.expected_batch_count, 2u);
  EXPECT_THAT(info.missing_batches, ElementsAre(0, 1));
  EXPECT_TRUE(tree_->GetWorkerInfo("a", 0)->needs_full_sync);
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistrySyncTest, StartIsValidated) {
  EXPECT_EQ(Start("", 1).code(), StatusCode::kInvalidArgument);
  RegistryOptions o;
  o.max_sync_batches = 10;
  Make(o);
  Register("a", 0);
  EXPECT_EQ(Start("s", 11).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(tree_->StartFullSync("a", 5, "L1", "s", 0, 1).code(), StatusCode::kNotFound);
}

TEST_F(RegistrySyncTest, AnotherSyncIdIsRejectedUntilTheFirstStalls) {
  ASSERT_TRUE(Start("r1", 2).ok());
  EXPECT_EQ(Start("r2", 2).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(Start("r1", 2, 0, "fs").code(), StatusCode::kInvalidArgument);  // id reused
  ASSERT_TRUE(Start("r1", 3).ok());  // the same id restarts the session
  EXPECT_EQ(tree_->GetSyncInfo("a", 0)->expected_batch_count, 3u);
  clock_.Advance(61s);  // r1 stalled past its deadline
  ASSERT_TRUE(Start("r3", 1).ok());
  EXPECT_EQ(tree_->GetSyncInfo("a", 0)->sync_id, "r3");
  RegistryStats s = tree_->Stats();
  EXPECT_EQ(s.full_syncs_started, 3u);
  EXPECT_EQ(s.full_syncs_failed, 1u);  // r1, replaced
}

TEST_F(RegistrySyncTest, BatchesAddKeysAndDuplicatesAreIgnored) {
  const auto keys = Keys(0, 15);
  ASSERT_TRUE(Start("s", 3, 15).ok());
  for (uint32_t b = 0; b < 3; ++b) {
    auto r = Batch("s", b, std::vector<ObjectKey>(keys.begin() + b * 5, keys.begin() + b * 5 + 5));
    ASSERT_TRUE(r.has_value());
    EXPECT_FALSE(r->duplicate);
    EXPECT_EQ(r->keys_added, 5u);
  }
  auto again = Batch("s", 1, std::vector<ObjectKey>(keys.begin() + 5, keys.begin() + 10));
  ASSERT_TRUE(again.has_value());
  EXPECT_TRUE(again->duplicate);
  WorkerSyncInfo info = tree_->GetSyncInfo("a", 0).value();
  EXPECT_EQ(info.received_batch_count, 3u);
  EXPECT_EQ(info.received_keys, 15u);  // the resend is not counted twice
  EXPECT_EQ(info.duplicate_batches, 1u);
  EXPECT_TRUE(info.missing_batches.empty());
  EXPECT_EQ(tree_->Stats().sync_batches_duplicate, 1u);
  EXPECT_THAT(tree_->ListWorkerKeys("a", 0, "L1").value(), UnorderedElementsAreArray(keys));
  auto end = End("s", 15);
  ASSERT_TRUE(end.has_value());
  EXPECT_EQ(end->state, FullSyncState::kCompleted);
  EXPECT_TRUE(end->key_count_matches);
  EXPECT_EQ(end->received_keys, 15u);
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistrySyncTest, BatchesOfNoSuchSyncAreRejected) {
  const auto keys = Keys(0, 2);
  EXPECT_EQ(Batch("s", 0, keys).error().code(), StatusCode::kFailedPrecondition);  // none
  ASSERT_TRUE(Start("s", 2).ok());
  EXPECT_EQ(Batch("other", 0, keys).error().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(Batch("s", 0, keys, "fs").error().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(Batch("s", 0, keys, "never-seen").error().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(Batch("s", 2, keys).error().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(tree_->Stats().sync_batches_rejected, 4u);
  EXPECT_EQ(KeyCount("a", 0, "L1"), 0u);
  EXPECT_EQ(tree_->AddFullSyncBatch("a", 9, "L1", "s", 0, keys).error().code(),
            StatusCode::kNotFound);
}

TEST_F(RegistrySyncTest, EndReportsMissingBatchesUntilTheyArrive) {
  const auto keys = Keys(0, 5);
  ASSERT_TRUE(Start("s", 5, 5).ok());
  ASSERT_TRUE(Batch("s", 0, Pick(keys, {0})).has_value());
  ASSERT_TRUE(Batch("s", 2, Pick(keys, {2})).has_value());
  auto end = End("s", 5);
  ASSERT_TRUE(end.has_value());
  EXPECT_EQ(end->state, FullSyncState::kSyncing);
  EXPECT_THAT(end->missing_batches, ElementsAre(1, 3, 4));
  EXPECT_THAT(tree_->GetSyncInfo("a", 0)->missing_batches, ElementsAre(1, 3, 4));
  EXPECT_EQ(State(), FullSyncState::kSyncing);
  // The worker resends them and ends again.
  for (uint32_t b : {1u, 3u, 4u}) ASSERT_TRUE(Batch("s", b, Pick(keys, {b})).has_value());
  end = End("s", 5);
  EXPECT_EQ(end->state, FullSyncState::kCompleted);
  EXPECT_TRUE(end->missing_batches.empty());
  EXPECT_TRUE(tree_->GetSyncInfo("a", 0)->missing_batches.empty());
  EXPECT_EQ(tree_->Stats().full_syncs_completed, 1u);
  EXPECT_FALSE(tree_->GetWorkerInfo("a", 0)->needs_full_sync);
  // A repeated end gives the same answer and counts nothing.
  EXPECT_EQ(End("s", 5)->state, FullSyncState::kCompleted);
  EXPECT_EQ(tree_->Stats().full_syncs_completed, 1u);
}

TEST_F(RegistrySyncTest, KeyCountMismatchIsReportedButCompletes) {
  ASSERT_TRUE(Start("s", 1, 3).ok());
  ASSERT_TRUE(Batch("s", 0, Keys(0, 2)).has_value());
  auto end = End("s", 3);
  EXPECT_EQ(end->state, FullSyncState::kCompleted);
  EXPECT_FALSE(end->key_count_matches);
  EXPECT_EQ(end->received_keys, 2u);
}

TEST_F(RegistrySyncTest, AnEmptySyncCompletesAtOnce) {
  Admit("a", 0, "L1", 0, Keys(0, 3));
  ASSERT_TRUE(Start("s", 0, 0).ok());
  EXPECT_EQ(End("s", 0)->state, FullSyncState::kCompleted);
  EXPECT_EQ(KeyCount("a", 0, "L1"), 0u);
}

TEST_F(RegistrySyncTest, EndOfNoSuchSyncIsRejected) {
  EXPECT_EQ(End("s", 0).error().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(Start("s", 1).ok());
  EXPECT_EQ(End("t", 0).error().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(End("s", 0, "fs").error().code(), StatusCode::kFailedPrecondition);
}

TEST_F(RegistrySyncTest, IncrementalBatchesAreDiscardedWhileTheLocationSyncs) {
  const auto keys = Keys(0, 6);
  Admit("a", 0, "L1", 0, Pick(keys, {0}));
  ASSERT_TRUE(Start("s", 1, 2).ok());
  BatchResult r = Admit("a", 0, "L1", 1, Pick(keys, {4}));
  EXPECT_EQ(r.outcome, BatchOutcome::kDiscardedSyncing);
  r = Evict("a", 0, "L1", 2, Pick(keys, {1}));
  EXPECT_EQ(r.outcome, BatchOutcome::kDiscardedSyncing);
  // Other locations keep their incremental stream.
  EXPECT_EQ(Admit("a", 0, "fs", 0, Pick(keys, {5})).outcome, BatchOutcome::kApplied);
  ASSERT_TRUE(Batch("s", 0, Pick(keys, {1, 2})).has_value());
  ASSERT_EQ(End("s", 2)->state, FullSyncState::kCompleted);
  EXPECT_THAT(tree_->ListWorkerKeys("a", 0, "L1").value(),
              UnorderedElementsAreArray(Pick(keys, {1, 2})));
  EXPECT_EQ(tree_->Stats().discarded_during_sync, 2u);
  // After the sync the next batch sets a new baseline, whatever its number.
  r = Admit("a", 0, "L1", 77, Pick(keys, {3}));
  EXPECT_EQ(r.outcome, BatchOutcome::kApplied);
  EXPECT_FALSE(r.expected_seq.has_value());
  EXPECT_EQ(Admit("a", 0, "L1", 78, Pick(keys, {4})).outcome, BatchOutcome::kApplied);
  EXPECT_EQ(KeyCount("a", 0, "L1"), 4u);
  EXPECT_EQ(tree_->Stats().seq_gaps, 0u);
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistrySyncTest, AStalledSyncTimesOutAndIsReported) {
  ASSERT_TRUE(Start("s", 3).ok());
  ASSERT_TRUE(Batch("s", 0, Keys(0, 2)).has_value());
  clock_.Advance(30s);
  ASSERT_TRUE(Batch("s", 1, Keys(2, 2)).has_value());  // activity moves the deadline
  clock_.Advance(45s);
  EXPECT_TRUE(tree_->ExpireSyncs()->empty());
  clock_.Advance(16s);
  auto expired = tree_->ExpireSyncs();
  ASSERT_TRUE(expired.has_value());
  ASSERT_EQ(expired->size(), 1u);
  EXPECT_EQ((*expired)[0].instance_id, "a");
  EXPECT_EQ((*expired)[0].worker_id, 0u);
  EXPECT_EQ((*expired)[0].location, "L1");
  EXPECT_EQ((*expired)[0].sync_id, "s");
  EXPECT_EQ((*expired)[0].missing_batches, 1u);
  EXPECT_EQ(State(), FullSyncState::kFailed);
  EXPECT_EQ(tree_->Stats().full_syncs_failed, 1u);
  EXPECT_TRUE(tree_->GetWorkerInfo("a", 0)->needs_full_sync);  // still: ask again
  EXPECT_TRUE(tree_->ExpireSyncs()->empty());                  // reported once
  EXPECT_EQ(Batch("s", 2, Keys(4, 1)).error().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(End("s", 5).error().code(), StatusCode::kFailedPrecondition);
  // The keys that did arrive stay (they were true at the snapshot); incremental batches flow
  // again, and a new sync is accepted.
  EXPECT_EQ(KeyCount("a", 0, "L1"), 4u);
  EXPECT_EQ(Admit("a", 0, "L1", 0, Keys(9, 1)).outcome, BatchOutcome::kApplied);
  ASSERT_TRUE(Start("s2", 1).ok());
  ASSERT_TRUE(Batch("s2", 0, Keys(0, 1)).has_value());
  EXPECT_EQ(End("s2", 1)->state, FullSyncState::kCompleted);
  EXPECT_FALSE(tree_->GetWorkerInfo("a", 0)->needs_full_sync);
}

TEST_F(RegistrySyncTest, AGapNeedsAFullSyncUntilOneCompletes) {
  Admit("a", 0, "L1", 0, Keys(0, 1));
  Admit("a", 0, "L1", 3, Keys(1, 1));
  WorkerInfo info = tree_->GetWorkerInfo("a", 0).value();
  ASSERT_TRUE(info.needs_full_sync);
  ASSERT_TRUE(Start("s", 1).ok());
  ASSERT_TRUE(Batch("s", 0, Keys(0, 2)).has_value());
  ASSERT_EQ(End("s", 2)->state, FullSyncState::kCompleted);
  info = tree_->GetWorkerInfo("a", 0).value();
  EXPECT_FALSE(info.needs_full_sync);
  EXPECT_EQ(info.seq_gaps, 1u);  // history stays counted
  ASSERT_TRUE(info.sync.has_value());
  EXPECT_EQ(info.sync->state, FullSyncState::kCompleted);
}

TEST_F(RegistrySyncTest, ReRegistrationResetsTheSyncState) {
  ASSERT_TRUE(Start("s", 2).ok());
  Register("a", 0);
  EXPECT_EQ(State(), FullSyncState::kIdle);
  EXPECT_EQ(Batch("s", 0, Keys(0, 1)).error().code(), StatusCode::kFailedPrecondition);
}

TEST_F(RegistrySyncTest, DeregistrationDuringASyncDropsItsKeys) {
  ASSERT_TRUE(Start("s", 2).ok());
  ASSERT_TRUE(Batch("s", 0, Keys(0, 5)).has_value());
  ASSERT_EQ(tree_->DeregisterWorker("a", 0)->keys_removed, 5u);
  EXPECT_EQ(tree_->TotalKeyCount(), 0u);
  EXPECT_EQ(Batch("s", 1, Keys(5, 5)).error().code(), StatusCode::kNotFound);
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

}  // namespace
}  // namespace kvtier::cluster
