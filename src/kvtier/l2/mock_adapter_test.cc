#include "kvtier/l2/mock_adapter.h"

#include <chrono>
#include <memory>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "kvtier/common/units.h"
#include "kvtier/l2/testing/adapter_conformance.h"

namespace kvtier::l2 {

namespace testing {
INSTANTIATE_TEST_SUITE_P(
    Mock, AdapterConformanceTest,
    ::testing::Values(AdapterCase{
        "mock",
        [] {
          return MakeMockAdapter({{"capacity", "64MiB"}}, "mock-conformance").value();
        }}),
    AdapterCaseName);
}  // namespace testing

namespace {

using testing::CompletionWaiter;
using testing::ConstSpans;
using testing::LookupAndWait;
using testing::RecordingL2Listener;
using testing::StoreAndWait;
using testing::TestBytes;
using testing::TestKeys;

constexpr size_t kObj = 1024;

std::unique_ptr<MockAdapter> MakeMock(uint64_t capacity, uint64_t bandwidth = 0,
                                      Duration latency = Duration::zero()) {
  MockAdapterOptions o;
  o.capacity_bytes = capacity;
  o.bandwidth_bytes_per_second = bandwidth;
  o.latency = latency;
  auto m = MockAdapter::Create(o, "mock-test");
  EXPECT_TRUE(m.has_value()) << m.error().ToString();
  return m ? std::move(*m) : nullptr;
}

std::vector<std::vector<uint8_t>> Objects(std::span<const ObjectKey> keys, size_t size = kObj) {
  std::vector<std::vector<uint8_t>> objects;
  for (const ObjectKey& k : keys) objects.push_back(TestBytes(k, size));
  return objects;
}

std::vector<ObjectKey> One(const ObjectKey& k) { return {k}; }

StoreResult Store(L2Adapter& a, std::vector<ObjectKey> keys, size_t size = kObj) {
  return StoreAndWait(a, keys, Objects(keys, size));
}

TEST(MockAdapterTest, EvictsFifoSkippingLockedKeys) {
  auto m = MakeMock(4 * kObj);
  RecordingL2Listener listener;
  m->AddListener(&listener);
  auto k = TestKeys(6);
  ASSERT_TRUE(Store(*m, {k[0], k[1], k[2], k[3]}).status.ok());
  EXPECT_EQ(LookupAndWait(*m, One(k[0])).ToString(), "1");  // k0 locked

  ASSERT_TRUE(Store(*m, One(k[4])).status.ok());  // evicts k1, the oldest unlocked
  EXPECT_TRUE(m->debug_has_key(k[0]));
  EXPECT_FALSE(m->debug_has_key(k[1]));
  EXPECT_TRUE(m->debug_has_key(k[4]));
  ASSERT_TRUE(listener.WaitDeletedCount(1));
  EXPECT_EQ(listener.deleted(), One(k[1]));

  ASSERT_TRUE(Store(*m, One(k[5])).status.ok());  // evicts k2
  EXPECT_FALSE(m->debug_has_key(k[2]));
  m->SubmitUnlock(One(k[0]));
  ASSERT_TRUE(Store(*m, One(k[1])).status.ok());  // now k0 is the oldest and unlocked
  EXPECT_FALSE(m->debug_has_key(k[0]));
  EXPECT_EQ(m->debug_stored_count(), 4u);

  AdapterUsage u = m->Usage();
  EXPECT_EQ(u.used_bytes, 4 * kObj);
  EXPECT_EQ(u.used_bytes, m->debug_actual_usage().used_bytes);
  EXPECT_EQ(m->Counters().deleted_keys, 3u);
  ASSERT_TRUE(listener.WaitDeletedCount(3));
  EXPECT_EQ(listener.deleted(), (std::vector<ObjectKey>{k[1], k[2], k[0]}));
  m->Close();
}

TEST(MockAdapterTest, StoreFailsWhenLockedKeysLeaveNoRoomAndEvictsNothing) {
  auto m = MakeMock(2 * kObj);
  auto k = TestKeys(4);
  ASSERT_TRUE(Store(*m, {k[0], k[1]}).status.ok());
  EXPECT_EQ(LookupAndWait(*m, std::vector<ObjectKey>{k[0], k[1]}).ToString(), "11");

  StoreResult r = Store(*m, One(k[2]));
  EXPECT_EQ(r.status.code(), StatusCode::kResourceExhausted) << r.status.ToString();
  EXPECT_TRUE(m->debug_has_key(k[0]));
  EXPECT_TRUE(m->debug_has_key(k[1]));
  EXPECT_FALSE(m->debug_has_key(k[2]));

  // Only k0 becomes evictable: a task needing two objects' room still fails, evicting nothing.
  m->SubmitUnlock(One(k[0]));
  r = Store(*m, {k[2], k[3]});
  EXPECT_EQ(r.status.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(r.bytes_written, 0u);
  EXPECT_TRUE(m->debug_has_key(k[0]));
  EXPECT_EQ(m->Usage().used_bytes, 2 * kObj);
  EXPECT_EQ(m->Counters().store_tasks_failed, 2u);
  EXPECT_EQ(m->Counters().deleted_keys, 0u);

  ASSERT_TRUE(Store(*m, One(k[2])).status.ok());  // one object's room: evicts k0
  EXPECT_FALSE(m->debug_has_key(k[0]));
  EXPECT_TRUE(m->debug_has_key(k[2]));
  m->Close();
}

TEST(MockAdapterTest, ObjectLargerThanCapacityFailsTheWholeTask) {
  auto m = MakeMock(2 * kObj);
  auto k = TestKeys(2);
  std::vector<std::vector<uint8_t>> objects = {TestBytes(k[0], kObj), TestBytes(k[1], 3 * kObj)};
  StoreResult r = StoreAndWait(*m, k, objects);
  EXPECT_EQ(r.status.code(), StatusCode::kResourceExhausted);
  EXPECT_FALSE(r.status.retryable());
  EXPECT_EQ(m->debug_stored_count(), 0u);
  EXPECT_EQ(m->Usage().used_bytes, 0u);
  m->Close();
}

TEST(MockAdapterTest, LookupLocksAndUnlockDecrements) {
  auto m = MakeMock(8 * kObj);
  auto k = TestKeys(2);
  ASSERT_TRUE(Store(*m, One(k[0])).status.ok());
  EXPECT_EQ(LookupAndWait(*m, k).ToString(), "10");
  EXPECT_EQ(LookupAndWait(*m, k).ToString(), "10");
  EXPECT_EQ(m->debug_locked_count(), 1u);  // k1 missing: never locked
  m->SubmitUnlock(k);
  EXPECT_EQ(m->debug_locked_count(), 1u);
  m->SubmitUnlock(k);
  EXPECT_EQ(m->debug_locked_count(), 0u);
  m->SubmitUnlock(k);
  EXPECT_EQ(m->debug_locked_count(), 0u);

  // A forced delete keeps the holder's lock until it unlocks.
  EXPECT_EQ(LookupAndWait(*m, One(k[0])).ToString(), "1");
  EXPECT_EQ(m->Delete(One(k[0]), /*force=*/true).value().ToString(), "1");
  EXPECT_EQ(m->debug_locked_count(), 1u);
  m->SubmitUnlock(One(k[0]));
  EXPECT_EQ(m->debug_locked_count(), 0u);
  m->Close();
}

TEST(MockAdapterTest, ThrottleDelaysCompletionByBytesOverBandwidth) {
  constexpr uint64_t kBandwidth = 1 * kMiB;  // per second
  constexpr size_t kBig = 64 * kKiB;         // 62.5 ms at kBandwidth
  const auto kExpected = std::chrono::microseconds(62500);
  auto m = MakeMock(1 * kMiB, kBandwidth);
  auto k = TestKeys(1);
  auto objects = Objects(k, kBig);
  auto sources = ConstSpans(objects);
  CompletionWaiter waiter(m.get());

  auto start = std::chrono::steady_clock::now();
  TaskId store = m->SubmitStore(k, sources);
  TaskId lookup = m->SubmitLookupAndLock(k);  // runs after the store: one worker, FIFO
  auto found = waiter.WaitLookup(lookup);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->ToString(), "1");
  auto stored = waiter.WaitStore(store, Duration::zero());  // already done: no waiting
  ASSERT_TRUE(stored.has_value());
  EXPECT_TRUE(stored->status.ok());
  EXPECT_GE(std::chrono::steady_clock::now() - start, kExpected);
  m->SubmitUnlock(k);

  std::vector<std::vector<uint8_t>> buffers(1, std::vector<uint8_t>(kBig));
  start = std::chrono::steady_clock::now();
  EXPECT_EQ(testing::LoadAndWait(*m, k, buffers).ToString(), "1");
  EXPECT_GE(std::chrono::steady_clock::now() - start, kExpected);
  EXPECT_TRUE(buffers == objects);
  EXPECT_EQ(m->Counters().store_bytes, kBig);
  EXPECT_EQ(m->Counters().load_bytes, kBig);
  m->Close();
}

TEST(MockAdapterTest, LatencyDelaysEveryTask) {
  const auto kLatency = std::chrono::milliseconds(30);
  auto m = MakeMock(1 * kMiB, 0, kLatency);
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(LookupAndWait(*m, TestKeys(1)).ToString(), "0");
  EXPECT_GE(std::chrono::steady_clock::now() - start, kLatency);
  m->Close();
}

TEST(MockAdapterTest, CancelOfQueuedTasksIsTrueAndTheyNeverRun) {
  auto m = MakeMock(1 * kMiB);
  auto k = TestKeys(3);
  auto first = Objects(One(k[0]));
  auto first_src = ConstSpans(first);
  auto third = std::make_unique<std::vector<std::vector<uint8_t>>>(Objects(One(k[2])));
  auto third_src = ConstSpans(*third);

  m->SetPausedForTesting(true);
  TaskId s1 = m->SubmitStore(One(k[0]), first_src);
  TaskId l2 = m->SubmitLookupAndLock(k);
  TaskId s3 = m->SubmitStore(One(k[2]), third_src);
  EXPECT_TRUE(m->Cancel(l2));
  EXPECT_TRUE(m->Cancel(s3));
  third.reset();  // the adapter must never read it
  m->SetPausedForTesting(false);

  CompletionWaiter waiter(m.get());
  auto r = waiter.WaitStore(s1);
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(r->status.ok());
  ASSERT_TRUE(testing::WaitUntilIdle(*m));
  EXPECT_TRUE(waiter.TakeStores().empty());
  EXPECT_FALSE(m->QueryLookupAndLockResult(l2).has_value());
  EXPECT_FALSE(m->debug_has_key(k[2]));
  EXPECT_EQ(m->debug_locked_count(), 0u);
  EXPECT_EQ(m->Counters().cancelled_tasks, 2u);
  m->Close();
}

TEST(MockAdapterTest, CancelOfRunningTaskIsFalseAndCloseWakesIt) {
  auto m = MakeMock(1 * kMiB, 0, std::chrono::hours(1));
  auto k = TestKeys(1);
  TaskId lookup = m->SubmitLookupAndLock(k);
  ASSERT_TRUE(m->WaitUntilRunningForTesting(lookup, testing::kCompletionWait));
  EXPECT_FALSE(m->Cancel(lookup));
  EXPECT_EQ(m->Counters().in_flight_tasks, 1u);
  m->Close();  // wakes the hour-long wait: the task fails
  auto r = m->QueryLookupAndLockResult(lookup);
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(r->None());
  EXPECT_EQ(m->debug_locked_count(), 0u);
}

TEST(MockAdapterTest, CloseFailsQueuedStoresWithoutStoringThem) {
  auto m = MakeMock(1 * kMiB);
  auto k = TestKeys(3);
  auto objects = Objects(k);
  auto sources = ConstSpans(objects);
  m->SetPausedForTesting(true);
  std::vector<TaskId> tasks;
  for (size_t i = 0; i < 3; ++i) {
    tasks.push_back(m->SubmitStore(std::span(k).subspan(i, 1), std::span(sources).subspan(i, 1)));
  }
  m->Close();
  auto results = m->PopCompletedStores();
  ASSERT_EQ(results.size(), 3u);
  for (const StoreResult& r : results) EXPECT_EQ(r.status.code(), StatusCode::kUnavailable);
  EXPECT_EQ(m->debug_stored_count(), 0u);
  EXPECT_EQ(m->Usage().used_bytes, 0u);
}

TEST(MockAdapterTest, ListKeysRejectsABadCursor) {
  auto m = MakeMock(1 * kMiB);
  auto page = m->ListKeys("conformance/model", 10, "not-a-cursor");
  ASSERT_FALSE(page.has_value());
  EXPECT_EQ(page.error().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(m->ListKeys("conformance/model", 0, "").error().code(), StatusCode::kInvalidArgument);
  m->Close();
}

TEST(MockAdapterTest, ListKeysSkipsKeysDeletedBetweenPagesAndNeverRepeats) {
  auto m = MakeMock(1 * kMiB);
  auto k = TestKeys(6);
  ASSERT_TRUE(Store(*m, k).status.ok());
  auto page = m->ListKeys("conformance/model", 2, "").value();
  ASSERT_EQ(page.keys.size(), 2u);
  EXPECT_EQ(page.keys[0].first, k[0]);
  ASSERT_TRUE(m->Delete(One(k[2])).has_value());
  ASSERT_TRUE(Store(*m, One(k[2])).status.ok());  // re-stored: listed after the others
  std::vector<ObjectKey> rest;
  while (!page.next_cursor.empty()) {
    page = m->ListKeys("conformance/model", 2, page.next_cursor).value();
    for (const auto& [key, size] : page.keys) rest.push_back(key);
  }
  EXPECT_EQ(rest, (std::vector<ObjectKey>{k[3], k[4], k[5], k[2]}));
  m->Close();
}

TEST(MockAdapterTest, StatusJsonHasMockFields) {
  auto m = MakeMock(1 * kMiB, 2 * kMiB);
  ASSERT_TRUE(Store(*m, TestKeys(2)).status.ok());
  nlohmann::json j = m->StatusJson();
  EXPECT_EQ(j["type"], "mock");
  EXPECT_EQ(j["stored_objects"], 2);
  EXPECT_EQ(j["usage"]["used_bytes"], 2 * kObj);
  EXPECT_EQ(j["usage"]["capacity_bytes"], kMiB);
  EXPECT_EQ(j["bandwidth_bytes_per_second"], 2 * kMiB);
  m->Close();
}

TEST(MockAdapterTest, FactoryParsesSizesAndDurations) {
  auto a = MakeMockAdapter({{"capacity", "1GiB"}, {"bandwidth", "2GiB"}, {"latency", "5ms"}}, "m");
  ASSERT_TRUE(a.has_value()) << a.error().ToString();
  EXPECT_EQ((*a)->name(), "m");
  EXPECT_EQ((*a)->type(), "mock");
  EXPECT_EQ((*a)->Usage().capacity_bytes, kGiB);
  (*a)->Close();
}

TEST(MockAdapterTest, FactoryRejectsBadConfig) {
  struct Case {
    nlohmann::json config;
    std::string needle;
  };
  const Case cases[] = {
      {nlohmann::json::object(), "'capacity': required setting is missing"},
      {{{"capacity", 0}}, "'capacity': must be greater than 0"},
      {{{"capacity", "12 parsecs"}}, "'capacity'"},
      {{{"capacity", "1GiB"}, {"capcity", "1GiB"}}, "'capcity'"},
      {{{"capacity", "1GiB"}, {"latency", "soon"}}, "'latency'"},
      {{{"capacity", "1GiB"}, {"bandwidth", -5}}, "'bandwidth'"},
      {nlohmann::json::array(), "'capacity'"},
  };
  for (const Case& c : cases) {
    auto a = MakeMockAdapter(c.config, "m");
    ASSERT_FALSE(a.has_value()) << c.config.dump();
    EXPECT_EQ(a.error().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(a.error().message().find("mock adapter 'm'"), std::string::npos)
        << a.error().ToString();
    EXPECT_NE(a.error().message().find(c.needle), std::string::npos)
        << c.config.dump() << " -> " << a.error().ToString();
  }
}

}  // namespace
}  // namespace kvtier::l2
