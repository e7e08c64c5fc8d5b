// Several threads storing, looking up, loading, unlocking, cancelling and deleting against a
// live server for about two seconds (run under TSan in the tsan preset). Label: stress.
#include <thread>

#include <absl/container/flat_hash_map.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <unistd.h>

#include "kvtier/common/mutex.h"
#include "kvtier/l2/redis/redis_adapter.h"
#include "kvtier/l2/redis/redis_test_util.h"
#include "kvtier/sync/event_fd.h"

namespace kvtier::l2 {
namespace {

using redis_test::DrainEventFd;
using redis_test::MakeKeys;
using redis_test::MakeObject;
using redis_test::RedisServerTest;
using redis_test::Spans;

// Drains an adapter's completion eventfds on one thread and wakes every waiter, so several
// threads can wait for their own tasks.
class CompletionHub {
 public:
  explicit CompletionHub(L2Adapter* adapter) : adapter_(adapter) {
    stop_ = sync::EventFd::Create().value();
    thread_ = std::thread([this] { Run(); });
  }
  ~CompletionHub() {
    stop_.Signal();
    thread_.join();
  }

  std::optional<StoreResult> WaitStore(TaskId task, Duration timeout) {
    TimePoint deadline = std::chrono::steady_clock::now() + timeout;
    MutexLock lock(&mu_);
    for (;;) {
      auto it = stores_.find(task);
      if (it != stores_.end()) {
        StoreResult r = std::move(it->second);
        stores_.erase(it);
        return r;
      }
      if (!cv_.WaitUntil(&mu_, deadline) && std::chrono::steady_clock::now() >= deadline) {
        return std::nullopt;
      }
    }
  }

  template <typename Query>
  std::optional<Bitmap> WaitResult(Query query, Duration timeout) {
    TimePoint deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      uint64_t generation;
      {
        MutexLock lock(&mu_);
        generation = generation_;
      }
      if (auto r = query()) return r;
      MutexLock lock(&mu_);
      while (generation_ == generation) {
        if (!cv_.WaitUntil(&mu_, deadline) && std::chrono::steady_clock::now() >= deadline) {
          return std::nullopt;
        }
      }
    }
  }

 private:
  void Run() {
    pollfd fds[4] = {{adapter_->store_event_fd(), POLLIN, 0},
                     {adapter_->lookup_event_fd(), POLLIN, 0},
                     {adapter_->load_event_fd(), POLLIN, 0},
                     {stop_.fd(), POLLIN, 0}};
    for (;;) {
      if (::poll(fds, 4, -1) <= 0) continue;
      if (fds[3].revents != 0) return;
      DrainEventFd(adapter_->lookup_event_fd());
      DrainEventFd(adapter_->load_event_fd());
      std::vector<StoreResult> done = adapter_->PopCompletedStores();
      {
        MutexLock lock(&mu_);
        for (StoreResult& r : done) stores_.emplace(r.task, std::move(r));
        ++generation_;
      }
      cv_.NotifyAll();
    }
  }

  L2Adapter* adapter_;
  sync::EventFd stop_;
  std::thread thread_;
  Mutex mu_;
  CondVar cv_;
  absl::flat_hash_map<TaskId, StoreResult> stores_ KVT_GUARDED_BY(mu_);
  uint64_t generation_ KVT_GUARDED_BY(mu_) = 0;
};

class RedisStressTest : public RedisServerTest {};

TEST_F(RedisStressTest, ConcurrentStoreLookupLoadCancelDelete) {
  auto adapter = MakeAdapter({{"connections", 3}});
  ASSERT_NE(adapter, nullptr);
  CompletionHub hub(adapter.get());
  constexpr int kThreads = 4;
  constexpr size_t kKeysPerThread = 48, kBatch = 4;
  constexpr Duration kRun = std::chrono::seconds(2);
  constexpr Duration kWait = std::chrono::seconds(60);
  const TimePoint end = std::chrono::steady_clock::now() + kRun;
  std::vector<uint64_t> rounds(kThreads, 0);

  auto worker = [&](int t) {
    auto keys = MakeKeys(kKeysPerThread, size_t{10'000} * (t + 1));
    std::vector<std::vector<uint8_t>> objects;
    for (size_t i = 0; i < kKeysPerThread; ++i) {
      objects.push_back(MakeObject(4096 + (i * 7919) % (size_t{60} << 10), size_t{1000} * t + i));
    }
    for (uint64_t round = 0; std::chrono::steady_clock::now() < end; ++round) {
      size_t first = (round * kBatch) % kKeysPerThread;
      std::span<const ObjectKey> batch = std::span(keys).subspan(first, kBatch);
      std::vector<std::span<const uint8_t>> src;
      for (size_t i = 0; i < kBatch; ++i) src.emplace_back(objects[first + i]);

      auto stored = hub.WaitStore(adapter->SubmitStore(batch, src), kWait);
      ASSERT_TRUE(stored);
      ASSERT_TRUE(stored->status.ok()) << stored->status.ToString();

      TaskId lookup = adapter->SubmitLookupAndLock(batch);
      auto found = hub.WaitResult([&] { return adapter->QueryLookupAndLockResult(lookup); }, kWait);
      ASSERT_TRUE(found);
      ASSERT_TRUE(found->All()) << found->ToString();

      std::vector<std::vector<uint8_t>> out;
      for (size_t i = 0; i < kBatch; ++i) out.emplace_back(objects[first + i].size());
      TaskId load = adapter->SubmitLoad(batch, Spans(out));
      auto loaded = hub.WaitResult([&] { return adapter->QueryLoadResult(load); }, kWait);
      ASSERT_TRUE(loaded);
      ASSERT_TRUE(loaded->All()) << loaded->ToString();
      for (size_t i = 0; i < kBatch; ++i) ASSERT_EQ(out[i], objects[first + i]);
      adapter->SubmitUnlock(batch);

      if (round % 5 == 0) {
        // Cancel a load at once; when it cannot be cancelled, wait for it.
        TaskId doomed = adapter->SubmitLoad(batch, Spans(out));
        if (!adapter->Cancel(doomed)) {
          ASSERT_TRUE(hub.WaitResult([&] { return adapter->QueryLoadResult(doomed); }, kWait));
        }
      }
      if (round % 7 == 3) {
        auto deleted = adapter->Delete(batch);
        ASSERT_TRUE(deleted) << deleted.error().ToString();
        ASSERT_TRUE(deleted->All()) << deleted->ToString();
      }
      // Status readers run beside the I/O.
      ASSERT_TRUE(adapter->StatusJson()["healthy"].get<bool>());
      (void)adapter->Usage();
      ++rounds[t];
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_GT(rounds[t], 0u) << "thread " << t;
  AdapterCounters c = adapter->Counters();
  EXPECT_EQ(c.store_tasks_failed, 0u);
  EXPECT_EQ(c.in_flight_tasks, 0u);
  EXPECT_EQ(adapter->StatusJson()["redis"]["locked_keys"], 0);
  adapter->Close();
}

// Stores and deletions of the same keys racing on different connections: the accounts must
// match what the server holds at the end (each key's store and deletion are reported in the
// order Redis applied them).
TEST_F(RedisStressTest, RacingStoresAndDeletesKeepTheAccountsExact) {
  // With max_capacity, the accounting the adapter keeps exact (see RedisAdapter).
  auto adapter = MakeAdapter({{"connections", 3}, {"max_capacity", "1GiB"}});
  ASSERT_NE(adapter, nullptr);
  CompletionHub hub(adapter.get());
  constexpr size_t kKeys = 8;
  constexpr Duration kWait = std::chrono::seconds(60);
  const TimePoint end = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  auto keys = MakeKeys(kKeys);
  std::vector<std::vector<uint8_t>> objects;
  objects.reserve(kKeys);
  for (size_t i = 0; i < kKeys; ++i) objects.push_back(MakeObject(1000 + i, i));
  std::vector<std::span<const uint8_t>> sources(objects.begin(), objects.end());

  auto storer = [&] {
    while (std::chrono::steady_clock::now() < end) {
      auto r = hub.WaitStore(adapter->SubmitStore(keys, sources), kWait);
      ASSERT_TRUE(r);
      ASSERT_TRUE(r->status.ok()) << r->status.ToString();
    }
  };
  auto deleter = [&] {
    while (std::chrono::steady_clock::now() < end) {
      auto deleted = adapter->Delete(keys);
      ASSERT_TRUE(deleted) << deleted.error().ToString();
      ASSERT_TRUE(deleted->All());
    }
  };
  std::thread a(storer), b(storer), c(deleter);
  a.join();
  b.join();
  c.join();

  uint64_t expected = 0;
  for (size_t i = 0; i < kKeys; ++i) {
    if (server_->Command({"EXISTS", adapter->RedisKey(keys[i])}).value() == "1") {
      expected += objects[i].size();
    }
  }
  EXPECT_EQ(adapter->Usage().used_bytes, expected);
  EXPECT_EQ(adapter->Counters().in_flight_tasks, 0u);
  adapter->Close();
}

}  // namespace
}  // namespace kvtier::l2
