// StoreController: copies what L1 admits into the L2 adapters, in the background.
//
// It listens to L1 "write finished" events (never temporary objects, never prefetched ones:
// L1 does not announce those), queues the keys and signals an eventfd. One thread polls that
// eventfd, every adapter's store eventfd and a stop eventfd. New keys go through the
// StorePolicy; for each target adapter the source objects are read-locked in L1 for the whole
// L2 write (keys L1 no longer holds are skipped) and released when the task completes, fails,
// times out (if the adapter can cancel it) or the controller stops.
//
// Robustness (beyond LMCache): the loop survives every error (a failed submit releases its
// locks and is counted); the pending queue is bounded: when L2 cannot keep up, the oldest
// pending keys are dropped and counted, so memory never grows without bound.
//
// Lock order: mu_ (pending queue) is a leaf: never held while calling L1 or an adapter.
#pragma once

#include <atomic>
#include <deque>
#include <memory>
#include <thread>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <nlohmann/json_fwd.hpp>

#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"
#include "kvtier/l1/l1_manager.h"
#include "kvtier/l2/adapter.h"
#include "kvtier/storage/store_policy.h"
#include "kvtier/sync/event_fd.h"

namespace kvtier::storage {

struct StoreControllerOptions {
  // Pending keys beyond this are dropped, oldest first (and counted).
  size_t max_pending_keys = 1 << 20;
  // Keys per L2 store task (a batch of new keys is split into tasks of at most this many).
  size_t max_keys_per_task = 64;
  // A task running longer than this is cancelled if the adapter can cancel it; 0 = never.
  Duration store_timeout = Duration::zero();
  // How often the thread wakes with nothing to do (for timeouts).
  Duration poll_interval = std::chrono::milliseconds(500);
};

struct StoreControllerStats {
  uint64_t keys_received = 0;
  uint64_t keys_dropped = 0;  // the pending queue was full
  uint64_t keys_skipped = 0;  // gone from L1 before their store started
  uint64_t tasks_submitted = 0;
  uint64_t tasks_succeeded = 0;
  uint64_t tasks_failed = 0;
  uint64_t tasks_timed_out = 0;
  uint64_t keys_stored = 0;  // per adapter, summed
  uint64_t bytes_stored = 0;
  uint64_t l1_keys_deleted = 0;  // by the policy (skip_l1)
  uint64_t loop_errors = 0;
  size_t pending_keys = 0;
  size_t in_flight_tasks = 0;
  bool running = false;
};

class StoreController final : public l1::L1Listener {
 public:
  // `l1` and every adapter must outlive the controller. Registers itself with `l1`.
  static Result<std::unique_ptr<StoreController>> Create(l1::L1Manager* l1,
                                                         std::vector<l2::L2Adapter*> adapters,
                                                         std::unique_ptr<StorePolicy> policy,
                                                         const StoreControllerOptions& options);
  ~StoreController() override;  // Stop()s, releases every lock, unregisters from L1

  Status Start();
  // Stops the thread and cancels what the adapters can cancel, releasing those locks. Tasks the
  // adapters could not cancel keep their L1 read locks until ReleaseAfterAdaptersClosed().
  void Stop();
  // After the adapters are closed (their unfinished tasks completed as failed): collects those
  // completions and releases their locks.
  void ReleaseAfterAdaptersClosed();

  // Processes queued keys and completions once, on the calling thread (tests; must not run
  // while the thread runs).
  void RunOnce();

  // Waits until every key received so far is stored (or failed) and no task is in flight, so
  // a graceful shutdown loses nothing that L2 could take. Needs the thread running. False on
  // timeout.
  bool Flush(Timeout timeout);

  StoreControllerStats stats() const;
  nlohmann::json StatusJson() const;

  // L1Listener.
  uint32_t events() const override { return l1::L1Listener::kWriteFinished; }
  void OnL1KeysWriteFinished(std::span<const keys::ObjectKey> keys) override;

 private:
  struct InFlight {
    size_t adapter;
    std::vector<keys::ObjectKey> keys;  // read-locked in L1 (exactly the keys submitted)
    TimePoint started;
  };

  StoreController(l1::L1Manager* l1, std::vector<l2::L2Adapter*> adapters,
                  std::unique_ptr<StorePolicy> policy, const StoreControllerOptions& options,
                  sync::EventFd wake, sync::EventFd stop);
  void Loop();
  void Step();  // one round of work; never throws, never dies
  void ProcessNewKeys();
  void SubmitToAdapter(size_t adapter, std::span<const keys::ObjectKey> keys);
  void ProcessCompletions(size_t adapter);
  void CheckTimeouts();
  void Release(const InFlight& task);

  l1::L1Manager* const l1_;
  const std::vector<l2::L2Adapter*> adapters_;
  const std::unique_ptr<StorePolicy> policy_;
  const StoreControllerOptions options_;
  sync::EventFd wake_;
  sync::EventFd stop_fd_;

  mutable Mutex mu_;
  CondVar idle_cv_;
  bool idle_ KVT_GUARDED_BY(mu_) = true;  // nothing pending, nothing in flight
  std::deque<keys::ObjectKey> pending_ KVT_GUARDED_BY(mu_);
  uint64_t keys_received_ KVT_GUARDED_BY(mu_) = 0;
  uint64_t keys_dropped_ KVT_GUARDED_BY(mu_) = 0;

  // Owned by the loop thread (or RunOnce / Stop when the thread is not running).
  absl::flat_hash_map<std::pair<size_t, l2::TaskId>, InFlight> in_flight_;
  std::atomic<size_t> in_flight_count_{0};
  // Counters written by the loop thread, read by stats().
  struct Counters {
    std::atomic<uint64_t> keys_skipped{0}, tasks_submitted{0}, tasks_succeeded{0}, tasks_failed{0},
        tasks_timed_out{0}, keys_stored{0}, bytes_stored{0}, l1_keys_deleted{0}, loop_errors{0};
  } counters_;

  mutable Mutex thread_mu_;
  std::thread thread_ KVT_GUARDED_BY(thread_mu_);
  std::atomic<bool> stop_{false};
};

}  // namespace kvtier::storage
