// Stress: 8 threads mix every L1 operation while the eviction controller runs, then the
// invariants must hold. Every object's bytes are a function of its key, and every reader checks
// them, so memory freed under a reader (or handed to two writers) shows up as corruption.
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>

#include <gtest/gtest.h>

#include "kvtier/common/units.h"
#include "kvtier/eviction/l1_eviction_controller.h"
#include "kvtier/l1/l1_test_util.h"

namespace kvtier::eviction {
namespace {

using keys::ObjectKey;
using l1::L1Result;
using l1::ObjectView;

constexpr uint64_t kObj = 16 * kKiB;
constexpr size_t kKeySpace = 512;

uint8_t PatternOf(const ObjectKey& k) {
  return static_cast<uint8_t>(k.chunk_hash().Prefix64() * 31 + 7);
}

void Fill(const ObjectKey& k, const ObjectView& v) { std::memset(v.data, PatternOf(k), v.size); }

bool Intact(const ObjectKey& k, const ObjectView& v) {
  uint8_t p = PatternOf(k);
  return v.size == kObj && v.data[0] == p && v.data[v.size / 2] == p && v.data[v.size - 1] == p;
}

double StressSeconds() {
  const char* s = std::getenv("KVT_STRESS_SECONDS");
  return s ? std::atof(s) : 2.0;
}

TEST(L1StressTest, EightThreadsMixEveryOperationUnderEviction) {
  l1::L1Options o;
  o.capacity_bytes = 256 * kObj;  // half the key space fits
  o.num_shards = 16;
  o.allocation_wait = std::chrono::milliseconds(5);
  auto l1 = l1::L1Manager::Create(o).value();
  L1EvictionOptions eo;
  eo.check_interval = std::chrono::milliseconds(50);
  auto controller =
      L1EvictionController::Create(l1.get(), MakeEvictionPolicy("lru").value(), eo).value();
  ASSERT_TRUE(controller->Start().ok());

  const std::vector<ObjectKey> all = l1::testing::MakeKeys(kKeySpace);
  std::atomic<uint64_t> corrupt{0}, ops{0};
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(StressSeconds());

  auto worker = [&](int id) {
    std::mt19937_64 rng(1000 + id);
    const l1::WriterTag tag = static_cast<l1::WriterTag>(id + 1);
    std::vector<ObjectView> views;
    std::vector<ObjectKey> batch;
    while (std::chrono::steady_clock::now() < deadline) {
      batch.clear();
      size_t n = 1 + rng() % 8;
      for (size_t i = 0; i < n; ++i) batch.push_back(all[rng() % kKeySpace]);
      switch (rng() % 8) {
        case 0:
        case 1: {  // store, admit or abort
          bool temporary = rng() % 4 == 0;
          auto r = l1->ReserveWrite(batch, kObj, temporary, tag, &views);
          std::vector<ObjectKey> mine;
          for (size_t i = 0; i < n; ++i) {
            if (r[i] == L1Result::kSuccess) {
              Fill(batch[i], views[i]);
              mine.push_back(batch[i]);
            }
          }
          switch (rng() % 3) {
            case 0:
              l1->FinishWrite(mine, tag);
              break;
            case 1: {
              auto fr = l1->FinishWriteAndReserveRead(mine, 2, tag, &views);
              std::vector<ObjectKey> locked;
              for (size_t i = 0; i < mine.size(); ++i) {
                if (fr[i] != L1Result::kSuccess) continue;
                if (!Intact(mine[i], views[i])) corrupt.fetch_add(1);
                locked.push_back(mine[i]);
              }
              l1->FinishRead(locked, 1);
              l1->FinishRead(locked, 1);
              break;
            }
            default:
              l1->FinishWriteAndDelete(mine, tag);
          }
          break;
        }
        case 2:
        case 3: {  // read, verify, optionally re-read unsafely, release
          auto r = l1->ReserveRead(batch, 1, &views);
          std::vector<ObjectKey> locked;
          for (size_t i = 0; i < n; ++i) {
            if (r[i] != L1Result::kSuccess) continue;
            if (!Intact(batch[i], views[i])) corrupt.fetch_add(1);
            locked.push_back(batch[i]);
          }
          std::vector<ObjectView> again;
          auto u = l1->UnsafeRead(locked, &again);
          for (size_t i = 0; i < locked.size(); ++i) {
            if (u[i] == L1Result::kSuccess && !Intact(locked[i], again[i])) corrupt.fetch_add(1);
          }
          l1->FinishRead(locked, 1);
          break;
        }
        case 4:
          l1->Delete(batch);
          break;
        case 5:
          l1->TouchKeys(batch);
          break;
        case 6:
          for (const auto& k : batch) {
            (void)l1->IsKeyEvictable(k);
            (void)l1->Exists(k);
          }
          break;
        default:
          if (rng() % 64 == 0) l1->Clear(/*force=*/false);
          if (rng() % 16 == 0) controller->RunOnce();
      }
      ops.fetch_add(1, std::memory_order_relaxed);
    }
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) threads.emplace_back(worker, i);
  for (auto& t : threads) t.join();
  controller->Stop();

  EXPECT_EQ(corrupt.load(), 0u);
  EXPECT_GT(ops.load(), 1000u);
  l1::L1Status st = l1->GetStatus();
  EXPECT_TRUE(st.healthy);
  // Every thread released what it took.
  EXPECT_EQ(st.read_locked_objects, 0u);
  EXPECT_EQ(st.live_staging_objects, 0u);
  EXPECT_EQ(st.staging_objects, 0u);
  // Memory in use is exactly the live objects (all kObj, a multiple of the alignment).
  EXPECT_EQ(st.used_bytes, st.resident_bytes);
  EXPECT_EQ(st.resident_bytes, st.resident_objects * kObj);
  EXPECT_LE(st.used_bytes, o.capacity_bytes);
  // The policy tracks exactly what L1 holds once the last events are applied.
  controller->RunOnce();
  EXPECT_EQ(controller->stats().tracked_keys, st.resident_objects);
  // And everything can go.
  l1->Clear(/*force=*/false);
  EXPECT_EQ(l1->used_bytes(), 0u);
}

}  // namespace
}  // namespace kvtier::eviction
