#include "kvtier/storage/prefetch_controller.h"

#include <gtest/gtest.h>

#include "kvtier/storage/storage_test_util.h"

namespace kvtier::storage {
namespace {

using namespace testing;
using keys::Bitmap;

class PrefetchControllerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    l1_ = MakeL1(64);
    std::vector<std::unique_ptr<l2::L2Adapter>> a;
    a.push_back(MakeMock(1024, "a"));
    Make(std::move(a));
  }
  void TearDown() override {
    controller_->Stop();
    for (auto& a : adapters_) a->Close();
    controller_->ReleaseAfterAdaptersClosed();
  }
  void Make(std::vector<std::unique_ptr<l2::L2Adapter>> adapters,
            PrefetchControllerOptions options = {}) {
    controller_.reset();
    adapters_ = std::move(adapters);
    std::vector<l2::L2Adapter*> raw;
    for (auto& a : adapters_) raw.push_back(a.get());
    controller_ = PrefetchController::Create(l1_.get(), raw, options).value();
  }
  l2::MockAdapter* mock(size_t i = 0) { return static_cast<l2::MockAdapter*>(adapters_[i].get()); }

  PrefetchId Submit(std::span<const ObjectKey> keys, uint32_t read_locks = 1,
                    Duration timeout = Duration::zero()) {
    PrefetchRequest r;
    r.keys.assign(keys.begin(), keys.end());
    r.object_size = kObj;
    r.read_locks = read_locks;
    r.timeout = timeout;
    return controller_->Submit(std::move(r));
  }

  // Drives the controller by hand until `id` finishes.
  Bitmap Run(PrefetchId id) {
    for (;;) {
      controller_->RunOnce();
      if (auto r = controller_->QueryResult(id)) return *r;
      std::vector<pollfd> fds;
      for (auto& a : adapters_) {
        fds.push_back({a->lookup_event_fd(), POLLIN, 0});
        fds.push_back({a->load_event_fd(), POLLIN, 0});
      }
      EXPECT_GT(::poll(fds.data(), fds.size(), 10000), 0) << "prefetch did not progress";
    }
  }

  void ExpectNoLocksLeft() {
    for (size_t i = 0; i < adapters_.size(); ++i) {
      if (auto* m = dynamic_cast<l2::MockAdapter*>(adapters_[i].get()))
        EXPECT_EQ(m->debug_locked_count(), 0u);
    }
  }

  std::unique_ptr<l1::L1Manager> l1_;
  std::vector<std::unique_ptr<l2::L2Adapter>> adapters_;
  std::unique_ptr<PrefetchController> controller_;
};

TEST_F(PrefetchControllerTest, FullPrefixHitIsReadLockedInL1) {
  auto keys = MakeKeys(5);
  PutL2(adapters_[0].get(), keys);
  Bitmap r = Run(Submit(keys, /*read_locks=*/2));
  EXPECT_EQ(r.CountLeadingOnes(), 5u);
  std::vector<ObjectView> views;
  ASSERT_EQ(l1_->UnsafeRead(keys, &views), All(5, L1Result::kSuccess));
  for (size_t i = 0; i < 5; ++i) EXPECT_TRUE(Intact(keys[i], views[i])) << i;
  ExpectNoLocksLeft();
  // Temporary objects: freed once both readers are done.
  EXPECT_EQ(l1_->GetStatus().temporary_objects, 5u);
  l1_->FinishRead(keys, 1);
  EXPECT_EQ(l1_->GetStatus().temporary_objects, 5u);
  l1_->FinishRead(keys, 1);
  EXPECT_EQ(l1_->used_bytes(), 0u);
}

TEST_F(PrefetchControllerTest, AGapCutsThePrefix) {
  auto keys = MakeKeys(5);
  std::vector<ObjectKey> present = {keys[0], keys[1], keys[3], keys[4]};
  PutL2(adapters_[0].get(), present);
  Bitmap r = Run(Submit(keys));
  EXPECT_EQ(r.ToString(), "11000");
  EXPECT_TRUE(l1_->Contains(keys[1]));
  for (size_t i = 2; i < 5; ++i) EXPECT_FALSE(l1_->Exists(keys[i])) << i;
  ExpectNoLocksLeft();
}

TEST_F(PrefetchControllerTest, FirstKeyMissingLoadsNothing) {
  auto keys = MakeKeys(4);
  PutL2(adapters_[0].get(), std::span(keys).subspan(1));
  EXPECT_EQ(Run(Submit(keys)).PopCount(), 0u);
  EXPECT_EQ(l1_->used_bytes(), 0u);
  EXPECT_EQ(adapters_[0]->Counters().load_tasks, 0u);
  ExpectNoLocksLeft();
}

TEST_F(PrefetchControllerTest, DisjointAdaptersCoverThePrefixTogether) {
  std::vector<std::unique_ptr<l2::L2Adapter>> a;
  a.push_back(MakeMock(1024, "a"));
  a.push_back(MakeMock(1024, "b"));
  Make(std::move(a));
  auto keys = MakeKeys(4);
  PutL2(adapters_[0].get(), std::span(keys).subspan(0, 2));
  PutL2(adapters_[1].get(), std::span(keys).subspan(2, 2));
  EXPECT_EQ(Run(Submit(keys)).CountLeadingOnes(), 4u);
  ExpectNoLocksLeft();
}

TEST_F(PrefetchControllerTest, TheLowestIndexAdapterWinsOverlaps) {
  std::vector<std::unique_ptr<l2::L2Adapter>> a;
  a.push_back(MakeMock(1024, "a"));
  a.push_back(MakeMock(1024, "b"));
  Make(std::move(a));
  auto keys = MakeKeys(3);
  PutL2(adapters_[0].get(), keys);
  PutL2(adapters_[1].get(), keys);
  EXPECT_EQ(Run(Submit(keys)).CountLeadingOnes(), 3u);
  EXPECT_EQ(adapters_[0]->Counters().load_keys, 3u);
  EXPECT_EQ(adapters_[1]->Counters().load_keys, 0u);
  ExpectNoLocksLeft();
}

TEST_F(PrefetchControllerTest, LoadFailuresCutThePrefixAndLeaveNothingBehind) {
  std::vector<std::unique_ptr<l2::L2Adapter>> a;
  a.push_back(MakeAdapter({{"type", "fault_inject"},
                           {"inner", {{"type", "mock"}, {"capacity", "64MiB"}}},
                           {"load_failure_rate", 1.0}}));
  Make(std::move(a));
  auto keys = MakeKeys(4);
  PutL2(adapters_[0].get(), keys);
  EXPECT_EQ(Run(Submit(keys)).PopCount(), 0u);
  EXPECT_EQ(l1_->used_bytes(), 0u);  // failed staging aborted
  EXPECT_EQ(controller_->stats().keys_load_failed, 4u);
}

TEST_F(PrefetchControllerTest, L1OutOfMemoryCutsThePrefix) {
  l1_ = MakeL1(3);
  std::vector<std::unique_ptr<l2::L2Adapter>> a;
  a.push_back(MakeMock(1024, "a"));
  Make(std::move(a));
  auto keys = MakeKeys(5);
  PutL2(adapters_[0].get(), keys);
  // The batch of 5 does not fit a 3-object L1: nothing can be staged.
  EXPECT_EQ(Run(Submit(keys)).PopCount(), 0u);
  EXPECT_EQ(controller_->stats().keys_l1_oom, 5u);
  ExpectNoLocksLeft();
  // A request that fits works.
  EXPECT_EQ(Run(Submit(std::span(keys).subspan(0, 3))).CountLeadingOnes(), 3u);
}

TEST_F(PrefetchControllerTest, LookupHitsAreKnownBeforeTheLoadsFinish) {
  auto keys = MakeKeys(4);
  PutL2(adapters_[0].get(), std::span(keys).subspan(0, 3));
  mock()->SetPausedForTesting(true);  // the lookups queue behind the pause
  PrefetchId id = Submit(keys);
  controller_->RunOnce();  // lookups submitted, not finished
  EXPECT_FALSE(controller_->QueryLookupHits(id));
  mock()->SetPausedForTesting(false);
  pollfd p{adapters_[0]->lookup_event_fd(), POLLIN, 0};
  ASSERT_GT(::poll(&p, 1, 10000), 0);  // lookups done; no load submitted yet
  mock()->SetPausedForTesting(true);   // loads will queue
  controller_->RunOnce();              // plan and submit loads
  EXPECT_EQ(controller_->QueryLookupHits(id), 3u);
  EXPECT_FALSE(controller_->QueryResult(id));
  mock()->SetPausedForTesting(false);
  EXPECT_EQ(Run(id).CountLeadingOnes(), 3u);
}

TEST_F(PrefetchControllerTest, ResultsAreOneShot) {
  auto keys = MakeKeys(2);
  PutL2(adapters_[0].get(), keys);
  PrefetchId id = Submit(keys);
  Run(id);
  EXPECT_FALSE(controller_->QueryResult(id));
  EXPECT_FALSE(controller_->QueryResult(9999));
  EXPECT_FALSE(controller_->Wait(9999, Duration::zero()));
}

TEST_F(PrefetchControllerTest, EmptyRequestsFinishAtOnce) {
  PrefetchId id = controller_->Submit(PrefetchRequest{});
  EXPECT_EQ(controller_->QueryResult(id)->size(), 0u);
}

TEST_F(PrefetchControllerTest, AtMostMaxInFlightRequestsRun) {
  PrefetchControllerOptions o;
  o.max_in_flight = 1;
  std::vector<std::unique_ptr<l2::L2Adapter>> a;
  a.push_back(MakeMock(1024, "a"));
  Make(std::move(a), o);
  std::vector<std::vector<ObjectKey>> requests = {MakeKeys(2, 0), MakeKeys(2, 10), MakeKeys(2, 20)};
  std::vector<PrefetchId> ids;
  for (auto& r : requests) {
    PutL2(adapters_[0].get(), r);
    ids.push_back(Submit(r));
  }
  // With the adapter paused, the first request's lookup cannot finish during RunOnce, so what
  // the counters show is admission alone, not how fast the mock's worker thread happened to be.
  mock()->SetPausedForTesting(true);
  controller_->RunOnce();
  EXPECT_EQ(controller_->stats().in_flight, 1u);
  EXPECT_EQ(controller_->stats().queued, 2u);
  mock()->SetPausedForTesting(false);
  for (PrefetchId id : ids) EXPECT_EQ(Run(id).CountLeadingOnes(), 2u);
}

TEST_F(PrefetchControllerTest, ATimeoutReturnsWhatIsUsableAndCleansUp) {
  std::vector<std::unique_ptr<l2::L2Adapter>> a;
  a.push_back(MakeAdapter({{"type", "fault_inject"},
                           {"inner", {{"type", "mock"}, {"capacity", "64MiB"}}},
                           {"hang_rate", 1.0}}));
  Make(std::move(a));
  auto keys = MakeKeys(3);
  PrefetchId id = Submit(keys, 1, std::chrono::nanoseconds(1));
  Bitmap r = Run(id);
  EXPECT_EQ(r.PopCount(), 0u);
  EXPECT_EQ(controller_->stats().timed_out, 1u);
  EXPECT_EQ(controller_->stats().stuck_tasks, 0u);  // hung tasks were cancellable
  EXPECT_EQ(adapters_[0]->Counters().in_flight_tasks, 0u);
  EXPECT_EQ(l1_->used_bytes(), 0u);
}

TEST_F(PrefetchControllerTest, StopEndsEverythingWithoutLeaks) {
  auto keys = MakeKeys(4);
  PutL2(adapters_[0].get(), keys);
  mock()->SetPausedForTesting(true);
  PrefetchId id = Submit(keys);
  controller_->RunOnce();  // lookups queued behind the pause
  controller_->Stop();
  ASSERT_TRUE(controller_->QueryResult(id));
  mock()->SetPausedForTesting(false);
  EXPECT_EQ(l1_->used_bytes(), 0u);
  EXPECT_EQ(l1_->GetStatus().read_locked_objects, 0u);
}

TEST_F(PrefetchControllerTest, WatchersAreCalledOnceDoneOrAtOnce) {
  auto keys = MakeKeys(3);
  PutL2(adapters_[0].get(), keys);
  PrefetchId id = Submit(keys);
  int calls = 0;
  std::optional<Bitmap> seen;
  controller_->NotifyWhenDone(id, [&] {
    ++calls;
    seen = controller_->QueryResult(id);  // allowed from a watcher
  });
  EXPECT_EQ(calls, 0);
  while (calls == 0) {
    controller_->RunOnce();
    pollfd p[2] = {{adapters_[0]->lookup_event_fd(), POLLIN, 0},
                   {adapters_[0]->load_event_fd(), POLLIN, 0}};
    if (calls == 0) ASSERT_GT(::poll(p, 2, 10000), 0);
  }
  EXPECT_EQ(calls, 1);
  ASSERT_TRUE(seen);
  EXPECT_EQ(seen->CountLeadingOnes(), 3u);
  bool immediate = false;
  controller_->NotifyWhenDone(id, [&] { immediate = true; });  // consumed: called at once
  EXPECT_TRUE(immediate);
}

TEST_F(PrefetchControllerTest, TheThreadServesRequests) {
  auto keys = MakeKeys(6);
  PutL2(adapters_[0].get(), keys);
  ASSERT_TRUE(controller_->Start().ok());
  PrefetchId id = Submit(keys);
  ASSERT_TRUE(controller_->Wait(id, std::chrono::seconds(30)));
  EXPECT_EQ(controller_->QueryResult(id)->CountLeadingOnes(), 6u);
  controller_->Stop();
  EXPECT_FALSE(controller_->stats().running);
  ExpectNoLocksLeft();
}

}  // namespace
}  // namespace kvtier::storage
