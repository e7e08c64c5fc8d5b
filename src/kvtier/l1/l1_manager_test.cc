#include "kvtier/l1/l1_manager.h"

#include <cstring>
#include <latch>
#include <thread>

#include <gtest/gtest.h>

#include "kvtier/common/units.h"
#include "kvtier/l1/l1_test_util.h"

namespace kvtier::l1 {
namespace {

using namespace std::chrono_literals;
using testing::All;
using testing::MakeKeys;
using testing::RecordingListener;

constexpr uint64_t kObj = 64 * kKiB;
constexpr WriterTag kTagA = 1;
constexpr WriterTag kTagB = 2;

class L1ManagerTest : public ::testing::Test {
 protected:
  void SetUp() override { Make(16 * kMiB); }

  void Make(uint64_t capacity, Duration allocation_wait = Duration::zero()) {
    l1_.reset();
    L1Options o;
    o.capacity_bytes = capacity;
    o.read_ttl = 300s;
    o.write_ttl = 600s;
    o.allocation_wait = allocation_wait;
    o.clock = &clock_;
    o.num_shards = 8;
    l1_ = L1Manager::Create(o).value();
    l1_->AddListener(&events_);
  }

  // ReserveWrite + FinishWrite, asserting success.
  void Store(std::span<const ObjectKey> keys, uint64_t size = kObj, bool temporary = false) {
    std::vector<ObjectView> views;
    ASSERT_EQ(l1_->ReserveWrite(keys, size, temporary, kDefaultWriter, &views),
              All(keys.size(), L1Result::kSuccess));
    for (size_t i = 0; i < keys.size(); ++i)
      std::memset(views[i].data, static_cast<int>(i + 1), size);
    ASSERT_EQ(l1_->FinishWrite(keys, kDefaultWriter), All(keys.size(), L1Result::kSuccess));
  }

  FakeClock clock_;
  RecordingListener events_;
  std::unique_ptr<L1Manager> l1_;
};

TEST_F(L1ManagerTest, CreateValidatesOptions) {
  L1Options o;
  EXPECT_EQ(L1Manager::Create(o).error().code(), StatusCode::kInvalidArgument);  // capacity 0
  o.capacity_bytes = kMiB;
  o.num_shards = 3;
  EXPECT_EQ(L1Manager::Create(o).error().code(), StatusCode::kInvalidArgument);
  o.num_shards = 4;
  o.read_ttl = Duration::zero();
  EXPECT_EQ(L1Manager::Create(o).error().code(), StatusCode::kInvalidArgument);
  o.read_ttl = 1s;
  o.alignment = 3000;
  EXPECT_FALSE(L1Manager::Create(o));
}

TEST_F(L1ManagerTest, ReserveReadCodes) {
  auto keys = MakeKeys(4);
  Store(std::span(keys).subspan(0, 2));
  // keys[2] is only staging: invisible to readers.
  std::vector<ObjectView> staged;
  ASSERT_EQ(l1_->ReserveWrite(std::span(keys).subspan(2, 1), kObj, false, kTagA, &staged)[0],
            L1Result::kSuccess);

  std::vector<ObjectView> views;
  auto r = l1_->ReserveRead(keys, 1, &views);
  EXPECT_EQ(r, (std::vector<L1Result>{L1Result::kSuccess, L1Result::kSuccess,
                                      L1Result::kKeyNotExist, L1Result::kKeyNotExist}));
  ASSERT_NE(views[0].data, nullptr);
  EXPECT_EQ(views[0].size, kObj);
  EXPECT_EQ(views[0].data[0], 1);
  EXPECT_EQ(views[1].data[kObj - 1], 2);
  EXPECT_EQ(views[2].data, nullptr);
}

TEST_F(L1ManagerTest, RepeatedReservationsNeedAsManyFinishes) {
  auto keys = MakeKeys(1);
  Store(keys);
  ASSERT_EQ(l1_->ReserveRead(keys, 1)[0], L1Result::kSuccess);
  ASSERT_EQ(l1_->ReserveRead(keys, 2)[0], L1Result::kSuccess);  // 3 locks
  EXPECT_EQ(l1_->FinishRead(keys, 2)[0], L1Result::kSuccess);
  EXPECT_EQ(l1_->Delete(keys)[0], L1Result::kKeyIsLocked);
  EXPECT_EQ(l1_->FinishRead(keys, 1)[0], L1Result::kSuccess);
  EXPECT_EQ(l1_->FinishRead(keys, 1)[0], L1Result::kKeyInWrongState);
  EXPECT_EQ(l1_->Delete(keys)[0], L1Result::kSuccess);
}

TEST_F(L1ManagerTest, ReadLockCountIsClamped) {
  auto keys = MakeKeys(1);
  Store(keys);
  ASSERT_EQ(l1_->ReserveRead(keys, 1000)[0], L1Result::kSuccess);  // clamped to 128
  EXPECT_EQ(l1_->FinishRead(keys, kMaxReadLocksPerCall)[0], L1Result::kSuccess);
  EXPECT_EQ(l1_->Delete(keys)[0], L1Result::kSuccess);
  Store(keys);
  ASSERT_EQ(l1_->ReserveRead(keys, 0)[0], L1Result::kSuccess);  // clamped to 1
  EXPECT_EQ(l1_->FinishRead(keys, 1)[0], L1Result::kSuccess);
  EXPECT_EQ(l1_->FinishRead(keys, 1)[0], L1Result::kKeyInWrongState);
}

TEST_F(L1ManagerTest, UnsafeReadCodesAndNoExtraLock) {
  auto keys = MakeKeys(3);
  Store(std::span(keys).subspan(0, 2));
  std::vector<ObjectView> locked_views;
  ASSERT_EQ(l1_->ReserveRead(std::span(keys).subspan(0, 1), 1, &locked_views)[0],
            L1Result::kSuccess);

  std::vector<ObjectView> views;
  auto r = l1_->UnsafeRead(keys, &views);
  EXPECT_EQ(r, (std::vector<L1Result>{L1Result::kSuccess, L1Result::kKeyNotReadable,
                                      L1Result::kKeyNotExist}));
  EXPECT_EQ(views[0].data, locked_views[0].data);  // the same object as reserve_read
  // UnsafeRead took no lock: one FinishRead releases the only one.
  EXPECT_EQ(l1_->FinishRead(std::span(keys).subspan(0, 1), 1)[0], L1Result::kSuccess);
  EXPECT_EQ(l1_->UnsafeRead(std::span(keys).subspan(0, 1), &views)[0], L1Result::kKeyNotReadable);
}

TEST_F(L1ManagerTest, FinishReadCodes) {
  auto keys = MakeKeys(3);
  Store(std::span(keys).subspan(0, 2));
  ASSERT_EQ(l1_->ReserveRead(std::span(keys).subspan(0, 1), 1)[0], L1Result::kSuccess);
  EXPECT_EQ(l1_->FinishRead(keys, 1),
            (std::vector<L1Result>{L1Result::kSuccess, L1Result::kKeyInWrongState,
                                   L1Result::kKeyNotExist}));
}

TEST_F(L1ManagerTest, TemporaryObjectFreedWithLastReadLock) {
  auto keys = MakeKeys(2);
  std::vector<ObjectView> views;
  ASSERT_EQ(l1_->ReserveWrite(keys, kObj, /*temporary=*/true, kTagA, &views),
            All(2, L1Result::kSuccess));
  ASSERT_EQ(l1_->FinishWriteAndReserveRead(keys, 2, kTagA), All(2, L1Result::kSuccess));
  EXPECT_EQ(l1_->GetStatus().temporary_objects, 2u);
  EXPECT_EQ(l1_->FinishRead(keys, 1), All(2, L1Result::kSuccess));
  EXPECT_TRUE(l1_->Contains(keys[0]));  // one lock left
  EXPECT_EQ(l1_->FinishRead(keys, 1), All(2, L1Result::kSuccess));
  EXPECT_FALSE(l1_->Contains(keys[0]));
  EXPECT_FALSE(l1_->Exists(keys[1]));
  EXPECT_EQ(l1_->used_bytes(), 0u);
  EXPECT_EQ(l1_->GetStatus().temporary_objects, 0u);
}

TEST_F(L1ManagerTest, ReserveWriteCodes) {
  auto keys = MakeKeys(3);
  Store(std::span(keys).subspan(0, 1));
  std::vector<ObjectView> views;
  // Resident -> not writable; new -> success.
  EXPECT_EQ(l1_->ReserveWrite(std::span(keys).subspan(0, 2), kObj, false, kTagA, &views),
            (std::vector<L1Result>{L1Result::kKeyNotWritable, L1Result::kSuccess}));
  EXPECT_EQ(views[0].data, nullptr);
  EXPECT_NE(views[1].data, nullptr);
  // Live staging of the same tag -> not writable; another tag may stage the same key.
  EXPECT_EQ(l1_->ReserveWrite(std::span(keys).subspan(1, 1), kObj, false, kTagA, &views)[0],
            L1Result::kKeyNotWritable);
  EXPECT_EQ(l1_->ReserveWrite(std::span(keys).subspan(1, 1), kObj, false, kTagB, &views)[0],
            L1Result::kSuccess);
  // The same key twice in one batch: the second is not writable.
  std::vector<ObjectKey> dup = {keys[2], keys[2]};
  EXPECT_EQ(l1_->ReserveWrite(dup, kObj, false, kTagA, &views),
            (std::vector<L1Result>{L1Result::kSuccess, L1Result::kKeyNotWritable}));
  // Size 0 or larger than the pool can never be satisfied.
  auto more = MakeKeys(1, 100);
  EXPECT_EQ(l1_->ReserveWrite(more, 0, false, kTagA, &views)[0], L1Result::kOutOfMemory);
  EXPECT_EQ(l1_->ReserveWrite(more, 1ull << 40, false, kTagA, &views)[0], L1Result::kOutOfMemory);
}

TEST_F(L1ManagerTest, ExpiredStagingIsHandedOverToItsWriter) {
  auto keys = MakeKeys(1);
  std::vector<ObjectView> first, second;
  ASSERT_EQ(l1_->ReserveWrite(keys, kObj, false, kTagA, &first)[0], L1Result::kSuccess);
  clock_.Advance(601s);
  ASSERT_EQ(l1_->ReserveWrite(keys, kObj, false, kTagA, &second)[0], L1Result::kSuccess);
  EXPECT_EQ(first[0].data, second[0].data);
  EXPECT_EQ(l1_->used_bytes(), kObj);
  EXPECT_EQ(l1_->FinishWrite(keys, kTagA)[0], L1Result::kSuccess);
  // A different size replaces the expired buffer instead.
  auto other = MakeKeys(1, 50);
  ASSERT_EQ(l1_->ReserveWrite(other, kObj, false, kTagA, &first)[0], L1Result::kSuccess);
  clock_.Advance(601s);
  ASSERT_EQ(l1_->ReserveWrite(other, 2 * kObj, false, kTagA, &second)[0], L1Result::kSuccess);
  EXPECT_EQ(second[0].size, 2 * kObj);
  EXPECT_EQ(l1_->used_bytes(), 3 * kObj);
}

TEST_F(L1ManagerTest, OutOfMemoryIsAllOrNothingPerBatch) {
  Make(64 * kMiB);
  constexpr uint64_t k8M = 8 * kMiB;
  auto keys = MakeKeys(12);
  std::vector<ObjectView> views;
  ASSERT_EQ(l1_->ReserveWrite(std::span(keys).subspan(0, 6), k8M, false, kTagA, &views),
            All(6, L1Result::kSuccess));
  events_.Take();
  // 2 slots left: a batch of 3 new keys gets nothing, and memory is unchanged.
  uint64_t used = l1_->used_bytes();
  EXPECT_EQ(l1_->ReserveWrite(std::span(keys).subspan(6, 3), k8M, false, kTagA, &views),
            All(3, L1Result::kOutOfMemory));
  EXPECT_EQ(l1_->used_bytes(), used);
  auto names = events_.TakeNames();
  EXPECT_EQ(names, std::vector<std::string>{"allocation_failed"});
  EXPECT_EQ(l1_->GetStatus().allocation_failures, 1u);
  // Already-staged keys in a batch don't count against it: 2 new keys fit.
  std::vector<ObjectKey> mixed = {keys[0], keys[6], keys[7]};
  EXPECT_EQ(
      l1_->ReserveWrite(mixed, k8M, false, kTagA, &views),
      (std::vector<L1Result>{L1Result::kKeyNotWritable, L1Result::kSuccess, L1Result::kSuccess}));
  EXPECT_EQ(l1_->ReserveWrite(std::span(keys).subspan(8, 1), k8M, false, kTagA, &views)[0],
            L1Result::kOutOfMemory);
  EXPECT_TRUE(l1_->GetStatus().healthy);
}

TEST_F(L1ManagerTest, FinishWriteCodes) {
  auto keys = MakeKeys(4);
  std::vector<ObjectView> views;
  ASSERT_EQ(l1_->ReserveWrite(keys, kObj, false, kTagA, &views), All(4, L1Result::kSuccess));
  // Wrong tag / unknown key -> not exist.
  EXPECT_EQ(l1_->FinishWrite(std::span(keys).subspan(0, 1), kTagB)[0], L1Result::kKeyNotExist);
  EXPECT_EQ(l1_->FinishWrite(MakeKeys(1, 99), kTagA)[0], L1Result::kKeyNotExist);
  EXPECT_EQ(l1_->FinishWrite(std::span(keys).subspan(0, 2), kTagA), All(2, L1Result::kSuccess));
  EXPECT_TRUE(l1_->Contains(keys[0]));
  // The write lock expired: wrong state, the buffer stays for reclaim.
  clock_.Advance(601s);
  EXPECT_EQ(l1_->FinishWrite(std::span(keys).subspan(2, 1), kTagA)[0], L1Result::kKeyInWrongState);
  EXPECT_FALSE(l1_->Contains(keys[2]));
  EXPECT_TRUE(l1_->Exists(keys[2]));
  EXPECT_TRUE(l1_->IsKeyEvictable(keys[2]));
  EXPECT_EQ(l1_->Delete(std::span(keys).subspan(2, 2)), All(2, L1Result::kSuccess));
  EXPECT_FALSE(l1_->Exists(keys[2]));
  EXPECT_EQ(l1_->used_bytes(), 2 * kObj);
}

TEST_F(L1ManagerTest, TwoWritersOfOneKeyFirstWins) {
  auto keys = MakeKeys(1);
  std::vector<ObjectView> a, b;
  ASSERT_EQ(l1_->ReserveWrite(keys, kObj, false, kTagA, &a)[0], L1Result::kSuccess);
  ASSERT_EQ(l1_->ReserveWrite(keys, kObj, false, kTagB, &b)[0], L1Result::kSuccess);
  EXPECT_EQ(l1_->used_bytes(), 2 * kObj);
  a[0].data[0] = 'a';
  b[0].data[0] = 'b';
  EXPECT_EQ(l1_->FinishWrite(keys, kTagB)[0], L1Result::kSuccess);
  EXPECT_EQ(l1_->FinishWrite(keys, kTagA)[0], L1Result::kSuccess);  // discarded
  EXPECT_EQ(l1_->used_bytes(), kObj);
  std::vector<ObjectView> v;
  ASSERT_EQ(l1_->ReserveRead(keys, 1, &v)[0], L1Result::kSuccess);
  EXPECT_EQ(v[0].data[0], 'b');
}

TEST_F(L1ManagerTest, FinishWriteAndReserveReadAdmitsAndLocks) {
  auto keys = MakeKeys(1);
  std::vector<ObjectView> views;
  ASSERT_EQ(l1_->ReserveWrite(keys, kObj, false, kTagA, &views)[0], L1Result::kSuccess);
  std::vector<ObjectView> locked;
  EXPECT_EQ(l1_->FinishWriteAndReserveRead(keys, 3, kTagA, &locked)[0], L1Result::kSuccess);
  EXPECT_EQ(locked[0].data, views[0].data);
  EXPECT_EQ(l1_->FinishRead(keys, 2)[0], L1Result::kSuccess);
  EXPECT_EQ(l1_->Delete(keys)[0], L1Result::kKeyIsLocked);
  EXPECT_EQ(l1_->FinishRead(keys, 1)[0], L1Result::kSuccess);
  EXPECT_EQ(l1_->Delete(keys)[0], L1Result::kSuccess);
}

TEST_F(L1ManagerTest, FinishWriteAndReserveReadWhenAnotherWriterWon) {
  auto keys = MakeKeys(1);
  std::vector<ObjectView> a, b, locked;
  ASSERT_EQ(l1_->ReserveWrite(keys, kObj, false, kTagA, &a)[0], L1Result::kSuccess);
  ASSERT_EQ(l1_->ReserveWrite(keys, kObj, true, kTagB, &b)[0], L1Result::kSuccess);
  ASSERT_EQ(l1_->FinishWrite(keys, kTagA)[0], L1Result::kSuccess);
  ASSERT_EQ(l1_->FinishWriteAndReserveRead(keys, 1, kTagB, &locked)[0], L1Result::kSuccess);
  EXPECT_EQ(locked[0].data, a[0].data);  // the resident object, not B's discarded copy
  EXPECT_EQ(l1_->used_bytes(), kObj);
  EXPECT_EQ(l1_->Delete(keys)[0], L1Result::kKeyIsLocked);
}

TEST_F(L1ManagerTest, FinishWriteAndDeleteAborts) {
  auto keys = MakeKeys(2);
  std::vector<ObjectView> views;
  ASSERT_EQ(l1_->ReserveWrite(keys, kObj, false, kTagA, &views), All(2, L1Result::kSuccess));
  events_.Take();
  EXPECT_EQ(l1_->FinishWriteAndDelete(std::span(keys).subspan(0, 1), kTagB)[0],
            L1Result::kKeyNotExist);
  EXPECT_EQ(l1_->FinishWriteAndDelete(keys, kTagA), All(2, L1Result::kSuccess));
  EXPECT_EQ(l1_->used_bytes(), 0u);
  EXPECT_FALSE(l1_->Exists(keys[0]));
  auto records = events_.Take();
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].event, "deleted");
  EXPECT_EQ(records[0].keys, keys);
}

TEST_F(L1ManagerTest, DeleteCodes) {
  auto keys = MakeKeys(5);
  Store(std::span(keys).subspan(0, 2));
  ASSERT_EQ(l1_->ReserveRead(std::span(keys).subspan(0, 1), 1)[0], L1Result::kSuccess);
  std::vector<ObjectView> views;
  ASSERT_EQ(l1_->ReserveWrite(std::span(keys).subspan(2, 1), kObj, false, kTagA, &views)[0],
            L1Result::kSuccess);
  EXPECT_EQ(
      l1_->Delete(keys),
      (std::vector<L1Result>{L1Result::kKeyIsLocked, L1Result::kSuccess, L1Result::kKeyIsLocked,
                             L1Result::kKeyNotExist, L1Result::kKeyNotExist}));
  EXPECT_TRUE(l1_->Contains(keys[0]));
  EXPECT_FALSE(l1_->Contains(keys[1]));
  EXPECT_TRUE(l1_->Exists(keys[2]));
  // Force frees locked objects and live staging alike.
  EXPECT_EQ(
      l1_->Delete(std::span(keys).subspan(0, 3), /*force=*/true),
      (std::vector<L1Result>{L1Result::kSuccess, L1Result::kKeyNotExist, L1Result::kSuccess}));
  EXPECT_EQ(l1_->used_bytes(), 0u);
}

TEST_F(L1ManagerTest, DeleteResidentWhileAnotherWriterStages) {
  auto keys = MakeKeys(1);
  std::vector<ObjectView> views;
  ASSERT_EQ(l1_->ReserveWrite(keys, kObj, false, kTagA, &views)[0], L1Result::kSuccess);
  ASSERT_EQ(l1_->ReserveWrite(keys, kObj, false, kTagB, &views)[0], L1Result::kSuccess);
  ASSERT_EQ(l1_->FinishWrite(keys, kTagA)[0], L1Result::kSuccess);
  events_.Take();
  EXPECT_EQ(l1_->Delete(keys)[0], L1Result::kSuccess);  // the resident copy went
  EXPECT_TRUE(l1_->Exists(keys[0]));                    // B still writes it
  EXPECT_TRUE(events_.Take().empty());                  // so it did not leave L1
  EXPECT_EQ(l1_->FinishWrite(keys, kTagB)[0], L1Result::kSuccess);
  EXPECT_TRUE(l1_->Contains(keys[0]));
}

TEST_F(L1ManagerTest, ReadLocksExpireAfterTheirTtl) {
  auto keys = MakeKeys(1);
  Store(keys);
  ASSERT_EQ(l1_->ReserveRead(keys, 5)[0], L1Result::kSuccess);
  EXPECT_FALSE(l1_->IsKeyEvictable(keys[0]));
  clock_.Advance(299s);
  EXPECT_EQ(l1_->Delete(keys)[0], L1Result::kKeyIsLocked);
  clock_.Advance(2s);
  // Self-healed: evictable, a late FinishRead is refused, a new reservation starts fresh.
  EXPECT_TRUE(l1_->IsKeyEvictable(keys[0]));
  EXPECT_EQ(l1_->FinishRead(keys, 1)[0], L1Result::kKeyInWrongState);
  ASSERT_EQ(l1_->ReserveRead(keys, 1)[0], L1Result::kSuccess);
  EXPECT_EQ(l1_->FinishRead(keys, 1)[0], L1Result::kSuccess);
  EXPECT_EQ(l1_->Delete(keys)[0], L1Result::kSuccess);
}

TEST_F(L1ManagerTest, ReservingAgainExtendsTheReadTtl) {
  auto keys = MakeKeys(1);
  Store(keys);
  ASSERT_EQ(l1_->ReserveRead(keys, 1)[0], L1Result::kSuccess);
  clock_.Advance(200s);
  ASSERT_EQ(l1_->ReserveRead(keys, 1)[0], L1Result::kSuccess);
  clock_.Advance(200s);  // 400 s after the first lock, 200 s after the second
  EXPECT_EQ(l1_->Delete(keys)[0], L1Result::kKeyIsLocked);
  EXPECT_EQ(l1_->FinishRead(keys, 2)[0], L1Result::kSuccess);
}

TEST_F(L1ManagerTest, IsKeyEvictable) {
  auto keys = MakeKeys(4);
  Store(std::span(keys).subspan(0, 2));
  ASSERT_EQ(l1_->ReserveRead(std::span(keys).subspan(1, 1), 1)[0], L1Result::kSuccess);
  std::vector<ObjectView> views;
  ASSERT_EQ(l1_->ReserveWrite(std::span(keys).subspan(2, 1), kObj, false, kTagA, &views)[0],
            L1Result::kSuccess);
  EXPECT_TRUE(l1_->IsKeyEvictable(keys[0]));
  EXPECT_FALSE(l1_->IsKeyEvictable(keys[1]));  // read-locked
  EXPECT_FALSE(l1_->IsKeyEvictable(keys[2]));  // live staging
  EXPECT_FALSE(l1_->IsKeyEvictable(keys[3]));  // absent
  clock_.Advance(601s);
  EXPECT_TRUE(l1_->IsKeyEvictable(keys[2]));  // expired staging can be reclaimed
}

TEST_F(L1ManagerTest, ClearUnforcedKeepsLockedAndLiveStaging) {
  auto keys = MakeKeys(4);
  Store(std::span(keys).subspan(0, 3));
  ASSERT_EQ(l1_->ReserveRead(std::span(keys).subspan(0, 1), 1)[0], L1Result::kSuccess);
  std::vector<ObjectView> views;
  ASSERT_EQ(l1_->ReserveWrite(std::span(keys).subspan(3, 1), kObj, false, kTagA, &views)[0],
            L1Result::kSuccess);
  EXPECT_EQ(l1_->Clear(/*force=*/false), 2u);
  EXPECT_TRUE(l1_->Contains(keys[0]));
  EXPECT_TRUE(l1_->Exists(keys[3]));
  EXPECT_EQ(l1_->Clear(/*force=*/true), 2u);
  EXPECT_EQ(l1_->used_bytes(), 0u);
  L1Status st = l1_->GetStatus();
  EXPECT_EQ(st.resident_objects, 0u);
  EXPECT_EQ(st.staging_objects, 0u);
  EXPECT_TRUE(st.healthy);
}

TEST_F(L1ManagerTest, StatusCountsEverything) {
  auto keys = MakeKeys(6);
  Store(std::span(keys).subspan(0, 3));
  ASSERT_EQ(l1_->ReserveRead(std::span(keys).subspan(0, 2), 1)[0], L1Result::kSuccess);
  std::vector<ObjectView> views;
  ASSERT_EQ(l1_->ReserveWrite(std::span(keys).subspan(3, 2), 3 * kObj, true, kTagA, &views),
            All(2, L1Result::kSuccess));
  ASSERT_EQ(l1_->FinishWriteAndReserveRead(std::span(keys).subspan(4, 1), 1, kTagA)[0],
            L1Result::kSuccess);
  ASSERT_EQ(l1_->ReserveWrite(std::span(keys).subspan(5, 1), kObj, false, kTagB, &views)[0],
            L1Result::kSuccess);
  clock_.Advance(1s);
  L1Status st = l1_->GetStatus();
  EXPECT_EQ(st.resident_objects, 4u);
  EXPECT_EQ(st.temporary_objects, 1u);
  EXPECT_EQ(st.read_locked_objects, 3u);  // keys[0], keys[1] and keys[4]
  EXPECT_EQ(st.staging_objects, 2u);
  EXPECT_EQ(st.live_staging_objects, 2u);
  EXPECT_EQ(st.resident_bytes, 3 * kObj + 3 * kObj);
  EXPECT_EQ(st.staging_bytes, 3 * kObj + kObj);
  EXPECT_EQ(st.used_bytes, st.resident_bytes + st.staging_bytes);
  EXPECT_EQ(st.capacity_bytes, 16 * kMiB);
  EXPECT_NEAR(st.usage_ratio, static_cast<double>(st.used_bytes) / (16 * kMiB), 1e-9);
  EXPECT_TRUE(st.healthy);
}

TEST_F(L1ManagerTest, ListenerSeesEachCallOnceInRequestOrder) {
  auto keys = MakeKeys(20);  // spread over all 8 shards
  events_.Take();
  Store(keys);
  auto records = events_.Take();
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].event, "reserved_write");
  EXPECT_EQ(records[0].keys, keys);
  EXPECT_EQ(records[1].event, "write_finished");
  EXPECT_EQ(records[1].keys, keys);

  ASSERT_EQ(l1_->ReserveRead(keys, 1), All(20, L1Result::kSuccess));
  ASSERT_EQ(l1_->FinishRead(keys, 1), All(20, L1Result::kSuccess));
  l1_->TouchKeys(keys);
  l1_->TouchKeys({});
  ASSERT_EQ(l1_->Delete(keys), All(20, L1Result::kSuccess));
  EXPECT_EQ(events_.TakeNames(),
            (std::vector<std::string>{"reserved_read", "read_finished", "accessed", "deleted"}));
}

TEST_F(L1ManagerTest, TemporaryWritesAreNotAnnouncedAsWritten) {
  auto keys = MakeKeys(2);
  std::vector<ObjectView> views;
  ASSERT_EQ(l1_->ReserveWrite(keys, kObj, true, kTagA, &views), All(2, L1Result::kSuccess));
  ASSERT_EQ(l1_->FinishWrite(std::span(keys).subspan(0, 1), kTagA)[0], L1Result::kSuccess);
  ASSERT_EQ(l1_->FinishWriteAndReserveRead(std::span(keys).subspan(1, 1), 1, kTagA)[0],
            L1Result::kSuccess);
  EXPECT_EQ(events_.TakeNames(),
            (std::vector<std::string>{"reserved_write", "write_finished_and_read_reserved"}));
}

TEST_F(L1ManagerTest, RemovedListenerHearsNothing) {
  l1_->RemoveListener(&events_);
  Store(MakeKeys(2));
  EXPECT_TRUE(events_.Take().empty());
}

TEST_F(L1ManagerTest, AllocationWaitSucceedsWhenMemoryIsFreed) {
  Make(4 * kObj, /*allocation_wait=*/60s);
  auto resident = MakeKeys(4);
  Store(resident);

  // The writer blocks on a full pool; its allocation-failure event tells us it is waiting.
  struct FailureLatch : L1Listener {
    std::latch failed{1};
    uint32_t events() const override { return kAllocationFailed; }
    void OnL1AllocationFailed(uint64_t) override { failed.count_down(); }
  } latch_listener;
  l1_->AddListener(&latch_listener);

  auto more = MakeKeys(2, 100);
  std::vector<L1Result> result;
  std::thread writer([&] {
    std::vector<ObjectView> views;
    result = l1_->ReserveWrite(more, kObj, false, kTagA, &views);
  });
  latch_listener.failed.wait();
  ASSERT_EQ(l1_->Delete(std::span(resident).subspan(0, 2)), All(2, L1Result::kSuccess));
  writer.join();
  EXPECT_EQ(result, All(2, L1Result::kSuccess));
  l1_->RemoveListener(&latch_listener);
}

TEST_F(L1ManagerTest, AllocationWaitGivesUpAtItsDeadline) {
  Make(2 * kObj, /*allocation_wait=*/20ms);
  Store(MakeKeys(2));
  std::vector<ObjectView> views;
  EXPECT_EQ(l1_->ReserveWrite(MakeKeys(1, 10), kObj, false, kTagA, &views)[0],
            L1Result::kOutOfMemory);
}

TEST_F(L1ManagerTest, KeysOfOtherNamespacesAndRanksAreDistinct) {
  auto a = MakeKeys(1, 0, "model-a");
  auto b = MakeKeys(1, 0, "model-b");
  std::vector<ObjectKey> ranks = {a[0], a[0].WithRank(keys::KvRank{2, 1})};
  Store(a);
  EXPECT_FALSE(l1_->Contains(b[0]));
  EXPECT_FALSE(l1_->Contains(ranks[1]));
  EXPECT_EQ(l1_->ReserveRead(ranks, 1),
            (std::vector<L1Result>{L1Result::kSuccess, L1Result::kKeyNotExist}));
}

}  // namespace
}  // namespace kvtier::l1
