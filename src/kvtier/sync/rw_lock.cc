#include "kvtier/sync/rw_lock.h"

#include "kvtier/common/check.h"

namespace kvtier::sync {
namespace {

constexpr std::string_view kKind = "RWLock";

bool IsTry(Timeout timeout) { return timeout.has_value() && *timeout <= Duration::zero(); }

}  // namespace

RWLock::~RWLock() {
  KVT_DCHECK_MSG(state_.load(std::memory_order_relaxed) == 0,
                 "RWLock destroyed while held or waited on");
}

bool RWLock::TryClaimRead(bool holding_mu) {
  const uint64_t blockers = holding_mu ? kWriterActive | kWritersWaitingMask : ~kReaderMask;
  uint64_t s = state_.load(std::memory_order_relaxed);
  while ((s & blockers) == 0) {
    if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acquire,
                                     std::memory_order_relaxed)) {
      return true;
    }
  }
  return false;
}

bool RWLock::TryClaimWrite(bool holding_mu, uint64_t self_waiting) {
  const uint64_t blockers = holding_mu ? kReaderMask | kWriterActive : ~0ULL;
  uint64_t s = state_.load(std::memory_order_relaxed);
  while ((s & blockers) == 0) {
    if (state_.compare_exchange_weak(s, s - self_waiting + kWriterActive, std::memory_order_acquire,
                                     std::memory_order_relaxed)) {
      return true;
    }
  }
  return false;
}

bool RWLock::AcquireRead(Timeout timeout) {
  if constexpr (internal::kTrackHeldLocks) internal::CheckNotHeld(this, kKind);
  bool acquired = TryClaimRead(/*holding_mu=*/false) || AcquireReadSlow(timeout);
  if constexpr (internal::kTrackHeldLocks) {
    if (acquired) internal::NoteAcquired(this, internal::HoldMode::kShared);
  }
  return acquired;
}

bool RWLock::AcquireReadSlow(Timeout timeout) {
  MutexLock lock(&mu_);
  if (TryClaimRead(/*holding_mu=*/true)) return true;
  if (IsTry(timeout)) return false;
  const TimePoint deadline = DeadlineFrom(timeout);
  if (readers_waiting_++ == 0) state_.fetch_or(kReadersWaiting, std::memory_order_relaxed);
  bool acquired;
  while (!(acquired = TryClaimRead(/*holding_mu=*/true))) {
    if (deadline == TimePoint::max()) {
      readers_cv_.Wait(&mu_);
    } else if (!readers_cv_.WaitUntil(&mu_, deadline)) {
      acquired = TryClaimRead(/*holding_mu=*/true);
      break;
    }
  }
  if (--readers_waiting_ == 0) state_.fetch_and(~kReadersWaiting, std::memory_order_relaxed);
  return acquired;
}

void RWLock::ReleaseRead() {
  if constexpr (internal::kTrackHeldLocks) {
    internal::NoteReleased(this, internal::HoldMode::kShared, kKind);
  }
  uint64_t s = state_.load(std::memory_order_relaxed);
  for (;;) {
    KVT_CHECK_MSG((s & kReaderMask) != 0, "RWLock::ReleaseRead without a read lock held");
    // The last reader leaving while writers wait must wake one: do it under mu_.
    if ((s & kReaderMask) == 1 && (s & kWritersWaitingMask) != 0) break;
    if (state_.compare_exchange_weak(s, s - 1, std::memory_order_release,
                                     std::memory_order_relaxed)) {
      return;
    }
  }
  MutexLock lock(&mu_);
  uint64_t prev = state_.fetch_sub(1, std::memory_order_release);
  if ((prev & kReaderMask) == 1 && (prev & kWritersWaitingMask) != 0) writers_cv_.NotifyOne();
}

bool RWLock::AcquireWrite(Timeout timeout) {
  if constexpr (internal::kTrackHeldLocks) internal::CheckNotHeld(this, kKind);
  bool acquired =
      TryClaimWrite(/*holding_mu=*/false, /*self_waiting=*/0) || AcquireWriteSlow(timeout);
  if constexpr (internal::kTrackHeldLocks) {
    if (acquired) internal::NoteAcquired(this, internal::HoldMode::kExclusive);
  }
  return acquired;
}

bool RWLock::AcquireWriteSlow(Timeout timeout) {
  MutexLock lock(&mu_);
  // Free but with waiters around: writers get no fairness among themselves, so take it.
  if (TryClaimWrite(/*holding_mu=*/true, /*self_waiting=*/0)) return true;
  if (IsTry(timeout)) return false;
  const TimePoint deadline = DeadlineFrom(timeout);
  state_.fetch_add(kOneWriterWaiting, std::memory_order_relaxed);
  bool acquired;
  while (!(acquired = TryClaimWrite(/*holding_mu=*/true, kOneWriterWaiting))) {
    if (deadline == TimePoint::max()) {
      writers_cv_.Wait(&mu_);
    } else if (!writers_cv_.WaitUntil(&mu_, deadline)) {
      acquired = TryClaimWrite(/*holding_mu=*/true, kOneWriterWaiting);
      break;
    }
  }
  if (!acquired) {
    // Gave up. Readers that only this writer was blocking may go now.
    uint64_t s = state_.fetch_sub(kOneWriterWaiting, std::memory_order_relaxed) - kOneWriterWaiting;
    if ((s & (kWriterActive | kWritersWaitingMask)) == 0 && readers_waiting_ > 0) {
      readers_cv_.NotifyAll();
    }
  }
  return acquired;
}

void RWLock::ReleaseWrite() {
  if constexpr (internal::kTrackHeldLocks) {
    internal::NoteReleased(this, internal::HoldMode::kExclusive, kKind);
  }
  uint64_t s = state_.load(std::memory_order_relaxed);
  for (;;) {
    KVT_CHECK_MSG((s & kWriterActive) != 0, "RWLock::ReleaseWrite without the write lock held");
    if ((s & (kReadersWaiting | kWritersWaitingMask)) != 0) break;  // must wake someone
    if (state_.compare_exchange_weak(s, s & ~kWriterActive, std::memory_order_release,
                                     std::memory_order_relaxed)) {
      return;
    }
  }
  MutexLock lock(&mu_);
  uint64_t prev = state_.fetch_and(~kWriterActive, std::memory_order_release);
  if ((prev & kWritersWaitingMask) != 0) {
    writers_cv_.NotifyOne();
  } else if (readers_waiting_ > 0) {
    readers_cv_.NotifyAll();
  }
}

uint32_t RWLock::readers() const {
  return static_cast<uint32_t>(state_.load(std::memory_order_relaxed) & kReaderMask);
}

bool RWLock::writer_active() const {
  return (state_.load(std::memory_order_relaxed) & kWriterActive) != 0;
}

uint32_t RWLock::writers_waiting() const {
  return static_cast<uint32_t>(state_.load(std::memory_order_relaxed) >> kWritersWaitingShift);
}

uint32_t RWLock::readers_waiting() const {
  MutexLock lock(&mu_);
  return readers_waiting_;
}

ReaderLock::ReaderLock(RWLock* lock) : lock_(lock) {
  bool acquired = lock_->AcquireRead(kWaitForever);
  KVT_CHECK(acquired);
}

ReaderLock::~ReaderLock() { lock_->ReleaseRead(); }

WriterLock::WriterLock(RWLock* lock) : lock_(lock) {
  bool acquired = lock_->AcquireWrite(kWaitForever);
  KVT_CHECK(acquired);
}

WriterLock::~WriterLock() { lock_->ReleaseWrite(); }

}  // namespace kvtier::sync
