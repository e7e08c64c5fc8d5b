// Annotated mutex, scoped lock and condition variable.
//
// libstdc++'s std::mutex carries no capability annotations, so clang's analysis cannot see
// it. These thin wrappers add them at zero cost. Use them for every lock in kvtier.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "kvtier/common/thread_annotations.h"

namespace kvtier {

class KVT_CAPABILITY("mutex") Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() KVT_ACQUIRE() { mu_.lock(); }
  void Unlock() KVT_RELEASE() { mu_.unlock(); }
  bool TryLock() KVT_TRY_ACQUIRE(true) { return mu_.try_lock(); }
  // Tells the analysis the caller holds the lock (for code it cannot follow).
  void AssertHeld() const KVT_ASSERT_CAPABILITY(this) {}

 private:
  friend class CondVar;
  std::mutex mu_;
};

class KVT_SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex* mu) KVT_ACQUIRE(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() KVT_RELEASE() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

// A condition variable bound to a kvtier::Mutex. Waits always re-check a predicate; waits with
// a deadline use the monotonic clock.
class CondVar {
 public:
  CondVar() = default;
  CondVar(const CondVar&) = delete;
  CondVar& operator=(const CondVar&) = delete;

  void Wait(Mutex* mu) KVT_REQUIRES(mu) {
    std::unique_lock<std::mutex> lock(mu->mu_, std::adopt_lock);
    cv_.wait(lock);
    lock.release();
  }
  template <typename Pred>
  void Wait(Mutex* mu, Pred pred) KVT_REQUIRES(mu) {
    std::unique_lock<std::mutex> lock(mu->mu_, std::adopt_lock);
    cv_.wait(lock, pred);
    lock.release();
  }
  // Returns false when the deadline passed (the caller re-checks its condition either way).
  // Prefer an explicit `while (!cond) { if (!cv.WaitUntil(&mu, d)) break; }` loop: clang's
  // analysis checks the condition's guarded reads there, but not inside a lambda.
  bool WaitUntil(Mutex* mu, std::chrono::steady_clock::time_point deadline) KVT_REQUIRES(mu) {
    std::unique_lock<std::mutex> lock(mu->mu_, std::adopt_lock);
    bool notified = cv_.wait_until(lock, deadline) == std::cv_status::no_timeout;
    lock.release();
    return notified;
  }
  // Returns pred() at the end: false means the deadline passed with pred() still false.
  template <typename Pred>
  bool WaitUntil(Mutex* mu, std::chrono::steady_clock::time_point deadline, Pred pred)
      KVT_REQUIRES(mu) {
    std::unique_lock<std::mutex> lock(mu->mu_, std::adopt_lock);
    bool result = cv_.wait_until(lock, deadline, pred);
    lock.release();
    return result;
  }
  void NotifyOne() noexcept { cv_.notify_one(); }
  void NotifyAll() noexcept { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

}  // namespace kvtier
