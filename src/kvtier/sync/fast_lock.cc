#include "kvtier/sync/fast_lock.h"

#include "kvtier/common/check.h"

#ifdef KVT_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace kvtier::sync {
namespace {

constexpr std::string_view kKind = "FastLock";

// Tries with 1, 2, 4, ... 64 pauses between them: at most ~127 pauses, a few microseconds.
constexpr int kSpinRounds = 7;

inline void CpuPause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

// std::timed_mutex::try_lock_until(steady_clock) is pthread_mutex_clocklock, which clang 14's
// TSan does not intercept: tell it about the acquire, on the pthread mutex it already tracks
// through the try_lock/unlock interceptors.
bool TryLockUntil(std::timed_mutex& mu, TimePoint deadline) {
#ifdef KVT_TSAN
  __tsan_mutex_pre_lock(mu.native_handle(), __tsan_mutex_try_lock);
  bool acquired = mu.try_lock_until(deadline);
  __tsan_mutex_post_lock(mu.native_handle(),
                         __tsan_mutex_try_lock | (acquired ? 0 : __tsan_mutex_try_lock_failed), 0);
  return acquired;
#else
  return mu.try_lock_until(deadline);
#endif
}

}  // namespace

bool FastLock::Spin() {
  for (int round = 0; round < kSpinRounds; ++round) {
    for (int i = 0; i < (1 << round); ++i) CpuPause();
    if (mu_.try_lock()) return true;
  }
  return false;
}

bool FastLock::AcquireSlow(Timeout timeout) {
  if constexpr (internal::kTrackHeldLocks) internal::CheckNotHeld(this, kKind);
  bool acquired = mu_.try_lock();
  if (!acquired && !(timeout && *timeout <= Duration::zero())) {
    if (timeout) {
      TimePoint deadline = DeadlineFrom(timeout);
      acquired = Spin() || TryLockUntil(mu_, deadline);
    } else {
      acquired = Spin();
      if (!acquired) {
        mu_.lock();
        acquired = true;
      }
    }
  }
  if constexpr (internal::kTrackHeldLocks) {
    if (acquired) internal::NoteAcquired(this, internal::HoldMode::kExclusive);
  }
  return acquired;
}

void FastLock::NoteReleased() {
  internal::NoteReleased(this, internal::HoldMode::kExclusive, kKind);
}

FastLockHolder::FastLockHolder(FastLock* lock) : lock_(lock) {
  bool acquired = lock_->Acquire(kWaitForever);
  KVT_CHECK(acquired);
}

FastLockHolder::~FastLockHolder() { lock_->Release(); }

}  // namespace kvtier::sync
