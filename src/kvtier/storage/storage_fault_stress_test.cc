// A sustained run against an L2 that fails 30% of stores and loads and hangs some tasks:
// afterwards no L1 lock is held, no task is left in flight, the accounting is exact and the
// controller threads are alive (until Close). Runs under TSan in CI.
#include <cstdlib>
#include <random>
#include <thread>

#include <gtest/gtest.h>

#include "kvtier/l2/fault_inject_adapter.h"
#include "kvtier/l2/mock_adapter.h"
#include "kvtier/storage/storage_manager.h"
#include "kvtier/storage/storage_test_util.h"

namespace kvtier::storage {
namespace {

using namespace testing;

double StressSeconds() {
  const char* s = std::getenv("KVT_STRESS_SECONDS");
  return s ? std::atof(s) : 2.0;
}

TEST(StorageFaultStressTest, FailuresAndHangsLeaveNothingBehind) {
  StorageOptions o;
  o.l1.capacity_bytes = 128 * kObj;
  o.l1.num_shards = 8;
  o.l1.allocation_wait = std::chrono::milliseconds(2);
  o.l1_eviction.check_interval = std::chrono::milliseconds(20);
  o.store.store_timeout = std::chrono::milliseconds(30);
  o.store.poll_interval = std::chrono::milliseconds(10);
  o.prefetch.poll_interval = std::chrono::milliseconds(10);
  o.l2_adapters.push_back({{"type", "fault_inject"},
                           {"name", "flaky"},
                           {"inner", {{"type", "mock"}, {"capacity", "64MiB"}}},
                           {"store_failure_rate", 0.3},
                           {"load_failure_rate", 0.3},
                           {"hang_rate", 0.03},
                           {"seed", 7}});
  auto sm = StorageManager::Create(o).value();
  const std::vector<ObjectKey> all = MakeKeys(512);
  std::atomic<uint64_t> corrupt{0}, prefetches{0}, hits{0};
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(StressSeconds());

  auto writer = [&](int id) {
    std::mt19937_64 rng(100 + id);
    std::vector<ObjectView> views;
    while (std::chrono::steady_clock::now() < deadline) {
      size_t start = rng() % (all.size() - 8);
      std::span<const ObjectKey> batch(all.data() + start, 1 + rng() % 8);
      auto r = sm->ReserveWrite(batch, kObj, &views);
      std::vector<ObjectKey> mine;
      for (size_t i = 0; i < batch.size(); ++i) {
        if (r[i] != L1Result::kSuccess) continue;
        std::memset(views[i].data, PatternOf(batch[i]), kObj);
        mine.push_back(batch[i]);
      }
      sm->FinishWrite(mine);
    }
  };
  auto reader = [&](int id) {
    std::mt19937_64 rng(200 + id);
    while (std::chrono::steady_clock::now() < deadline) {
      size_t start = rng() % (all.size() - 16);
      std::span<const ObjectKey> keys(all.data() + start, 1 + rng() % 16);
      PrefetchHandle h = sm->SubmitPrefetch(keys, kObj, 1, std::chrono::milliseconds(50));
      if (!sm->WaitPrefetch(h, std::chrono::seconds(10))) {
        ADD_FAILURE() << "a prefetch with a 50 ms timeout did not finish in 10 s";
        return;
      }
      keys::Bitmap got = sm->QueryPrefetch(h).value();
      size_t n = got.CountLeadingOnes();
      ASSERT_EQ(got.PopCount(), n) << "a prefetch result must be a prefix";
      std::span<const ObjectKey> prefix = keys.subspan(0, n);
      auto views = sm->ReadPrefetched(prefix);
      ASSERT_TRUE(views) << views.error().ToString();
      for (size_t i = 0; i < n; ++i) corrupt += Intact(prefix[i], (*views)[i]) ? 0 : 1;
      sm->FinishReadPrefetched(prefix, 1);
      prefetches.fetch_add(1);
      hits.fetch_add(n);
    }
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) threads.emplace_back(writer, i);
  for (int i = 0; i < 3; ++i) threads.emplace_back(reader, i);
  for (auto& t : threads) t.join();

  EXPECT_EQ(corrupt.load(), 0u);
  EXPECT_GT(prefetches.load(), 10u);
  // Threads alive, nothing died on the way.
  EXPECT_TRUE(sm->store_controller().stats().running);
  EXPECT_TRUE(sm->prefetch_controller().stats().running);
  EXPECT_TRUE(sm->l1_eviction().stats().running);
  EXPECT_EQ(sm->store_controller().stats().loop_errors, 0u);
  EXPECT_EQ(sm->prefetch_controller().stats().loop_errors, 0u);
  auto store = sm->store_controller().stats();
  EXPECT_GT(store.tasks_failed, 0u);     // the faults did happen
  EXPECT_GT(store.tasks_succeeded, 0u);  // and so did successes

  auto* flaky = static_cast<l2::FaultInjectAdapter*>(sm->adapters()[0].get());
  sm->Close();
  // No L1 lock held, no staging left, memory accounted exactly.
  l1::L1Status st = sm->l1().GetStatus();
  EXPECT_TRUE(st.healthy);
  EXPECT_EQ(st.read_locked_objects, 0u);
  EXPECT_EQ(st.staging_objects, 0u);
  EXPECT_EQ(st.used_bytes, st.resident_bytes);
  EXPECT_EQ(st.resident_bytes, st.resident_objects * kObj);
  // No task in flight; the adapter's accounts equal its content.
  EXPECT_EQ(flaky->Counters().in_flight_tasks, 0u);
  auto* inner = static_cast<l2::MockAdapter*>(flaky->inner());
  EXPECT_EQ(inner->Counters().in_flight_tasks, 0u);
  EXPECT_EQ(inner->Usage().used_bytes, inner->debug_actual_usage().used_bytes);
  EXPECT_EQ(flaky->Usage().used_bytes, inner->debug_actual_usage().used_bytes);
  EXPECT_EQ(inner->debug_locked_count(), 0u);
}

}  // namespace
}  // namespace kvtier::storage
