// RegistryTree: what the controller protocol (docs/controller.md) needs of it: registration
// ids, heartbeat reports and full-sync requests, multi-rank prefix lookups.
#include <set>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kvtier/cluster/registry_test_util.h"
#include "kvtier/cluster/registry_tree.h"

namespace kvtier::cluster {
namespace {

using namespace std::chrono_literals;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

using RegistryProtocolTest = RegistryTestBase;

TEST_F(RegistryProtocolTest, RegistrationIdsAreUniqueAndNonzero) {
  std::set<uint64_t> ids;
  for (int i = 0; i < 100; ++i) ids.insert(Register("a", static_cast<WorkerId>(i % 3)));
  EXPECT_EQ(ids.size(), 100u);
  EXPECT_FALSE(ids.contains(0));
  EXPECT_EQ(tree_->Stats().workers, 3u);
}

TEST_F(RegistryProtocolTest, MessagesOfAReplacedRegistrationAreRefused) {
  const uint64_t old_id = Register("a", 0);
  const uint64_t new_id = Register("a", 0);  // the worker restarted and registered again
  const auto keys = Keys(0, 3);
  const Origin stale{"a", 0, old_id};
  const Origin current{"a", 0, new_id};
  EXPECT_EQ(tree_->Admit(stale, "L1", 1, keys).error().code(), StatusCode::kNotFound);
  EXPECT_EQ(tree_->Stats().unknown_worker_batches, 1u);
  EXPECT_EQ(tree_->Heartbeat(stale).error().code(), StatusCode::kNotFound);
  EXPECT_EQ(tree_->StartFullSync(stale, "L1", 1, 0, 0, 0).code(), StatusCode::kNotFound);
  // The old registration's DEREGISTER must not remove its successor.
  EXPECT_EQ(tree_->DeregisterWorker(stale).error().code(), StatusCode::kNotFound);
  ASSERT_TRUE(tree_->Admit(current, "L1", 1, keys).has_value());
  EXPECT_EQ(tree_->GetWorkerInfo(current)->registration_id, new_id);
  EXPECT_EQ(tree_->GetWorkerInfo({"a", 0})->total_keys, 3u);  // 0 matches the current one
  ASSERT_TRUE(tree_->DeregisterWorker(current).has_value());
  EXPECT_EQ(tree_->Stats().workers, 0u);
}

TEST_F(RegistryProtocolTest, RegisteredLocationsAndVersionAreListed) {
  WorkerRegistration r;
  r.instance_id = "a";
  r.address = "tcp://a:1";
  r.locations = {"fs", "L1"};
  r.software_version = "kvtier 0.4.0";
  ASSERT_TRUE(tree_->RegisterWorker(r).has_value());
  WorkerInfo info = tree_->GetWorkerInfo({"a", 0}).value();
  EXPECT_EQ(info.software_version, "kvtier 0.4.0");
  ASSERT_EQ(info.locations.size(), 2u);
  EXPECT_EQ(info.locations[0].location, "L1");
  EXPECT_EQ(info.locations[1].location, "fs");
  EXPECT_FALSE(info.locations[0].last_seq.has_value());
  r.locations.assign(kMaxLocationsPerWorker + 1, "x");
  EXPECT_EQ(tree_->RegisterWorker(r).error().code(), StatusCode::kInvalidArgument);
  r.locations = {""};
  EXPECT_EQ(tree_->RegisterWorker(r).error().code(), StatusCode::kInvalidArgument);
}

TEST_F(RegistryProtocolTest, AGapEarnsOneFullSyncRequest) {
  Register("a", 0);
  Admit("a", 0, "L1", 1, Keys(0, 1));
  Admit("a", 0, "L1", 4, Keys(1, 1));
  EXPECT_THAT(tree_->Heartbeat({"a", 0}).value(), ElementsAre(FullSyncRequest{"L1", "seq_gap"}));
  Admit("a", 0, "L1", 9, Keys(2, 1));  // another gap: already asked
  EXPECT_THAT(tree_->Heartbeat({"a", 0}).value(), IsEmpty());
  WorkerInfo info = tree_->GetWorkerInfo({"a", 0}).value();
  EXPECT_EQ(info.locations[0].full_sync_reason, "seq_gap");
  EXPECT_TRUE(info.locations[0].full_sync_requested);
  EXPECT_EQ(tree_->Stats().full_sync_requests, 1u);
  // Not while it syncs; a new request only after the next start.
  ASSERT_TRUE(tree_->StartFullSync({"a", 0}, "L1", 1, 9, 0, 0).ok());
  EXPECT_FALSE(tree_->GetWorkerInfo({"a", 0})->needs_full_sync);
  Admit("a", 0, "L1", 12, Keys(3, 1));  // a gap during the sync: it fails
  EXPECT_THAT(tree_->Heartbeat({"a", 0}).value(),
              ElementsAre(FullSyncRequest{"L1", "sync_failed"}));
}

TEST_F(RegistryProtocolTest, HeartbeatsRevealLostTailEvents) {
  Register("a", 0);
  Admit("a", 0, "L1", 1, Keys(0, 2));
  // The worker sent seq 2 too, but it never arrived (and nothing came after it).
  const LocationReport report{"L1", 2, 3};
  EXPECT_THAT(tree_->Heartbeat({"a", 0}, {&report, 1}).value(), IsEmpty());  // maybe in flight
  EXPECT_THAT(tree_->Heartbeat({"a", 0}, {&report, 1}).value(),
              ElementsAre(FullSyncRequest{"L1", "lost_events"}));
  EXPECT_EQ(tree_->Stats().lost_events, 1u);
}

TEST_F(RegistryProtocolTest, HeartbeatsInStepMustAgreeOnTheKeyCount) {
  Register("a", 0);
  Admit("a", 0, "L1", 1, Keys(0, 2));
  const LocationReport agree{"L1", 1, 2};
  EXPECT_THAT(tree_->Heartbeat({"a", 0}, {&agree, 1}).value(), IsEmpty());
  const LocationReport ahead{"L1", 2, 7};  // the worker is ahead: counts are not comparable
  EXPECT_THAT(tree_->Heartbeat({"a", 0}, {&ahead, 1}).value(), IsEmpty());
  Admit("a", 0, "L1", 2, Keys(2, 1));
  const LocationReport differ{"L1", 2, 4};
  EXPECT_THAT(tree_->Heartbeat({"a", 0}, {&differ, 1}).value(),
              ElementsAre(FullSyncRequest{"L1", "key_count_mismatch"}));
  EXPECT_EQ(tree_->Stats().key_count_mismatches, 1u);
  EXPECT_EQ(tree_->Stats().lost_events, 0u);
}

TEST_F(RegistryProtocolTest, ClearedLocationsAreAskedToResync) {
  Register("a", 0);
  Admit("a", 0, "L1", 1, Keys(0, 2));
  Admit("a", 0, "fs", 1, Keys(0, 2));
  EXPECT_EQ(tree_->ClearWorker({"a", 0}, "fs").value(), 2u);
  EXPECT_THAT(tree_->Heartbeat({"a", 0}).value(), ElementsAre(FullSyncRequest{"fs", "cleared"}));
  EXPECT_EQ(tree_->Clear().value(), 2u);
  EXPECT_THAT(tree_->Heartbeat({"a", 0}).value(), ElementsAre(FullSyncRequest{"L1", "cleared"}));
}

TEST_F(RegistryProtocolTest, PrefixLookupOverEveryRankOfAChunk) {
  Register("a", 0);
  Register("a", 1);
  Register("b", 0);
  // Chunks 0..2, world size 2: keys chunk-major (c0r0, c0r1, c1r0, ...).
  std::vector<ObjectKey> keys;
  for (uint64_t c = 0; c < 3; ++c) {
    for (uint16_t r = 0; r < 2; ++r) keys.push_back(WorkloadKey(c, keys::KvRank{2, r}));
  }
  Admit("a", 0, "L1", 1, Pick(keys, {0, 2, 4}));  // rank 0 of every chunk
  Admit("a", 1, "fs", 1, Pick(keys, {1, 3}));     // rank 1 of chunks 0, 1
  Admit("b", 0, "L1", 1, Pick(keys, {0, 1, 2}));  // chunk 0, and rank 0 of chunk 1
  EXPECT_THAT(tree_->PrefixLookup(keys, 2), ElementsAre(PrefixMatch{"a", 2}, PrefixMatch{"b", 1}));
  EXPECT_THAT(tree_->PrefixLookup(keys, 2, "a"), ElementsAre(PrefixMatch{"b", 1}));
  EXPECT_THAT(tree_->PrefixLookup(keys, 1), ElementsAre(PrefixMatch{"a", 5}, PrefixMatch{"b", 3}));
  EXPECT_THAT(tree_->PrefixLookup(std::span(keys).first(1), 2), IsEmpty());  // no whole chunk
  EXPECT_THAT(tree_->PrefixLookup(keys, 0), IsEmpty());
}

TEST_F(RegistryProtocolTest, LookupResultsOutliveLaterChanges) {
  Register("a", 0);
  Admit("a", 0, "L1", 1, Keys(0, 1));
  const KvHolder holder = tree_->FindKv(Keys(0, 1)[0]).value();
  const std::vector<PrefixMatch> prefix = tree_->PrefixLookup(Keys(0, 1));
  ASSERT_TRUE(tree_->DeregisterInstance("a").has_value());
  Register("a", 0, "tcp://elsewhere:1");  // a new identity; the old one's strings remain
  EXPECT_EQ(holder.instance_id, "a");
  EXPECT_EQ(holder.address, DefaultAddress("a", 0));
  EXPECT_EQ(holder.location, "L1");
  EXPECT_EQ(prefix[0].instance_id, "a");
}

}  // namespace
}  // namespace kvtier::cluster
