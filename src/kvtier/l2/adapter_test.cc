// The base class's bookkeeping, through a minimal adapter that completes every task inline.
#include "kvtier/l2/adapter.h"

#include <gtest/gtest.h>

#include "kvtier/l2/testing/adapter_conformance.h"

namespace kvtier::l2 {
namespace {

using testing::TestBytes;
using testing::TestKeys;

// Stores the first `store_first_n` keys of each store task (an adapter that fails part way
// through a batch), completes with `store_status`, and holds only sizes.
class InlineAdapter final : public L2Adapter {
 public:
  static std::unique_ptr<InlineAdapter> Make() {
    std::unique_ptr<InlineAdapter> a(new InlineAdapter());
    EXPECT_TRUE(a->InitEvents().ok());
    return a;
  }
  ~InlineAdapter() override { Close(); }

  Status store_status;
  size_t store_first_n = SIZE_MAX;

 protected:
  void DoSubmitStore(TaskId task, std::span<const ObjectKey> keys,
                     std::span<const std::span<const uint8_t>> objects) override {
    std::vector<ObjectKey> stored;
    std::vector<uint64_t> sizes;
    for (size_t i = 0; i < keys.size() && i < store_first_n; ++i) {
      if (sizes_.contains(keys[i])) continue;
      sizes_[keys[i]] = objects[i].size();
      stored.push_back(keys[i]);
      sizes.push_back(objects[i].size());
    }
    CompleteStore(task, store_status, stored, sizes);
  }
  void DoSubmitLookupAndLock(TaskId task, std::span<const ObjectKey> keys) override {
    CompleteLookup(task, Bitmap(keys.size()));
  }
  void DoUnlock(std::span<const ObjectKey> keys) override {}
  void DoSubmitLoad(TaskId task, std::span<const ObjectKey> keys,
                    std::span<const std::span<uint8_t>> buffers) override {
    CompleteLoad(task, Bitmap(keys.size()), 0);
  }
  bool DoCancel(TaskId task) override { return true; }
  Result<Bitmap> DoDelete(std::span<const ObjectKey> keys, bool force) override {
    Bitmap deleted(keys.size());
    std::vector<ObjectKey> gone;
    std::vector<uint64_t> sizes;
    for (size_t i = 0; i < keys.size(); ++i) {
      auto it = sizes_.find(keys[i]);
      if (it == sizes_.end()) continue;
      gone.push_back(keys[i]);
      sizes.push_back(it->second);
      sizes_.erase(it);
      deleted.Set(i);
    }
    NotifyDeleted(gone, sizes);
    return deleted;
  }
  void DoClose() override {}

 private:
  InlineAdapter() : L2Adapter("inline", "inline0", 0) {}
  absl::flat_hash_map<ObjectKey, uint64_t, keys::ObjectKeyHash> sizes_;  // test thread only
};

TEST(L2AdapterTest, FailedStoreStillAccountsTheKeysItStored) {
  auto a = InlineAdapter::Make();
  testing::RecordingL2Listener listener;
  a->AddListener(&listener);
  auto keys = TestKeys(2, 0, "base/model", "salt");
  std::vector<std::vector<uint8_t>> objects = {TestBytes(keys[0], 100), TestBytes(keys[1], 100)};
  a->store_status = Status::IOError("disk full after the first object");
  a->store_first_n = 1;
  StoreResult r = testing::StoreAndWait(*a, keys, objects);
  EXPECT_EQ(r.status.code(), StatusCode::kIOError);
  EXPECT_EQ(r.bytes_written, 100u);
  EXPECT_EQ(a->Counters().store_tasks_failed, 1u);
  // Listeners and accounts agree: key 0 exists.
  EXPECT_EQ(listener.stored().size(), 1u);
  EXPECT_EQ(a->Usage().used_bytes, 100u);
  EXPECT_EQ(a->Usage().bytes_by_cache_salt.at("salt"), 100u);

  a->store_status = Status::OK();
  a->store_first_n = SIZE_MAX;
  r = testing::StoreAndWait(*a, keys, objects);
  EXPECT_TRUE(r.status.ok());
  EXPECT_EQ(r.bytes_written, 100u);  // only key 1 was new
  EXPECT_EQ(a->Usage().used_bytes, 200u);
  EXPECT_EQ(a->Delete(keys).value().ToString(), "11");
  EXPECT_EQ(a->Usage().used_bytes, 0u);
  EXPECT_TRUE(a->Usage().bytes_by_cache_salt.empty());
  a->Close();
}

TEST(L2AdapterTest, KeyLockTableCountsLocks) {
  auto k = TestKeys(2);
  KeyLockTable t;
  t.Lock(k[0]);
  t.Lock(k[0]);
  EXPECT_TRUE(t.IsLocked(k[0]));
  EXPECT_FALSE(t.IsLocked(k[1]));
  t.Unlock(k[1]);  // unknown: ignored
  t.Unlock(k[0]);
  EXPECT_TRUE(t.IsLocked(k[0]));
  t.Unlock(k[0]);
  EXPECT_FALSE(t.IsLocked(k[0]));
  EXPECT_EQ(t.size(), 0u);
}

}  // namespace
}  // namespace kvtier::l2
