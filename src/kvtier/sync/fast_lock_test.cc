#include "kvtier/sync/fast_lock.h"

#include <atomic>
#include <chrono>
#include <latch>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace kvtier::sync {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using SteadyClock = std::chrono::steady_clock;

// Compiles only if the analysis accepts the guarded accesses under FastLockHolder.
class AnnotatedCounter {
 public:
  void Increment() {
    FastLockHolder holder(&lock_);
    ++value_;
  }
  int Get() {
    FastLockHolder holder(&lock_);
    return value_;
  }

 private:
  FastLock lock_;
  int value_ KVT_GUARDED_BY(lock_) = 0;
};

TEST(FastLockTest, ScopedHolder) {
  AnnotatedCounter counter;
  counter.Increment();
  EXPECT_EQ(counter.Get(), 1);
}

// The tests below acquire and release by hand, across threads and inside gtest macros, which
// clang's analysis cannot follow.
#if defined(__clang__)
#pragma clang diagnostic ignored "-Wthread-safety-analysis"
#endif

TEST(FastLockTest, UncontendedAcquireRelease) {
  FastLock lock;
  ASSERT_TRUE(lock.Acquire());
  lock.Release();
  ASSERT_TRUE(lock.Acquire(Duration::zero()));
  lock.Release();
  ASSERT_TRUE(lock.Acquire(seconds(1)));
  lock.Release();
  ASSERT_TRUE(lock.TryAcquire());
  lock.Release();
}

TEST(FastLockTest, HeldLockRefusesOtherThreads) {
  FastLock lock;
  ASSERT_TRUE(lock.Acquire());
  std::thread other([&] {
    EXPECT_FALSE(lock.TryAcquire());
    EXPECT_FALSE(lock.Acquire(Duration::zero()));
    auto start = SteadyClock::now();
    EXPECT_FALSE(lock.Acquire(milliseconds(50)));
    EXPECT_GE(SteadyClock::now() - start, milliseconds(50));
  });
  other.join();
  lock.Release();
  // Usable again after the timeouts.
  std::thread again([&] {
    ASSERT_TRUE(lock.TryAcquire());
    lock.Release();
  });
  again.join();
}

TEST(FastLockTest, BlockedAcquireSucceedsOnRelease) {
  FastLock lock;
  ASSERT_TRUE(lock.Acquire());
  std::latch started(1);
  std::atomic<bool> got_it{false};
  std::thread forever([&] {
    started.count_down();
    ASSERT_TRUE(lock.Acquire(kWaitForever));
    got_it.store(true);
    lock.Release();
  });
  std::thread timed([&] {
    started.wait();
    ASSERT_TRUE(lock.Acquire(seconds(30)));
    lock.Release();
  });
  started.wait();
  EXPECT_FALSE(got_it.load());
  lock.Release();
  forever.join();
  timed.join();
  EXPECT_TRUE(got_it.load());
}

void RunIncrements(int threads, int increments_each, Timeout timeout) {
  FastLock lock;
  int counter = 0;  // guarded by lock
  std::latch start(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      start.arrive_and_wait();
      for (int i = 0; i < increments_each; ++i) {
        ASSERT_TRUE(lock.Acquire(timeout));
        int v = counter;
        counter = v + 1;
        lock.Release();
      }
    });
  }
  for (auto& t : pool) t.join();
  EXPECT_EQ(counter, threads * increments_each);
}

TEST(FastLockTest, MutualExclusion) { RunIncrements(5, 100, kWaitForever); }

TEST(FastLockTest, MutualExclusionWithTimeouts) { RunIncrements(20, 50, seconds(10)); }

TEST(FastLockTest, GuardReleasesOnDestruction) {
  FastLock lock;
  {
    auto guard = FastLockGuard::Acquire(lock, seconds(1), "worker");
    ASSERT_TRUE(guard.has_value());
    EXPECT_TRUE(guard->owns_lock());
    std::thread([&] { EXPECT_FALSE(lock.TryAcquire()); }).join();
  }
  std::thread([&] {
    ASSERT_TRUE(lock.TryAcquire());
    lock.Release();
  }).join();
}

TEST(FastLockTest, GuardReportsLockTimeout) {
  FastLock lock;
  ASSERT_TRUE(lock.Acquire());
  std::thread([&] {
    auto guard = FastLockGuard::Acquire(lock, milliseconds(20), "worker kv_store");
    ASSERT_FALSE(guard.has_value());
    EXPECT_EQ(guard.error().code(), StatusCode::kLockTimeout);
    EXPECT_TRUE(guard.error().retryable());
    EXPECT_NE(guard.error().message().find("worker kv_store"), std::string_view::npos);
    EXPECT_NE(guard.error().message().find("20ms"), std::string_view::npos);
    auto busy = FastLockGuard::Acquire(lock, Duration::zero());
    ASSERT_FALSE(busy.has_value());
    EXPECT_NE(busy.error().message().find("FastLock"), std::string_view::npos);
  }).join();
  lock.Release();
}

#ifndef NDEBUG
TEST(FastLockDeathTest, ReentrantAcquireAbortsInDebugBuilds) {
  FastLock lock;
  EXPECT_DEATH(
      {
        if (lock.Acquire()) (void)lock.Acquire(milliseconds(1));
      },
      "not reentrant");
  EXPECT_DEATH(
      {
        if (lock.Acquire()) (void)lock.TryAcquire();
      },
      "not reentrant");
}

TEST(FastLockDeathTest, ReleaseWithoutHoldingAbortsInDebugBuilds) {
  FastLock lock;
  EXPECT_DEATH(lock.Release(), "does not hold it");
}
#else
TEST(FastLockDeathTest, ReentrantAcquireAbortsInDebugBuilds) {
  GTEST_SKIP() << "re-entrancy detection is compiled into debug builds only";
}
#endif

}  // namespace
}  // namespace kvtier::sync
