#include "kvtier/eviction/l1_eviction_controller.h"

#include <cstring>

#include <gtest/gtest.h>

#include "kvtier/common/units.h"
#include "kvtier/l1/l1_test_util.h"

namespace kvtier::eviction {
namespace {

using namespace std::chrono_literals;
using l1::L1Result;
using l1::ObjectView;
using l1::testing::All;
using l1::testing::MakeKeys;

constexpr uint64_t kObj = 64 * kKiB;
constexpr uint64_t kSlots = 100;  // L1 holds exactly 100 objects

class L1EvictionControllerTest : public ::testing::Test {
 protected:
  void SetUp() override { Make("lru"); }

  void Make(std::string_view policy, Duration allocation_wait = Duration::zero()) {
    controller_.reset();
    l1_.reset();
    l1::L1Options o;
    o.capacity_bytes = kSlots * kObj;
    o.clock = &clock_;
    o.num_shards = 4;
    o.allocation_wait = allocation_wait;
    l1_ = l1::L1Manager::Create(o).value();
    L1EvictionOptions eo;
    eo.trigger_watermark = 0.8;
    eo.target_watermark = 0.5;
    eo.victims_per_round = 16;
    controller_ =
        L1EvictionController::Create(l1_.get(), MakeEvictionPolicy(policy).value(), eo).value();
  }

  std::vector<L1Result> Store(std::span<const keys::ObjectKey> keys) {
    std::vector<ObjectView> views;
    auto r = l1_->ReserveWrite(keys, kObj, false, l1::kDefaultWriter, &views);
    l1_->FinishWrite(keys, l1::kDefaultWriter);
    return r;
  }

  size_t CountResident(std::span<const keys::ObjectKey> keys) {
    size_t n = 0;
    for (const auto& k : keys) n += l1_->Contains(k) ? 1 : 0;
    return n;
  }

  FakeClock clock_;
  std::unique_ptr<l1::L1Manager> l1_;
  std::unique_ptr<L1EvictionController> controller_;
};

TEST_F(L1EvictionControllerTest, CreateValidatesOptions) {
  auto policy = [] { return MakeEvictionPolicy("lru").value(); };
  L1EvictionOptions o;
  o.trigger_watermark = 1.5;
  EXPECT_EQ(L1EvictionController::Create(l1_.get(), policy(), o).error().code(),
            StatusCode::kInvalidArgument);
  o.trigger_watermark = 0.5;
  o.target_watermark = 0.5;
  EXPECT_EQ(L1EvictionController::Create(l1_.get(), policy(), o).error().code(),
            StatusCode::kInvalidArgument);
  o.target_watermark = 0.4;
  o.victims_per_round = 0;
  EXPECT_FALSE(L1EvictionController::Create(l1_.get(), policy(), o));
  EXPECT_FALSE(L1EvictionController::Create(nullptr, policy(), {}));
}

TEST_F(L1EvictionControllerTest, BelowTheTriggerNothingIsEvicted) {
  auto keys = MakeKeys(79);
  ASSERT_EQ(Store(keys), All(79, L1Result::kSuccess));
  EXPECT_EQ(controller_->RunOnce(), 0u);
  EXPECT_EQ(CountResident(keys), 79u);
  EXPECT_EQ(controller_->stats().tracked_keys, 79u);
}

TEST_F(L1EvictionControllerTest, EvictsDownToTheTargetInLruOrder) {
  // Ten requests of eight chunks each; request r is stored at time r.
  std::vector<std::vector<keys::ObjectKey>> requests;
  for (size_t r = 0; r < 10; ++r) {
    requests.push_back(MakeKeys(8, r * 8));
    ASSERT_EQ(Store(requests.back()), All(8, L1Result::kSuccess));
  }
  // Request 0 is touched at the end of its session: it becomes the most recently used.
  l1_->TouchKeys(requests[0]);
  EXPECT_EQ(controller_->RunOnce(), 30u);  // 80 used, trigger 80, target 50
  EXPECT_EQ(l1_->used_bytes(), 50 * kObj);
  EXPECT_EQ(CountResident(requests[0]), 8u);
  // Least recent first: requests 1..3 go, then the tail of request 4 (later chunks before
  // earlier ones).
  EXPECT_EQ(CountResident(requests[1]), 0u);
  EXPECT_EQ(CountResident(requests[3]), 0u);
  EXPECT_EQ(CountResident(std::span(requests[4]).subspan(0, 2)), 2u);
  EXPECT_EQ(CountResident(std::span(requests[4]).subspan(2)), 0u);
  for (size_t r = 5; r < 10; ++r) EXPECT_EQ(CountResident(requests[r]), 8u) << r;
  auto st = controller_->stats();
  EXPECT_EQ(st.evicted_keys, 30u);
  EXPECT_EQ(st.evicted_bytes, 30 * kObj);
  EXPECT_EQ(st.tracked_keys, 50u);
  EXPECT_EQ(st.evictions_triggered, 1u);
}

TEST_F(L1EvictionControllerTest, NeverEvictsReadLockedOrLiveStaging) {
  auto keys = MakeKeys(85);
  ASSERT_EQ(Store(std::span(keys).subspan(0, 80)), All(80, L1Result::kSuccess));
  // The 60 oldest are held by readers, and 5 more keys are being written.
  ASSERT_EQ(l1_->ReserveRead(std::span(keys).subspan(0, 60), 1), All(60, L1Result::kSuccess));
  std::vector<ObjectView> views;
  ASSERT_EQ(l1_->ReserveWrite(std::span(keys).subspan(80, 5), kObj, false, 9, &views),
            All(5, L1Result::kSuccess));
  EXPECT_EQ(controller_->RunOnce(), 20u);  // only the 20 unlocked residents could go
  EXPECT_EQ(CountResident(std::span(keys).subspan(0, 60)), 60u);
  for (size_t i = 80; i < 85; ++i) EXPECT_TRUE(l1_->Exists(keys[i]));
  EXPECT_GE(controller_->stats().stalls, 1u);  // still above target, nothing else evictable

  // Once the read locks expire, eviction proceeds.
  clock_.Advance(301s);
  l1_->TouchKeys({});  // no-op; the next pass notices the expiry by itself
  ASSERT_EQ(Store(MakeKeys(20, 1000)), All(20, L1Result::kSuccess));
  EXPECT_GT(controller_->RunOnce(), 0u);
  EXPECT_LE(l1_->used_bytes(), 50 * kObj);
}

TEST_F(L1EvictionControllerTest, ReclaimsAbandonedStaging) {
  auto keys = MakeKeys(90);
  std::vector<ObjectView> views;
  // A writer reserved 90 buffers and vanished.
  ASSERT_EQ(l1_->ReserveWrite(keys, kObj, false, 3, &views), All(90, L1Result::kSuccess));
  EXPECT_EQ(controller_->RunOnce(), 0u);  // live staging is untouchable
  clock_.Advance(601s);
  EXPECT_EQ(controller_->RunOnce(), 40u);
  EXPECT_EQ(l1_->used_bytes(), 50 * kObj);
}

TEST_F(L1EvictionControllerTest, AllocationFailureFreesWhatTheRequestNeeds) {
  L1EvictionOptions eo;
  eo.trigger_watermark = 1.0;  // only a full pool or a failed allocation triggers eviction
  eo.target_watermark = 0.9;
  controller_.reset();
  controller_ =
      L1EvictionController::Create(l1_.get(), MakeEvictionPolicy("lru").value(), eo).value();
  auto keys = MakeKeys(99);
  ASSERT_EQ(Store(keys), All(99, L1Result::kSuccess));
  EXPECT_EQ(controller_->RunOnce(), 0u);  // 99% < trigger
  ASSERT_EQ(Store(MakeKeys(5, 500)), All(5, L1Result::kOutOfMemory));
  EXPECT_EQ(controller_->RunOnce(), 4u);  // exactly what the failed batch needed: 5 - 1 free
  // One request's batch: its later chunks went first.
  EXPECT_EQ(CountResident(std::span(keys).subspan(0, 95)), 95u);
  EXPECT_EQ(Store(MakeKeys(5, 500)), All(5, L1Result::kSuccess));
  EXPECT_EQ(controller_->stats().allocation_failure_wakeups, 1u);
}

TEST_F(L1EvictionControllerTest, DropsKeysL1NoLongerHolds) {
  auto keys = MakeKeys(90);
  ASSERT_EQ(Store(keys), All(90, L1Result::kSuccess));
  controller_->RunOnce();  // the policy now tracks what is left
  uint64_t tracked = controller_->stats().tracked_keys;
  // Keys vanish while the controller is not listening (as if their events were lost).
  l1_->RemoveListener(controller_.get());
  std::vector<keys::ObjectKey> remaining;
  for (const auto& k : keys) {
    if (l1_->Contains(k)) remaining.push_back(k);
  }
  ASSERT_EQ(remaining.size(), tracked);
  // The batch-order rule put the first request's later chunks at the LRU end: delete those.
  ASSERT_EQ(l1_->Delete(std::span(remaining).subspan(remaining.size() - 10)),
            All(10, L1Result::kSuccess));
  l1_->AddListener(controller_.get());
  ASSERT_EQ(Store(MakeKeys(40, 1000)), All(40, L1Result::kSuccess));
  controller_->RunOnce();
  EXPECT_EQ(controller_->stats().stale_keys_dropped, 10u);
  EXPECT_LE(l1_->used_bytes(), 50 * kObj);
}

TEST_F(L1EvictionControllerTest, RecreatedKeyStaysTracked) {
  // A deletion reported after the key was stored again must not untrack it.
  auto keys = MakeKeys(1);
  ASSERT_EQ(Store(keys), All(1, L1Result::kSuccess));
  controller_->RunOnce();
  ASSERT_EQ(l1_->Delete(keys)[0], L1Result::kSuccess);
  ASSERT_EQ(Store(keys), All(1, L1Result::kSuccess));
  controller_->RunOnce();  // queue: created, removed, created — L1 holds the key
  EXPECT_EQ(controller_->stats().tracked_keys, 1u);
}

TEST_F(L1EvictionControllerTest, ThreadKeepsUpWithAWriterThatWaitsForMemory) {
  Make("lru", /*allocation_wait=*/30s);
  ASSERT_TRUE(controller_->Start().ok());
  // Write 10x the capacity; every batch must succeed because eviction frees memory in time.
  std::vector<ObjectView> views;
  for (size_t i = 0; i < 10 * kSlots; i += 10) {
    auto keys = MakeKeys(10, i);
    auto r = l1_->ReserveWrite(keys, kObj, false, l1::kDefaultWriter, &views);
    ASSERT_EQ(r, All(10, L1Result::kSuccess)) << "batch at " << i;
    std::memset(views[0].data, 1, kObj);
    ASSERT_EQ(l1_->FinishWrite(keys, l1::kDefaultWriter), All(10, L1Result::kSuccess));
  }
  controller_->Stop();
  EXPECT_FALSE(controller_->stats().running);
  EXPECT_GE(controller_->stats().evicted_keys, 9 * kSlots - 50);
  EXPECT_TRUE(l1_->GetStatus().healthy);
}

class AllPoliciesTest : public L1EvictionControllerTest,
                        public ::testing::WithParamInterface<const char*> {};

TEST_P(AllPoliciesTest, EvictsToTargetAndKeepsL1Consistent) {
  Make(GetParam());
  auto keys = MakeKeys(95);
  ASSERT_EQ(Store(keys), All(95, L1Result::kSuccess));
  l1_->TouchKeys(std::span(keys).subspan(0, 10));
  uint64_t evicted = controller_->RunOnce();
  l1::L1Status st = l1_->GetStatus();
  EXPECT_TRUE(st.healthy);
  if (std::string_view(GetParam()) == "noop") {
    EXPECT_EQ(evicted, 0u);
    EXPECT_EQ(st.resident_objects, 95u);
  } else {
    EXPECT_EQ(evicted, 45u);
    EXPECT_EQ(st.resident_objects, 50u);
    EXPECT_EQ(controller_->stats().tracked_keys, 50u);
  }
}

INSTANTIATE_TEST_SUITE_P(Policies, AllPoliciesTest,
                         ::testing::Values("lru", "s3fifo", "arc", "noop"));

}  // namespace
}  // namespace kvtier::eviction
