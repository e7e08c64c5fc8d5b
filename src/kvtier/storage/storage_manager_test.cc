#include "kvtier/storage/storage_manager.h"

#include <gtest/gtest.h>

#include "kvtier/storage/storage_test_util.h"

namespace kvtier::storage {
namespace {

using namespace testing;
using keys::Bitmap;

StorageOptions Options(uint64_t l1_objects, std::vector<nlohmann::json> adapters) {
  StorageOptions o;
  o.l1.capacity_bytes = l1_objects * kObj;
  o.l1.num_shards = 4;
  o.l2_adapters = std::move(adapters);
  return o;
}

nlohmann::json Mock(std::string name = "mock0") {
  return {{"type", "mock"}, {"name", std::move(name)}, {"capacity", "256MiB"}};
}

class StorageManagerTest : public ::testing::Test {
 protected:
  void SetUp() override { sm_ = StorageManager::Create(Options(64, {Mock()})).value(); }

  // Writes keys through the store path and waits until L2 has them all.
  void StoreAndWaitForL2(std::span<const ObjectKey> keys) {
    std::vector<ObjectView> views;
    ASSERT_EQ(sm_->ReserveWrite(keys, kObj, &views), All(keys.size(), L1Result::kSuccess));
    for (size_t i = 0; i < keys.size(); ++i) std::memset(views[i].data, PatternOf(keys[i]), kObj);
    ASSERT_EQ(sm_->FinishWrite(keys), All(keys.size(), L1Result::kSuccess));
    ASSERT_TRUE(sm_->FlushToL2(std::chrono::seconds(30)));
    ASSERT_EQ(sm_->store_controller().stats().keys_stored,
              sm_->store_controller().stats().keys_received);
  }

  Bitmap Prefetch(std::span<const ObjectKey> keys, uint32_t read_locks = 1) {
    PrefetchHandle h = sm_->SubmitPrefetch(keys, kObj, read_locks);
    EXPECT_TRUE(sm_->WaitPrefetch(h, std::chrono::seconds(30)));
    return sm_->QueryPrefetch(h).value();
  }

  std::unique_ptr<StorageManager> sm_;
};

TEST_F(StorageManagerTest, ReserveWriteSingleMultipleAndPartialOom) {
  auto keys = MakeKeys(70);
  std::vector<ObjectView> views;
  EXPECT_EQ(sm_->ReserveWrite(std::span(keys).subspan(0, 1), kObj, &views)[0], L1Result::kSuccess);
  EXPECT_EQ(sm_->ReserveWrite(std::span(keys).subspan(1, 10), kObj, &views),
            All(10, L1Result::kSuccess));
  // 53 slots left: a batch of 60 new keys does not fit at all.
  EXPECT_EQ(sm_->ReserveWrite(std::span(keys).subspan(11, 59), kObj, &views),
            All(59, L1Result::kOutOfMemory));
  EXPECT_EQ(sm_->AbortWrite(std::span(keys).subspan(0, 11)), All(11, L1Result::kSuccess));
  EXPECT_EQ(sm_->l1().used_bytes(), 0u);
}

TEST_F(StorageManagerTest, FullL1HitNeedsNoL2) {
  auto keys = MakeKeys(5);
  StoreAndWaitForL2(keys);
  PrefetchHandle h = sm_->SubmitPrefetch(keys, kObj, 1);
  EXPECT_EQ(h.l1_hits, 5u);
  EXPECT_EQ(h.l2_request, 0u);
  EXPECT_EQ(sm_->QueryPrefetchLookupHits(h), 5u);
  EXPECT_EQ(sm_->QueryPrefetch(h)->CountLeadingOnes(), 5u);
  auto views = sm_->ReadPrefetched(keys);
  ASSERT_TRUE(views);
  for (size_t i = 0; i < 5; ++i) EXPECT_TRUE(Intact(keys[i], (*views)[i]));
  sm_->FinishReadPrefetched(keys, 1);
  EXPECT_EQ(sm_->l1().GetStatus().read_locked_objects, 0u);
}

TEST_F(StorageManagerTest, L1HitsAfterTheFirstMissAreReleased) {
  sm_ = StorageManager::Create(Options(64, {})).value();  // no L2
  auto keys = MakeKeys(5);
  std::vector<ObjectView> views;
  std::vector<ObjectKey> present = {keys[0], keys[1], keys[3], keys[4]};
  ASSERT_EQ(sm_->ReserveWrite(present, kObj, &views), All(4, L1Result::kSuccess));
  ASSERT_EQ(sm_->FinishWrite(present), All(4, L1Result::kSuccess));
  EXPECT_EQ(Prefetch(keys).ToString(), "11000");
  // keys 3 and 4 are not held for the caller: deletable; 0 and 1 are.
  EXPECT_EQ(sm_->l1().Delete(std::span(keys).subspan(3, 2)), All(2, L1Result::kSuccess));
  EXPECT_EQ(sm_->l1().Delete(std::span(keys).subspan(0, 1))[0], L1Result::kKeyIsLocked);
}

TEST_F(StorageManagerTest, AfterAnL1ClearHitsComeFromL2BitForBit) {
  auto keys = MakeKeys(8);
  StoreAndWaitForL2(keys);
  EXPECT_EQ(sm_->ClearL1(/*force=*/false), 8u);
  PrefetchHandle h = sm_->SubmitPrefetch(keys, kObj, 1);
  EXPECT_EQ(h.l1_hits, 0u);
  ASSERT_TRUE(sm_->WaitPrefetch(h, std::chrono::seconds(30)));
  EXPECT_EQ(sm_->QueryPrefetchLookupHits(h), 8u);
  EXPECT_EQ(sm_->QueryPrefetch(h)->CountLeadingOnes(), 8u);
  auto views = sm_->ReadPrefetched(keys);
  ASSERT_TRUE(views);
  for (size_t i = 0; i < keys.size(); ++i) EXPECT_TRUE(Intact(keys[i], (*views)[i])) << i;
  sm_->FinishReadPrefetched(keys, 1);
  EXPECT_EQ(sm_->l1().used_bytes(), 0u);  // L2 hits were temporary objects
}

TEST_F(StorageManagerTest, MixedL1PrefixAndL2Continuation) {
  auto keys = MakeKeys(6);
  StoreAndWaitForL2(keys);
  ASSERT_EQ(sm_->l1().Delete(std::span(keys).subspan(3)), All(3, L1Result::kSuccess));
  PrefetchHandle h = sm_->SubmitPrefetch(keys, kObj, 1);
  EXPECT_EQ(h.l1_hits, 3u);
  ASSERT_TRUE(sm_->WaitPrefetch(h, std::chrono::seconds(30)));
  EXPECT_EQ(sm_->QueryPrefetch(h)->CountLeadingOnes(), 6u);
  EXPECT_TRUE(sm_->ReadPrefetched(keys));
}

TEST_F(StorageManagerTest, ReadPrefetchedIsAllOrNothing) {
  auto keys = MakeKeys(3);
  StoreAndWaitForL2(std::span(keys).subspan(0, 2));
  ASSERT_EQ(Prefetch(std::span(keys).subspan(0, 2)).CountLeadingOnes(), 2u);
  auto r = sm_->ReadPrefetched(keys);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), StatusCode::kNotFound);
  EXPECT_NE(r.error().message().find(keys[2].ToString()), std::string::npos);
  EXPECT_TRUE(sm_->ReadPrefetched(std::span(keys).subspan(0, 2)));  // nothing was released
}

TEST_F(StorageManagerTest, ReadersEachHoldTheirOwnLock) {
  auto keys = MakeKeys(2);
  StoreAndWaitForL2(keys);
  ASSERT_EQ(Prefetch(keys, /*read_locks=*/3).CountLeadingOnes(), 2u);
  sm_->FinishReadPrefetched(keys, 2);
  EXPECT_EQ(sm_->l1().Delete(keys)[0], L1Result::kKeyIsLocked);  // one reader left
  sm_->FinishReadPrefetched(keys, 1);
  EXPECT_EQ(sm_->l1().Delete(keys), All(2, L1Result::kSuccess));
}

TEST_F(StorageManagerTest, StatusHasEverySection) {
  nlohmann::json s = sm_->StatusJson();
  for (const char* k : {"healthy", "l1", "l1_eviction", "store_controller", "prefetch_controller",
                        "l2_adapters", "l2_eviction"}) {
    EXPECT_TRUE(s.contains(k)) << k;
  }
  EXPECT_TRUE(s["healthy"].get<bool>());
  EXPECT_EQ(s["l2_adapters"].size(), 1u);
  EXPECT_EQ(s["l2_adapters"][0]["name"], "mock0");
  EXPECT_TRUE(s["store_controller"]["running"].get<bool>());
}

TEST(StorageManagerConfigTest, BadConfigsFailWithClearErrors) {
  auto bad_type = StorageManager::Create(Options(16, {{{"type", "tape"}}}));
  ASSERT_FALSE(bad_type);
  EXPECT_NE(bad_type.error().message().find("tape"), std::string::npos);
  auto dup = StorageManager::Create(Options(16, {Mock("x"), Mock("x")}));
  ASSERT_FALSE(dup);
  EXPECT_NE(dup.error().message().find("'x'"), std::string::npos);
  nlohmann::json no_capacity_eviction = {{"type", "fault_inject"},
                                         {"inner", {{"type", "mock"}, {"capacity", "1MiB"}}},
                                         {"eviction", {{"policy", "lru"}}}};
  // fault_inject reports the inner capacity, so this one is valid; a typo in the block is not.
  nlohmann::json typo = Mock("y");
  typo["eviction"] = {{"polcy", "lru"}};
  auto t = StorageManager::Create(Options(16, {typo}));
  ASSERT_FALSE(t);
  EXPECT_NE(t.error().message().find("polcy"), std::string::npos);
  // An eviction block inside a wrapper's inner adapter would never run: an error, not ignored.
  nlohmann::json nested_eviction = {
      {"type", "fault_inject"},
      {"inner", {{"type", "mock"}, {"capacity", "1MiB"}, {"eviction", {{"policy", "lru"}}}}}};
  auto nested = StorageManager::Create(Options(16, {nested_eviction}));
  ASSERT_FALSE(nested);
  EXPECT_NE(
      nested.error().message().find("eviction belongs at the top level of the adapter config"),
      std::string::npos)
      << nested.error().ToString();
  StorageOptions o = Options(16, {});
  o.store_policy = "write_around";
  EXPECT_FALSE(StorageManager::Create(o));
}

TEST(StorageManagerEvictionTest, L2EvictionKeepsTheAdapterUnderItsCapacity) {
  nlohmann::json mock = {
      {"type", "mock"},
      {"capacity", std::to_string(40 * kObj)},
      {"eviction", {{"policy", "lru"}, {"trigger_watermark", 0.8}, {"target_watermark", 0.5}}}};
  auto sm = StorageManager::Create(Options(64, {mock})).value();
  ASSERT_EQ(sm->l2_eviction().size(), 1u);
  auto keys = MakeKeys(34);  // 85% of the L2 capacity
  std::vector<ObjectView> views;
  ASSERT_EQ(sm->ReserveWrite(keys, kObj, &views), All(34, L1Result::kSuccess));
  ASSERT_EQ(sm->FinishWrite(keys), All(34, L1Result::kSuccess));
  ASSERT_TRUE(sm->FlushToL2(std::chrono::seconds(30)));
  sm->l2_eviction()[0]->RunOnce();
  EXPECT_LE(sm->adapters()[0]->Usage().used_bytes, 20 * kObj);
  EXPECT_GE(sm->l2_eviction()[0]->stats().evicted_keys, 14u);
}

}  // namespace
}  // namespace kvtier::storage
