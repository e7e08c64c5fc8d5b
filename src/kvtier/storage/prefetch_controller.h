// PrefetchController: brings keys L1 does not hold up from the L2 adapters.
//
// A request is a list of keys in prefix order (chunk-major), all of one object size. Phases:
//  1. lookup: SubmitLookupAndLock on every adapter (each found key is locked in that adapter);
//  2. plan: each key from the lowest-index adapter holding it; trimmed to the contiguous
//     prefix of found keys; temporary L1 staging buffers reserved for that prefix (a reservation
//     failure, e.g. out of memory, cuts the prefix); locks on keys outside the plan released;
//  3. load: one load task per adapter into the reserved buffers;
//  4. finish: L2 locks released; loaded keys admitted with `read_locks` read locks
//     (FinishWriteAndReserveRead), failed ones aborted; loaded keys after the first gap
//     released again. The result is the bitmap of the usable prefix (bit i: keys[i] is
//     resident in L1 and read-locked `read_locks` times on the caller's behalf).
// At most max_in_flight requests run at once; the rest wait in FIFO order.
//
// Timeouts (optional, per request): when the deadline passes, outstanding lookups and loads
// are cancelled and the request completes with what is usable. A task an adapter cannot cancel
// keeps its L1 staging buffers until it completes; its keys then are aborted.
//
// Lock order: mu_ (requests and results) is a leaf: never held while calling L1 or an adapter.
#pragma once

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <absl/container/flat_hash_set.h>
#include <nlohmann/json_fwd.hpp>

#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"
#include "kvtier/keys/bitmap.h"
#include "kvtier/l1/l1_manager.h"
#include "kvtier/l2/adapter.h"
#include "kvtier/sync/event_fd.h"

namespace kvtier::storage {

using PrefetchId = uint64_t;  // from 1

struct PrefetchControllerOptions {
  size_t max_in_flight = 8;
  Duration poll_interval = std::chrono::milliseconds(500);
};

struct PrefetchRequest {
  std::vector<keys::ObjectKey> keys;
  uint64_t object_size = 0;
  uint32_t read_locks = 1;              // one per reader of each object (MLA with TP > 1: TP)
  Duration timeout = Duration::zero();  // 0: none
};

struct PrefetchControllerStats {
  uint64_t requests = 0;
  uint64_t completed = 0;
  uint64_t timed_out = 0;
  uint64_t keys_requested = 0;
  uint64_t keys_found = 0;   // in the L2 lookup prefix
  uint64_t keys_loaded = 0;  // in the final prefix
  uint64_t keys_l1_oom = 0;  // prefix cut by an L1 reservation failure
  uint64_t keys_load_failed = 0;
  uint64_t loop_errors = 0;
  size_t queued = 0;
  size_t in_flight = 0;
  size_t stuck_tasks = 0;  // timed out, not cancellable, still holding L1 staging
  bool running = false;
};

class PrefetchController {
 public:
  // `l1` and every adapter must outlive the controller.
  static Result<std::unique_ptr<PrefetchController>> Create(
      l1::L1Manager* l1, std::vector<l2::L2Adapter*> adapters,
      const PrefetchControllerOptions& options);
  ~PrefetchController();

  Status Start();
  // Stops the thread; cancels and cleans up every request (their results become empty).
  // Tasks the adapters cannot cancel keep their buffers until ReleaseAfterAdaptersClosed().
  void Stop();
  void ReleaseAfterAdaptersClosed();

  // Queues a request (never blocks). An empty key list or object size 0 completes at once
  // with an empty result.
  PrefetchId Submit(PrefetchRequest request);
  // The final bitmap once the request finished, exactly once; std::nullopt before (and for
  // unknown or consumed ids).
  std::optional<keys::Bitmap> QueryResult(PrefetchId id);
  // Waits up to `timeout` for the request to finish, without consuming the result.
  bool Wait(PrefetchId id, Timeout timeout);
  // The length of the L2 lookup prefix once the lookup phase is over (before the loads
  // finish); std::nullopt before. Does not consume anything.
  std::optional<size_t> QueryLookupHits(PrefetchId id);
  // Calls `fn` once the request finished: at once (on this thread) if it already has, else
  // from the controller's thread, holding no controller lock (fn may call QueryResult). For an
  // unknown or consumed id, at once. `fn` must be quick and must not block.
  void NotifyWhenDone(PrefetchId id, std::function<void()> fn);

  void RunOnce();  // one round on the calling thread (tests; not while the thread runs)

  PrefetchControllerStats stats() const;
  nlohmann::json StatusJson() const;

 private:
  enum class Phase : uint8_t { kQueued, kLookup, kLoad, kDone };
  struct Task {
    size_t adapter;
    l2::TaskId id;
    std::vector<size_t> indices;  // positions in the request's key list
  };
  struct Request {
    PrefetchId id;
    PrefetchRequest spec;
    Phase phase = Phase::kQueued;
    TimePoint deadline = TimePoint::max();
    std::vector<std::optional<keys::Bitmap>> lookups;  // per adapter
    std::vector<l2::TaskId> lookup_tasks;              // per adapter
    std::vector<int> source;                           // per key: adapter, or -1
    size_t planned = 0;                                // keys [0, planned) staged in L1
    std::vector<Task> loads;                           // outstanding
    keys::Bitmap loaded;                               // per key
  };
  // A timed-out task an adapter could not cancel. When it lands: a lookup's locks are
  // released; a load's keys are unlocked in L2 and their L1 staging aborted.
  struct StuckTask {
    enum class Kind : uint8_t { kLookup, kLoad } kind;
    size_t adapter;
    l2::TaskId id;
    std::vector<keys::ObjectKey> keys;  // in the task's order
  };

  PrefetchController(l1::L1Manager* l1, std::vector<l2::L2Adapter*> adapters,
                     const PrefetchControllerOptions& options, sync::EventFd wake,
                     sync::EventFd stop, l1::WriterTag tag);
  void Loop();
  void Step();
  void Admit();
  void Advance(Request& r);
  void StartLookup(Request& r);
  bool CollectLookups(Request& r);
  void PlanAndLoad(Request& r);
  bool CollectLoads(Request& r);
  void Finish(Request& r, bool timed_out);
  void Abandon(Request& r);  // deadline passed: cancel what is outstanding, finish with the rest
  void PollStuck();
  void Publish(Request& r, keys::Bitmap result);

  l1::L1Manager* const l1_;
  const std::vector<l2::L2Adapter*> adapters_;
  const PrefetchControllerOptions options_;
  const l1::WriterTag tag_;  // the L1 writer tag of every prefetch staging buffer
  sync::EventFd wake_, stop_fd_;

  mutable Mutex mu_;
  CondVar done_cv_;
  PrefetchId next_id_ KVT_GUARDED_BY(mu_) = 1;
  std::deque<Request> submitted_ KVT_GUARDED_BY(mu_);
  absl::flat_hash_map<PrefetchId, keys::Bitmap> results_ KVT_GUARDED_BY(mu_);
  absl::flat_hash_map<PrefetchId, size_t> lookup_hits_ KVT_GUARDED_BY(mu_);
  absl::flat_hash_set<PrefetchId> pending_ KVT_GUARDED_BY(mu_);  // submitted, not finished
  absl::flat_hash_map<PrefetchId, std::vector<std::function<void()>>> watchers_ KVT_GUARDED_BY(mu_);
  uint64_t requests_ KVT_GUARDED_BY(mu_) = 0;
  uint64_t keys_requested_ KVT_GUARDED_BY(mu_) = 0;

  // Owned by the loop thread (or RunOnce / Stop when it is not running).
  std::deque<Request> waiting_;
  std::vector<std::unique_ptr<Request>> active_;
  std::vector<StuckTask> stuck_;
  struct Counters {
    std::atomic<uint64_t> completed{0}, timed_out{0}, keys_found{0}, keys_loaded{0}, keys_l1_oom{0},
        keys_load_failed{0}, loop_errors{0};
    std::atomic<size_t> in_flight{0}, queued{0}, stuck{0};
  } counters_;

  mutable Mutex thread_mu_;
  std::thread thread_ KVT_GUARDED_BY(thread_mu_);
  std::atomic<bool> stop_{false};
};

}  // namespace kvtier::storage
