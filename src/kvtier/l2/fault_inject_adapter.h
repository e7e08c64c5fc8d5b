// FaultInjectAdapter: wraps any adapter and injects failures, delays and hangs, to test the
// storage controllers' failure paths (RocksDB's fault-injection FS, LMCache's fault_inject).
//
// Per task, from one seeded generator (deterministic for a given seed and submission order):
//   hang         the task is never forwarded and never completes; Cancel returns true (its
//                buffers were never touched). Close fails it.
//   store        a failed store task is not forwarded and completes with an IOError.
//   lookup       per key: a found key is reported missing (and unlocked in the inner adapter).
//   load         per key: the key's bit is cleared (its buffer may have been written).
//   delay        every task is forwarded `delay` after submission (Cancel before: true).
// Everything else forwards to the inner adapter, whose completions a relay thread maps back
// to this adapter's task ids. Stored/deleted notifications of the inner adapter are relayed
// too, so Usage() equals the inner adapter's (keys an inner adapter recovered before the
// wrapper attached are the exception: the wrapper never hears of them).
//
// Config (section "fault_inject adapter '<name>'"; the inner config is made by
// MakeWrappedL2Adapter, its name defaults to "<name>.inner"; an "eviction" block belongs at the
// top level, next to "type": "fault_inject", and is an error inside "inner"):
//   {"type": "fault_inject", "inner": {"type": "mock", "capacity": "1GiB"},
//    "store_failure_rate": 0.3, "load_failure_rate": 0.3, "lookup_failure_rate": 0,
//    "hang_rate": 0.05, "delay": "5ms", "seed": 1}
// Rates are in [0, 1] (default 0); delay defaults to 0; seed to 1.
//
// Lock order: mu_, then the inner adapter's locks (which are taken before report_mu_, via
// the inner's listener calls), then report_mu_. Nothing takes mu_ while holding report_mu_.
// report_mu_ is held while this adapter's accounts and listeners are told of a change, so
// they see a key's store and deletion in the inner adapter's order; listeners run under it
// and must not call Delete on this adapter.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <nlohmann/json_fwd.hpp>

#include "kvtier/common/clock.h"
#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"
#include "kvtier/l2/adapter.h"
#include "kvtier/sync/event_fd.h"

namespace kvtier::l2 {

struct FaultInjectOptions {
  double store_failure_rate = 0;   // per store task
  double load_failure_rate = 0;    // per key
  double lookup_failure_rate = 0;  // per key
  double hang_rate = 0;            // per task
  Duration delay{0};               // before forwarding each task
  uint64_t seed = 1;
};

class FaultInjectAdapter final : public L2Adapter, private L2Listener {
 public:
  // Takes ownership of `inner`, which must not be shared yet (the wrapper listens to it).
  static Result<std::unique_ptr<FaultInjectAdapter>> Create(std::unique_ptr<L2Adapter> inner,
                                                            const FaultInjectOptions& options,
                                                            std::string name);
  ~FaultInjectAdapter() override;

  // For tests: the wrapped adapter (closed with this one). Do not submit to it directly.
  L2Adapter* inner() const { return inner_.get(); }
  // Tasks hung so far and not cancelled.
  size_t debug_hung_count() const;

 protected:
  void DoSubmitStore(TaskId task, std::span<const ObjectKey> keys,
                     std::span<const std::span<const uint8_t>> objects) override;
  void DoSubmitLookupAndLock(TaskId task, std::span<const ObjectKey> keys) override;
  void DoUnlock(std::span<const ObjectKey> keys) override;
  void DoSubmitLoad(TaskId task, std::span<const ObjectKey> keys,
                    std::span<const std::span<uint8_t>> buffers) override;
  bool DoCancel(TaskId task) override;
  Result<Bitmap> DoDelete(std::span<const ObjectKey> keys, bool force) override;
  Result<KeyPage> DoListKeys(std::string_view model_name, size_t page_size,
                             std::string_view cursor) override;
  void DoClose() override;
  // Starts the inner adapter, whose start-up notifications this wrapper relays.
  Status DoStart() override;
  bool DoHealthy() const override;
  void DoStatusJson(nlohmann::json* out) const override;

 private:
  enum class Kind : uint8_t { kStore, kLookup, kLoad };
  enum class Phase : uint8_t {
    kDelayed,     // waiting in delayed_ to be forwarded (or failed)
    kHung,        // never completes
    kForwarded,   // submitted to the inner adapter as `inner`
    kCompleting,  // the relay is completing it (Cancel: false)
  };
  struct Task {
    Kind kind = Kind::kStore;
    Phase phase = Phase::kDelayed;
    TaskId inner = 0;
    TimePoint forward_at;
    bool fail = false;  // stores: fail instead of forwarding
    Bitmap drop;        // lookups, loads: keys to report missing / failed
    std::vector<ObjectKey> keys;
    std::vector<std::span<const uint8_t>> sources;
    std::vector<std::span<uint8_t>> targets;
  };
  // What the relay completes once it has released mu_.
  struct Completion {
    TaskId task = 0;
    Kind kind = Kind::kStore;
    Status status;
    Bitmap bits;
    Task state;
  };

  FaultInjectAdapter(std::unique_ptr<L2Adapter> inner, const FaultInjectOptions& options,
                     std::string name, uint64_t capacity_bytes);

  // L2Listener, called by the inner adapter.
  void OnL2KeysStored(std::span<const ObjectKey> keys, std::span<const uint64_t> sizes) override;
  void OnL2KeysDeleted(std::span<const ObjectKey> keys) override;

  void Submit(TaskId task, Task state);
  double Draw() KVT_REQUIRES(mu_);
  void Forward(TaskId task, Task& state) KVT_REQUIRES(mu_);
  void RelayLoop();
  // One relay round: forwards due delayed tasks, then completes what the inner finished.
  // Returns the next delayed deadline (TimePoint::max() when none).
  TimePoint RelayOnce();
  // Moves a finished task's state into `done`, leaving it kCompleting.
  void Take(TaskId task, Status status, Bitmap bits, std::vector<Completion>* done)
      KVT_REQUIRES(mu_);
  void Finish(std::vector<Completion>& done);
  // Moves the inner-stored keys among `keys` from pending_ to accounted_; under report_mu_.
  void ClaimPending(std::span<const ObjectKey> keys, std::vector<ObjectKey>* stored,
                    std::vector<uint64_t>* sizes) KVT_REQUIRES(report_mu_);

  const std::unique_ptr<L2Adapter> inner_;
  const FaultInjectOptions options_;
  sync::EventFd wake_;  // new delayed task, or stopping
  std::thread relay_;

  mutable Mutex mu_ KVT_ACQUIRED_BEFORE(report_mu_);
  std::mt19937_64 rng_ KVT_GUARDED_BY(mu_);
  absl::flat_hash_map<TaskId, Task> tasks_ KVT_GUARDED_BY(mu_);       // by outer id
  absl::flat_hash_map<TaskId, TaskId> by_inner_ KVT_GUARDED_BY(mu_);  // inner -> outer
  std::multimap<TimePoint, TaskId> delayed_ KVT_GUARDED_BY(mu_);
  size_t hung_ KVT_GUARDED_BY(mu_) = 0;
  uint64_t injected_store_failures_ KVT_GUARDED_BY(mu_) = 0;
  uint64_t injected_lookup_misses_ KVT_GUARDED_BY(mu_) = 0;
  uint64_t injected_load_failures_ KVT_GUARDED_BY(mu_) = 0;
  uint64_t injected_hangs_ KVT_GUARDED_BY(mu_) = 0;
  bool stopping_ KVT_GUARDED_BY(mu_) = false;

  Mutex report_mu_;
  // Keys the inner adapter stored whose store task this wrapper has not completed yet (not
  // in this adapter's accounts), and keys in the accounts; with their sizes.
  absl::flat_hash_map<ObjectKey, uint64_t, keys::ObjectKeyHash> pending_ KVT_GUARDED_BY(report_mu_);
  absl::flat_hash_map<ObjectKey, uint64_t, keys::ObjectKeyHash> accounted_
      KVT_GUARDED_BY(report_mu_);
};

// The "fault_inject" entry of the adapter factory; builds the inner adapter with
// MakeWrappedL2Adapter.
Result<std::unique_ptr<L2Adapter>> MakeFaultInjectAdapter(const nlohmann::json& config,
                                                          const std::string& name);

}  // namespace kvtier::l2
