// Concurrency stress for Allocator: run under TSan (label `stress`).
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "kvtier/common/mutex.h"
#include "kvtier/memory/allocator.h"

namespace kvtier::memory {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kCapacity = 512 * kPage;  // small enough that threads run out often
constexpr int kThreads = 8;
constexpr auto kDuration = std::chrono::seconds(2);

// Stamps both ends of an allocation (>= 16 bytes) with a token, so overlapping allocations show
// up as a mismatch (and as a race under TSan).
void Stamp(const Allocation& a, uint64_t token) {
  std::memcpy(a.data(), &token, sizeof(token));
  std::memcpy(a.data() + a.size() - sizeof(token), &token, sizeof(token));
}
bool StampIntact(const Allocation& a, uint64_t token) {
  uint64_t head = 0;
  uint64_t tail = 0;
  std::memcpy(&head, a.data(), sizeof(head));
  std::memcpy(&tail, a.data() + a.size() - sizeof(tail), sizeof(tail));
  return head == token && tail == token;
}

struct Stamped {
  Allocation allocation;
  uint64_t token;
};

TEST(AllocatorStressTest, ConcurrentBatchesKeepTheFreeSetConsistent) {
  std::unique_ptr<uint8_t, decltype(&std::free)> buffer(
      static_cast<uint8_t*>(std::aligned_alloc(kPage, kCapacity)), &std::free);
  auto created = Allocator::Create(buffer.get(), kCapacity, kPage);
  ASSERT_TRUE(created.has_value());
  Allocator& allocator = **created;

  // Allocations handed between threads, so frees also happen away from the allocating thread.
  struct Handoff {
    Mutex mu;
    std::vector<Stamped> items KVT_GUARDED_BY(mu);
  } handoff;

  std::atomic<uint64_t> successes{0};
  std::atomic<uint64_t> failures{0};
  std::atomic<uint64_t> corrupted{0};
  std::atomic<uint64_t> unexpected_errors{0};
  std::atomic<bool> stop{false};
  const auto deadline = std::chrono::steady_clock::now() + kDuration;

  auto worker = [&](int id) {
    std::mt19937_64 rng(1000 + id);
    std::vector<Stamped> live;
    uint64_t next_token = static_cast<uint64_t>(id) << 48;
    auto release = [&](Stamped& s) {
      if (!StampIntact(s.allocation, s.token)) corrupted.fetch_add(1);
      s.allocation.Reset();
    };
    while (std::chrono::steady_clock::now() < deadline) {
      const int kind = static_cast<int>(rng() % 100);
      if (kind < 45) {
        std::vector<Allocation> out;
        const size_t count = 1 + rng() % 8;
        Status s;
        if (rng() % 2 == 0) {
          s = allocator.AllocateBatch(16 + rng() % (4 * kPage), count, &out);
        } else {
          std::vector<uint64_t> sizes(count);
          for (auto& size : sizes) size = 16 + rng() % (3 * kPage);
          s = allocator.AllocateBatch(sizes, &out);
        }
        if (s.ok()) {
          successes.fetch_add(1, std::memory_order_relaxed);
          for (auto& a : out) {
            const uint64_t token = ++next_token;
            Stamp(a, token);
            live.push_back({std::move(a), token});
          }
        } else if (s.code() == StatusCode::kOutOfMemory && out.empty()) {
          failures.fetch_add(1, std::memory_order_relaxed);
        } else {
          unexpected_errors.fetch_add(1);
        }
      } else if (kind < 55 && !live.empty()) {
        MutexLock lock(&handoff.mu);
        handoff.items.push_back(std::move(live.back()));
        live.pop_back();
      } else if (kind < 65) {
        std::vector<Stamped> taken;
        {
          MutexLock lock(&handoff.mu);
          taken.swap(handoff.items);
        }
        for (auto& s : taken) release(s);
      } else if (kind < 85 && !live.empty()) {
        const size_t i = rng() % live.size();
        std::swap(live[i], live.back());
        release(live.back());
        live.pop_back();
      } else if (!live.empty()) {
        // FreeBatch after checking the stamps.
        const size_t count = 1 + rng() % live.size();
        std::vector<Allocation> batch;
        for (size_t k = 0; k < count; ++k) {
          Stamped& s = live[live.size() - 1 - k];
          if (!StampIntact(s.allocation, s.token)) corrupted.fetch_add(1);
          batch.push_back(std::move(s.allocation));
        }
        live.resize(live.size() - count);
        allocator.FreeBatch(batch);
        for (const auto& a : batch) {
          if (a) unexpected_errors.fetch_add(1);
        }
      }
    }
    for (auto& s : live) release(s);
  };

  // A poller like the eviction controller: lock-free reads plus the locked views.
  std::atomic<uint64_t> bad_reads{0};
  std::thread poller([&] {
    while (!stop.load()) {
      if (allocator.used_bytes() > kCapacity) bad_reads.fetch_add(1);
      const AllocatorStats stats = allocator.Stats();
      if (stats.used_bytes + stats.free_bytes != kCapacity) bad_reads.fetch_add(1);
      if (!allocator.CheckConsistency().ok()) bad_reads.fetch_add(1);
    }
  });

  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) threads.emplace_back(worker, i);
  for (auto& t : threads) t.join();
  stop.store(true);
  poller.join();
  {
    MutexLock lock(&handoff.mu);
    for (auto& s : handoff.items) {
      EXPECT_TRUE(StampIntact(s.allocation, s.token));
      s.allocation.Reset();
    }
  }

  std::printf("stress: %llu batches allocated, %llu refused (out of memory)\n",
              static_cast<unsigned long long>(successes.load()),
              static_cast<unsigned long long>(failures.load()));
  EXPECT_EQ(corrupted.load(), 0u);
  EXPECT_EQ(unexpected_errors.load(), 0u);
  EXPECT_EQ(bad_reads.load(), 0u);
  EXPECT_GT(successes.load(), 100u);
  EXPECT_GT(failures.load(), 0u);  // the pool did run out under contention
  Status s = allocator.CheckConsistency();
  EXPECT_TRUE(s.ok()) << s.ToString();
  const AllocatorStats stats = allocator.Stats();
  EXPECT_EQ(stats.used_bytes, 0u);
  EXPECT_EQ(allocator.used_bytes(), 0u);
  EXPECT_EQ(stats.num_allocations, 0u);
  EXPECT_EQ(stats.num_free_extents, 1u);
  EXPECT_EQ(stats.failed_allocations, failures.load());
}

}  // namespace
}  // namespace kvtier::memory
