// L1EvictionController: keeps L1 memory below a watermark, in bytes.
//
// It listens to L1 (creates, touches, deletes) and feeds an EvictionPolicy. One thread waits on
// an eventfd with a periodic timeout and evicts when used bytes reach the trigger watermark,
// down to the target watermark. It wakes at once, not only on its tick, when
// - an allocation failed (it then also frees what the failed request needed),
// - a reservation pushed usage over the trigger watermark,
// - the event queue grew long.
// Never evicted: read-locked objects and live staging (L1 refuses: Delete is never forced).
// Expired staging is reclaimed. Keys the policy tracks but L1 no longer holds are dropped from
// the policy when met.
//
// Lock order: policy_mu_ -> (L1 shard locks, taken inside L1 calls) -> queue_mu_. L1 calls
// listener methods with no L1 lock held; they take only queue_mu_.
#pragma once

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"
#include "kvtier/eviction/policy.h"
#include "kvtier/l1/l1_manager.h"
#include "kvtier/sync/event_fd.h"

namespace kvtier::eviction {

struct L1EvictionOptions {
  double trigger_watermark = 0.8;  // evict when used / capacity >= this
  double target_watermark = 0.7;   // ... until used / capacity <= this
  Duration check_interval = std::chrono::seconds(1);
  size_t victims_per_round = 256;
  // Wake the thread to apply queued events once this many are pending.
  size_t queue_wake_threshold = 4096;
};

struct L1EvictionStats {
  uint64_t wakeups = 0;
  uint64_t evictions_triggered = 0;  // passes that had something to free
  uint64_t evicted_keys = 0;
  uint64_t evicted_bytes = 0;
  uint64_t stalls = 0;  // passes that needed memory but found nothing evictable
  uint64_t allocation_failure_wakeups = 0;
  uint64_t stale_keys_dropped = 0;
  uint64_t events_applied = 0;
  uint64_t tracked_keys = 0;
  bool running = false;
};

class L1EvictionController final : public l1::L1Listener {
 public:
  // Registers itself as a listener of `l1`, which must outlive the controller. Call before
  // `l1` is used by other threads.
  static Result<std::unique_ptr<L1EvictionController>> Create(
      l1::L1Manager* l1, std::unique_ptr<EvictionPolicy> policy, const L1EvictionOptions& options);
  ~L1EvictionController() override;  // Stop()s and unregisters

  Status Start();
  // Stops and joins the thread. Idempotent.
  void Stop();

  // Applies queued events and evicts as needed, on the calling thread. Returns the keys
  // evicted. For tests and benchmarks that drive eviction by hand; safe alongside the thread.
  uint64_t RunOnce();

  L1EvictionStats stats() const;
  std::string_view policy_name() const { return policy_name_; }
  const L1EvictionOptions& options() const { return options_; }

  // L1Listener.
  uint32_t events() const override;
  void OnL1KeysReservedWrite(std::span<const keys::ObjectKey> keys) override;
  void OnL1KeysWriteFinished(std::span<const keys::ObjectKey> keys) override;
  void OnL1KeysWriteFinishedAndReadReserved(std::span<const keys::ObjectKey> keys) override;
  void OnL1KeysDeleted(std::span<const keys::ObjectKey> keys) override;
  void OnL1KeysAccessed(std::span<const keys::ObjectKey> keys) override;
  void OnL1AllocationFailed(uint64_t bytes) override;

 private:
  enum class Kind : uint8_t { kCreated, kTouched, kRemoved };
  struct Event {
    Kind kind;
    bool first_of_call;  // batches for the policy are one L1 call each
    keys::ObjectKey key;
  };

  L1EvictionController(l1::L1Manager* l1, std::unique_ptr<EvictionPolicy> policy,
                       const L1EvictionOptions& options, sync::EventFd wake);
  void Enqueue(Kind kind, std::span<const keys::ObjectKey> keys);
  void Loop();
  void ApplyEvents() KVT_REQUIRES(policy_mu_);
  uint64_t EvictLocked() KVT_REQUIRES(policy_mu_);
  // Untracks the keys of `stale` that L1 still does not hold; clears it.
  void DropStale(std::vector<keys::ObjectKey>* stale) KVT_REQUIRES(policy_mu_);

  l1::L1Manager* const l1_;
  const L1EvictionOptions options_;
  const uint64_t trigger_bytes_;
  const uint64_t target_bytes_;
  const std::string policy_name_;
  sync::EventFd wake_;

  mutable Mutex policy_mu_ KVT_ACQUIRED_BEFORE(queue_mu_);
  std::unique_ptr<EvictionPolicy> policy_ KVT_PT_GUARDED_BY(policy_mu_);
  std::vector<Event> applying_ KVT_GUARDED_BY(policy_mu_);  // reused buffer
  L1EvictionStats stats_ KVT_GUARDED_BY(policy_mu_);
  // Bytes and keys freed by recent deletions: the running estimate of bytes per key.
  uint64_t evicted_keys_bytes_ KVT_GUARDED_BY(policy_mu_) = 0;
  uint64_t evicted_keys_count_ KVT_GUARDED_BY(policy_mu_) = 0;

  Mutex queue_mu_;
  std::vector<Event> queue_ KVT_GUARDED_BY(queue_mu_);

  std::atomic<uint64_t> pending_need_bytes_{0};  // largest failed allocation since last pass
  std::atomic<bool> watermark_signalled_{false};
  std::atomic<uint64_t> allocation_failures_{0};
  std::atomic<uint64_t> wakeups_{0};

  mutable Mutex thread_mu_;
  std::thread thread_ KVT_GUARDED_BY(thread_mu_);
  std::atomic<bool> stop_{false};
};

}  // namespace kvtier::eviction
