// `kvtier bench sync`: FastLock against std::mutex and RWLock against std::shared_mutex, each
// measured in the same run as its baseline, uncontended and with 2 threads.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <shared_mutex>
#include <string>

#include "kvtier/sync/fast_lock.h"
#include "kvtier/sync/rw_lock.h"

#include "suites.h"

namespace kvtier::bench {
namespace {

using sync::FastLock;
using sync::RWLock;

// Operations between two reads of the stop flag / the clock.
constexpr uint64_t kBatch = 256;
// One write in kWriteEvery operations: 95% reads.
constexpr uint64_t kWriteEvery = 20;

// Keeps the compiler from dropping the critical sections.
std::atomic<uint64_t> g_sink{0};

// Lock adapters with one shape: Lock()/Unlock(), LockShared()/UnlockShared().
struct FastLockAdapter {
  FastLock lock;
  void Lock() KVT_NO_THREAD_SAFETY_ANALYSIS {
    if (!lock.Acquire()) std::abort();
  }
  void Unlock() KVT_NO_THREAD_SAFETY_ANALYSIS { lock.Release(); }
};

struct MutexAdapter {
  std::mutex mu;
  void Lock() { mu.lock(); }
  void Unlock() { mu.unlock(); }
};

struct RWLockAdapter {
  RWLock lock;
  void Lock() KVT_NO_THREAD_SAFETY_ANALYSIS {
    if (!lock.AcquireWrite()) std::abort();
  }
  void Unlock() KVT_NO_THREAD_SAFETY_ANALYSIS { lock.ReleaseWrite(); }
  void LockShared() KVT_NO_THREAD_SAFETY_ANALYSIS {
    if (!lock.AcquireRead()) std::abort();
  }
  void UnlockShared() KVT_NO_THREAD_SAFETY_ANALYSIS { lock.ReleaseRead(); }
};

struct SharedMutexAdapter {
  std::shared_mutex mu;
  void Lock() { mu.lock(); }
  void Unlock() { mu.unlock(); }
  void LockShared() { mu.lock_shared(); }
  void UnlockShared() { mu.unlock_shared(); }
};

// A small critical section: one read-modify-write of a shared counter.
template <typename L>
uint64_t ExclusiveOps(L& lock, uint64_t& counter, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) {
    lock.Lock();
    ++counter;
    lock.Unlock();
  }
  return n;
}

// `n` operations, one write per kWriteEvery; `phase` staggers threads' writes.
template <typename L>
uint64_t ReadMostlyOps(L& lock, uint64_t& counter, uint64_t n, uint64_t phase) {
  uint64_t seen = 0;
  for (uint64_t i = 0; i < n; ++i) {
    if ((i + phase) % kWriteEvery == 0) {
      lock.Lock();
      ++counter;
      lock.Unlock();
    } else {
      lock.LockShared();
      seen += counter;
      lock.UnlockShared();
    }
  }
  g_sink.fetch_add(seen, std::memory_order_relaxed);
  return n;
}

template <typename L>
double ExclusiveRate(int threads, double seconds) {
  L lock;
  uint64_t counter = 0;
  double rate;
  if (threads == 1) {
    rate = MeasureRate([&] { return ExclusiveOps(lock, counter, kBatch); }, seconds);
  } else {
    rate = MeasureRateThreads(threads, seconds, [&](int, const std::atomic<bool>* stop) {
      uint64_t ops = 0;
      while (!stop->load(std::memory_order_relaxed)) ops += ExclusiveOps(lock, counter, kBatch);
      return ops;
    });
  }
  g_sink.fetch_add(counter, std::memory_order_relaxed);
  return rate;
}

template <typename L>
double ReadMostlyRate(int threads, double seconds) {
  L lock;
  uint64_t counter = 0;
  double rate;
  if (threads == 1) {
    rate = MeasureRate([&] { return ReadMostlyOps(lock, counter, kBatch, 0); }, seconds);
  } else {
    rate = MeasureRateThreads(threads, seconds, [&](int t, const std::atomic<bool>* stop) {
      uint64_t ops = 0;
      uint64_t phase = static_cast<uint64_t>(t) * (kWriteEvery / 2);
      while (!stop->load(std::memory_order_relaxed)) {
        ops += ReadMostlyOps(lock, counter, kBatch, phase);
      }
      return ops;
    });
  }
  g_sink.fetch_add(counter, std::memory_order_relaxed);
  return rate;
}

}  // namespace

Status RunSyncSuite(const SuiteOptions& options, Reporter* reporter) {
  const double seconds = options.quick ? std::min(options.min_seconds, 0.05) : options.min_seconds;
  Progress progress("sync", 8, !options.json);

  auto add = [&](std::string name, double value, std::string baseline_name, double baseline) {
    reporter->Add(Measurement{std::move(name), value, "ops/s", std::move(baseline_name), baseline});
  };

  // Baseline first, then ours, for each pair: both see the same machine state.
  double mutex_1 = ExclusiveRate<MutexAdapter>(1, seconds);
  progress.Step();
  double fast_1 = ExclusiveRate<FastLockAdapter>(1, seconds);
  progress.Step();
  add("fast_lock.uncontended", fast_1, "std::mutex", mutex_1);

  double mutex_2 = ExclusiveRate<MutexAdapter>(2, seconds);
  progress.Step();
  double fast_2 = ExclusiveRate<FastLockAdapter>(2, seconds);
  progress.Step();
  add("fast_lock.contended_2t", fast_2, "std::mutex", mutex_2);

  double shared_1 = ReadMostlyRate<SharedMutexAdapter>(1, seconds);
  progress.Step();
  double rw_1 = ReadMostlyRate<RWLockAdapter>(1, seconds);
  progress.Step();
  add("rw_lock.read_95pct_1t", rw_1, "std::shared_mutex", shared_1);

  double shared_2 = ReadMostlyRate<SharedMutexAdapter>(2, seconds);
  progress.Step();
  double rw_2 = ReadMostlyRate<RWLockAdapter>(2, seconds);
  progress.Step();
  add("rw_lock.read_95pct_2t", rw_2, "std::shared_mutex", shared_2);
  return Status::OK();
}

}  // namespace kvtier::bench
