// FastLock: a mutex with a timed acquire for short, hot critical sections (LMCache's
// FastLockWithTimeout). An acquire first tries without blocking, then spins briefly (the holder
// of a short critical section is usually about to release), then blocks until its deadline.
//
// Not reentrant; debug builds abort when a thread re-acquires a FastLock it holds. The thread
// that acquired the lock releases it (debug builds check this too).
//
// Timeouts: kWaitForever waits forever; Duration(0) (or less) is a single non-blocking try;
// anything else is a deadline on the monotonic clock.
#pragma once

#include <mutex>
#include <string_view>

#include "kvtier/common/clock.h"
#include "kvtier/common/result.h"
#include "kvtier/common/thread_annotations.h"
#include "kvtier/sync/lock_internal.h"

namespace kvtier::sync {

class KVT_CAPABILITY("mutex") FastLock {
 public:
  FastLock() = default;
  FastLock(const FastLock&) = delete;
  FastLock& operator=(const FastLock&) = delete;

  // True when acquired within `timeout`.
  [[nodiscard]] bool Acquire(Timeout timeout = kWaitForever) KVT_TRY_ACQUIRE(true) {
    if constexpr (!internal::kTrackHeldLocks) {
      if (mu_.try_lock()) return true;
    }
    return AcquireSlow(timeout);
  }
  // A single non-blocking attempt, no spinning.
  [[nodiscard]] bool TryAcquire() KVT_TRY_ACQUIRE(true) {
    if constexpr (!internal::kTrackHeldLocks) return mu_.try_lock();
    return AcquireSlow(Duration::zero());
  }
  void Release() KVT_RELEASE() {
    if constexpr (internal::kTrackHeldLocks) NoteReleased();
    mu_.unlock();
  }

 private:
  // Everything but the uncontended acquire of release builds: the re-entrancy check, the
  // non-blocking try, the bounded spin, the blocking wait.
  bool AcquireSlow(Timeout timeout);
  // Bounded spin with CPU pauses between tries; true when acquired.
  bool Spin();
  void NoteReleased();

  // A pthread mutex: try_lock is one compare-and-swap, unlock one exchange (plus a futex wake
  // only when someone sleeps), and try_lock_until sleeps in the kernel against CLOCK_MONOTONIC.
  std::timed_mutex mu_;
};

// Blocking scoped lock that clang's analysis can check.
class KVT_SCOPED_CAPABILITY FastLockHolder {
 public:
  explicit FastLockHolder(FastLock* lock) KVT_ACQUIRE(lock);
  ~FastLockHolder() KVT_RELEASE();
  FastLockHolder(const FastLockHolder&) = delete;
  FastLockHolder& operator=(const FastLockHolder&) = delete;

 private:
  FastLock* const lock_;
};

namespace internal {
struct FastLockTraits {
  using Lock = FastLock;
  static constexpr std::string_view kKind = "FastLock";
  static constexpr std::string_view kMode = "exclusive";
  static bool Acquire(FastLock& lock, Timeout timeout) KVT_NO_THREAD_SAFETY_ANALYSIS {
    return lock.Acquire(timeout);
  }
  static void Release(FastLock& lock) KVT_NO_THREAD_SAFETY_ANALYSIS { lock.Release(); }
};
}  // namespace internal

// Move-only guard with a timeout: FastLockGuard::Acquire(lock, 10s, "worker kv_store") returns a
// kLockTimeout error on timeout; the guard releases on destruction.
using FastLockGuard = internal::TimedLockGuard<internal::FastLockTraits>;

}  // namespace kvtier::sync
