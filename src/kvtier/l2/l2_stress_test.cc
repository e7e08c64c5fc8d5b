// Stress: four threads submit stores, lookups, loads, unlocks, deletes and cancels against
// fault_inject(mock) with 30% failures, some hangs and a small delay, while a collector thread
// drains the completions; then the adapter is closed under them. Afterwards: nothing in flight,
// every task not cancelled reported exactly once, every loaded object intact, and the byte
// accounts equal to what the mock actually holds.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>

#include <absl/container/flat_hash_map.h>
#include <absl/container/flat_hash_set.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <poll.h>
#include <unistd.h>

#include "kvtier/common/mutex.h"
#include "kvtier/l2/factory.h"
#include "kvtier/l2/fault_inject_adapter.h"
#include "kvtier/l2/mock_adapter.h"
#include "kvtier/l2/testing/adapter_conformance.h"
#include "kvtier/sync/event_fd.h"

namespace kvtier::l2 {

namespace testing {
// This binary borrows the suite's helpers, not its tests.
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(AdapterConformanceTest);
}  // namespace testing

namespace {

using testing::ConstSpans;
using testing::Spans;
using testing::TestBytes;
using testing::TestKeys;

constexpr size_t kObj = 2048;
constexpr size_t kKeySpace = 256;
constexpr int kThreads = 4;
constexpr size_t kMaxOutstanding = 8;

double StressSeconds() {
  const char* s = std::getenv("KVT_STRESS_SECONDS");
  return s ? std::atof(s) : 2.0;
}

enum class Op { kStore, kLookup, kLoad };

struct Outstanding {
  TaskId task = 0;
  Op op = Op::kStore;
  std::vector<ObjectKey> keys;
  std::vector<std::vector<uint8_t>> buffers;  // store sources or load targets
};

// Completions drained by the collector; workers wait on `cv` for news.
struct Mailbox {
  Mutex mu;
  CondVar cv;
  absl::flat_hash_map<TaskId, StoreResult> stores KVT_GUARDED_BY(mu);
  // Tasks Cancel returned true for (stores are cancelled under mu, so a store result popped
  // later for one of them was reported after its cancel).
  absl::flat_hash_set<TaskId> cancelled KVT_GUARDED_BY(mu);
  uint64_t duplicates KVT_GUARDED_BY(mu) = 0;
  uint64_t reported_after_cancel KVT_GUARDED_BY(mu) = 0;
  uint64_t generation KVT_GUARDED_BY(mu) = 0;
};

void DrainFd(int fd) {
  uint64_t v;
  while (::read(fd, &v, sizeof(v)) > 0) {
  }
}

TEST(L2StressTest, FourThreadsAgainstFaultInjectOverMock) {
  auto made = MakeL2Adapter({{"type", "fault_inject"},
                             {"inner", {{"type", "mock"}, {"capacity", 64 * kObj}}},
                             {"store_failure_rate", 0.3},
                             {"load_failure_rate", 0.3},
                             {"lookup_failure_rate", 0.3},
                             {"hang_rate", 0.02},
                             {"delay", "200us"},
                             {"seed", 11}},
                            0);
  ASSERT_TRUE(made.has_value()) << made.error().ToString();
  std::unique_ptr<L2Adapter> adapter = std::move(*made);
  auto& fault = static_cast<FaultInjectAdapter&>(*adapter);
  auto& mock = dynamic_cast<MockAdapter&>(*fault.inner());

  std::vector<ObjectKey> space = TestKeys(kKeySpace / 2, 0, "stress/model", "");
  for (const ObjectKey& k : TestKeys(kKeySpace / 2, 0, "stress/model", "salted")) {
    space.push_back(k);
  }

  Mailbox box;
  auto stop = sync::EventFd::Create().value();
  std::thread collector([&] {
    pollfd fds[4] = {{adapter->store_event_fd(), POLLIN, 0},
                     {adapter->lookup_event_fd(), POLLIN, 0},
                     {adapter->load_event_fd(), POLLIN, 0},
                     {stop.fd(), POLLIN, 0}};
    for (;;) {
      ::poll(fds, 4, -1);
      if (stop.Drain() > 0) return;
      for (int i = 1; i < 3; ++i) DrainFd(fds[i].fd);
      MutexLock lock(&box.mu);
      for (StoreResult& r : adapter->PopCompletedStores()) {
        if (box.cancelled.contains(r.task)) ++box.reported_after_cancel;
        if (!box.stores.emplace(r.task, std::move(r)).second) ++box.duplicates;
      }
      ++box.generation;
      box.cv.NotifyAll();
    }
  });

  std::atomic<uint64_t> ops{0}, corrupt{0}, loaded_keys{0}, cancelled{0};
  Mutex leftovers_mu;
  std::vector<Outstanding> leftovers;  // guarded by leftovers_mu
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(StressSeconds());

  auto worker = [&](int id) {
    std::mt19937_64 rng(1000 + id);
    std::vector<Outstanding> out;
    std::vector<ObjectKey> held;  // locks this worker's lookups took
    auto pick = [&](size_t n) {
      std::vector<ObjectKey> keys;
      for (size_t i = 0; i < n; ++i) keys.push_back(space[rng() % space.size()]);
      return keys;
    };
    while (std::chrono::steady_clock::now() < deadline) {
      // Reap what finished.
      std::erase_if(out, [&](Outstanding& o) {
        if (o.op == Op::kStore) {
          MutexLock lock(&box.mu);
          return box.stores.erase(o.task) == 1;
        }
        if (o.op == Op::kLookup) {
          auto found = adapter->QueryLookupAndLockResult(o.task);
          if (!found) return false;
          for (size_t i : found->SetIndices()) held.push_back(o.keys[i]);
          return true;
        }
        auto loaded = adapter->QueryLoadResult(o.task);
        if (!loaded) return false;
        for (size_t i : loaded->SetIndices()) {
          loaded_keys.fetch_add(1);
          if (o.buffers[i] != TestBytes(o.keys[i], kObj)) corrupt.fetch_add(1);
        }
        return true;
      });
      if (out.size() >= kMaxOutstanding) {
        // Wait for news; on a timeout go on anyway (hung tasks never finish: cancels clear them).
        MutexLock lock(&box.mu);
        const uint64_t seen = box.generation;
        const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(20);
        while (box.generation == seen) {
          if (!box.cv.WaitUntil(&box.mu, until) && std::chrono::steady_clock::now() >= until) {
            break;
          }
        }
        if (box.generation != seen) continue;
      }
      ops.fetch_add(1);
      const uint64_t dice = rng() % 100;
      const size_t n = 1 + rng() % 4;
      if (dice < 30) {
        Outstanding o{0, Op::kStore, pick(n), {}};
        for (const ObjectKey& k : o.keys) o.buffers.push_back(TestBytes(k, kObj));
        auto sources = ConstSpans(o.buffers);
        o.task = adapter->SubmitStore(o.keys, sources);
        out.push_back(std::move(o));
      } else if (dice < 50) {
        Outstanding o{0, Op::kLookup, pick(n), {}};
        o.task = adapter->SubmitLookupAndLock(o.keys);
        out.push_back(std::move(o));
      } else if (dice < 70) {
        Outstanding o{0, Op::kLoad, pick(n), {}};
        for (size_t i = 0; i < n; ++i) o.buffers.emplace_back(rng() % 10 == 0 ? kObj / 2 : kObj);
        auto targets = Spans(o.buffers);
        o.task = adapter->SubmitLoad(o.keys, targets);
        out.push_back(std::move(o));
      } else if (dice < 80) {
        const size_t keep = held.empty() ? 0 : rng() % held.size();
        adapter->SubmitUnlock(std::span(held).subspan(keep));
        held.resize(keep);
      } else if (dice < 88) {
        adapter->Delete(pick(n % 2 + 1), /*force=*/rng() % 4 == 0).value();
      } else if (!out.empty()) {
        const size_t victim = rng() % out.size();
        const TaskId task = out[victim].task;
        MutexLock lock(&box.mu);
        if (adapter->Cancel(task)) {
          cancelled.fetch_add(1);
          box.cancelled.insert(task);
          box.stores.erase(task);  // popped before the cancel: fine, but nobody collects it
          out.erase(out.begin() + victim);  // frees its buffers: the adapter is done with them
        }
      }
    }
    adapter->SubmitUnlock(held);
    MutexLock lock(&leftovers_mu);
    for (Outstanding& o : out) leftovers.push_back(std::move(o));
  };

  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) threads.emplace_back(worker, i);
  for (auto& t : threads) t.join();

  adapter->Close();  // fails what is still pending (hung and delayed tasks among them)
  stop.Signal();
  collector.join();

  EXPECT_EQ(adapter->Counters().in_flight_tasks, 0u);
  EXPECT_EQ(mock.Counters().in_flight_tasks, 0u);
  MutexLock lock(&box.mu);
  for (StoreResult& r : adapter->PopCompletedStores()) {
    if (box.cancelled.contains(r.task)) ++box.reported_after_cancel;
    if (!box.stores.emplace(r.task, std::move(r)).second) ++box.duplicates;
  }
  EXPECT_EQ(box.duplicates, 0u);
  EXPECT_EQ(box.reported_after_cancel, 0u);
  for (TaskId task : box.cancelled) {
    EXPECT_FALSE(adapter->QueryLookupAndLockResult(task).has_value()) << task;
    EXPECT_FALSE(adapter->QueryLoadResult(task).has_value()) << task;
  }
  MutexLock left_lock(&leftovers_mu);
  size_t leftover_stores = 0;
  for (const Outstanding& o : leftovers) {
    switch (o.op) {
      case Op::kStore:
        ++leftover_stores;
        EXPECT_EQ(box.stores.count(o.task), 1u) << "store " << o.task;
        break;
      case Op::kLookup:
        EXPECT_TRUE(adapter->QueryLookupAndLockResult(o.task).has_value()) << o.task;
        EXPECT_FALSE(adapter->QueryLookupAndLockResult(o.task).has_value()) << o.task;
        break;
      case Op::kLoad: {
        auto loaded = adapter->QueryLoadResult(o.task);
        ASSERT_TRUE(loaded.has_value()) << o.task;
        for (size_t i : loaded->SetIndices()) {
          if (o.buffers[i] != TestBytes(o.keys[i], kObj)) corrupt.fetch_add(1);
        }
        EXPECT_FALSE(adapter->QueryLoadResult(o.task).has_value()) << o.task;
        break;
      }
    }
  }
  // Results of cancelled or already reaped stores never linger.
  EXPECT_EQ(box.stores.size(), leftover_stores);
  EXPECT_EQ(corrupt.load(), 0u);

  const AdapterUsage actual = mock.debug_actual_usage();
  EXPECT_EQ(adapter->Usage().used_bytes, actual.used_bytes);
  EXPECT_EQ(adapter->Usage().bytes_by_cache_salt, actual.bytes_by_cache_salt);
  EXPECT_EQ(mock.Usage().used_bytes, actual.used_bytes);
  EXPECT_EQ(mock.Usage().bytes_by_cache_salt, actual.bytes_by_cache_salt);

  const AdapterCounters c = adapter->Counters();
  EXPECT_GT(ops.load(), 200u);
  EXPECT_GT(c.store_tasks_failed, 0u);
  EXPECT_GT(loaded_keys.load(), 0u);
  std::printf(
      "ops %lu, stores %lu (%lu failed), lookups %lu, loads %lu (%lu keys loaded), "
      "cancelled %lu, deleted keys %lu, used %lu bytes\n",
      static_cast<unsigned long>(ops.load()), static_cast<unsigned long>(c.store_tasks),
      static_cast<unsigned long>(c.store_tasks_failed), static_cast<unsigned long>(c.lookup_tasks),
      static_cast<unsigned long>(c.load_tasks), static_cast<unsigned long>(loaded_keys.load()),
      static_cast<unsigned long>(cancelled.load()), static_cast<unsigned long>(c.deleted_keys),
      static_cast<unsigned long>(actual.used_bytes));
}

}  // namespace
}  // namespace kvtier::l2
