// L2EvictionController: keeps one L2 adapter under its capacity, in bytes.
//
// For an adapter with a capacity and an "eviction" block in its config. It listens to the
// adapter (stored, accessed, deleted keys), feeds an EvictionPolicy, and when used bytes reach
// the trigger watermark deletes victims through the adapter until usage is at the target
// watermark. The adapter refuses to delete keys locked by a lookup (a prefetch in progress);
// those are moved to the most-recent end so they do not block the queue.
//
// Lock order: policy_mu_ -> queue_mu_; adapter calls are made holding policy_mu_ only (the
// adapter calls our listener methods, which take queue_mu_ only).
#pragma once

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"
#include "kvtier/eviction/policy.h"
#include "kvtier/l2/adapter.h"
#include "kvtier/sync/event_fd.h"

namespace kvtier::storage {

struct L2EvictionOptions {
  std::string policy = "lru";
  double trigger_watermark = 0.8;
  double target_watermark = 0.7;
  Duration check_interval = std::chrono::seconds(1);
  size_t victims_per_round = 256;  // at most; a round asks for what the excess needs
};

// Reads an adapter's "eviction" block:
//   {"policy": "lru", "trigger_watermark": 0.8, "target_watermark": 0.7, "check_interval": "1s"}
Result<L2EvictionOptions> ParseL2EvictionOptions(const nlohmann::json& block,
                                                 const std::string& adapter_name);

struct L2EvictionStats {
  uint64_t evictions_triggered = 0;
  uint64_t evicted_keys = 0;
  uint64_t evicted_bytes = 0;
  uint64_t locked_skips = 0;  // victims the adapter refused (locked)
  uint64_t delete_errors = 0;
  uint64_t tracked_keys = 0;
  bool running = false;
};

class L2EvictionController final : public l2::L2Listener {
 public:
  // Registers itself as a listener of `adapter` (call before the adapter is started and
  // shared). The adapter must have a capacity and outlive the controller.
  static Result<std::unique_ptr<L2EvictionController>> Create(l2::L2Adapter* adapter,
                                                              const L2EvictionOptions& options);
  ~L2EvictionController() override;

  Status Start();
  void Stop();
  // Applies queued events and evicts as needed on the calling thread; returns keys evicted.
  uint64_t RunOnce();

  L2EvictionStats stats() const;
  nlohmann::json StatusJson() const;

  // L2Listener.
  void OnL2KeysStored(std::span<const keys::ObjectKey> keys,
                      std::span<const uint64_t> sizes) override;
  void OnL2KeysAccessed(std::span<const keys::ObjectKey> keys) override;
  void OnL2KeysDeleted(std::span<const keys::ObjectKey> keys) override;

 private:
  enum class Kind : uint8_t { kCreated, kTouched, kRemoved };
  struct Event {
    Kind kind;
    bool first_of_call;
    keys::ObjectKey key;
  };

  L2EvictionController(l2::L2Adapter* adapter, std::unique_ptr<eviction::EvictionPolicy> policy,
                       const L2EvictionOptions& options, sync::EventFd wake);
  void Enqueue(Kind kind, std::span<const keys::ObjectKey> keys);
  void ApplyEvents() KVT_REQUIRES(policy_mu_);
  uint64_t EvictLocked() KVT_REQUIRES(policy_mu_);
  // Victims to ask for when `excess` of the `used` bytes must go: enough at the mean object size,
  // at most victims_per_round (a round never deletes far more than needed).
  size_t VictimsFor(uint64_t excess, uint64_t used) const KVT_REQUIRES(policy_mu_);
  void Loop();

  l2::L2Adapter* const adapter_;
  const L2EvictionOptions options_;
  const uint64_t capacity_;
  sync::EventFd wake_;

  mutable Mutex policy_mu_ KVT_ACQUIRED_BEFORE(queue_mu_);
  std::unique_ptr<eviction::EvictionPolicy> policy_ KVT_PT_GUARDED_BY(policy_mu_);
  L2EvictionStats stats_ KVT_GUARDED_BY(policy_mu_);

  Mutex queue_mu_;
  std::vector<Event> queue_ KVT_GUARDED_BY(queue_mu_);

  mutable Mutex thread_mu_;
  std::thread thread_ KVT_GUARDED_BY(thread_mu_);
  std::atomic<bool> stop_{false};
};

}  // namespace kvtier::storage
