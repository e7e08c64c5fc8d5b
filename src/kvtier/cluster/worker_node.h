// WorkerNode: one registered worker of an instance. Part of RegistryTree.
//
// Its identity (instance, worker id, address, slot) never changes: a re-registration replaces
// the node. Everything else (per-location key sets, sequence trackers, the full-sync session,
// the last heartbeat) is guarded by the node's FastLock, and the methods that touch it require
// that lock. Holders of this worker in the ReverseIndex change only under the lock, so while it
// is free the node's key sets and the index agree exactly.
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

class WorkerNode : public std::enable_shared_from_this<WorkerNode> {
 public:
  // `identity` comes from the registry's SlotTable and outlives the node.
  WorkerNode(const WorkerIdentity* identity, uint32_t slot, bool expects_heartbeats, TimePoint now);
  WorkerNode(const WorkerNode&) = delete;
  WorkerNode& operator=(const WorkerNode&) = delete;

  // Immutable; readable without the lock.
  const WorkerIdentity& identity() const { return *identity_; }
  const std::string& instance_id() const { return *identity_->instance_id; }
  WorkerId worker_id() const { return identity_->worker_id; }
  const std::string& address() const { return identity_->address; }
  bool expects_heartbeats() const { return expects_heartbeats_; }
  uint32_t slot() const { return slot_; }
  TimePoint registration_time() const { return registration_time_; }
  Holder HolderAt(LocationId location) const { return MakeHolder(slot_, location); }

  sync::FastLock& lock() const KVT_RETURN_CAPABILITY(lock_) { return lock_; }

  // ---- Everything below requires lock().

  // Set once the node left the tree; every operation on it then answers kNotFound.
  bool removed() const KVT_REQUIRES(lock_) { return removed_; }
  TimePoint last_heartbeat() const KVT_REQUIRES(lock_) { return last_heartbeat_; }
  void Heartbeat(TimePoint now) KVT_REQUIRES(lock_) { last_heartbeat_ = now; }

  // An incremental batch of `location`, sequence number `seq`: the sequence check (see
  // docs/cluster_registry.md), then the ops in order. The error is kResourceExhausted when the
  // index is full (the result of the ops that did apply stays consistent).
  Result<BatchResult> ApplyBatch(LocationId location, uint64_t seq, std::span<const IndexOp> ops,
                                 ReverseIndex& index) KVT_REQUIRES(lock_);

  // Drops the holders of `location` (every location when absent) and resets its sequence
  // tracker, so the next batch sets a new baseline. Returns the holders removed.
  uint64_t ClearKeys(std::optional<LocationId> location, ReverseIndex& index) KVT_REQUIRES(lock_);
  // Marks the node removed (it has left the tree).
  void MarkRemoved() KVT_REQUIRES(lock_) { removed_ = true; }
  // Marks the node removed and drops every holder. Returns the holders removed.
  uint64_t Retire(ReverseIndex& index) KVT_REQUIRES(lock_);

  // The location's KeyRefs (a copy) and count.
  std::vector<KeyRef> Refs(LocationId location) const KVT_REQUIRES(lock_);
  uint64_t KeyCount(LocationId location) const KVT_REQUIRES(lock_);
  uint64_t TotalKeyCount() const KVT_REQUIRES(lock_);
  // The locations the worker ever reported, in first-report order.
  std::vector<LocationId> LocationIds() const KVT_REQUIRES(lock_);
  // Allocated bytes of the key sets.
  uint64_t KeySetBytes() const KVT_REQUIRES(lock_);

  // Full sync (state machine in docs/cluster_registry.md). StartSync sets `*failed_previous`
  // when it replaced a stalled session of another sync id (that session counts as failed).
  Status StartSync(LocationId location, std::string_view sync_id, uint64_t expected_total_keys,
                   uint32_t expected_batch_count, TimePoint now, Duration timeout,
                   ReverseIndex& index, bool* failed_previous, uint64_t* keys_cleared)
      KVT_REQUIRES(lock_);
  Result<SyncBatchResult> AddSyncBatch(LocationId location, std::string_view sync_id,
                                       uint32_t batch_index, std::span<const IndexOp> ops,
                                       TimePoint now, Duration timeout, ReverseIndex& index)
      KVT_REQUIRES(lock_);
  // `*completed_now` is set when this call moved the session to COMPLETED.
  Result<SyncEndResult> EndSync(LocationId location, std::string_view sync_id,
                                uint64_t actual_total_keys, TimePoint now, Duration timeout,
                                bool* completed_now) KVT_REQUIRES(lock_);
  // A SYNCING session past its deadline becomes FAILED and is described.
  std::optional<ExpiredSync> ExpireSync(TimePoint now, const LocationTable& locations)
      KVT_REQUIRES(lock_);
  std::optional<WorkerSyncInfo> SyncInfo(const LocationTable& locations) const KVT_REQUIRES(lock_);
  FullSyncState sync_state() const KVT_REQUIRES(lock_);

  WorkerInfo Info(const LocationTable& locations) const KVT_REQUIRES(lock_);

 private:
  struct LocationState {
    explicit LocationState(LocationId location) : id(location) {}
    LocationId id;
    absl::flat_hash_set<KeyRef> keys;
    bool has_next_seq = false;
    uint64_t next_seq = 0;
    bool needs_full_sync = false;
    uint64_t seq_gaps = 0;
    uint64_t stale_batches = 0;
    uint64_t discarded_during_sync = 0;
  };

  struct SyncSession {
    std::string sync_id;
    LocationId location = 0;
    FullSyncState state = FullSyncState::kSyncing;
    TimePoint start_time{};
    TimePoint last_activity{};
    TimePoint deadline{};
    uint64_t expected_total_keys = 0;
    uint32_t expected_batch_count = 0;
    std::vector<bool> received;  // by batch index
    uint32_t received_batch_count = 0;
    uint64_t received_keys = 0;
    uint32_t duplicate_batches = 0;
  };

  LocationState& State(LocationId location) KVT_REQUIRES(lock_);
  const LocationState* FindState(LocationId location) const KVT_REQUIRES(lock_);
  bool SyncingAt(LocationId location) const KVT_REQUIRES(lock_);
  std::vector<uint32_t> MissingBatches() const KVT_REQUIRES(lock_);
  // Applies `ops` to the index for this worker at `state`'s location and mirrors the changes
  // into its key set.
  Status ApplyOps(LocationState& state, std::span<const IndexOp> ops, ReverseIndex& index,
                  uint32_t* added, uint32_t* removed) KVT_REQUIRES(lock_);
  uint64_t ClearState(LocationState& state, ReverseIndex& index) KVT_REQUIRES(lock_);

  const WorkerIdentity* const identity_;
  const bool expects_heartbeats_;
  const uint32_t slot_;
  const TimePoint registration_time_;

  mutable sync::FastLock lock_;
  bool removed_ KVT_GUARDED_BY(lock_) = false;
  TimePoint last_heartbeat_ KVT_GUARDED_BY(lock_);
  std::vector<LocationState> locations_ KVT_GUARDED_BY(lock_);  // few: searched linearly
  std::optional<SyncSession> sync_ KVT_GUARDED_BY(lock_);
};

}  // namespace kvtier::cluster
