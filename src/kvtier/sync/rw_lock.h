// RWLock: a readers-writer lock with timeouts that prefers writers (LMCache's RWLockWithTimeout).
//
// Readers share the lock; a writer holds it alone. A waiting writer blocks new readers, so a
// stream of readers cannot starve a writer (a stream of writers can starve readers). Writers get
// no fairness among themselves. When a waiting writer gives up, the readers that only it was
// blocking wake at once; readers still blocked by another waiting writer stay blocked.
//
// Not reentrant: a thread must not acquire a lock it already holds, in either mode (a second
// read acquire deadlocks as soon as a writer queues). Debug builds abort on it. The thread that
// acquired the lock releases it; releasing a lock not held aborts.
//
// Timeouts: kWaitForever waits forever; Duration(0) (or less) is a single non-blocking try;
// anything else is a deadline on the monotonic clock.
#pragma once

#include <atomic>
#include <cstdint>
#include <string_view>

#include "kvtier/common/clock.h"
#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"
#include "kvtier/common/thread_annotations.h"
#include "kvtier/sync/lock_internal.h"

namespace kvtier::sync {

class KVT_CAPABILITY("rwlock") RWLock {
 public:
  RWLock() = default;
  // The lock must be free, with nobody waiting.
  ~RWLock();
  RWLock(const RWLock&) = delete;
  RWLock& operator=(const RWLock&) = delete;

  // True when the read lock was acquired within `timeout`.
  [[nodiscard]] bool AcquireRead(Timeout timeout = kWaitForever) KVT_TRY_ACQUIRE_SHARED(true);
  void ReleaseRead() KVT_RELEASE_SHARED();
  // True when the write lock was acquired within `timeout`.
  [[nodiscard]] bool AcquireWrite(Timeout timeout = kWaitForever) KVT_TRY_ACQUIRE(true);
  void ReleaseWrite() KVT_RELEASE();

  // Snapshots for tests and metrics; stale as soon as they return.
  uint32_t readers() const;
  bool writer_active() const;
  uint32_t writers_waiting() const;
  uint32_t readers_waiting() const KVT_EXCLUDES(mu_);

 private:
  // state_: the reader count (bits 0..31), a writer-active bit, a readers-waiting bit and the
  // waiting-writer count (bits 34..63). While nobody waits, acquires and releases are a single
  // atomic operation on it and never touch mu_. Once anybody waits (a waiting bit is set, and
  // only a thread holding mu_ changes those), every acquire goes through mu_ and every change
  // that can unblock a waiter is made holding mu_; waiters re-check state_ under mu_ before they
  // sleep, so no wake-up is lost. Either way nobody can take the lock until the releasing thread
  // is done touching it, so a holder may destroy the lock right after acquiring it.
  static constexpr uint64_t kReaderMask = 0xffff'ffffULL;
  static constexpr uint64_t kWriterActive = 1ULL << 32;
  static constexpr uint64_t kReadersWaiting = 1ULL << 33;
  static constexpr int kWritersWaitingShift = 34;
  static constexpr uint64_t kOneWriterWaiting = 1ULL << kWritersWaitingShift;
  static constexpr uint64_t kWritersWaitingMask = ~0ULL << kWritersWaitingShift;

  // A read share when no writer is active or waiting; outside mu_ also only while no reader
  // waits.
  bool TryClaimRead(bool holding_mu);
  // The write lock when there are no readers and no active writer; outside mu_ only while
  // nobody waits. `self_waiting` is kOneWriterWaiting when the caller counted itself as a
  // waiting writer (and stops waiting on success).
  bool TryClaimWrite(bool holding_mu, uint64_t self_waiting);
  bool AcquireReadSlow(Timeout timeout) KVT_EXCLUDES(mu_);
  bool AcquireWriteSlow(Timeout timeout) KVT_EXCLUDES(mu_);

  std::atomic<uint64_t> state_{0};
  mutable Mutex mu_;
  CondVar readers_cv_;
  CondVar writers_cv_;
  uint32_t readers_waiting_ KVT_GUARDED_BY(mu_) = 0;
};

// Blocking scoped locks that clang's analysis can check. Prefer them where no timeout is needed.
class KVT_SCOPED_CAPABILITY ReaderLock {
 public:
  explicit ReaderLock(RWLock* lock) KVT_ACQUIRE_SHARED(lock);
  ~ReaderLock() KVT_RELEASE_GENERIC();
  ReaderLock(const ReaderLock&) = delete;
  ReaderLock& operator=(const ReaderLock&) = delete;

 private:
  RWLock* const lock_;
};

class KVT_SCOPED_CAPABILITY WriterLock {
 public:
  explicit WriterLock(RWLock* lock) KVT_ACQUIRE(lock);
  ~WriterLock() KVT_RELEASE();
  WriterLock(const WriterLock&) = delete;
  WriterLock& operator=(const WriterLock&) = delete;

 private:
  RWLock* const lock_;
};

namespace internal {
struct ReadLockTraits {
  using Lock = RWLock;
  static constexpr std::string_view kKind = "RWLock";
  static constexpr std::string_view kMode = "read";
  static bool Acquire(RWLock& lock, Timeout timeout) KVT_NO_THREAD_SAFETY_ANALYSIS {
    return lock.AcquireRead(timeout);
  }
  static void Release(RWLock& lock) KVT_NO_THREAD_SAFETY_ANALYSIS { lock.ReleaseRead(); }
};
struct WriteLockTraits {
  using Lock = RWLock;
  static constexpr std::string_view kKind = "RWLock";
  static constexpr std::string_view kMode = "write";
  static bool Acquire(RWLock& lock, Timeout timeout) KVT_NO_THREAD_SAFETY_ANALYSIS {
    return lock.AcquireWrite(timeout);
  }
  static void Release(RWLock& lock) KVT_NO_THREAD_SAFETY_ANALYSIS { lock.ReleaseWrite(); }
};
}  // namespace internal

// Move-only guards with a timeout (LMCache's read_lock()/write_lock() context managers):
//   KVT_ASSIGN_OR_RETURN(auto guard, ReadLockGuard::Acquire(lock, 1s, "registry"));
// Acquire returns a kLockTimeout error on timeout; the guard releases on destruction.
using ReadLockGuard = internal::TimedLockGuard<internal::ReadLockTraits>;
using WriteLockGuard = internal::TimedLockGuard<internal::WriteLockTraits>;

}  // namespace kvtier::sync
