// Stress tests for RWLock, FastLock and MessagingFuture: meant for TSan; a few seconds at most.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <latch>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "kvtier/sync/fast_lock.h"
#include "kvtier/sync/messaging_future.h"
#include "kvtier/sync/rw_lock.h"

// Acquire and release are driven by hand, across threads; clang's analysis cannot follow it.
#if defined(__clang__)
#pragma clang diagnostic ignored "-Wthread-safety-analysis"
#endif

namespace kvtier::sync {
namespace {

using std::chrono::microseconds;
using std::chrono::seconds;

#ifdef KVT_TSAN
constexpr int kScale = 8;
#else
constexpr int kScale = 16;
#endif

// 8 threads mix reads and writes with every kind of timeout. Invariants: a writer is alone,
// a reader never overlaps a writer; afterwards the data equals the successful writes and the
// lock is idle.
TEST(SyncStressTest, RWLockMixedReadersAndWriters) {
  constexpr int kThreads = 8;
  const int ops_per_thread = 4000 * kScale;
  RWLock lock;
  std::atomic<int> active_readers{0};
  std::atomic<int> active_writers{0};
  std::atomic<bool> violation{false};
  uint64_t data = 0;  // guarded by lock; TSan also checks it
  std::atomic<uint64_t> writes_done{0};
  std::atomic<uint64_t> reads_done{0};
  std::atomic<uint64_t> timeouts{0};
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(1234 + t);
      std::uniform_int_distribution<int> pick(0, 99);
      start.arrive_and_wait();
      for (int i = 0; i < ops_per_thread; ++i) {
        int p = pick(rng);
        Timeout timeout = p % 3 == 0   ? kWaitForever
                          : p % 3 == 1 ? Timeout(Duration::zero())
                                       : Timeout(microseconds(50));
        if (p < 15) {
          if (!lock.AcquireWrite(timeout)) {
            timeouts.fetch_add(1, std::memory_order_relaxed);
            continue;
          }
          if (active_writers.fetch_add(1) != 0 || active_readers.load() != 0) violation = true;
          ++data;
          writes_done.fetch_add(1, std::memory_order_relaxed);
          active_writers.fetch_sub(1);
          lock.ReleaseWrite();
        } else {
          if (!lock.AcquireRead(timeout)) {
            timeouts.fetch_add(1, std::memory_order_relaxed);
            continue;
          }
          active_readers.fetch_add(1);
          if (active_writers.load() != 0) violation = true;
          volatile uint64_t seen = data;
          (void)seen;
          reads_done.fetch_add(1, std::memory_order_relaxed);
          active_readers.fetch_sub(1);
          lock.ReleaseRead();
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_FALSE(violation.load());
  EXPECT_EQ(data, writes_done.load());
  EXPECT_EQ(writes_done + reads_done + timeouts,
            static_cast<uint64_t>(kThreads) * static_cast<uint64_t>(ops_per_thread));
  EXPECT_GT(writes_done.load(), 0u);
  EXPECT_GT(reads_done.load(), 0u);
  EXPECT_EQ(lock.readers(), 0u);
  EXPECT_FALSE(lock.writer_active());
  EXPECT_EQ(lock.writers_waiting(), 0u);
  EXPECT_EQ(lock.readers_waiting(), 0u);
}

// Writers that time out in bulk while readers wait behind them: no reader may be stranded (all
// forever-readers finish) and the counts return to zero.
TEST(SyncStressTest, RWLockWriterTimeoutsNeverStrandReaders) {
  constexpr int kReaders = 4;
  constexpr int kWriters = 4;
  const int rounds = 2000 * kScale;
  RWLock lock;
  std::atomic<uint64_t> reads{0};
  std::latch start(kReaders + kWriters);
  std::vector<std::thread> threads;
  for (int r = 0; r < kReaders; ++r) {
    threads.emplace_back([&] {
      start.arrive_and_wait();
      for (int i = 0; i < rounds; ++i) {
        ASSERT_TRUE(lock.AcquireRead(kWaitForever));
        reads.fetch_add(1, std::memory_order_relaxed);
        lock.ReleaseRead();
      }
    });
  }
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      start.arrive_and_wait();
      for (int i = 0; i < rounds; ++i) {
        if (lock.AcquireWrite(microseconds(1 + (i + w) % 20))) lock.ReleaseWrite();
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(reads.load(), static_cast<uint64_t>(kReaders) * rounds);
  EXPECT_EQ(lock.writers_waiting(), 0u);
  EXPECT_EQ(lock.readers_waiting(), 0u);
  EXPECT_EQ(lock.readers(), 0u);
}

// Polls an observable state (never sleeps); false when it did not hold within 10 s.
template <typename Pred>
bool PollUntil(Pred pred) {
  auto deadline = std::chrono::steady_clock::now() + seconds(10);
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

// The thread that takes the lock next may destroy it at once, even while the releasing thread
// is still inside Release (ASan catches a releaser that touches the lock afterwards).
TEST(SyncStressTest, RWLockMayBeDestroyedByTheNextHolder) {
  const int rounds = 50 * kScale;
  for (int i = 0; i < rounds; ++i) {
    bool write_first = i % 2 == 0;
    auto* lock = new RWLock;
    ASSERT_TRUE(write_first ? lock->AcquireWrite() : lock->AcquireRead());
    std::thread next([lock, write_first] {
      // Blocks: a reader behind the writer, or a writer behind the reader.
      bool ok = write_first ? lock->AcquireRead() : lock->AcquireWrite();
      ASSERT_TRUE(ok);
      if (write_first) {
        lock->ReleaseRead();
      } else {
        lock->ReleaseWrite();
      }
      delete lock;
    });
    ASSERT_TRUE(PollUntil(
        [&] { return write_first ? lock->readers_waiting() == 1 : lock->writers_waiting() == 1; }));
    if (write_first) {
      lock->ReleaseWrite();
    } else {
      lock->ReleaseRead();
    }
    next.join();
  }
}

TEST(SyncStressTest, FastLockCounter) {
  constexpr int kThreads = 8;
  const int ops_per_thread = 5000 * kScale;
  FastLock lock;
  uint64_t counter = 0;  // guarded by lock
  std::atomic<uint64_t> failed{0};
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      for (int i = 0; i < ops_per_thread; ++i) {
        bool ok;
        switch ((i + t) % 4) {
          case 0:
            ok = lock.Acquire();
            break;
          case 1:
            ok = lock.TryAcquire();
            break;
          case 2:
            ok = lock.Acquire(Duration::zero());
            break;
          default:
            ok = lock.Acquire(microseconds(100));
            break;
        }
        if (!ok) {
          failed.fetch_add(1, std::memory_order_relaxed);
          continue;
        }
        ++counter;
        lock.Release();
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(counter + failed.load(), static_cast<uint64_t>(kThreads) * ops_per_thread);
  EXPECT_GE(counter, static_cast<uint64_t>(kThreads) * ops_per_thread / 4);  // case 0 never fails
}

// Producers complete promises (value, error, or broken by destruction, sometimes racing two
// setters); consumers hold copies and read them with and without timeouts.
TEST(SyncStressTest, FuturesManyProducersAndConsumers) {
  constexpr int kProducers = 4;
  constexpr int kConsumers = 4;
  const int kPromises = 500 * kScale;
  std::vector<std::optional<Promise<uint64_t>>> promises(kPromises);
  std::vector<MessagingFuture<uint64_t>> futures(kPromises);
  for (int i = 0; i < kPromises; ++i) {
    promises[i].emplace();
    futures[i] = promises[i]->GetFuture();
  }
  std::vector<std::atomic<int>> wins(kPromises);
  std::latch start(kProducers + kConsumers);
  std::atomic<bool> bad{false};
  std::vector<std::thread> threads;
  // Producer p owns promises i with i % kProducers == p; for i % 7 == 0 the next producer races
  // it with a SetError (exactly one of the two must win); i % 11 == 0 is destroyed unset.
  for (int p = 0; p < kProducers; ++p) {
    threads.emplace_back([&, p] {
      start.arrive_and_wait();
      for (int i = 0; i < kPromises; ++i) {
        bool owner = i % kProducers == p;
        bool racer = i % 7 == 0 && (i + 1) % kProducers == p;
        if (owner && i % 11 == 0 && i % 7 != 0) {
          promises[i].reset();
        } else if (owner) {
          if (promises[i]->SetValue(static_cast<uint64_t>(i) * 3)) wins[i].fetch_add(1);
        } else if (racer) {
          if (promises[i]->SetError(Status::Cancelled("raced"))) wins[i].fetch_add(1);
        }
      }
    });
  }
  for (int c = 0; c < kConsumers; ++c) {
    threads.emplace_back([&, c] {
      start.arrive_and_wait();
      for (int k = 0; k < kPromises; ++k) {
        int i = (k * 7 + c * 131) % kPromises;
        MessagingFuture<uint64_t> copy = futures[i];
        if (k % 2 == 0) (void)copy.Result(microseconds(10));  // may time out: fine
        auto result = copy.Result(seconds(60));
        if (!result.has_value()) {
          StatusCode code = result.error().code();
          bool expected = (i % 7 == 0 && code == StatusCode::kCancelled) ||
                          (i % 11 == 0 && i % 7 != 0 && code == StatusCode::kFutureBroken);
          if (!expected) bad = true;
        } else if (*result != static_cast<uint64_t>(i) * 3 || (i % 11 == 0 && i % 7 != 0)) {
          bad = true;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_FALSE(bad.load());
  for (int i = 0; i < kPromises; ++i) {
    if (!(i % 11 == 0 && i % 7 != 0)) {
      EXPECT_EQ(wins[i].load(), 1) << i;
    }
    EXPECT_TRUE(futures[i].Query());
  }
}

}  // namespace
}  // namespace kvtier::sync
