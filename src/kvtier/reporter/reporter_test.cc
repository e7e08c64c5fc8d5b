// The reporter against an in-process fake controller (real sockets, the real codec) and a real
// L1Manager: registration retries, batched events with contiguous seqs, full syncs (commanded,
// with lost batches), re-registration on a new epoch, error 2 and commands, deregistration, and
// a listener that never blocks while the controller is down.
#include "kvtier/reporter/reporter.h"

#include <algorithm>
#include <atomic>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "kvtier/l1/l1_test_util.h"
#include "kvtier/reporter/testing/fake_controller.h"

namespace kvtier::reporter {
namespace {

using keys::ObjectKey;
using testing::FakeController;
using State = FakeController::State;

// Generous: waits end as soon as their condition holds; only a broken reporter waits this long.
constexpr Duration kWait = std::chrono::seconds(30);
constexpr size_t kBatchKeys = 8;

std::string UniqueIpc(const char* tag) {
  static std::atomic<int> n{0};
  return fmt::format("ipc:///tmp/kvt-reporter-test-{}-{}-{}.sock", tag, ::getpid(), n.fetch_add(1));
}

std::set<std::string> Strings(std::span<const ObjectKey> keys) {
  std::set<std::string> out;
  for (const ObjectKey& k : keys) out.insert(k.ToString());
  return out;
}

const controller::FullSyncStart* LastStart(const State& s) {
  const controller::FullSyncStart* last = nullptr;
  for (const controller::Event& e : s.events) {
    if (auto* start = std::get_if<controller::FullSyncStart>(&e)) last = start;
  }
  return last;
}

class ReporterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    l1::L1Options o;
    o.capacity_bytes = 16 << 20;
    o.register_with_cuda = false;
    auto l1 = l1::L1Manager::Create(o);
    ASSERT_TRUE(l1.has_value()) << l1.error().ToString();
    l1_ = std::move(*l1);
    endpoints_ = {UniqueIpc("req"), UniqueIpc("ev"), UniqueIpc("hb")};
  }
  void TearDown() override {
    if (reporter_) reporter_->Stop();  // while the fake still answers
    fake_.reset();
  }

  ReporterOptions Options() const {
    ReporterOptions o;
    o.endpoint = endpoints_.requests;
    o.events_endpoint = endpoints_.events;
    o.heartbeat_endpoint = endpoints_.heartbeats;
    o.batch_keys = kBatchKeys;
    o.batch_interval = std::chrono::milliseconds(5);
    o.request_timeout = std::chrono::seconds(5);
    o.sync_poll_interval = std::chrono::milliseconds(10);
    o.retry_backoff_min = std::chrono::milliseconds(5);
    o.retry_backoff_max = std::chrono::milliseconds(40);
    return o;
  }
  void StartReporter(const ReporterOptions& o) {
    ReporterIdentity id;
    id.instance_id = "server-a";
    id.address = "tcp://10.0.0.7:5555";
    id.software_version = "kvtier test";
    auto r = Reporter::Create(o, id, l1_.get());
    ASSERT_TRUE(r.has_value()) << r.error().ToString();
    reporter_ = std::move(*r);
    ASSERT_TRUE(reporter_->Start().ok());
  }
  void StartAll() {
    fake_ = FakeController::Start(endpoints_);
    StartReporter(Options());
    WaitSyncs(1);
  }
  // Until the controller saw n syncs complete, and the reporter heard so.
  void WaitSyncs(uint64_t n) {
    ASSERT_TRUE(fake_->WaitFor([n](const State& s) { return s.completed_syncs >= n; }, kWait))
        << "completed syncs: " << fake_->Observe().completed_syncs;
    ASSERT_TRUE(reporter_->WaitForStats(
        [n](const ReporterStats& s) { return s.full_syncs_completed >= n; }, kWait));
  }
  // Waits until the fake's index of L1 is exactly `keys`.
  void WaitIndex(std::span<const ObjectKey> keys) {
    const std::set<std::string> want = Strings(keys);
    ASSERT_TRUE(fake_->WaitFor(
        [&](const State& s) {
          auto it = s.index.find(kL1Location);
          return it != s.index.end() ? it->second == want : want.empty();
        },
        kWait))
        << "the controller's index never matched L1's " << want.size() << " keys";
  }

  std::vector<ObjectKey> Admit(size_t first, size_t n) {
    std::vector<ObjectKey> keys = l1::testing::MakeKeys(n, first);
    EXPECT_EQ(l1_->ReserveWrite(keys, 4096, false, l1::kDefaultWriter, nullptr),
              l1::testing::All(n, l1::L1Result::kSuccess));
    EXPECT_EQ(l1_->FinishWrite(keys, l1::kDefaultWriter),
              l1::testing::All(n, l1::L1Result::kSuccess));
    return keys;
  }

  // Declared first, destroyed last: the L1Manager goes before the reporter it calls.
  std::unique_ptr<Reporter> reporter_;
  std::unique_ptr<l1::L1Manager> l1_;
  std::unique_ptr<FakeController> fake_;
  ControllerEndpoints endpoints_;
};

TEST_F(ReporterTest, RegistrationRetriesUntilTheControllerAppears) {
  ReporterOptions o = Options();
  o.request_timeout = std::chrono::milliseconds(50);  // each attempt waits this long to connect
  StartReporter(o);
  ASSERT_TRUE(reporter_->WaitForStats(
      [](const ReporterStats& s) { return s.registration_failures >= 3; }, kWait));
  EXPECT_EQ(reporter_->stats().state, "registering");
  const std::vector<ObjectKey> keys = Admit(0, 5);  // before any controller: in the first sync

  fake_ = FakeController::Start(endpoints_);
  WaitSyncs(1);
  WaitIndex(keys);
  const State s = fake_->Observe();
  // An attempt that timed out here (50 ms, under a loaded test run) may still reach the new
  // controller before the retry does: every register is the same request, and the reporter
  // keeps the registration whose reply it accepted.
  ASSERT_GE(s.registers.size(), 1u);
  const controller::RegisterRequest& r = s.registers.back();
  for (const controller::RegisterRequest& each : s.registers) EXPECT_EQ(each, r);
  EXPECT_EQ(r.instance_id, "server-a");
  EXPECT_EQ(r.worker_id, 0u);
  EXPECT_EQ(r.address, "tcp://10.0.0.7:5555");
  EXPECT_EQ(r.locations, std::vector<std::string>{"L1"});
  EXPECT_EQ(r.hash_algorithm, "sha256");
  EXPECT_EQ(r.chunk_size, 256u);
  EXPECT_EQ(r.software_version, "kvtier test");

  const ReporterStats stats = reporter_->stats();
  EXPECT_EQ(stats.state, "registered");
  EXPECT_EQ(stats.registrations, 1u);
  EXPECT_EQ(stats.registration_id, s.registration_id);
  const nlohmann::json j = reporter_->StatusJson();
  EXPECT_EQ(j["state"], "registered");
  EXPECT_EQ(j["locations"][0]["name"], "L1");
  EXPECT_EQ(j["locations"][0]["keys"], 5);
}

TEST_F(ReporterTest, AdmitsAndEvictsArriveBatchedWithContiguousSeqs) {
  StartAll();
  std::vector<ObjectKey> keys = Admit(0, 50);
  WaitIndex(keys);
  ASSERT_EQ(l1_->Delete(std::span(keys).first(10)), l1::testing::All(10, l1::L1Result::kSuccess));
  keys.erase(keys.begin(), keys.begin() + 10);
  WaitIndex(keys);

  const State s = fake_->Observe();
  const controller::FullSyncStart* start = LastStart(s);
  ASSERT_NE(start, nullptr);
  uint64_t expected_seq = start->base_seq + 1;
  uint64_t events = 0, reported = 0, admits = 0, evicts = 0;
  for (const controller::Event& e : s.events) {
    const auto* kv = std::get_if<controller::KvEvent>(&e);
    if (kv == nullptr) continue;
    EXPECT_EQ(kv->location, "L1");
    EXPECT_EQ(kv->origin.registration_id, s.registration_id);
    EXPECT_EQ(kv->seq, expected_seq++) << "seqs must be contiguous";
    const size_t n = controller::CountKeys(kv->groups);
    EXPECT_GE(n, 1u);
    EXPECT_LE(n, kBatchKeys);
    ++events;
    reported += n;
    (kv->op == controller::KvOp::kAdmit ? admits : evicts) += n;
  }
  EXPECT_EQ(admits, 50u);
  EXPECT_EQ(evicts, 10u);
  EXPECT_GE(events, 60 / kBatchKeys);
  EXPECT_EQ(s.seq_gaps, 0u);
  // The stats catch up after the sends return: wait for the batch count and the location's seq.
  ASSERT_TRUE(reporter_->WaitForStats(
      [&](const ReporterStats& st) {
        return st.batches_sent == events && !st.locations.empty() &&
               st.locations[0].last_seq == expected_seq - 1;
      },
      kWait));
  const ReporterStats stats = reporter_->stats();
  EXPECT_EQ(stats.keys_reported, reported);
  EXPECT_EQ(stats.events_dropped, 0u);
  EXPECT_EQ(stats.locations[0].last_seq, expected_seq - 1);
  // Heartbeats report the seq and key count the controller should have.
  ASSERT_TRUE(fake_->WaitFor(
      [&](const State& st) {
        if (st.heartbeats.empty()) return false;
        const auto& loc = st.heartbeats.back().locations;
        return loc.size() == 1 && loc[0].last_seq == expected_seq - 1 && loc[0].key_count == 40;
      },
      kWait));
}

TEST_F(ReporterTest, AFullSyncCommandSendsExactlyTheL1Keys) {
  StartAll();
  const std::vector<ObjectKey> keys = Admit(100, 30);
  WaitIndex(keys);
  // The controller has every batch; the reporter counts a batch as sent after the send returns,
  // so wait for its count to catch up with the last seq the controller saw.
  uint64_t last_seen = 0;
  for (const controller::Event& e : fake_->Observe().events) {
    if (const auto* kv = std::get_if<controller::KvEvent>(&e))
      last_seen = std::max(last_seen, kv->seq);
  }
  ASSERT_TRUE(reporter_->WaitForStats(
      [&](const ReporterStats& st) { return st.locations[0].last_seq == last_seen; }, kWait));
  const uint64_t seq_before = reporter_->stats().locations[0].last_seq;
  fake_->QueueCommand({controller::CommandKind::kFullSync, "", "L1", "seq_gap"});
  WaitSyncs(2);

  const State s = fake_->Observe();
  const controller::FullSyncStart* start = LastStart(s);
  ASSERT_NE(start, nullptr);
  EXPECT_EQ(start->location, "L1");
  EXPECT_EQ(start->base_seq, seq_before);
  EXPECT_EQ(start->total_keys, 30u);
  EXPECT_EQ(start->total_batches, 4u);  // ceil(30 / 8)
  const FakeController::Sync& sync = s.syncs.at(start->sync_id);
  EXPECT_EQ(sync.keys, Strings(keys));
  EXPECT_TRUE(sync.end_seen);
  size_t ends = 0;
  for (const controller::Event& e : s.events) {
    if (auto* end = std::get_if<controller::FullSyncEnd>(&e);
        end && end->sync_id == start->sync_id) {
      EXPECT_EQ(end->total_keys, 30u);
      ++ends;
    }
  }
  EXPECT_EQ(ends, 1u);
  EXPECT_EQ(s.index.at("L1"), Strings(keys));
  EXPECT_EQ(reporter_->stats().full_syncs_completed, 2u);
}

TEST_F(ReporterTest, MissingBatchesAreResent) {
  StartAll();
  const std::vector<ObjectKey> keys = Admit(200, 30);
  WaitIndex(keys);
  fake_->LoseBatchesOnce({1, 3});
  fake_->QueueCommand({controller::CommandKind::kFullSync, "", "L1", "lost_events"});
  WaitSyncs(2);

  const State s = fake_->Observe();
  EXPECT_NE(
      std::find(s.status_answers.begin(), s.status_answers.end(), controller::SyncState::kMissing),
      s.status_answers.end());
  const FakeController::Sync& sync = s.syncs.at(LastStart(s)->sync_id);
  EXPECT_EQ(sync.received, (std::set<uint32_t>{0, 1, 2, 3}));
  EXPECT_EQ(sync.keys, Strings(keys));
  EXPECT_EQ(s.index.at("L1"), Strings(keys));
  const ReporterStats stats = reporter_->stats();
  EXPECT_GE(stats.sync_batches_resent, 2u);  // the two lost ones (again, if polled twice)
  EXPECT_EQ(stats.full_syncs_completed, 2u);
}

TEST_F(ReporterTest, ANewControllerEpochReregistersAndFullSyncs) {
  StartAll();
  const std::vector<ObjectKey> keys = Admit(300, 12);
  WaitIndex(keys);
  fake_->Restart(0x2222);  // forgets the registration and the index
  ASSERT_TRUE(fake_->WaitFor(
      [](const State& s) { return s.registers.size() >= 2 && s.completed_syncs >= 2; }, kWait));
  WaitIndex(keys);
  ASSERT_TRUE(reporter_->WaitForStats(
      [](const ReporterStats& st) {
        return st.reregistrations >= 1 && st.controller_epoch == 0x2222u;
      },
      kWait));
  const ReporterStats stats = reporter_->stats();
  EXPECT_EQ(stats.registration_id, fake_->Observe().registration_id);
}

TEST_F(ReporterTest, ErrorTwoOnAHeartbeatReregisters) {
  StartAll();
  const std::vector<ObjectKey> keys = Admit(400, 9);
  WaitIndex(keys);
  fake_->AnswerUnknownWithError(true);
  fake_->Restart(0x1111);  // the same epoch: only error 2 tells
  ASSERT_TRUE(fake_->WaitFor(
      [](const State& s) { return s.registers.size() >= 2 && s.completed_syncs >= 2; }, kWait));
  WaitIndex(keys);
  EXPECT_GE(reporter_->stats().reregistrations, 1u);
}

TEST_F(ReporterTest, CommandsRunInOrderAndUnknownOnesAreSkipped) {
  StartAll();
  fake_->QueueCommand({controller::CommandKind::kUnknown, "compact", "", "newer"});
  fake_->QueueCommand({controller::CommandKind::kReregister, "", "", "testing"});
  ASSERT_TRUE(fake_->WaitFor(
      [](const State& s) { return s.registers.size() >= 2 && s.completed_syncs >= 2; }, kWait));
  const ReporterStats stats = reporter_->stats();
  EXPECT_EQ(stats.commands, 2u);
  EXPECT_EQ(stats.reregistrations, 1u);
}

TEST_F(ReporterTest, ShutdownDeregisters) {
  StartAll();
  const uint64_t id = fake_->Observe().registration_id;
  reporter_->Stop();
  const State s = fake_->Observe();
  ASSERT_EQ(s.deregisters.size(), 1u);
  EXPECT_EQ(s.deregisters[0].origin.registration_id, id);
  EXPECT_EQ(s.deregisters[0].origin.instance_id, "server-a");
  EXPECT_EQ(s.registration_id, 0u);
  const ReporterStats stats = reporter_->stats();
  EXPECT_EQ(stats.deregistrations, 1u);
  EXPECT_EQ(stats.state, "stopped");
}

TEST_F(ReporterTest, TheListenerNeverBlocksWhileTheControllerIsDown) {
  ReporterOptions o = Options();
  o.max_pending_keys = 16;
  o.request_timeout = std::chrono::milliseconds(50);
  StartReporter(o);
  ASSERT_TRUE(reporter_->WaitForStats(
      [](const ReporterStats& s) { return s.registration_failures >= 1; }, kWait));
  constexpr int kThreads = 4;
  constexpr size_t kPerThread = 100;
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([this, t] {
      std::vector<ObjectKey> keys = Admit(1000 + t * kPerThread, kPerThread);
      (void)l1_->Delete(std::span(keys).first(kPerThread / 2));
    });
  }
  for (std::thread& t : threads) t.join();
  // 600 transitions against a pending list of 16: the rest were dropped, none blocked. (The
  // key, pending and dropped counts are read live from the mirror by stats().)
  const ReporterStats stats = reporter_->stats();
  EXPECT_GE(stats.keys_dropped, kThreads * kPerThread * 3 / 2 - 16);
  EXPECT_EQ(stats.locations[0].keys, kThreads * kPerThread / 2);
  EXPECT_LE(stats.locations[0].pending_keys, 16u);

  // The mirror stayed exact: once a controller appears, its full sync is L1's keys.
  std::vector<ObjectKey> remaining;
  for (int t = 0; t < kThreads; ++t) {
    auto keys = l1::testing::MakeKeys(kPerThread / 2, 1000 + t * kPerThread + kPerThread / 2);
    remaining.insert(remaining.end(), keys.begin(), keys.end());
  }
  fake_ = FakeController::Start(endpoints_);
  WaitSyncs(1);
  WaitIndex(remaining);
}

TEST(ResolveEndpointsTest, DerivesEventsAndHeartbeatsFromATcpEndpoint) {
  ReporterOptions o;
  o.endpoint = "tcp://10.1.2.3:9100";
  auto e = ResolveEndpoints(o);
  ASSERT_TRUE(e.has_value()) << e.error().ToString();
  EXPECT_EQ(e->requests, "tcp://10.1.2.3:9100");
  EXPECT_EQ(e->events, "tcp://10.1.2.3:9101");
  EXPECT_EQ(e->heartbeats, "tcp://10.1.2.3:9102");
  o.heartbeat_endpoint = "tcp://10.1.2.3:7000";
  EXPECT_EQ(ResolveEndpoints(o)->heartbeats, "tcp://10.1.2.3:7000");

  o = ReporterOptions{};
  o.endpoint = "ipc:///run/kvtier-controller.sock";
  auto bad = ResolveEndpoints(o);
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.error().message().find("controller.events_endpoint"), std::string::npos);
  o.endpoint = "tcp://[::1]:65534";
  EXPECT_FALSE(ResolveEndpoints(o).has_value());  // port + 2 is out of range
}

}  // namespace
}  // namespace kvtier::reporter
