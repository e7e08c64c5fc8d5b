// WorkerNode: one registration of a worker. Part of RegistryTree.
//
// Its identity (instance, worker id, address, registration id, slot) never changes: a
// re-registration replaces the node. Everything else (per-location key sets, sequence
// trackers, full-sync sessions, full-sync requests, the last heartbeat) is guarded by the
// node's FastLock, and the methods that touch it require that lock. The worker's holders in
// the ReverseIndex change only under the lock, so while it is free the node's key sets and the
// index agree exactly.
//
// Lock order: RegistryTree / InstanceNode locks -> WorkerNode::lock -> ReverseIndex shard locks.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <absl/container/flat_hash_set.h>

#include "kvtier/cluster/location_table.h"
#include "kvtier/cluster/reverse_index.h"
#include "kvtier/cluster/types.h"
#include "kvtier/common/result.h"
#include "kvtier/sync/fast_lock.h"

namespace kvtier::cluster {

// Events the node saw that RegistryTree counts in its stats.
struct NodeEvents {
  uint64_t lost_events = 0;
  uint64_t key_count_mismatches = 0;
  uint64_t syncs_failed = 0;
  uint64_t syncs_superseded = 0;
  uint64_t syncs_completed = 0;
};

class WorkerNode : public std::enable_shared_from_this<WorkerNode> {
 public:
  // `identity` comes from the registry's SlotTable and outlives the node.
  WorkerNode(const WorkerIdentity* identity, const WorkerRegistration& registration,
             uint64_t registration_id, uint32_t slot, TimePoint now);
  WorkerNode(const WorkerNode&) = delete;
  WorkerNode& operator=(const WorkerNode&) = delete;

  // Immutable; readable without the lock.
  const WorkerIdentity& identity() const { return *identity_; }
  const std::string& instance_id() const { return *identity_->instance_id; }
  WorkerId worker_id() const { return identity_->worker_id; }
  const std::string& address() const { return identity_->address; }
  uint64_t registration_id() const { return registration_id_; }
  const std::string& software_version() const { return software_version_; }
  bool expects_heartbeats() const { return expects_heartbeats_; }
  uint32_t slot() const { return slot_; }
  TimePoint registration_time() const { return registration_time_; }
  Holder HolderAt(LocationId location) const { return MakeHolder(slot_, location); }

  sync::FastLock& lock() const KVT_RETURN_CAPABILITY(lock_) { return lock_; }

  // ---- Everything below requires lock().

  // Set once the node left the tree; every operation on it then answers kNotFound.
  bool removed() const KVT_REQUIRES(lock_) { return removed_; }
  void MarkRemoved() KVT_REQUIRES(lock_) { removed_ = true; }
  TimePoint last_heartbeat() const KVT_REQUIRES(lock_) { return last_heartbeat_; }
  void Heartbeat(TimePoint now) KVT_REQUIRES(lock_) {
    last_heartbeat_ = std::max(last_heartbeat_, now);
  }
  // Makes the location known (listed by Info) without any key.
  void AddLocation(LocationId location) KVT_REQUIRES(lock_) { State(location); }

  // An incremental batch of `location` with sequence number `seq`: the sequence check, then
  // the ops in order; during a sync of the location its evictions are remembered so that the
  // sync's batches skip them (docs/cluster_registry.md). kResourceExhausted when the index is
  // full (what did apply stays consistent).
  Result<BatchResult> ApplyBatch(LocationId location, uint64_t seq, std::span<const IndexOp> ops,
                                 ReverseIndex& index, uint64_t max_sync_evictions,
                                 NodeEvents* events) KVT_REQUIRES(lock_);

  // Drops the holders of `location` (every location when absent) and resets its sequence
  // tracker, so the next event sets a new baseline. With `request_sync`, the locations also
  // get a full-sync request (reason "cleared"). Returns the holders removed.
  uint64_t ClearKeys(std::optional<LocationId> location, ReverseIndex& index, bool request_sync)
      KVT_REQUIRES(lock_);
  // Marks the node removed and drops every holder. Returns the holders removed.
  uint64_t Retire(ReverseIndex& index) KVT_REQUIRES(lock_);

  // The location's KeyRefs (a copy) and counts.
  std::vector<KeyRef> Refs(LocationId location) const KVT_REQUIRES(lock_);
  uint64_t KeyCount(LocationId location) const KVT_REQUIRES(lock_);
  // The locations the worker registered or ever reported, in first-seen order.
  std::vector<LocationId> LocationIds() const KVT_REQUIRES(lock_);
  // Allocated bytes of the key sets.
  uint64_t KeySetBytes() const KVT_REQUIRES(lock_);

  // ---- Full sync of one location (worker_sync.cc).

  // Starts a sync: abandons any earlier sync of the location, drops its keys, and sets its
  // last seq to `base_seq` (absent: the next event sets a new baseline).
  void StartSync(LocationId location, uint64_t sync_id, std::optional<uint64_t> base_seq,
                 uint64_t expected_total_keys, uint32_t expected_batch_count, TimePoint now,
                 Duration timeout, ReverseIndex& index, NodeEvents* events) KVT_REQUIRES(lock_);
  Result<SyncBatchResult> AddSyncBatch(LocationId location, uint64_t sync_id, uint32_t batch_index,
                                       std::span<const IndexOp> ops, TimePoint now,
                                       Duration timeout, ReverseIndex& index) KVT_REQUIRES(lock_);
  Result<SyncEndResult> EndSync(LocationId location, uint64_t sync_id, uint64_t total_keys,
                                TimePoint now, Duration timeout, const LocationTable& locations,
                                NodeEvents* events) KVT_REQUIRES(lock_);
  // The sync `sync_id` of the location (state kIdle when it is not the location's latest); a
  // poll of a running sync counts as activity.
  WorkerSyncInfo SyncStatus(LocationId location, uint64_t sync_id, TimePoint now, Duration timeout,
                            const LocationTable& locations) KVT_REQUIRES(lock_);
  // Fails every running sync past its deadline (reason "timeout") and appends it to `out`.
  void ExpireSyncs(TimePoint now, const LocationTable& locations, std::vector<ExpiredSync>* out,
                   NodeEvents* events) KVT_REQUIRES(lock_);

  // Checks a heartbeat's reports (events lost at the tail, key counts that disagree), then
  // hands out the full-sync requests not handed out yet (at most once per location until its
  // next sync start, never while it syncs).
  std::vector<FullSyncRequest> CheckReports(
      std::span<const std::pair<LocationId, LocationReport>> reports,
      const LocationTable& locations, NodeEvents* events) KVT_REQUIRES(lock_);

  WorkerInfo Info(const LocationTable& locations) const KVT_REQUIRES(lock_);

 private:
  struct SyncSession {
    uint64_t sync_id = 0;
    FullSyncState state = FullSyncState::kSyncing;
    bool end_received = false;
    std::string failure_reason;
    std::optional<uint64_t> base_seq;
    TimePoint start_time{};
    TimePoint last_activity{};
    TimePoint deadline{};
    uint64_t expected_total_keys = 0;
    uint32_t expected_batch_count = 0;
    std::vector<bool> received;  // by batch index
    uint32_t received_batch_count = 0;
    uint64_t received_keys = 0;
    uint32_t duplicate_batches = 0;
    // Keys evicted by events since the start (and not admitted again): batches skip them.
    absl::flat_hash_set<ObjectKey, keys::ObjectKeyHash> evicted;
  };

  struct LocationState {
    explicit LocationState(LocationId location) : id(location) {}
    LocationId id;
    absl::flat_hash_set<KeyRef> keys;
    bool has_last_seq = false;
    uint64_t last_seq = 0;
    uint64_t seq_gaps = 0;
    uint64_t stale_batches = 0;
    std::string full_sync_reason;  // "" when no full sync is needed
    bool full_sync_requested = false;
    bool has_reported_seq = false;  // the last heartbeat's last_seq, for tail-loss detection
    uint64_t reported_seq = 0;
    std::unique_ptr<SyncSession> sync;  // the latest sync
  };

  LocationState& State(LocationId location) KVT_REQUIRES(lock_);
  LocationState* FindState(LocationId location) KVT_REQUIRES(lock_);
  const LocationState* FindState(LocationId location) const KVT_REQUIRES(lock_);
  static bool Syncing(const LocationState& state) {
    return state.sync != nullptr && state.sync->state == FullSyncState::kSyncing;
  }
  // Keeps the first reason until the next sync start.
  static void RequestSync(LocationState& state, std::string_view reason);
  static void FailSync(LocationState& state, std::string_view reason, NodeEvents* events);
  static std::vector<uint32_t> MissingBatches(const SyncSession& session);
  WorkerSyncInfo SyncInfoOf(const LocationState& state, const LocationTable& locations) const
      KVT_REQUIRES(lock_);
  // Applies `ops` to the index for this worker at `state`'s location and mirrors the changes
  // into its key set.
  Status ApplyOps(LocationState& state, std::span<const IndexOp> ops, ReverseIndex& index,
                  uint32_t* added, uint32_t* removed) KVT_REQUIRES(lock_);
  uint64_t ClearState(LocationState& state, ReverseIndex& index) KVT_REQUIRES(lock_);

  const WorkerIdentity* const identity_;
  const uint64_t registration_id_;
  const std::string software_version_;
  const bool expects_heartbeats_;
  const uint32_t slot_;
  const TimePoint registration_time_;

  mutable sync::FastLock lock_;
  bool removed_ KVT_GUARDED_BY(lock_) = false;
  TimePoint last_heartbeat_ KVT_GUARDED_BY(lock_);
  std::vector<LocationState> locations_ KVT_GUARDED_BY(lock_);  // few: searched linearly
};

}  // namespace kvtier::cluster
