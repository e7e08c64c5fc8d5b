#include "kvtier/sync/rw_lock.h"

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

// Polls an observable state (never sleeps); false when it did not hold within `limit`.
template <typename Pred>
bool PollUntil(Pred pred, Duration limit = seconds(10)) {
  TimePoint deadline = SteadyClock::now() + limit;
  while (!pred()) {
    if (SteadyClock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

// Compiles only if the analysis accepts reads under ReaderLock and writes under WriterLock.
class AnnotatedCounter {
 public:
  int Get() {
    ReaderLock lock(&lock_);
    return value_;
  }
  void Increment() {
    WriterLock lock(&lock_);
    ++value_;
  }

 private:
  RWLock lock_;
  int value_ KVT_GUARDED_BY(lock_) = 0;
};

TEST(RWLockTest, ScopedLocks) {
  AnnotatedCounter counter;
  counter.Increment();
  counter.Increment();
  EXPECT_EQ(counter.Get(), 2);
}

// The tests below acquire and release by hand, across threads and inside gtest macros, which
// clang's analysis cannot follow (the class above is what it checks).
#if defined(__clang__)
#pragma clang diagnostic ignored "-Wthread-safety-analysis"
#endif

TEST(RWLockTest, UncontendedReadAndWrite) {
  RWLock lock;
  ASSERT_TRUE(lock.AcquireRead());
  EXPECT_EQ(lock.readers(), 1u);
  EXPECT_FALSE(lock.writer_active());
  lock.ReleaseRead();
  EXPECT_EQ(lock.readers(), 0u);

  ASSERT_TRUE(lock.AcquireWrite());
  EXPECT_TRUE(lock.writer_active());
  EXPECT_EQ(lock.readers(), 0u);
  lock.ReleaseWrite();
  EXPECT_FALSE(lock.writer_active());

  ASSERT_TRUE(lock.AcquireRead(Duration::zero()));
  lock.ReleaseRead();
  ASSERT_TRUE(lock.AcquireWrite(Duration::zero()));
  lock.ReleaseWrite();
}

TEST(RWLockTest, ReadersShare) {
  constexpr int kReaders = 5;
  RWLock lock;
  std::latch all_hold(kReaders + 1);
  std::latch done(1);
  std::atomic<int> acquired{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kReaders; ++i) {
    threads.emplace_back([&] {
      // Exclusive readers would time out here, since every reader holds on until `done`.
      bool ok = lock.AcquireRead(seconds(10));
      if (ok) acquired.fetch_add(1);
      all_hold.arrive_and_wait();
      done.wait();
      if (ok) lock.ReleaseRead();
    });
  }
  all_hold.arrive_and_wait();
  EXPECT_EQ(acquired.load(), kReaders);
  EXPECT_EQ(lock.readers(), static_cast<uint32_t>(kReaders));
  done.count_down();
  for (auto& t : threads) t.join();
  EXPECT_EQ(lock.readers(), 0u);
}

TEST(RWLockTest, WriterExcludesReadersAndWriters) {
  RWLock lock;
  ASSERT_TRUE(lock.AcquireWrite());
  std::thread other([&] {
    EXPECT_FALSE(lock.AcquireRead(Duration::zero()));
    EXPECT_FALSE(lock.AcquireWrite(Duration::zero()));
    EXPECT_FALSE(lock.AcquireRead(milliseconds(20)));
    EXPECT_FALSE(lock.AcquireWrite(milliseconds(20)));
  });
  other.join();
  EXPECT_TRUE(lock.writer_active());
  EXPECT_EQ(lock.writers_waiting(), 0u);
  lock.ReleaseWrite();
}

TEST(RWLockTest, ReadersExcludeWriter) {
  RWLock lock;
  ASSERT_TRUE(lock.AcquireRead());
  std::thread other([&] {
    EXPECT_FALSE(lock.AcquireWrite(Duration::zero()));
    EXPECT_FALSE(lock.AcquireWrite(milliseconds(20)));
    // No writer waits any more, so readers still share.
    ASSERT_TRUE(lock.AcquireRead(Duration::zero()));
    lock.ReleaseRead();
  });
  other.join();
  lock.ReleaseRead();
}

TEST(RWLockTest, PositiveTimeoutWaitsAtLeastThatLong) {
  RWLock lock;
  ASSERT_TRUE(lock.AcquireWrite());
  std::thread other([&] {
    auto start = SteadyClock::now();
    EXPECT_FALSE(lock.AcquireRead(milliseconds(50)));
    EXPECT_GE(SteadyClock::now() - start, milliseconds(50));
    start = SteadyClock::now();
    EXPECT_FALSE(lock.AcquireWrite(milliseconds(50)));
    EXPECT_GE(SteadyClock::now() - start, milliseconds(50));
  });
  other.join();
  lock.ReleaseWrite();
}

TEST(RWLockTest, WaitForeverAcquiresOnceReleased) {
  RWLock lock;
  ASSERT_TRUE(lock.AcquireRead());
  std::atomic<bool> writer_got_it{false};
  std::thread writer([&] {
    ASSERT_TRUE(lock.AcquireWrite(kWaitForever));
    writer_got_it.store(true);
    lock.ReleaseWrite();
  });
  ASSERT_TRUE(PollUntil([&] { return lock.writers_waiting() == 1; }));
  EXPECT_FALSE(writer_got_it.load());
  lock.ReleaseRead();
  writer.join();
  EXPECT_TRUE(writer_got_it.load());
  EXPECT_EQ(lock.writers_waiting(), 0u);
}

TEST(RWLockTest, QueuedWriterBlocksNewReaders) {
  RWLock lock;
  ASSERT_TRUE(lock.AcquireRead());
  std::thread writer([&] {
    ASSERT_TRUE(lock.AcquireWrite());
    lock.ReleaseWrite();
  });
  ASSERT_TRUE(PollUntil([&] { return lock.writers_waiting() == 1; }));
  std::thread reader([&] { EXPECT_FALSE(lock.AcquireRead(Duration::zero())); });
  reader.join();
  EXPECT_EQ(lock.readers(), 1u);
  lock.ReleaseRead();
  writer.join();
}

TEST(RWLockTest, WaitingWriterGoesBeforeWaitingReader) {
  RWLock lock;
  ASSERT_TRUE(lock.AcquireRead());
  std::atomic<int> sequence{0};
  int writer_order = -1;
  int reader_order = -1;
  std::thread writer([&] {
    ASSERT_TRUE(lock.AcquireWrite());
    writer_order = sequence.fetch_add(1);
    lock.ReleaseWrite();
  });
  ASSERT_TRUE(PollUntil([&] { return lock.writers_waiting() == 1; }));
  std::thread reader([&] {
    ASSERT_TRUE(lock.AcquireRead());
    reader_order = sequence.fetch_add(1);
    lock.ReleaseRead();
  });
  ASSERT_TRUE(PollUntil([&] { return lock.readers_waiting() == 1; }));
  lock.ReleaseRead();
  writer.join();
  reader.join();
  EXPECT_EQ(writer_order, 0);
  EXPECT_EQ(reader_order, 1);
}

TEST(RWLockTest, WaitingWriterCountRestoredAfterTimeout) {
  RWLock lock;
  ASSERT_TRUE(lock.AcquireRead());
  std::thread writer([&] { EXPECT_FALSE(lock.AcquireWrite(milliseconds(20))); });
  writer.join();
  EXPECT_EQ(lock.writers_waiting(), 0u);
  EXPECT_FALSE(lock.writer_active());
  // Nothing blocks readers any more.
  std::thread reader([&] {
    ASSERT_TRUE(lock.AcquireRead(Duration::zero()));
    lock.ReleaseRead();
  });
  reader.join();
  lock.ReleaseRead();
  // And the lock is fully usable.
  ASSERT_TRUE(lock.AcquireWrite(Duration::zero()));
  lock.ReleaseWrite();
}

// LMCache's rule: readers blocked only by a writer that times out wake promptly, long before
// their own (2 s) timeout.
TEST(RWLockTest, WriterTimeoutWakesReadersItWasBlocking) {
  constexpr int kReaders = 3;
  constexpr auto kReaderTimeout = seconds(2);
  RWLock lock;
  ASSERT_TRUE(lock.AcquireRead());
  std::atomic<bool> writer_gave_up{false};
  std::thread writer([&] {
    EXPECT_FALSE(lock.AcquireWrite(milliseconds(300)));
    writer_gave_up.store(true);
  });
  ASSERT_TRUE(PollUntil([&] { return lock.writers_waiting() == 1; }));

  std::vector<Duration> waited(kReaders);
  std::vector<char> acquired(kReaders, 0);
  std::vector<std::thread> readers;
  for (int i = 0; i < kReaders; ++i) {
    readers.emplace_back([&, i] {
      auto start = SteadyClock::now();
      acquired[i] = lock.AcquireRead(kReaderTimeout);
      waited[i] = SteadyClock::now() - start;
      if (acquired[i]) lock.ReleaseRead();
    });
  }
  // The readers block behind the writer (the test only means something if they do).
  bool readers_queued = false;
  EXPECT_TRUE(PollUntil([&] {
    readers_queued = lock.readers_waiting() == kReaders;
    return readers_queued || writer_gave_up.load();
  }));
  EXPECT_TRUE(readers_queued) << "the writer timed out before the readers queued";
  writer.join();
  for (auto& t : readers) t.join();
  for (int i = 0; i < kReaders; ++i) {
    EXPECT_TRUE(acquired[i]) << i;
    EXPECT_LT(waited[i], seconds(1)) << "reader " << i << " was not woken by the writer timeout";
  }
  EXPECT_EQ(lock.writers_waiting(), 0u);
  lock.ReleaseRead();
}

// The other half: when another writer still waits, writer priority survives one writer giving
// up: readers stay blocked and the remaining writer goes first.
TEST(RWLockTest, WriterTimeoutKeepsReadersBehindAnotherWaitingWriter) {
  constexpr int kReaders = 3;
  RWLock lock;
  ASSERT_TRUE(lock.AcquireRead());
  std::atomic<bool> patient_writer_done{false};
  std::thread patient_writer([&] {
    ASSERT_TRUE(lock.AcquireWrite());
    patient_writer_done.store(true);
    lock.ReleaseWrite();
  });
  ASSERT_TRUE(PollUntil([&] { return lock.writers_waiting() == 1; }));

  std::atomic<int> readers_before_writer{0};
  std::vector<std::thread> readers;
  for (int i = 0; i < kReaders; ++i) {
    readers.emplace_back([&] {
      ASSERT_TRUE(lock.AcquireRead(seconds(30)));
      if (!patient_writer_done.load()) readers_before_writer.fetch_add(1);
      lock.ReleaseRead();
    });
  }
  ASSERT_TRUE(PollUntil([&] { return lock.readers_waiting() == kReaders; }));

  std::thread impatient_writer([&] { EXPECT_FALSE(lock.AcquireWrite(milliseconds(30))); });
  impatient_writer.join();
  EXPECT_EQ(lock.writers_waiting(), 1u);
  std::thread probe([&] { EXPECT_FALSE(lock.AcquireRead(Duration::zero())); });
  probe.join();
  EXPECT_EQ(lock.readers(), 1u);

  lock.ReleaseRead();
  patient_writer.join();
  for (auto& t : readers) t.join();
  EXPECT_EQ(readers_before_writer.load(), 0);
  EXPECT_EQ(lock.readers(), 0u);
  EXPECT_EQ(lock.readers_waiting(), 0u);
}

TEST(RWLockTest, ReadersAndWritersKeepDataConsistent) {
  constexpr int kWriters = 3;
  constexpr int kWritesEach = 10;
  constexpr int kReaders = 5;
  RWLock lock;
  int value = 0;  // guarded by lock
  std::atomic<bool> torn{false};
  std::latch start(kWriters + kReaders);
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&] {
      start.arrive_and_wait();
      for (int i = 0; i < kWritesEach; ++i) {
        ASSERT_TRUE(lock.AcquireWrite(seconds(10)));
        int v = value;
        value = v + 1;
        lock.ReleaseWrite();
      }
    });
  }
  for (int r = 0; r < kReaders; ++r) {
    threads.emplace_back([&] {
      start.arrive_and_wait();
      for (int i = 0; i < 50; ++i) {
        ASSERT_TRUE(lock.AcquireRead(seconds(10)));
        int a = value;
        int b = value;
        if (a != b || a > kWriters * kWritesEach) torn.store(true);
        lock.ReleaseRead();
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_FALSE(torn.load());
  EXPECT_EQ(value, kWriters * kWritesEach);
}

TEST(RWLockTest, GuardsReleaseOnDestruction) {
  RWLock lock;
  {
    auto guard = ReadLockGuard::Acquire(lock, seconds(1), "test");
    ASSERT_TRUE(guard.has_value());
    EXPECT_TRUE(guard->owns_lock());
    EXPECT_EQ(lock.readers(), 1u);
  }
  EXPECT_EQ(lock.readers(), 0u);
  {
    auto guard = WriteLockGuard::Acquire(lock, kWaitForever);
    ASSERT_TRUE(guard.has_value());
    EXPECT_TRUE(lock.writer_active());
    WriteLockGuard moved = std::move(*guard);
    EXPECT_FALSE(guard->owns_lock());
    EXPECT_TRUE(moved.owns_lock());
    EXPECT_TRUE(lock.writer_active());
    moved.Release();
    EXPECT_FALSE(lock.writer_active());
  }
  EXPECT_FALSE(lock.writer_active());
}

TEST(RWLockTest, GuardsReportLockTimeout) {
  RWLock lock;
  ASSERT_TRUE(lock.AcquireWrite());
  std::thread other([&] {
    auto read = ReadLockGuard::Acquire(lock, milliseconds(20), "registry tree");
    ASSERT_FALSE(read.has_value());
    EXPECT_EQ(read.error().code(), StatusCode::kLockTimeout);
    EXPECT_NE(read.error().message().find("registry tree"), std::string_view::npos);
    EXPECT_NE(read.error().message().find("read"), std::string_view::npos);
    EXPECT_NE(read.error().message().find("20ms"), std::string_view::npos);

    auto write = WriteLockGuard::Acquire(lock, Duration::zero());
    ASSERT_FALSE(write.has_value());
    EXPECT_EQ(write.error().code(), StatusCode::kLockTimeout);
    EXPECT_NE(write.error().message().find("RWLock"), std::string_view::npos);
    EXPECT_NE(write.error().message().find("write"), std::string_view::npos);
  });
  other.join();
  lock.ReleaseWrite();
}

TEST(RWLockDeathTest, ReleaseWithoutHoldingAborts) {
  RWLock lock;
  EXPECT_DEATH(lock.ReleaseRead(), "ReleaseRead|release by a thread that does not hold it");
  EXPECT_DEATH(lock.ReleaseWrite(), "ReleaseWrite|release by a thread that does not hold it");
}

#ifndef NDEBUG
TEST(RWLockDeathTest, ReentrantAcquireAbortsInDebugBuilds) {
  RWLock lock;
  EXPECT_DEATH(
      {
        if (lock.AcquireRead()) (void)lock.AcquireRead();
      },
      "not reentrant");
  EXPECT_DEATH(
      {
        if (lock.AcquireRead()) (void)lock.AcquireWrite(Duration::zero());
      },
      "not reentrant");
  EXPECT_DEATH(
      {
        if (lock.AcquireWrite()) (void)lock.AcquireRead(milliseconds(1));
      },
      "not reentrant");
}

TEST(RWLockDeathTest, ReleaseFromAnotherThreadAbortsInDebugBuilds) {
  EXPECT_DEATH(
      {
        RWLock lock;
        if (lock.AcquireRead()) std::thread([&] { lock.ReleaseRead(); }).join();
      },
      "does not hold it");
}
#else
TEST(RWLockDeathTest, ReentrantAcquireAbortsInDebugBuilds) {
  GTEST_SKIP() << "re-entrancy detection is compiled into debug builds only";
}
#endif

}  // namespace
}  // namespace kvtier::sync
