#include "kvtier/storage/store_controller.h"

#include <gtest/gtest.h>

#include "kvtier/storage/storage_test_util.h"

namespace kvtier::storage {
namespace {

using namespace testing;

class StoreControllerTest : public ::testing::Test {
 protected:
  void Make(std::vector<std::unique_ptr<l2::L2Adapter>> adapters,
            std::string_view policy = "default", StoreControllerOptions options = {}) {
    controller_.reset();
    adapters_ = std::move(adapters);
    std::vector<l2::L2Adapter*> raw;
    for (auto& a : adapters_) raw.push_back(a.get());
    controller_ =
        StoreController::Create(l1_.get(), raw, MakeStorePolicy(policy).value(), options).value();
  }
  void SetUp() override {
    l1_ = MakeL1(256);
    std::vector<std::unique_ptr<l2::L2Adapter>> a;
    a.push_back(MakeMock());
    Make(std::move(a));
  }
  void TearDown() override {
    controller_->Stop();
    for (auto& a : adapters_) a->Close();
    controller_->ReleaseAfterAdaptersClosed();
  }
  l2::MockAdapter* mock(size_t i = 0) { return static_cast<l2::MockAdapter*>(adapters_[i].get()); }

  // Runs the controller by hand until every in-flight task completed.
  void Drain() {
    controller_->RunOnce();
    while (controller_->stats().in_flight_tasks > 0) {
      std::vector<pollfd> fds;
      for (auto& a : adapters_) fds.push_back({a->store_event_fd(), POLLIN, 0});
      ASSERT_GT(::poll(fds.data(), fds.size(), 10000), 0) << "store tasks did not complete";
      controller_->RunOnce();
    }
  }

  std::unique_ptr<l1::L1Manager> l1_;
  std::vector<std::unique_ptr<l2::L2Adapter>> adapters_;
  std::unique_ptr<StoreController> controller_;
};

TEST_F(StoreControllerTest, AnL1WriteAppearsInL2AndTheReadLockIsReleased) {
  auto keys = MakeKeys(5);
  WriteL1(l1_.get(), keys);
  EXPECT_EQ(controller_->stats().pending_keys, 5u);
  Drain();
  for (const auto& k : keys) EXPECT_TRUE(mock()->debug_has_key(k));
  auto s = controller_->stats();
  EXPECT_EQ(s.keys_stored, 5u);
  EXPECT_EQ(s.tasks_succeeded, 1u);
  EXPECT_EQ(s.bytes_stored, 5 * kObj);
  EXPECT_EQ(l1_->GetStatus().read_locked_objects, 0u);
  EXPECT_EQ(l1_->Delete(keys), All(5, L1Result::kSuccess));  // nothing pinned any more
  // The stored bytes are the L1 bytes.
  std::vector<uint8_t> buf(kObj);
  std::vector<std::span<uint8_t>> bufs = {buf};
  l2::TaskId t = adapters_[0]->SubmitLoad(std::span(keys).subspan(0, 1), bufs);
  pollfd p{adapters_[0]->load_event_fd(), POLLIN, 0};
  ASSERT_GT(::poll(&p, 1, 10000), 0);
  ASSERT_TRUE(adapters_[0]->QueryLoadResult(t)->Test(0));
  EXPECT_EQ(buf[123], PatternOf(keys[0]));
}

TEST_F(StoreControllerTest, TemporaryAndPrefetchedObjectsAreNotStored) {
  auto keys = MakeKeys(2);
  std::vector<ObjectView> views;
  ASSERT_EQ(l1_->ReserveWrite(keys, kObj, /*temporary=*/true, 7, &views),
            All(2, L1Result::kSuccess));
  ASSERT_EQ(l1_->FinishWrite(std::span(keys).subspan(0, 1), 7)[0], L1Result::kSuccess);
  ASSERT_EQ(l1_->FinishWriteAndReserveRead(std::span(keys).subspan(1, 1), 1, 7)[0],
            L1Result::kSuccess);
  // A non-temporary object admitted with a read lock (the prefetch path) is not stored either.
  auto more = MakeKeys(1, 10);
  ASSERT_EQ(l1_->ReserveWrite(more, kObj, false, 8, &views)[0], L1Result::kSuccess);
  ASSERT_EQ(l1_->FinishWriteAndReserveRead(more, 1, 8)[0], L1Result::kSuccess);
  Drain();
  EXPECT_EQ(controller_->stats().keys_received, 0u);
  EXPECT_EQ(mock()->debug_stored_count(), 0u);
}

TEST_F(StoreControllerTest, TwoBatchesToOneAdapterBothComplete) {
  auto a = MakeKeys(3);
  auto b = MakeKeys(4, 100);
  WriteL1(l1_.get(), a);
  controller_->RunOnce();
  WriteL1(l1_.get(), b);
  Drain();
  EXPECT_EQ(mock()->debug_stored_count(), 7u);
  EXPECT_EQ(controller_->stats().tasks_succeeded, 2u);
}

TEST_F(StoreControllerTest, LargeBatchesAreSplitIntoTasks) {
  StoreControllerOptions o;
  o.max_keys_per_task = 4;
  std::vector<std::unique_ptr<l2::L2Adapter>> a;
  a.push_back(MakeMock());
  Make(std::move(a), "default", o);
  WriteL1(l1_.get(), MakeKeys(10));
  Drain();
  EXPECT_EQ(controller_->stats().tasks_succeeded, 3u);
  EXPECT_EQ(mock()->debug_stored_count(), 10u);
}

TEST_F(StoreControllerTest, DefaultPolicyStoresToEveryAdapter) {
  std::vector<std::unique_ptr<l2::L2Adapter>> a;
  a.push_back(MakeMock(1024, "a"));
  a.push_back(MakeMock(1024, "b"));
  Make(std::move(a));
  auto keys = MakeKeys(3);
  WriteL1(l1_.get(), keys);
  Drain();
  EXPECT_EQ(mock(0)->debug_stored_count(), 3u);
  EXPECT_EQ(mock(1)->debug_stored_count(), 3u);
  EXPECT_TRUE(l1_->Contains(keys[0]));
}

TEST_F(StoreControllerTest, SkipL1DeletesFromL1AfterTheStore) {
  std::vector<std::unique_ptr<l2::L2Adapter>> a;
  a.push_back(MakeMock());
  Make(std::move(a), "skip_l1");
  auto keys = MakeKeys(3);
  WriteL1(l1_.get(), keys);
  Drain();
  EXPECT_EQ(mock()->debug_stored_count(), 3u);
  for (const auto& k : keys) EXPECT_FALSE(l1_->Contains(k));
  EXPECT_EQ(controller_->stats().l1_keys_deleted, 3u);
  EXPECT_EQ(l1_->used_bytes(), 0u);
}

TEST_F(StoreControllerTest, KeysGoneFromL1AreSkipped) {
  auto keys = MakeKeys(3);
  WriteL1(l1_.get(), keys);
  ASSERT_EQ(l1_->Delete(std::span(keys).subspan(0, 1))[0], L1Result::kSuccess);
  Drain();
  EXPECT_EQ(mock()->debug_stored_count(), 2u);
  EXPECT_EQ(controller_->stats().keys_skipped, 1u);
}

TEST_F(StoreControllerTest, AFailedStoreReleasesTheLocksAndKeepsL1) {
  std::vector<std::unique_ptr<l2::L2Adapter>> a;
  a.push_back(MakeAdapter({{"type", "fault_inject"},
                           {"inner", {{"type", "mock"}, {"capacity", "64MiB"}}},
                           {"store_failure_rate", 1.0}}));
  Make(std::move(a));
  auto keys = MakeKeys(4);
  WriteL1(l1_.get(), keys);
  Drain();
  auto s = controller_->stats();
  EXPECT_EQ(s.tasks_failed, 1u);
  EXPECT_EQ(s.keys_stored, 0u);
  EXPECT_EQ(l1_->GetStatus().read_locked_objects, 0u);
  for (const auto& k : keys) EXPECT_TRUE(l1_->Contains(k));  // no data lost
}

TEST_F(StoreControllerTest, HungStoresTimeOutAndReleaseTheirLocks) {
  StoreControllerOptions o;
  o.store_timeout = std::chrono::nanoseconds(1);  // expired by the time it is checked
  std::vector<std::unique_ptr<l2::L2Adapter>> a;
  a.push_back(MakeAdapter({{"type", "fault_inject"},
                           {"inner", {{"type", "mock"}, {"capacity", "64MiB"}}},
                           {"hang_rate", 1.0}}));
  Make(std::move(a), "default", o);
  WriteL1(l1_.get(), MakeKeys(4));
  controller_->RunOnce();
  auto s = controller_->stats();
  EXPECT_EQ(s.tasks_timed_out, 1u);
  EXPECT_EQ(s.in_flight_tasks, 0u);
  EXPECT_EQ(l1_->GetStatus().read_locked_objects, 0u);
  EXPECT_EQ(adapters_[0]->Counters().in_flight_tasks, 0u);
}

TEST_F(StoreControllerTest, StopReleasesTheLocksOfHungStores) {
  std::vector<std::unique_ptr<l2::L2Adapter>> a;
  a.push_back(MakeAdapter({{"type", "fault_inject"},
                           {"inner", {{"type", "mock"}, {"capacity", "64MiB"}}},
                           {"hang_rate", 1.0}}));
  Make(std::move(a));
  ASSERT_TRUE(controller_->Start().ok());
  WriteL1(l1_.get(), MakeKeys(4));
  // Wait until the controller picked the keys up and holds their locks.
  TimePoint deadline = DeadlineFrom(std::chrono::seconds(30));
  while (l1_->GetStatus().read_locked_objects < 4 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::yield();
  }
  ASSERT_EQ(l1_->GetStatus().read_locked_objects, 4u);
  controller_->Stop();
  EXPECT_EQ(l1_->GetStatus().read_locked_objects, 0u);
  EXPECT_EQ(controller_->stats().in_flight_tasks, 0u);
}

TEST_F(StoreControllerTest, ThePendingQueueIsBoundedAndDropsTheOldest) {
  StoreControllerOptions o;
  o.max_pending_keys = 10;
  std::vector<std::unique_ptr<l2::L2Adapter>> a;
  a.push_back(MakeMock());
  Make(std::move(a), "default", o);
  auto keys = MakeKeys(25);
  WriteL1(l1_.get(), keys);
  auto s = controller_->stats();
  EXPECT_EQ(s.pending_keys, 10u);
  EXPECT_EQ(s.keys_dropped, 15u);
  Drain();
  EXPECT_FALSE(mock()->debug_has_key(keys[0]));
  EXPECT_TRUE(mock()->debug_has_key(keys[24]));
  EXPECT_EQ(mock()->debug_stored_count(), 10u);
}

TEST_F(StoreControllerTest, TheThreadStoresInTheBackground) {
  StoredCounter stored;
  adapters_[0]->AddListener(&stored);
  ASSERT_TRUE(controller_->Start().ok());
  WriteL1(l1_.get(), MakeKeys(20));
  WriteL1(l1_.get(), MakeKeys(20, 100));
  ASSERT_TRUE(stored.WaitFor(40));
  controller_->Stop();
  EXPECT_EQ(mock()->debug_stored_count(), 40u);
  EXPECT_EQ(l1_->GetStatus().read_locked_objects, 0u);
  EXPECT_FALSE(controller_->stats().running);
}

TEST(StorePolicyTest, NamesAndChoices) {
  EXPECT_EQ(MakeStorePolicy("default").value()->name(), "default");
  EXPECT_EQ(MakeStorePolicy("skip_l1").value()->name(), "skip_l1");
  auto bad = MakeStorePolicy("write_back");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("default, skip_l1"), std::string::npos);
  auto keys = MakeKeys(2);
  EXPECT_EQ(MakeStorePolicy("default").value()->SelectStoreTargets(keys, 3),
            (std::vector<size_t>{0, 1, 2}));
  EXPECT_TRUE(MakeStorePolicy("default").value()->SelectL1DeletionsAfterStore(keys, 0).empty());
  EXPECT_EQ(MakeStorePolicy("skip_l1").value()->SelectL1DeletionsAfterStore(keys, 0).size(), 2u);
  EXPECT_TRUE(MakeStorePolicy("skip_l1").value()->SelectL1DeletionsAfterStore(keys, 1).empty());
}

}  // namespace
}  // namespace kvtier::storage
