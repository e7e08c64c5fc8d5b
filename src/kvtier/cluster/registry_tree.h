// RegistryTree: the cluster controller's index of which worker of which kvtier instance holds
// which chunk key at which storage location. See docs/cluster_registry.md.
//
// Shape: RegistryTree -> InstanceNode (one kvtier server) -> WorkerNode (one reporting unit)
// -> per-location key sets, plus a reverse index key -> holders that makes FindKv, FindKvAll,
// PrefixLookup and the total key count independent of the number of workers.
//
// Every method is thread-safe. Results are copies made under the relevant locks; nothing
// returned refers into live state. A call that has to wait longer than
// RegistryOptions::lock_timeout for a registry, instance or worker lock gives up with
// kLockTimeout (retryable) and changes nothing.
//
// Lock order (a thread holds locks only in this order, and at most one of each level):
//   1. RegistryTree::tree_lock_      RWLock  the instance map
//   2. InstanceNode::lock_           RWLock  the instance's worker map
//   3. WorkerNode::lock_             FastLock the worker's key sets, sequence and sync state
//   4. ReverseIndex shard lock       FastLock one shard of the reverse index
// Leaves, under which nothing else is acquired: SlotTable's and LocationTable's mutexes,
// info_mu_. Lookups (FindKv, FindKvAll, PrefixLookup) take no lock at all in the common case:
// they read the reverse index optimistically (see reverse_index.h). A worker's holders change
// only under its worker lock, so a worker's key sets equal its holders in the reverse index
// whenever its lock is free.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <absl/container/flat_hash_map.h>

#include "kvtier/cluster/location_table.h"
#include "kvtier/cluster/reverse_index.h"
#include "kvtier/cluster/slot_table.h"
#include "kvtier/cluster/types.h"
#include "kvtier/cluster/worker_node.h"
#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"
#include "kvtier/sync/rw_lock.h"

namespace kvtier::cluster {

// One kvtier instance: its workers by id.
class InstanceNode {
 public:
  explicit InstanceNode(std::string id) : id_(std::move(id)) {}
  InstanceNode(const InstanceNode&) = delete;
  InstanceNode& operator=(const InstanceNode&) = delete;

  const std::string& id() const { return id_; }
  sync::RWLock& lock() const KVT_RETURN_CAPABILITY(lock_) { return lock_; }

  std::shared_ptr<WorkerNode> Find(WorkerId worker_id) const KVT_REQUIRES_SHARED(lock_);
  // Inserts or replaces; returns the node it replaced.
  std::shared_ptr<WorkerNode> Put(std::shared_ptr<WorkerNode> node) KVT_REQUIRES(lock_);
  std::shared_ptr<WorkerNode> Remove(WorkerId worker_id) KVT_REQUIRES(lock_);
  bool empty() const KVT_REQUIRES_SHARED(lock_) { return workers_.empty(); }
  void AppendWorkers(std::vector<std::shared_ptr<WorkerNode>>* out) const
      KVT_REQUIRES_SHARED(lock_);

 private:
  const std::string id_;
  mutable sync::RWLock lock_;
  absl::flat_hash_map<WorkerId, std::shared_ptr<WorkerNode>> workers_ KVT_GUARDED_BY(lock_);
};

struct RemovedWorkers {
  uint32_t workers = 0;
  uint64_t keys_removed = 0;  // holders dropped
};

class RegistryTree {
 public:
  static Result<std::unique_ptr<RegistryTree>> Create(const RegistryOptions& options = {});
  ~RegistryTree();
  RegistryTree(const RegistryTree&) = delete;
  RegistryTree& operator=(const RegistryTree&) = delete;

  // Per-worker calls name the worker by Origin. One whose registration id is set but is not
  // the worker's current registration is answered kNotFound like an unknown worker (its
  // sender must register again); batches of it are dropped and counted.

  // ---- Registration and liveness.

  // Registers a worker (creating its instance) and returns its new registration id.
  // Registering (instance, worker) again replaces the registration: the new address and
  // locations apply, and the old registration's keys, sequence numbers, syncs and requests
  // are dropped (the worker full-syncs every location next). kResourceExhausted (retryable)
  // when max_workers are registered.
  Result<RegisterResult> RegisterWorker(const WorkerRegistration& registration);
  // kNotFound for an unknown worker or registration. An instance leaves with its last worker.
  Result<RemovedWorkers> DeregisterWorker(const Origin& origin);
  Result<RemovedWorkers> DeregisterInstance(std::string_view instance_id);
  // Refreshes the worker's last-seen time, checks its per-location reports (a last_seq still
  // not applied since the previous heartbeat: "lost_events"; in step but a different key
  // count: "key_count_mismatch"), and returns the full syncs to ask it for: each location at
  // most once until its next sync start, never while it syncs. kNotFound for an unknown
  // worker or registration: the caller tells it to register again.
  Result<std::vector<FullSyncRequest>> Heartbeat(const Origin& origin,
                                                 std::span<const LocationReport> reports = {});
  // Deregisters every worker that expects heartbeats and has not sent one for longer than
  // `timeout`, and returns them: the caller must log them. A worker whose lock is not obtained
  // in time is skipped this round (counted in lock_timeouts).
  Result<std::vector<ReapedWorker>> ReapDead(Duration timeout);

  // ---- Events of a worker's location, one batch per call.
  //
  // `seq` numbers the events of one (registration, location): the previous one's + 1. The
  // first one sets the baseline; a gap is applied, counted and earns a full-sync request; a
  // number already seen is ignored and counted (docs/cluster_registry.md). kInvalidArgument /
  // kResourceExhausted for a bad or excess location name.

  Result<BatchResult> Admit(const Origin& origin, std::string_view location, uint64_t seq,
                            std::span<const ObjectKey> keys);
  Result<BatchResult> Evict(const Origin& origin, std::string_view location, uint64_t seq,
                            std::span<const ObjectKey> keys);
  // Admits and evicts mixed, applied in order.
  Result<BatchResult> ApplyOps(const Origin& origin, std::string_view location, uint64_t seq,
                               std::span<const KvOp> ops);

  // ---- Full sync of one location (state machine in docs/cluster_registry.md).

  // Starts a sync: abandons any earlier sync of the location (the same sync id included),
  // drops the location's keys at once, and sets its last seq to `base_seq` (absent: the next
  // event sets a new baseline). Events of the location keep applying during the sync; the
  // sync's batches skip keys those events evicted.
  Status StartFullSync(const Origin& origin, std::string_view location, uint64_t sync_id,
                       std::optional<uint64_t> base_seq, uint64_t expected_total_keys,
                       uint32_t expected_batch_count);
  // Adds batch `batch_index` (0-based) of the running sync `sync_id`. A batch index seen before
  // is ignored (result.duplicate). kFailedPrecondition when that sync is not running.
  Result<SyncBatchResult> AddFullSyncBatch(const Origin& origin, std::string_view location,
                                           uint64_t sync_id, uint32_t batch_index,
                                           std::span<const ObjectKey> keys);
  // Completes the sync when every batch arrived and their keys add up to `total_keys` (which
  // must equal the start's); with batches missing it stays SYNCING and lists them (resend,
  // then end again); a key count that does not add up fails it. Repeating the end of a
  // finished sync gets the same answer. kFailedPrecondition when `sync_id` is not the
  // location's latest sync.
  Result<SyncEndResult> EndFullSync(const Origin& origin, std::string_view location,
                                    uint64_t sync_id, uint64_t total_keys);
  // The state of sync `sync_id` (kIdle: not the location's latest sync: start a new one). A
  // poll of a running sync counts as activity for its deadline.
  Result<WorkerSyncInfo> FullSyncStatus(const Origin& origin, std::string_view location,
                                        uint64_t sync_id);
  // Fails every running sync with no activity for full_sync_timeout (reason "timeout") and
  // returns them: the caller logs them; their locations get full-sync requests. Call it
  // periodically (e.g. from the health loop), not only when messages arrive.
  Result<std::vector<ExpiredSync>> ExpireSyncs();

  // ---- Lookups. They take no lock in the common case (see reverse_index.h).

  // The first holder of `key` in (instance id, worker id, location) order, skipping the
  // instance `exclude_instance` (none when empty).
  std::optional<KvHolder> FindKv(const ObjectKey& key,
                                 std::string_view exclude_instance = {}) const;
  // Every holder of `key`, in (instance id, worker id, location) order.
  std::vector<KvHolder> FindKvAll(const ObjectKey& key,
                                  std::string_view exclude_instance = {}) const;
  // The peer to fetch the prefix `keys` from: of the holders of keys[0] outside
  // `exclude_instance`, the (worker, location) holding the longest run of leading keys (ties
  // go to the (instance, worker, location) order). The run is counted under that worker's
  // lock. std::nullopt when nobody else holds keys[0] (or `keys` is empty).
  Result<std::optional<PeerMatch>> FindKvWithWorkerInfo(
      std::span<const ObjectKey> keys, std::string_view exclude_instance = {}) const;
  // `keys` are chunks in order, `keys_per_chunk` keys each (chunk-major: e.g. every rank of
  // a chunk). For each instance other than `exclude_instance` that holds every key of chunk 0:
  // the number of contiguous leading chunks it holds entirely (any of its workers, any
  // location). Longest first, then by instance id; empty when nobody holds chunk 0. Each key
  // is read at some instant during the call.
  std::vector<PrefixMatch> PrefixLookup(std::span<const ObjectKey> keys,
                                        uint32_t keys_per_chunk = 1,
                                        std::string_view exclude_instance = {}) const;
  // Distinct keys in the index. O(1).
  uint64_t TotalKeyCount() const { return index_.size(); }

  // ---- Per-worker views and clearing.

  // A copy of the worker's keys at `location` (empty for a location it never reported).
  Result<std::vector<ObjectKey>> ListWorkerKeys(const Origin& origin,
                                                std::string_view location) const;
  // Forgets the worker's keys at `location` (all its locations when absent), resets their
  // sequence numbers and asks for their full sync (reason "cleared"). Returns the holders
  // removed.
  Result<uint64_t> ClearWorker(const Origin& origin,
                               std::optional<std::string_view> location = std::nullopt);
  // The same for every worker (registrations stay). Returns the holders removed.
  Result<uint64_t> Clear();

  // ---- Admin.

  Result<WorkerInfo> GetWorkerInfo(const Origin& origin) const;
  // Every worker, by (instance id, worker id). Served from a snapshot at most `max_age` old;
  // any registration or deregistration since invalidates it (so the worker list itself is
  // never stale, only counters and times up to max_age). Duration::zero() always rebuilds.
  Result<std::shared_ptr<const std::vector<WorkerInfo>>> WorkerInfos(Duration max_age) const;
  std::vector<std::string> InstanceIds() const;  // sorted
  // Sorted; kNotFound for an unknown instance.
  Result<std::vector<WorkerId>> WorkerIds(std::string_view instance_id) const;
  RegistryStats Stats() const;    // O(1)
  RegistryMemory Memory() const;  // walks every shard and worker
  // Verifies that the reverse index equals the union of the workers' key sets and that the
  // counts agree. O(keys); meaningful only while no update is in flight (tests, debugging).
  Status CheckConsistency() const;

  const RegistryOptions& options() const { return options_; }

 private:
  struct Counters;
  friend class RegistryTreeTestPeer;  // tests: holds the tree lock to provoke timeouts

  explicit RegistryTree(const RegistryOptions& options);

  // A kLockTimeout error (counted), convertible to Status and to any Result<T>.
  ::kvtier::internal::ReturnedError LockTimeoutError(std::string_view what) const;
  InstanceNode* FindInstance(std::string_view instance_id) const KVT_REQUIRES_SHARED(tree_lock_);
  // The live node of a worker (pinned). kNotFound or kLockTimeout.
  Result<std::shared_ptr<WorkerNode>> FindWorker(const Origin& origin) const;
  // Every worker node, pinned, sorted by (instance id, worker id).
  Result<std::vector<std::shared_ptr<WorkerNode>>> SnapshotNodes() const;
  // Makes the node of `r` and puts it into `instance`; returns the node it replaced (null
  // when new) or kLockTimeout.
  Result<std::shared_ptr<WorkerNode>> PutNode(InstanceNode* instance, const WorkerRegistration& r,
                                              const std::vector<LocationId>& locations,
                                              uint64_t registration_id, uint32_t slot,
                                              TimePoint now) KVT_REQUIRES_SHARED(tree_lock_);
  uint64_t NewRegistrationId();
  // Adds a node's event counts to the stats.
  void Count(const NodeEvents& events) const;
  // Removes `instance_id` from the tree when it has no workers left.
  void RemoveInstanceIfEmpty(std::string_view instance_id);
  // Drops a node that has left the tree: marks it removed, drops its holders, frees its slot.
  uint64_t RetireNode(const std::shared_ptr<WorkerNode>& node);
  Result<BatchResult> ApplyBatch(const Origin& origin, std::string_view location, uint64_t seq,
                                 std::span<const IndexOp> ops);

  // The node of a slot that a holder read under its shard lock names. The node stays alive at
  // least until that shard lock is released: a node's holders all leave the index (under the
  // shard locks) before its slot is cleared and the node can be destroyed.
  WorkerNode* NodeAt(uint32_t slot) const;

  const RegistryOptions options_;
  Clock* const clock_;

  mutable sync::RWLock tree_lock_;
  absl::flat_hash_map<std::string, std::unique_ptr<InstanceNode>> instances_
      KVT_GUARDED_BY(tree_lock_);

  // Slot -> identity and node of every registered worker. Published before a node enters the
  // tree, cleared after its holders left the index.
  SlotTable slots_;
  ReverseIndex index_;
  LocationTable locations_;

  // Registration ids: a bijective mix of base + counter (unique; random across processes).
  const uint64_t registration_id_base_;
  std::atomic<uint64_t> registration_counter_{0};

  // Bumped by every registration and deregistration (invalidates the worker-info snapshot).
  std::atomic<uint64_t> generation_{0};
  std::atomic<int64_t> num_instances_{0};
  std::atomic<int64_t> num_workers_{0};
  std::unique_ptr<Counters> counters_;

  mutable Mutex info_mu_;
  mutable std::shared_ptr<const std::vector<WorkerInfo>> info_cache_ KVT_GUARDED_BY(info_mu_);
  mutable uint64_t info_generation_ KVT_GUARDED_BY(info_mu_) = 0;
  mutable TimePoint info_time_ KVT_GUARDED_BY(info_mu_){};
};

}  // namespace kvtier::cluster
