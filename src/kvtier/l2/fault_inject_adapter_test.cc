#include "kvtier/l2/fault_inject_adapter.h"

#include <algorithm>
#include <chrono>
#include <memory>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "kvtier/common/check.h"
#include "kvtier/common/units.h"
#include "kvtier/l2/factory.h"
#include "kvtier/l2/mock_adapter.h"
#include "kvtier/l2/testing/adapter_conformance.h"

namespace kvtier::l2 {

namespace testing {
INSTANTIATE_TEST_SUITE_P(FaultInject, AdapterConformanceTest,
                         ::testing::Values(AdapterCase{
                             "fault_inject_over_mock",
                             [] {
                               nlohmann::json config = {
                                   {"type", "fault_inject"},
                                   {"inner", {{"type", "mock"}, {"capacity", "64MiB"}}},
                                   {"store_failure_rate", 0},
                                   {"load_failure_rate", 0},
                                   {"lookup_failure_rate", 0},
                                   {"hang_rate", 0}};
                               return MakeL2Adapter(config, 0).value();
                             }}),
                         AdapterCaseName);
}  // namespace testing

namespace {

using testing::CompletionWaiter;
using testing::ConstSpans;
using testing::LoadAndWait;
using testing::LookupAndWait;
using testing::Spans;
using testing::StoreAndWait;
using testing::TestBytes;
using testing::TestKeys;

constexpr size_t kObj = 1024;

// A fault_inject adapter over a mock of `capacity`, with `settings` merged into its config.
std::unique_ptr<FaultInjectAdapter> MakeFault(nlohmann::json settings,
                                              const std::string& capacity = "64MiB") {
  nlohmann::json config = {{"type", "fault_inject"},
                           {"inner", {{"type", "mock"}, {"capacity", capacity}}}};
  config.update(settings);
  auto a = MakeL2Adapter(config, 0);
  EXPECT_TRUE(a.has_value()) << a.error().ToString();
  if (!a) return nullptr;
  EXPECT_EQ((*a)->type(), "fault_inject");
  return std::unique_ptr<FaultInjectAdapter>(static_cast<FaultInjectAdapter*>(a->release()));
}

MockAdapter& Inner(FaultInjectAdapter& f) {
  auto* mock = dynamic_cast<MockAdapter*>(f.inner());
  KVT_CHECK(mock != nullptr);
  return *mock;
}

std::vector<std::vector<uint8_t>> Objects(std::span<const ObjectKey> keys, size_t size = kObj) {
  std::vector<std::vector<uint8_t>> objects;
  for (const ObjectKey& k : keys) objects.push_back(TestBytes(k, size));
  return objects;
}

std::vector<std::vector<uint8_t>> Buffers(size_t n, size_t size = kObj) {
  return std::vector<std::vector<uint8_t>>(n, std::vector<uint8_t>(size, 0xee));
}

void ExpectSameUsage(const AdapterUsage& a, const AdapterUsage& b) {
  EXPECT_EQ(a.used_bytes, b.used_bytes);
  EXPECT_EQ(a.bytes_by_cache_salt, b.bytes_by_cache_salt);
}

struct Pattern {
  std::vector<bool> store_ok;
  Bitmap lookup;
  Bitmap load;
  friend bool operator==(const Pattern&, const Pattern&) = default;
};

// 40 single-key stores, one lookup of the 40 keys, one load of them, all at 30% failures.
Pattern RunPattern(uint64_t seed) {
  auto f = MakeFault({{"store_failure_rate", 0.3},
                      {"lookup_failure_rate", 0.3},
                      {"load_failure_rate", 0.3},
                      {"seed", seed}});
  auto keys = TestKeys(40);
  auto objects = Objects(keys);
  Pattern p;
  for (size_t i = 0; i < keys.size(); ++i) {
    std::vector<std::vector<uint8_t>> one = {objects[i]};
    p.store_ok.push_back(StoreAndWait(*f, std::span(keys).subspan(i, 1), one).status.ok());
  }
  p.lookup = LookupAndWait(*f, keys);
  f->SubmitUnlock(keys);
  auto buffers = Buffers(keys.size());
  p.load = LoadAndWait(*f, keys, buffers);
  for (size_t i = 0; i < keys.size(); ++i) {
    // A stored key missing from the lookup or the load was dropped by the wrapper.
    EXPECT_EQ(Inner(*f).debug_has_key(keys[i]), p.store_ok[i]);
    EXPECT_TRUE(!p.lookup.Test(i) || p.store_ok[i]);
    if (p.load.Test(i)) {
      EXPECT_TRUE(buffers[i] == objects[i]) << i;
    }
  }
  EXPECT_EQ(Inner(*f).debug_locked_count(), 0u);
  f->Close();
  return p;
}

size_t Count(const std::vector<bool>& v) { return std::count(v.begin(), v.end(), true); }

TEST(FaultInjectAdapterTest, SameSeedGivesTheSameFailurePattern) {
  Pattern a = RunPattern(7);
  Pattern b = RunPattern(7);
  EXPECT_EQ(a, b);
  // About 30% of each kind fails (wide bounds: the pattern is fixed by the seed anyway).
  const size_t stored = Count(a.store_ok);
  EXPECT_GE(stored, 20u);
  EXPECT_LE(stored, 36u);
  EXPECT_LT(a.lookup.PopCount(), stored);
  EXPECT_LT(a.load.PopCount(), stored);
  EXPECT_GT(a.load.PopCount(), 0u);
  EXPECT_FALSE(RunPattern(8) == a);
}

TEST(FaultInjectAdapterTest, RateOneFailsEveryStore) {
  auto f = MakeFault({{"store_failure_rate", 1.0}});
  auto keys = TestKeys(4);
  for (size_t i = 0; i < keys.size(); ++i) {
    StoreResult r = StoreAndWait(*f, std::span(keys).subspan(i, 1), Objects({&keys[i], 1}));
    EXPECT_EQ(r.status.code(), StatusCode::kIOError);
    EXPECT_TRUE(r.status.retryable());
  }
  EXPECT_EQ(Inner(*f).debug_stored_count(), 0u);
  EXPECT_EQ(Inner(*f).Counters().store_tasks, 0u);  // never forwarded
  EXPECT_EQ(f->Counters().store_tasks_failed, 4u);
  EXPECT_EQ(f->Usage().used_bytes, 0u);
  f->Close();
}

TEST(FaultInjectAdapterTest, RateOneFailsEveryLookupAndLoadAndReleasesLocks) {
  auto f = MakeFault({{"lookup_failure_rate", 1.0}, {"load_failure_rate", 1.0}});
  auto keys = TestKeys(4);
  ASSERT_TRUE(StoreAndWait(*f, keys, Objects(keys)).status.ok());
  EXPECT_EQ(LookupAndWait(*f, keys).ToString(), "0000");
  EXPECT_EQ(Inner(*f).debug_locked_count(), 0u);  // the inner locks were released
  auto buffers = Buffers(4);
  EXPECT_EQ(LoadAndWait(*f, keys, buffers).ToString(), "0000");
  EXPECT_EQ(f->Counters().load_keys_failed, 4u);
  EXPECT_EQ(f->Counters().load_bytes, 0u);
  nlohmann::json j = f->StatusJson();
  EXPECT_EQ(j["fault_inject"]["injected_lookup_misses"], 4);
  EXPECT_EQ(j["fault_inject"]["injected_load_failures"], 4);
  EXPECT_EQ(j["inner"]["type"], "mock");
  f->Close();
}

TEST(FaultInjectAdapterTest, HungTasksNeverReportAndCancelReturnsTrue) {
  auto f = MakeFault({{"hang_rate", 1.0}});
  auto keys = TestKeys(2);
  auto objects = std::make_unique<std::vector<std::vector<uint8_t>>>(Objects(keys));
  auto sources = ConstSpans(*objects);
  auto buffers = std::make_unique<std::vector<std::vector<uint8_t>>>(Buffers(2));
  auto targets = Spans(*buffers);

  TaskId store = f->SubmitStore(keys, sources);
  TaskId lookup = f->SubmitLookupAndLock(keys);
  TaskId load = f->SubmitLoad(keys, targets);
  EXPECT_EQ(f->debug_hung_count(), 3u);
  EXPECT_EQ(f->Counters().in_flight_tasks, 3u);
  AdapterCounters inner = Inner(*f).Counters();
  EXPECT_EQ(inner.store_tasks + inner.lookup_tasks + inner.load_tasks, 0u);  // never forwarded

  EXPECT_TRUE(f->Cancel(store));
  EXPECT_TRUE(f->Cancel(lookup));
  EXPECT_TRUE(f->Cancel(load));
  objects.reset();  // never touched: safe to free at once
  buffers.reset();
  EXPECT_EQ(f->debug_hung_count(), 0u);
  EXPECT_EQ(f->Counters().in_flight_tasks, 0u);
  EXPECT_EQ(f->Counters().cancelled_tasks, 3u);
  EXPECT_TRUE(f->PopCompletedStores().empty());
  EXPECT_FALSE(f->QueryLookupAndLockResult(lookup).has_value());
  EXPECT_FALSE(f->QueryLoadResult(load).has_value());
  f->Close();
}

// Which of 20 lookups hang at hang_rate 0.5 for `seed`; the others complete.
std::vector<bool> HungLookups(uint64_t seed) {
  auto f = MakeFault({{"hang_rate", 0.5}, {"seed", seed}});
  auto keys = TestKeys(1);
  std::vector<TaskId> tasks;
  for (int i = 0; i < 20; ++i) tasks.push_back(f->SubmitLookupAndLock(keys));
  EXPECT_TRUE(testing::WaitForCondition(
      *f, [&] { return f->Counters().in_flight_tasks == f->debug_hung_count(); }));
  std::vector<bool> hung;
  for (TaskId t : tasks) {
    const bool done = f->QueryLookupAndLockResult(t).has_value();
    hung.push_back(!done);
    if (!done) {
      EXPECT_TRUE(f->Cancel(t));
    }
  }
  EXPECT_EQ(f->Counters().in_flight_tasks, 0u);
  EXPECT_EQ(f->debug_hung_count(), 0u);
  f->Close();
  return hung;
}

TEST(FaultInjectAdapterTest, HangRateHangsADeterministicSubset) {
  std::vector<bool> a = HungLookups(3);
  EXPECT_EQ(a, HungLookups(3));
  EXPECT_GE(Count(a), 4u);
  EXPECT_LE(Count(a), 16u);
}

TEST(FaultInjectAdapterTest, DelayedTaskCancelledBeforeForwardingNeverReachesTheInner) {
  auto f = MakeFault({{"delay", "1h"}});
  auto keys = TestKeys(1);
  auto objects = std::make_unique<std::vector<std::vector<uint8_t>>>(Objects(keys));
  auto sources = ConstSpans(*objects);
  TaskId store = f->SubmitStore(keys, sources);
  EXPECT_TRUE(f->Cancel(store));
  objects.reset();
  EXPECT_EQ(Inner(*f).Counters().store_tasks, 0u);
  EXPECT_EQ(f->Counters().in_flight_tasks, 0u);

  // A delayed task still pending at Close fails without reaching the inner adapter.
  auto again = Objects(keys);
  auto again_src = ConstSpans(again);
  TaskId pending = f->SubmitStore(keys, again_src);
  f->Close();
  auto results = f->PopCompletedStores();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].task, pending);
  EXPECT_FALSE(results[0].status.ok());
  EXPECT_EQ(Inner(*f).Counters().store_tasks, 0u);
}

TEST(FaultInjectAdapterTest, DelayPostponesCompletion) {
  const auto kDelay = std::chrono::milliseconds(20);
  auto f = MakeFault({{"delay", "20ms"}});
  auto keys = TestKeys(1);
  auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(StoreAndWait(*f, keys, Objects(keys)).status.ok());
  EXPECT_GE(std::chrono::steady_clock::now() - start, kDelay);
  start = std::chrono::steady_clock::now();
  EXPECT_EQ(LookupAndWait(*f, keys).ToString(), "1");
  EXPECT_GE(std::chrono::steady_clock::now() - start, kDelay);
  f->SubmitUnlock(keys);
  f->Close();
}

TEST(FaultInjectAdapterTest, AccountingMatchesTheInnerAdapter) {
  // 8 objects fit in the inner mock: stores evict; deletes and failures in between.
  auto f =
      MakeFault({{"store_failure_rate", 0.3}, {"load_failure_rate", 0.3}, {"seed", 5}}, "8KiB");
  testing::RecordingL2Listener listener;
  f->AddListener(&listener);
  auto plain = TestKeys(20, 0, "acct/model", "");
  auto salted = TestKeys(20, 0, "acct/model", "tenant");
  for (size_t i = 0; i < 20; i += 2) {
    for (const auto* keys : {&plain, &salted}) {
      auto two = std::span(*keys).subspan(i, 2);
      StoreAndWait(*f, two, Objects(two)).status.IgnoreError();
    }
    if (i % 6 == 4) {
      EXPECT_EQ(LookupAndWait(*f, std::span(plain).subspan(i, 1)).size(), 1u);  // may lock
      ASSERT_TRUE(f->Delete(std::span(salted).subspan(i, 2), /*force=*/i % 12 == 4).has_value());
      f->SubmitUnlock(std::span(plain).subspan(i, 1));
    }
    ExpectSameUsage(f->Usage(), f->inner()->Usage());
    ExpectSameUsage(f->Usage(), Inner(*f).debug_actual_usage());
  }
  EXPECT_GT(f->Counters().store_tasks_failed, 0u);
  EXPECT_GT(f->Counters().deleted_keys, 0u);
  EXPECT_EQ(f->Counters().deleted_keys, f->inner()->Counters().deleted_keys);
  EXPECT_EQ(f->Counters().store_bytes, f->inner()->Counters().store_bytes);
  f->Close();
  ExpectSameUsage(f->Usage(), Inner(*f).debug_actual_usage());
  // The wrapper's listeners saw exactly what it holds.
  uint64_t net = 0;
  for (const auto& [key, size] : listener.stored()) net += size;
  EXPECT_EQ(net - listener.deleted().size() * kObj, f->Usage().used_bytes);
}

TEST(FaultInjectAdapterTest, InnerNameDefaultsToOuterName) {
  auto f = MakeL2Adapter({{"type", "fault_inject"},
                          {"name", "flaky"},
                          {"inner", {{"type", "mock"}, {"capacity", "1MiB"}}}},
                         0);
  ASSERT_TRUE(f.has_value()) << f.error().ToString();
  EXPECT_EQ((*f)->name(), "flaky");
  EXPECT_EQ(static_cast<FaultInjectAdapter&>(**f).inner()->name(), "flaky.inner");
  EXPECT_EQ((*f)->Usage().capacity_bytes, kMiB);
  (*f)->Close();

  f = MakeL2Adapter({{"type", "fault_inject"},
                     {"inner", {{"type", "mock"}, {"name", "m"}, {"capacity", "1MiB"}}}},
                    4);
  ASSERT_TRUE(f.has_value()) << f.error().ToString();
  EXPECT_EQ((*f)->name(), "fault_inject4");
  EXPECT_EQ(static_cast<FaultInjectAdapter&>(**f).inner()->name(), "m");
  (*f)->Close();
}

TEST(FaultInjectAdapterTest, FactoryRejectsBadConfig) {
  const nlohmann::json inner = {{"type", "mock"}, {"capacity", "1MiB"}};
  struct Case {
    nlohmann::json config;
    std::string needle;
  };
  const Case cases[] = {
      {nlohmann::json::object(), "'inner': required setting is missing"},
      {{{"inner", inner}, {"store_failure_rate", 1.5}}, "'store_failure_rate'"},
      {{{"inner", inner}, {"hang_rate", -0.1}}, "'hang_rate'"},
      {{{"inner", inner}, {"delay", "later"}}, "'delay'"},
      {{{"inner", inner}, {"seed", -1}}, "'seed'"},
      {{{"inner", inner}, {"hang", 0.1}}, "'hang'"},
      {{{"inner", {{"type", "tape"}}}}, "unknown type 'tape'"},
      {{{"inner", {{"type", "mock"}}}}, "'capacity'"},
  };
  for (const Case& c : cases) {
    auto a = MakeFaultInjectAdapter(c.config, "f");
    ASSERT_FALSE(a.has_value()) << c.config.dump();
    EXPECT_EQ(a.error().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(a.error().message().find("fault_inject adapter 'f'"), std::string::npos)
        << a.error().ToString();
    EXPECT_NE(a.error().message().find(c.needle), std::string::npos)
        << c.config.dump() << " -> " << a.error().ToString();
  }
}

}  // namespace
}  // namespace kvtier::l2
