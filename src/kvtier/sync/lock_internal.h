// Shared by RWLock and FastLock: debug-build tracking of the locks each thread holds, and the
// kLockTimeout Status of the scoped guards. Not for use outside sync/.
#pragma once

#include <cstdint>
#include <string_view>
#include <utility>

#include "kvtier/common/clock.h"
#include "kvtier/common/result.h"
#include "kvtier/common/status.h"

namespace kvtier::sync::internal {

// Debug builds record, per thread, which locks the thread holds, to turn a re-entrant acquire
// (a self-deadlock) or a release by a thread that does not hold the lock into an abort.
// FastLock's inline fast path depends on it too, so all code of one program must agree on
// NDEBUG.
#ifdef NDEBUG
inline constexpr bool kTrackHeldLocks = false;
#else
inline constexpr bool kTrackHeldLocks = true;
#endif

enum class HoldMode : uint8_t { kShared, kExclusive };

// Aborts when the calling thread already holds `lock`, in any mode. `kind` names the lock type.
void CheckNotHeld(const void* lock, std::string_view kind);
void NoteAcquired(const void* lock, HoldMode mode);
// Aborts when the calling thread does not hold `lock` in `mode`.
void NoteReleased(const void* lock, HoldMode mode, std::string_view kind);

// The kLockTimeout error of a guard that gave up: says which lock (`what`, or `kind` when
// empty), which mode and how long it waited.
Status LockTimeoutError(std::string_view kind, std::string_view mode, std::string_view what,
                        Timeout timeout);

// A move-only guard over a lock with a timed acquire; the public guards (ReadLockGuard,
// WriteLockGuard, FastLockGuard) are aliases of it. Traits supplies Lock, kKind, kMode and
// static Acquire(Lock&, Timeout) / Release(Lock&). The guard releases on destruction and must be
// destroyed (or Release()d) on the thread that acquired it. Clang's analysis cannot follow a
// movable guard: code that wants the analysis uses the blocking scoped locks instead.
template <typename Traits>
class TimedLockGuard {
 public:
  using Lock = typename Traits::Lock;

  // A kLockTimeout error when the lock was not acquired within `timeout`; `what` names the lock
  // in its message.
  [[nodiscard]] static Result<TimedLockGuard> Acquire(Lock& lock, Timeout timeout,
                                                      std::string_view what = "") {
    if (!Traits::Acquire(lock, timeout)) {
      return MakeError(LockTimeoutError(Traits::kKind, Traits::kMode, what, timeout));
    }
    return TimedLockGuard(&lock);
  }

  TimedLockGuard(TimedLockGuard&& other) noexcept : lock_(std::exchange(other.lock_, nullptr)) {}
  TimedLockGuard& operator=(TimedLockGuard&& other) noexcept {
    if (this != &other) {
      Release();
      lock_ = std::exchange(other.lock_, nullptr);
    }
    return *this;
  }
  TimedLockGuard(const TimedLockGuard&) = delete;
  TimedLockGuard& operator=(const TimedLockGuard&) = delete;
  ~TimedLockGuard() { Release(); }

  // Releases early; a no-op when already released or moved from.
  void Release() {
    if (lock_ != nullptr) Traits::Release(*std::exchange(lock_, nullptr));
  }
  bool owns_lock() const { return lock_ != nullptr; }

 private:
  explicit TimedLockGuard(Lock* lock) : lock_(lock) {}
  Lock* lock_;
};

}  // namespace kvtier::sync::internal
