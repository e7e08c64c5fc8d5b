// ControllerCore without sockets, on a FakeClock: registration, events, lookups, sequence
// gaps, tail loss, full syncs, reaping, clearing.
#include "kvtier/controller/controller_core.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kvtier/controller/controller_test_util.h"

namespace kvtier::controller {
namespace {

using namespace std::chrono_literals;
using testing::Admit;
using testing::As;
using testing::AsError;
using ::testing::ElementsAre;
using testing::Evict;
using testing::FullSyncs;
using testing::Heartbeat;
using ::testing::IsEmpty;
using testing::Keys;
using testing::Lookup;
using testing::MakeHash;
using testing::MakeHashes;
using testing::Registration;

class ControllerCoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    options_.heartbeat_interval = 1s;
    options_.worker_timeout = 3s;
    options_.sync_timeout = 10s;
    options_.clock = &clock_;
    auto core = ControllerCore::Create(options_);
    ASSERT_TRUE(core.has_value()) << core.error().ToString();
    core_ = std::move(*core);
  }

  Origin Register(const std::string& instance, uint32_t worker = 0, const std::string& address = "",
                  std::vector<std::string> locations = {"L1"}) {
    auto reply = As<RegisterReply>(
        core_->HandleRequest(Registration(instance, worker, address, std::move(locations))));
    EXPECT_NE(reply.registration_id, 0u);
    return Origin{instance, worker, reply.registration_id};
  }

  HeartbeatReply Beat(const Origin& o, std::vector<LocationReport> reports = {}) {
    return As<HeartbeatReply>(core_->HandleRequest(Heartbeat(o, std::move(reports))));
  }

  std::vector<LookupMatch> Matches(const LookupRequest& r) {
    return As<LookupReply>(core_->HandleRequest(r)).matches;
  }

  FullSyncStatusReply Status(const Origin& o, uint64_t sync_id, const std::string& loc = "L1") {
    return As<FullSyncStatusReply>(core_->HandleRequest(FullSyncStatusRequest{o, loc, sync_id}));
  }

  uint64_t Dropped(DropReason reason) {
    return core_->counters().events_dropped[static_cast<size_t>(reason)].load();
  }

  FakeClock clock_;
  ControllerOptions options_;
  std::unique_ptr<ControllerCore> core_;
};

TEST_F(ControllerCoreTest, RegisterAnswersSettingsAndPingTheEpoch) {
  auto reply = As<RegisterReply>(core_->HandleRequest(Registration("node-a")));
  EXPECT_NE(reply.registration_id, 0u);
  EXPECT_EQ(reply.controller_epoch, core_->epoch());
  EXPECT_NE(core_->epoch(), 0u);
  EXPECT_EQ(reply.heartbeat_interval_ms, 1000u);
  EXPECT_EQ(reply.worker_timeout_ms, 3000u);
  EXPECT_EQ(reply.max_keys_per_message, options_.max_keys_per_message);
  EXPECT_EQ(As<PingReply>(core_->HandleRequest(PingRequest{})).controller_epoch, core_->epoch());
  auto again = As<RegisterReply>(core_->HandleRequest(Registration("node-a")));
  EXPECT_NE(again.registration_id, reply.registration_id);
}

TEST_F(ControllerCoreTest, RegisterRefusesAnotherHashOrChunkSize) {
  RegisterRequest r = Registration("node-a");
  r.hash_algorithm = "xxh3_128";
  EXPECT_EQ(AsError(core_->HandleRequest(r)).code, StatusCode::kFailedPrecondition);
  r = Registration("node-a");
  r.chunk_size = 128;
  EXPECT_EQ(AsError(core_->HandleRequest(r)).code, StatusCode::kFailedPrecondition);
  EXPECT_EQ(core_->counters().registrations_refused.load(), 2u);
  EXPECT_THAT(As<WorkersReply>(core_->HandleRequest(WorkersRequest{})).workers, IsEmpty());
}

TEST_F(ControllerCoreTest, AdmitsAreVisibleToLookupAndFindKv) {
  const Origin a = Register("node-a", 0, "tcp://a:1");
  const Origin b = Register("node-b", 0, "tcp://b:1");
  core_->HandleEvent(Admit(a, 1, Keys(0, 4)));
  core_->HandleEvent(Admit(b, 1, Keys(0, 2)));
  core_->HandleEvent(Admit(b, 2, Keys(3, 1)));  // chunk 3 without chunk 2: not contiguous

  EXPECT_THAT(Matches(Lookup(0, 5)), ElementsAre(LookupMatch{"node-a", "tcp://a:1", 4},
                                                 LookupMatch{"node-b", "tcp://b:1", 2}));
  EXPECT_THAT(Matches(Lookup(0, 5, 0, 1, "node-a")),
              ElementsAre(LookupMatch{"node-b", "tcp://b:1", 2}));
  EXPECT_THAT(Matches(Lookup(50, 3)), IsEmpty()) << "chunk 0 of this chain is held by nobody";

  auto holders = As<FindKvReply>(core_->HandleRequest(FindKvRequest{
                                     KeySpace{testing::kModel, "", 1, 0, 0}, MakeHash(3), ""}))
                     .holders;
  EXPECT_THAT(holders, ElementsAre(Holder{"node-a", 0, "L1", "tcp://a:1"},
                                   Holder{"node-b", 0, "L1", "tcp://b:1"}));
  holders = As<FindKvReply>(core_->HandleRequest(FindKvRequest{
                                KeySpace{testing::kModel, "", 1, 0, 0}, MakeHash(3), "node-a"}))
                .holders;
  EXPECT_THAT(holders, ElementsAre(Holder{"node-b", 0, "L1", "tcp://b:1"}));

  // A key space nobody reported: found nowhere (and nothing interned for it).
  LookupRequest other = Lookup(0, 2);
  other.model = "never-seen";
  EXPECT_THAT(Matches(other), IsEmpty());
  other.rank = 3;  // outside a world of one
  EXPECT_EQ(AsError(core_->HandleRequest(other)).code, StatusCode::kInvalidArgument);
}

TEST_F(ControllerCoreTest, LookupWithoutRankNeedsEveryRankOfAChunk) {
  const Origin a = Register("node-a");
  const Origin b = Register("node-b");
  core_->HandleEvent(Admit(a, 1, Keys(0, 3, 2, 0)));
  core_->HandleEvent(Admit(a, 2, Keys(0, 2, 2, 1)));
  core_->HandleEvent(Admit(b, 1, Keys(0, 3, 2, 0)));  // rank 0 only
  EXPECT_THAT(Matches(Lookup(0, 3, std::nullopt, 2)), ElementsAre(LookupMatch{"node-a", "", 2}));
  EXPECT_THAT(Matches(Lookup(0, 3, 0, 2)),
              ElementsAre(LookupMatch{"node-a", "", 3}, LookupMatch{"node-b", "", 3}));
  EXPECT_THAT(Matches(Lookup(0, 3, 1, 2)), ElementsAre(LookupMatch{"node-a", "", 2}));
}

TEST_F(ControllerCoreTest, EventsOfUnknownOrOldRegistrationsAreDroppedAndCounted) {
  const Origin a = Register("node-a");
  core_->HandleEvent(Admit(Origin{"node-a", 0, a.registration_id + 1}, 1, Keys(0, 1)));
  core_->HandleEvent(Admit(Origin{"node-x", 0, 7}, 1, Keys(0, 1)));
  EXPECT_EQ(Dropped(DropReason::kUnknownRegistration), 2u);
  EXPECT_THAT(Matches(Lookup(0, 1)), IsEmpty());

  const Origin renewed = Register("node-a");
  core_->HandleEvent(Admit(a, 1, Keys(0, 1)));  // the replaced registration
  EXPECT_EQ(Dropped(DropReason::kUnknownRegistration), 3u);
  core_->HandleEvent(Admit(renewed, 1, Keys(0, 1)));
  EXPECT_THAT(Matches(Lookup(0, 1)), ElementsAre(LookupMatch{"node-a", "", 1}));
}

TEST_F(ControllerCoreTest, SequenceGapAsksForOneFullSyncUntilTheNextStart) {
  const Origin a = Register("node-a");
  core_->HandleEvent(Admit(a, 1, Keys(0, 1)));
  core_->HandleEvent(Admit(a, 3, Keys(1, 1)));  // seq 2 lost
  EXPECT_EQ(core_->counters().seq_gaps.load(), 1u);
  EXPECT_THAT(FullSyncs(Beat(a)), ElementsAre("L1:seq_gap"));
  EXPECT_THAT(FullSyncs(Beat(a)), IsEmpty()) << "at most once until the next start";
  core_->HandleEvent(Admit(a, 5, Keys(2, 1)));
  EXPECT_THAT(FullSyncs(Beat(a)), IsEmpty());

  core_->HandleEvent(FullSyncStart{a, "L1", 11, 5, 0, 0});
  core_->HandleEvent(FullSyncEnd{a, "L1", 11, 0});
  EXPECT_EQ(Status(a, 11).state, SyncState::kComplete);
  core_->HandleEvent(Admit(a, 8, Keys(3, 1)));  // expected 6
  EXPECT_THAT(FullSyncs(Beat(a)), ElementsAre("L1:seq_gap"));
}

TEST_F(ControllerCoreTest, TailLossAndKeyCountMismatchAskForFullSyncs) {
  const Origin a = Register("node-a", 0, "", {"L1", "fs"});
  core_->HandleEvent(Admit(a, 1, Keys(0, 2)));
  core_->HandleEvent(Admit(a, 1, Keys(10, 1), "fs"));
  // L1: seq 2 was sent but never arrived. fs: in step, but the worker counts 5 keys.
  const std::vector<LocationReport> reports = {{"L1", 2, 3}, {"fs", 1, 5}};
  EXPECT_THAT(FullSyncs(Beat(a, reports)), ElementsAre("fs:key_count_mismatch"));
  EXPECT_THAT(FullSyncs(Beat(a, reports)), ElementsAre("L1:lost_events"));
}

TEST_F(ControllerCoreTest, FullSyncWithAMissingBatchCompletesAfterTheResend) {
  const Origin a = Register("node-a", 0, "tcp://a:1");
  core_->HandleEvent(Admit(a, 1, Keys(100, 1)));  // replaced by the sync
  core_->HandleEvent(FullSyncStart{a, "L1", 42, 1, 3, 6});
  EXPECT_EQ(Status(a, 42).state, SyncState::kReceiving);
  core_->HandleEvent(FullSyncBatch{a, "L1", 42, 0, Keys(0, 2)});
  core_->HandleEvent(FullSyncBatch{a, "L1", 42, 2, Keys(4, 2)});
  core_->HandleEvent(FullSyncEnd{a, "L1", 42, 6});
  FullSyncStatusReply status = Status(a, 42);
  EXPECT_EQ(status.state, SyncState::kMissing);
  EXPECT_EQ(status.total_batches, 3u);
  EXPECT_EQ(status.received_batches, 2u);
  EXPECT_THAT(status.missing_batches, ElementsAre(1u));
  EXPECT_EQ(Status(a, 41).state, SyncState::kUnknown) << "another sync id";

  core_->HandleEvent(FullSyncBatch{a, "L1", 42, 1, Keys(2, 2)});
  core_->HandleEvent(FullSyncBatch{a, "L1", 42, 1, Keys(2, 2)});  // resent twice: counted once
  core_->HandleEvent(FullSyncEnd{a, "L1", 42, 6});
  EXPECT_EQ(Status(a, 42).state, SyncState::kComplete);
  EXPECT_THAT(Matches(Lookup(0, 8)), ElementsAre(LookupMatch{"node-a", "tcp://a:1", 6}));
  EXPECT_THAT(Matches(Lookup(100, 1)), IsEmpty()) << "the sync replaced the location";
  EXPECT_EQ(core_->registry().Stats().full_syncs_completed, 1u);
}

TEST_F(ControllerCoreTest, EventsDuringASyncAreNeitherLostNorUndoneByBatches) {
  const Origin a = Register("node-a");
  core_->HandleEvent(FullSyncStart{a, "L1", 7, 10, 1, 3});
  core_->HandleEvent(Evict(a, 11, Keys(0, 1)));  // key 0 left after the snapshot was taken
  core_->HandleEvent(Admit(a, 12, Keys(50, 1)));
  core_->HandleEvent(FullSyncBatch{a, "L1", 7, 0, Keys(0, 3)});
  core_->HandleEvent(FullSyncEnd{a, "L1", 7, 3});
  EXPECT_EQ(Status(a, 7).state, SyncState::kComplete);
  EXPECT_THAT(Matches(Lookup(0, 1)), IsEmpty()) << "the batch must not bring key 0 back";
  EXPECT_THAT(Matches(Lookup(1, 2)), ElementsAre(LookupMatch{"node-a", "", 2}));
  EXPECT_THAT(Matches(Lookup(50, 1)), ElementsAre(LookupMatch{"node-a", "", 1}));
  EXPECT_THAT(FullSyncs(Beat(a, {{"L1", 12, 3}})), IsEmpty());
}

TEST_F(ControllerCoreTest, StalledSyncFailsOnTheTickAndTheWorkerIsAskedAgain) {
  const Origin a = Register("node-a");
  core_->HandleEvent(FullSyncStart{a, "L1", 9, 0, 2, 2});
  core_->HandleEvent(FullSyncBatch{a, "L1", 9, 0, Keys(0, 1)});
  for (int i = 0; i < 11; ++i) {  // heartbeats keep the worker alive; the sync stalls
    clock_.Advance(1s);
    Beat(a);
    core_->Tick();
  }
  const FullSyncStatusReply status = Status(a, 9);
  EXPECT_EQ(status.state, SyncState::kFailed);
  EXPECT_EQ(status.reason, "timeout");
  EXPECT_EQ(core_->counters().syncs_expired.load(), 1u);
  EXPECT_THAT(FullSyncs(Beat(a)), ElementsAre("L1:sync_failed"));
  EXPECT_THAT(FullSyncs(Beat(a)), IsEmpty());
}

TEST_F(ControllerCoreTest, SilentWorkersAreReapedLoudly) {
  const Origin a = Register("node-a");
  const Origin b = Register("node-b");
  core_->HandleEvent(Admit(a, 1, Keys(0, 2)));
  for (int i = 0; i < 4; ++i) {
    clock_.Advance(1s);
    Beat(b);
    core_->Tick();
  }
  EXPECT_EQ(core_->counters().workers_reaped.load(), 1u);
  auto workers = As<WorkersReply>(core_->HandleRequest(WorkersRequest{})).workers;
  ASSERT_EQ(workers.size(), 1u);
  EXPECT_EQ(workers[0].instance_id, "node-b");
  EXPECT_THAT(Matches(Lookup(0, 2)), IsEmpty());
  EXPECT_EQ(core_->event_log().Json()[0]["kind"], "reaped");
  // The reaped worker's heartbeat and events: told to register again, dropped.
  const HeartbeatReply reply = Beat(a);
  ASSERT_EQ(reply.commands.size(), 1u);
  EXPECT_EQ(reply.commands[0].kind, CommandKind::kReregister);
  EXPECT_EQ(reply.commands[0].reason, "unknown_registration");
  core_->HandleEvent(Admit(a, 2, Keys(2, 1)));
  EXPECT_EQ(Dropped(DropReason::kUnknownRegistration), 1u);
}

TEST_F(ControllerCoreTest, ReregistrationReplacesTheAddressAndDropsStaleKeys) {
  const Origin old = Register("node-a", 0, "tcp://old:1");
  core_->HandleEvent(Admit(old, 1, Keys(0, 2)));
  const Origin renewed = Register("node-a", 0, "tcp://new:1");
  EXPECT_EQ(core_->counters().reregistrations.load(), 1u);
  EXPECT_THAT(Matches(Lookup(0, 2)), IsEmpty());
  core_->HandleEvent(Admit(renewed, 1, Keys(0, 1)));
  EXPECT_THAT(Matches(Lookup(0, 2)), ElementsAre(LookupMatch{"node-a", "tcp://new:1", 1}));
  EXPECT_EQ(AsError(core_->HandleRequest(FullSyncStatusRequest{old, "L1", 1})).code,
            StatusCode::kNotFound);
}

TEST_F(ControllerCoreTest, DeregisterIsIdempotent) {
  const Origin a = Register("node-a");
  core_->HandleEvent(Admit(a, 1, Keys(0, 1)));
  EXPECT_TRUE(As<DeregisterReply>(core_->HandleRequest(DeregisterRequest{a})).removed);
  EXPECT_FALSE(As<DeregisterReply>(core_->HandleRequest(DeregisterRequest{a})).removed);
  EXPECT_THAT(Matches(Lookup(0, 1)), IsEmpty());
}

TEST_F(ControllerCoreTest, ClearForgetsKeysAndAsksForFullSyncs) {
  const Origin a = Register("node-a", 0, "", {"L1", "fs"});
  const Origin b = Register("node-b");
  core_->HandleEvent(Admit(a, 1, Keys(0, 2)));
  core_->HandleEvent(Admit(a, 1, Keys(0, 2), "fs"));
  core_->HandleEvent(Admit(b, 1, Keys(0, 3)));
  EXPECT_EQ(As<ClearReply>(core_->HandleRequest(ClearRequest{"node-a", 0, "fs"})).cleared_keys, 2u);
  EXPECT_THAT(FullSyncs(Beat(a)), ElementsAre("fs:cleared"));
  EXPECT_EQ(
      As<ClearReply>(core_->HandleRequest(ClearRequest{"node-b", std::nullopt, ""})).cleared_keys,
      3u);
  EXPECT_THAT(Matches(Lookup(0, 2)), ElementsAre(LookupMatch{"node-a", "", 2}));
  EXPECT_EQ(As<ClearReply>(core_->HandleRequest(ClearRequest{})).cleared_keys, 2u);
  EXPECT_THAT(Matches(Lookup(0, 2)), IsEmpty());
  EXPECT_EQ(AsError(core_->HandleRequest(ClearRequest{"", 3, ""})).code,
            StatusCode::kInvalidArgument);
}

TEST_F(ControllerCoreTest, WorkersListsLocationsWithTheirSyncState) {
  const Origin a = Register("node-a", 1, "tcp://a:1", {"L1", "fs"});
  Register("node-b", 0);
  core_->HandleEvent(FullSyncStart{a, "L1", 3, 0, 1, 2});
  core_->HandleEvent(FullSyncBatch{a, "L1", 3, 0, Keys(0, 2)});
  core_->HandleEvent(FullSyncEnd{a, "L1", 3, 2});
  core_->HandleEvent(Admit(a, 4, Keys(9, 1), "fs"));
  auto reply = As<WorkersReply>(core_->HandleRequest(WorkersRequest{"node-a"}));
  ASSERT_EQ(reply.workers.size(), 1u);
  const WorkerInfo& w = reply.workers[0];
  EXPECT_EQ(w.worker_id, 1u);
  EXPECT_EQ(w.address, "tcp://a:1");
  EXPECT_EQ(w.software_version, "kvtier test");
  EXPECT_GT(w.registered_at_ms, 1600000000000u);
  EXPECT_THAT(w.locations, ElementsAre(LocationInfo{"L1", 2, 0, SyncState::kComplete},
                                       LocationInfo{"fs", 1, 4, SyncState::kUnknown}));
  EXPECT_EQ(As<WorkersReply>(core_->HandleRequest(WorkersRequest{})).workers.size(), 2u);
}

TEST_F(ControllerCoreTest, RequestsOfUnknownRegistrationsAreNotFound) {
  EXPECT_EQ(AsError(core_->HandleRequest(FullSyncStatusRequest{Origin{"x", 0, 1}, "L1", 1})).code,
            StatusCode::kNotFound);
  EXPECT_FALSE(
      As<DeregisterReply>(core_->HandleRequest(DeregisterRequest{Origin{"x", 0, 1}})).removed);
  const HeartbeatReply reply = Beat(Origin{"x", 0, 1});
  ASSERT_EQ(reply.commands.size(), 1u);
  EXPECT_EQ(reply.commands[0].kind, CommandKind::kReregister);
  EXPECT_EQ(reply.controller_epoch, core_->epoch());
}

}  // namespace
}  // namespace kvtier::controller
