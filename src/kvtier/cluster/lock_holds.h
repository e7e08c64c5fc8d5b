// Scoped holders that adopt a lock the caller acquired with a timeout, so clang's analysis can
// follow timed acquires:
//   if (!lock.AcquireRead(timeout)) return LockTimeoutError(...);
//   AdoptRead hold(&lock);  // released at the end of the scope
// Internal to cluster/.
#pragma once

#include "kvtier/common/thread_annotations.h"
#include "kvtier/sync/fast_lock.h"
#include "kvtier/sync/rw_lock.h"

namespace kvtier::cluster::internal {

class KVT_SCOPED_CAPABILITY AdoptRead {
 public:
  explicit AdoptRead(sync::RWLock* lock) KVT_REQUIRES_SHARED(lock) : lock_(lock) {}
  ~AdoptRead() KVT_RELEASE_GENERIC() { lock_->ReleaseRead(); }
  AdoptRead(const AdoptRead&) = delete;
  AdoptRead& operator=(const AdoptRead&) = delete;

 private:
  sync::RWLock* const lock_;
};

class KVT_SCOPED_CAPABILITY AdoptWrite {
 public:
  explicit AdoptWrite(sync::RWLock* lock) KVT_REQUIRES(lock) : lock_(lock) {}
  ~AdoptWrite() KVT_RELEASE() { lock_->ReleaseWrite(); }
  AdoptWrite(const AdoptWrite&) = delete;
  AdoptWrite& operator=(const AdoptWrite&) = delete;

 private:
  sync::RWLock* const lock_;
};

class KVT_SCOPED_CAPABILITY AdoptFast {
 public:
  explicit AdoptFast(sync::FastLock* lock) KVT_REQUIRES(lock) : lock_(lock) {}
  ~AdoptFast() KVT_RELEASE() { lock_->Release(); }
  AdoptFast(const AdoptFast&) = delete;
  AdoptFast& operator=(const AdoptFast&) = delete;

 private:
  sync::FastLock* const lock_;
};

}  // namespace kvtier::cluster::internal
