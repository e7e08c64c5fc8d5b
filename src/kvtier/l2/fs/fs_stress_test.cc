// Concurrency of the fs adapter (label "stress"; run it under TSan): stores, loads, lookups with
// unlocks and deletes race on a small key set for about a second per engine; then the index must
// equal the files on disk and the usage must be exact.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <random>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "kvtier/common/mutex.h"
#include "kvtier/l2/fs/fs_adapter.h"
#include "kvtier/l2/fs/fs_test_util.h"

namespace kvtier::l2 {
namespace {

using fs_testing::AlignedBuffer;
using fs_testing::MakeKey;
using fs_testing::MakePayload;
using fs_testing::TempDir;
using fs_testing::Waiter;

constexpr int kKeys = 48;

size_t SizeOf(int i) { return 1000 + (static_cast<size_t>(i) * 7919) % 60000; }

// Mirrors the adapter's contents from its listener calls alone: a store of a present key or a
// deletion of an absent one means the calls for a key arrived out of order.
class MirrorListener final : public L2Listener {
 public:
  void OnL2KeysStored(std::span<const ObjectKey> keys, std::span<const uint64_t> sizes) override {
    MutexLock lock(&mu_);
    for (size_t i = 0; i < keys.size(); ++i) {
      if (!mirror_.emplace(keys[i].ToString(), sizes[i]).second) ++out_of_order_;
    }
  }
  void OnL2KeysDeleted(std::span<const ObjectKey> keys) override {
    MutexLock lock(&mu_);
    for (const ObjectKey& k : keys) {
      if (mirror_.erase(k.ToString()) == 0) ++out_of_order_;
    }
  }
  std::map<std::string, uint64_t> mirror() const {
    MutexLock lock(&mu_);
    return mirror_;
  }
  uint64_t out_of_order() const {
    MutexLock lock(&mu_);
    return out_of_order_;
  }

 private:
  mutable Mutex mu_;
  std::map<std::string, uint64_t> mirror_ KVT_GUARDED_BY(mu_);
  uint64_t out_of_order_ KVT_GUARDED_BY(mu_) = 0;
};

class FsStressTest : public ::testing::TestWithParam<FsIoEngineKind> {};

TEST_P(FsStressTest, ConcurrentOperationsKeepIndexFilesAndUsageConsistent) {
  TempDir dir;
  FsAdapterOptions o;
  o.base_path = dir.path() + "/l2";
  o.io_engine = GetParam();
  o.io_threads = 3;
  o.queue_depth = 4;
  auto created = FsAdapter::Create(o, "stress");
  ASSERT_TRUE(created.has_value()) << created.error().ToString();
  std::unique_ptr<FsAdapter> a = std::move(*created);
  MirrorListener mirror;
  a->AddListener(&mirror);
  ASSERT_TRUE(a->Start().ok());

  std::vector<ObjectKey> keys;
  std::vector<std::vector<uint8_t>> payloads;
  for (int i = 0; i < kKeys; ++i) {
    keys.push_back(MakeKey(i, i % 2 ? "org/m" : "m", i % 3 ? "" : "salt"));
    payloads.push_back(MakePayload(i, SizeOf(i)));
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(1000);
  auto running = [&] { return std::chrono::steady_clock::now() < deadline; };
  std::atomic<uint64_t> stores{0}, loads_ok{0}, mismatches{0}, lookups{0};

  std::vector<std::thread> threads;
  // One storer (it owns PopCompletedStores): several tasks in flight at once.
  threads.emplace_back([&] {
    std::mt19937_64 rng(1);
    Waiter waiter(a.get());
    while (running()) {
      std::vector<TaskId> tasks;
      std::vector<std::vector<ObjectKey>> batch_keys(4);
      std::vector<std::vector<std::span<const uint8_t>>> batch_objs(4);
      for (int t = 0; t < 4; ++t) {
        for (int j = 0; j < 3; ++j) {
          int k = static_cast<int>(rng() % kKeys);
          batch_keys[t].push_back(keys[k]);
          batch_objs[t].emplace_back(payloads[k]);
        }
        tasks.push_back(a->SubmitStore(batch_keys[t], batch_objs[t]));
      }
      for (TaskId t : tasks) {
        StoreResult r = waiter.Store(t);
        KVT_CHECK_MSG(r.status.ok(), "{}", r.status.ToString());
        ++stores;
      }
    }
  });
  // Loaders: a successful load returns exactly the stored bytes.
  for (int l = 0; l < 2; ++l) {
    threads.emplace_back([&, l] {
      std::mt19937_64 rng(100 + l);
      Waiter waiter(a.get());
      std::vector<std::unique_ptr<AlignedBuffer>> bufs;
      for (int j = 0; j < 4; ++j) bufs.push_back(std::make_unique<AlignedBuffer>(64 * 1024));
      while (running()) {
        std::vector<ObjectKey> ks;
        std::vector<int> idx;
        std::vector<std::span<uint8_t>> targets;
        for (int j = 0; j < 4; ++j) {
          idx.push_back(static_cast<int>(rng() % kKeys));
          ks.push_back(keys[idx.back()]);
          targets.push_back(bufs[j]->span().first(SizeOf(idx.back())));  // exact size
        }
        Bitmap got = waiter.Load(a->SubmitLoad(ks, targets));
        for (int j = 0; j < 4; ++j) {
          if (!got.Test(j)) continue;
          ++loads_ok;
          const auto& p = payloads[idx[j]];
          if (!std::equal(p.begin(), p.end(), bufs[j]->data())) ++mismatches;
        }
      }
    });
  }
  // Lookups lock, then unlock what they found.
  threads.emplace_back([&] {
    std::mt19937_64 rng(7);
    Waiter waiter(a.get());
    while (running()) {
      std::vector<ObjectKey> ks;
      for (int j = 0; j < 6; ++j) ks.push_back(keys[rng() % kKeys]);
      Bitmap found = waiter.Lookup(a->SubmitLookupAndLock(ks));
      std::vector<ObjectKey> locked;
      for (size_t j : found.SetIndices()) locked.push_back(ks[j]);
      a->SubmitUnlock(locked);
      ++lookups;
    }
  });
  // Deletes, sometimes forced.
  threads.emplace_back([&] {
    std::mt19937_64 rng(9);
    while (running()) {
      std::vector<ObjectKey> ks;
      for (int j = 0; j < 3; ++j) ks.push_back(keys[rng() % kKeys]);
      auto r = a->Delete(ks, rng() % 4 == 0);
      KVT_CHECK(r.has_value());
    }
  });
  for (auto& t : threads) t.join();

  std::printf("%s: %lu store tasks, %lu keys loaded, %lu deleted, %lu lookups\n",
              std::string(a->io_engine_name()).c_str(), static_cast<unsigned long>(stores.load()),
              static_cast<unsigned long>(loads_ok.load()),
              static_cast<unsigned long>(a->Counters().deleted_keys),
              static_cast<unsigned long>(lookups.load()));
  EXPECT_EQ(mismatches.load(), 0u);
  EXPECT_GT(stores.load(), 0u);
  EXPECT_GT(loads_ok.load(), 0u);
  EXPECT_GT(a->Counters().deleted_keys, 0u);
  EXPECT_GT(lookups.load(), 0u);
  EXPECT_EQ(a->corrupt_records(), 0u);
  EXPECT_EQ(a->LockedKeyCount(), 0u);

  // Index == files on disk == what the listener was told; usage exact.
  std::map<std::string, uint64_t> index, by_name;
  uint64_t total = 0;
  std::map<std::string, uint64_t> by_salt;
  for (const auto& [k, size] : a->StoredKeys()) {
    index[FsAdapter::RelativePath(k)] = size;
    by_name[k.ToString()] = size;
    total += size;
    by_salt[std::string(k.cache_salt())] += size;
  }
  EXPECT_EQ(index, fs_testing::RecordFiles(o.base_path));
  EXPECT_EQ(mirror.out_of_order(), 0u);
  EXPECT_EQ(mirror.mirror(), by_name);
  AdapterUsage u = a->Usage();
  EXPECT_EQ(u.used_bytes, total);
  for (const auto& [salt, bytes] : by_salt) EXPECT_EQ(u.bytes_by_cache_salt[salt], bytes);
  EXPECT_EQ(fs_testing::CountFiles(o.base_path + "/tmp"), 0u);
  AdapterCounters c = a->Counters();
  EXPECT_EQ(c.in_flight_tasks, 0u);
  EXPECT_EQ(c.store_tasks_failed, 0u);
  a->Close();
  a.reset();

  // And a restart agrees.
  auto again = FsAdapter::Create(o, "stress");
  ASSERT_TRUE(again.has_value());
  ASSERT_TRUE((*again)->Start().ok());
  EXPECT_EQ((*again)->Usage().used_bytes, total);
  EXPECT_EQ((*again)->recovery_stats().keys, index.size());
  (*again)->Close();
}

std::string EngineName(const ::testing::TestParamInfo<FsIoEngineKind>& p) {
  return p.param == FsIoEngineKind::kPread ? "pread" : "io_uring";
}

INSTANTIATE_TEST_SUITE_P(Engines, FsStressTest,
                         ::testing::Values(FsIoEngineKind::kPread, FsIoEngineKind::kIoUring),
                         EngineName);

}  // namespace
}  // namespace kvtier::l2
