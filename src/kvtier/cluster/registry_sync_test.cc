// RegistryTree: the full-sync state machine of a location.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kvtier/cluster/registry_test_util.h"
#include "kvtier/cluster/registry_tree.h"

namespace kvtier::cluster {
namespace {

using namespace std::chrono_literals;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAreArray;

class RegistrySyncTest : public RegistryTestBase {
 protected:
  void SetUp() override {
    RegistryOptions o;
    o.full_sync_timeout = 60s;
    o.max_sync_evictions = 8;
    Make(o);
    Register("a", 0);
  }

  Status Start(uint64_t sync_id, uint32_t batches, uint64_t total = 0,
               std::optional<uint64_t> base_seq = std::nullopt,
               const std::string& location = "L1") {
    return tree_->StartFullSync({"a", 0}, location, sync_id, base_seq, total, batches);
  }
  Result<SyncBatchResult> Batch(uint64_t sync_id, uint32_t index,
                                const std::vector<ObjectKey>& keys,
                                const std::string& location = "L1") {
    return tree_->AddFullSyncBatch({"a", 0}, location, sync_id, index, keys);
  }
  Result<SyncEndResult> End(uint64_t sync_id, uint64_t total, const std::string& location = "L1") {
    return tree_->EndFullSync({"a", 0}, location, sync_id, total);
  }
  WorkerSyncInfo SyncStatus(uint64_t sync_id, const std::string& location = "L1") {
    return tree_->FullSyncStatus({"a", 0}, location, sync_id).value();
  }
  std::vector<FullSyncRequest> Heartbeat() { return tree_->Heartbeat({"a", 0}).value(); }
  std::vector<ObjectKey> List(const std::string& location = "L1") {
    return tree_->ListWorkerKeys({"a", 0}, location).value();
  }
};

TEST_F(RegistrySyncTest, StartClearsTheLocationAndSetsItsBaseSequence) {
  Admit("a", 0, "L1", 1, Keys(0, 10));
  Admit("a", 0, "fs", 1, Keys(0, 10));
  EXPECT_EQ(SyncStatus(7).state, FullSyncState::kIdle);
  ASSERT_TRUE(Start(7, 2, 20, /*base_seq=*/40).ok());
  WorkerSyncInfo info = SyncStatus(7);
  EXPECT_EQ(info.state, FullSyncState::kSyncing);
  EXPECT_EQ(info.sync_id, 7u);
  EXPECT_EQ(info.location, "L1");
  EXPECT_EQ(info.base_seq, 40u);
  EXPECT_EQ(info.start_time, clock_.Now());
  EXPECT_EQ(info.deadline, clock_.Now() + 60s);
  EXPECT_EQ(info.expected_total_keys, 20u);
  EXPECT_THAT(info.missing_batches, ElementsAre(0, 1));
  EXPECT_EQ(KeyCount("a", 0, "L1"), 0u);
  EXPECT_EQ(KeyCount("a", 0, "fs"), 10u);  // another location: untouched
  EXPECT_EQ(tree_->Stats().full_syncs_started, 1u);
  // The location's events go on from base_seq + 1.
  BatchResult r = Admit("a", 0, "L1", 41, Keys(20, 1));
  EXPECT_EQ(r.outcome, BatchOutcome::kApplied);
  EXPECT_EQ(r.expected_seq, 41u);
  EXPECT_EQ(Admit("a", 0, "L1", 40, Keys(21, 1)).outcome, BatchOutcome::kIgnoredStale);
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistrySyncTest, StartIsValidated) {
  EXPECT_EQ(Start(0, 1).code(), StatusCode::kInvalidArgument);
  RegistryOptions o;
  o.max_sync_batches = 10;
  Make(o);
  Register("a", 0);
  EXPECT_EQ(Start(1, 11).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(tree_->StartFullSync({"a", 5}, "L1", 1, std::nullopt, 0, 1).code(),
            StatusCode::kNotFound);
}

TEST_F(RegistrySyncTest, AStartAbandonsTheRunningSyncOfTheLocation) {
  ASSERT_TRUE(Start(1, 2, 4).ok());
  ASSERT_TRUE(Batch(1, 0, Keys(0, 2)).has_value());
  ASSERT_TRUE(Start(2, 1, 1).ok());  // a new sync id: the first is gone, and its keys with it
  EXPECT_EQ(KeyCount("a", 0, "L1"), 0u);
  EXPECT_EQ(SyncStatus(1).state, FullSyncState::kIdle);  // unknown now: superseded
  EXPECT_EQ(Batch(1, 1, Keys(2, 2)).error().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(Start(2, 3, 3).ok());  // the same id again restarts it
  EXPECT_EQ(SyncStatus(2).expected_batch_count, 3u);
  RegistryStats s = tree_->Stats();
  EXPECT_EQ(s.full_syncs_started, 3u);
  EXPECT_EQ(s.full_syncs_superseded, 2u);
  EXPECT_EQ(s.sync_batches_rejected, 1u);
}

TEST_F(RegistrySyncTest, BatchesAddKeysOnceEach) {
  const auto keys = Keys(0, 15);
  ASSERT_TRUE(Start(1, 3, 15).ok());
  for (uint32_t b : {2u, 0u, 1u}) {  // any order
    auto r = Batch(1, b, std::vector<ObjectKey>(keys.begin() + b * 5, keys.begin() + b * 5 + 5));
    ASSERT_TRUE(r.has_value());
    EXPECT_FALSE(r->duplicate);
    EXPECT_EQ(r->keys_added, 5u);
  }
  auto again = Batch(1, 1, std::vector<ObjectKey>(keys.begin() + 5, keys.begin() + 10));
  ASSERT_TRUE(again.has_value());
  EXPECT_TRUE(again->duplicate);
  WorkerSyncInfo info = SyncStatus(1);
  EXPECT_EQ(info.received_batch_count, 3u);
  EXPECT_EQ(info.received_keys, 15u);  // the resend is not counted twice
  EXPECT_EQ(info.duplicate_batches, 1u);
  EXPECT_THAT(info.missing_batches, IsEmpty());
  EXPECT_EQ(tree_->Stats().sync_batches_duplicate, 1u);
  EXPECT_THAT(List(), UnorderedElementsAreArray(keys));
  auto end = End(1, 15);
  ASSERT_TRUE(end.has_value());
  EXPECT_EQ(end->state, FullSyncState::kCompleted);
  EXPECT_EQ(end->received_keys, 15u);
  EXPECT_EQ(tree_->Stats().full_syncs_completed, 1u);
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistrySyncTest, BatchesOfNoRunningSyncAreRejected) {
  const auto keys = Keys(0, 2);
  EXPECT_EQ(Batch(1, 0, keys).error().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(Start(1, 2).ok());
  EXPECT_EQ(Batch(2, 0, keys).error().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(Batch(1, 0, keys, "fs").error().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(Batch(1, 0, keys, "never-seen").error().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(Batch(1, 2, keys).error().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(tree_->Stats().sync_batches_rejected, 5u);
  EXPECT_EQ(KeyCount("a", 0, "L1"), 0u);
  EXPECT_EQ(tree_->AddFullSyncBatch({"a", 9}, "L1", 1, 0, keys).error().code(),
            StatusCode::kNotFound);
}

TEST_F(RegistrySyncTest, EndListsMissingBatchesUntilTheyArrive) {
  const auto keys = Keys(0, 5);
  ASSERT_TRUE(Start(1, 5, 5).ok());
  ASSERT_TRUE(Batch(1, 0, Pick(keys, {0})).has_value());
  ASSERT_TRUE(Batch(1, 2, Pick(keys, {2})).has_value());
  EXPECT_FALSE(SyncStatus(1).end_received);
  auto end = End(1, 5);
  ASSERT_TRUE(end.has_value());
  EXPECT_EQ(end->state, FullSyncState::kSyncing);
  EXPECT_THAT(end->missing_batches, ElementsAre(1, 3, 4));
  WorkerSyncInfo info = SyncStatus(1);
  EXPECT_TRUE(info.end_received);
  EXPECT_THAT(info.missing_batches, ElementsAre(1, 3, 4));
  for (uint32_t b : {1u, 3u, 4u}) ASSERT_TRUE(Batch(1, b, Pick(keys, {b})).has_value());
  end = End(1, 5);
  EXPECT_EQ(end->state, FullSyncState::kCompleted);
  EXPECT_THAT(end->missing_batches, IsEmpty());
  EXPECT_EQ(tree_->Stats().full_syncs_completed, 1u);
  // A repeated end gives the same answer and counts nothing.
  EXPECT_EQ(End(1, 5)->state, FullSyncState::kCompleted);
  EXPECT_EQ(tree_->Stats().full_syncs_completed, 1u);
  EXPECT_EQ(End(2, 5).error().code(), StatusCode::kFailedPrecondition);  // not this sync
}

TEST_F(RegistrySyncTest, KeysThatDoNotAddUpFailTheSync) {
  ASSERT_TRUE(Start(1, 1, 3).ok());
  ASSERT_TRUE(Batch(1, 0, Keys(0, 2)).has_value());
  auto end = End(1, 3);
  EXPECT_EQ(end->state, FullSyncState::kFailed);
  EXPECT_EQ(end->failure_reason, "key_count_mismatch");
  EXPECT_EQ(end->received_keys, 2u);
  EXPECT_EQ(End(1, 3)->state, FullSyncState::kFailed);  // repeated: same answer
  // Start and end that disagree fail too.
  ASSERT_TRUE(Start(2, 1, 2).ok());
  ASSERT_TRUE(Batch(2, 0, Keys(0, 2)).has_value());
  EXPECT_EQ(End(2, 3)->failure_reason, "key_count_mismatch");
  EXPECT_EQ(tree_->Stats().full_syncs_failed, 2u);
}

TEST_F(RegistrySyncTest, AnEmptySyncCompletesAtOnce) {
  Admit("a", 0, "L1", 1, Keys(0, 3));
  ASSERT_TRUE(Start(1, 0, 0).ok());
  EXPECT_EQ(End(1, 0)->state, FullSyncState::kCompleted);
  EXPECT_EQ(KeyCount("a", 0, "L1"), 0u);
}

TEST_F(RegistrySyncTest, EventsDuringASyncApplyAndItsBatchesNeverUndoThem) {
  const auto k = Keys(0, 6);
  ASSERT_TRUE(Start(1, 2, 4, /*base_seq=*/10).ok());
  // The snapshot (batches) holds k0..k3. Meanwhile: k0 evicted, k4 admitted, k1 evicted and
  // admitted again, k5 admitted and evicted.
  Evict("a", 0, "L1", 11, Pick(k, {0}));
  Admit("a", 0, "L1", 12, Pick(k, {4, 1}));
  Evict("a", 0, "L1", 13, Pick(k, {1}));
  Admit("a", 0, "L1", 14, Pick(k, {1, 5}));
  Evict("a", 0, "L1", 15, Pick(k, {5}));
  EXPECT_EQ(SyncStatus(1).evicted_during_sync, 2u);  // k0 and k5
  auto first = Batch(1, 0, Pick(k, {0, 1}));
  EXPECT_EQ(first->keys_skipped, 1u);  // k0: evicted after the snapshot
  EXPECT_EQ(first->keys_added, 0u);    // k1: already present
  auto second = Batch(1, 1, Pick(k, {2, 3}));
  EXPECT_EQ(second->keys_added, 2u);
  ASSERT_EQ(End(1, 4)->state, FullSyncState::kCompleted);
  EXPECT_THAT(List(), UnorderedElementsAreArray(Pick(k, {1, 2, 3, 4})));
  EXPECT_EQ(SyncStatus(1).evicted_during_sync, 0u);  // forgotten once complete
  // Events went on in sequence: no gap, nothing stale.
  EXPECT_EQ(tree_->Stats().seq_gaps, 0u);
  EXPECT_EQ(tree_->Stats().stale_batches, 0u);
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistrySyncTest, AGapDuringASyncFailsIt) {
  ASSERT_TRUE(Start(1, 2, 2, /*base_seq=*/5).ok());
  BatchResult r = Admit("a", 0, "L1", 8, Keys(0, 1));  // 6 and 7 lost
  EXPECT_EQ(r.outcome, BatchOutcome::kAppliedAfterGap);
  EXPECT_TRUE(r.failed_sync);
  WorkerSyncInfo info = SyncStatus(1);
  EXPECT_EQ(info.state, FullSyncState::kFailed);
  EXPECT_EQ(info.failure_reason, "seq_gap");
  EXPECT_EQ(Batch(1, 0, Keys(1, 1)).error().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(Heartbeat(), ElementsAre(FullSyncRequest{"L1", "sync_failed"}));
  EXPECT_EQ(tree_->Stats().full_syncs_failed, 1u);
}

TEST_F(RegistrySyncTest, TooManyEvictionsToRememberFailTheSync) {
  ASSERT_TRUE(Start(1, 1, 1, /*base_seq=*/0).ok());
  BatchResult r = Evict("a", 0, "L1", 1, Keys(0, 8));  // max_sync_evictions = 8: fits
  EXPECT_FALSE(r.failed_sync);
  r = Evict("a", 0, "L1", 2, Keys(8, 1));
  EXPECT_TRUE(r.failed_sync);
  EXPECT_EQ(SyncStatus(1).failure_reason, "sync_evictions_overflow");
  EXPECT_EQ(SyncStatus(1).evicted_during_sync, 0u);  // released
}

TEST_F(RegistrySyncTest, AStalledSyncTimesOutAndIsReported) {
  ASSERT_TRUE(Start(1, 3, 5).ok());
  ASSERT_TRUE(Batch(1, 0, Keys(0, 2)).has_value());
  clock_.Advance(50s);
  (void)SyncStatus(1);  // a status poll is activity
  clock_.Advance(50s);
  ASSERT_TRUE(Batch(1, 1, Keys(2, 2)).has_value());
  clock_.Advance(60s);
  EXPECT_THAT(tree_->ExpireSyncs().value(), IsEmpty());
  clock_.Advance(1s);
  auto expired = tree_->ExpireSyncs();
  ASSERT_TRUE(expired.has_value());
  ASSERT_EQ(expired->size(), 1u);
  EXPECT_EQ((*expired)[0].instance_id, "a");
  EXPECT_EQ((*expired)[0].worker_id, 0u);
  EXPECT_EQ((*expired)[0].location, "L1");
  EXPECT_EQ((*expired)[0].sync_id, 1u);
  EXPECT_EQ((*expired)[0].missing_batches, 1u);
  EXPECT_EQ(SyncStatus(1).state, FullSyncState::kFailed);
  EXPECT_EQ(SyncStatus(1).failure_reason, "timeout");
  EXPECT_EQ(tree_->Stats().full_syncs_failed, 1u);
  EXPECT_THAT(tree_->ExpireSyncs().value(), IsEmpty());  // reported once
  EXPECT_EQ(Batch(1, 2, Keys(4, 1)).error().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(End(1, 5)->state, FullSyncState::kFailed);
  // The keys that arrived stay; the next heartbeat asks for a new sync, which replaces them.
  EXPECT_EQ(KeyCount("a", 0, "L1"), 4u);
  EXPECT_THAT(Heartbeat(), ElementsAre(FullSyncRequest{"L1", "sync_failed"}));
  EXPECT_THAT(Heartbeat(), IsEmpty());  // asked once
  ASSERT_TRUE(Start(2, 1, 1).ok());
  ASSERT_TRUE(Batch(2, 0, Keys(0, 1)).has_value());
  EXPECT_EQ(End(2, 1)->state, FullSyncState::kCompleted);
  EXPECT_FALSE(tree_->GetWorkerInfo({"a", 0})->needs_full_sync);
  EXPECT_EQ(KeyCount("a", 0, "L1"), 1u);
}

TEST_F(RegistrySyncTest, WorkerInfoShowsEachLocationsSync) {
  ASSERT_TRUE(Start(3, 2, 0, std::nullopt, "fs").ok());
  WorkerInfo info = tree_->GetWorkerInfo({"a", 0}).value();
  ASSERT_EQ(info.locations.size(), 1u);
  EXPECT_EQ(info.locations[0].location, "fs");
  EXPECT_EQ(info.locations[0].sync.state, FullSyncState::kSyncing);
  EXPECT_EQ(info.locations[0].sync.sync_id, 3u);
  EXPECT_FALSE(info.locations[0].last_seq.has_value());  // no base: the next event sets it
}

TEST_F(RegistrySyncTest, ReRegistrationResetsTheSyncState) {
  ASSERT_TRUE(Start(1, 2).ok());
  Register("a", 0);
  EXPECT_EQ(SyncStatus(1).state, FullSyncState::kIdle);
  EXPECT_EQ(Batch(1, 0, Keys(0, 1)).error().code(), StatusCode::kFailedPrecondition);
}

TEST_F(RegistrySyncTest, DeregistrationDuringASyncDropsItsKeys) {
  ASSERT_TRUE(Start(1, 2, 10).ok());
  ASSERT_TRUE(Batch(1, 0, Keys(0, 5)).has_value());
  ASSERT_EQ(tree_->DeregisterWorker({"a", 0})->keys_removed, 5u);
  EXPECT_EQ(tree_->TotalKeyCount(), 0u);
  EXPECT_EQ(Batch(1, 1, Keys(5, 5)).error().code(), StatusCode::kNotFound);
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

}  // namespace
}  // namespace kvtier::cluster
