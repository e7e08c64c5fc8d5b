// RegistryTree: full sync of a worker's location.
#include <fmt/format.h>

#include "kvtier/cluster/lock_holds.h"
#include "kvtier/cluster/registry_internal.h"
#include "kvtier/cluster/registry_tree.h"

namespace kvtier::cluster {

using internal::AdoptFast;

std::string_view FullSyncStateName(FullSyncState state) {
  switch (state) {
    case FullSyncState::kIdle:
      return "idle";
    case FullSyncState::kSyncing:
      return "syncing";
    case FullSyncState::kCompleted:
      return "completed";
    case FullSyncState::kFailed:
      return "failed";
  }
  return "unknown";
}

Status RegistryTree::StartFullSync(const Origin& origin, std::string_view location,
                                   uint64_t sync_id, std::optional<uint64_t> base_seq,
                                   uint64_t expected_total_keys, uint32_t expected_batch_count) {
  if (sync_id == 0) return Status::InvalidArgument("cluster registry: sync id 0");
  if (expected_batch_count > options_.max_sync_batches) {
    return Status::InvalidArgument(
        fmt::format("cluster registry: a sync of {} batches (max_sync_batches is {})",
                    expected_batch_count, options_.max_sync_batches));
  }
  const TimePoint now = clock_->Now();
  KVT_ASSIGN_OR_RETURN(auto node, FindWorker(origin));
  KVT_ASSIGN_OR_RETURN(LocationId location_id, locations_.Intern(location));
  NodeEvents events;
  {
    if (!node->lock().Acquire(options_.lock_timeout)) return LockTimeoutError("worker");
    AdoptFast hold(&node->lock());
    if (node->removed()) return UnknownWorker(origin);
    node->StartSync(location_id, sync_id, base_seq, expected_total_keys, expected_batch_count, now,
                    options_.full_sync_timeout, index_, &events);
  }
  Count(events);
  Counters::Add(counters_->full_syncs_started);
  return Status::OK();
}

Result<SyncBatchResult> RegistryTree::AddFullSyncBatch(const Origin& origin,
                                                       std::string_view location, uint64_t sync_id,
                                                       uint32_t batch_index,
                                                       std::span<const ObjectKey> keys) {
  const TimePoint now = clock_->Now();
  KVT_ASSIGN_OR_RETURN(auto node, FindWorker(origin));
  const std::optional<LocationId> location_id = locations_.Find(location);
  if (!location_id.has_value()) {
    Counters::Add(counters_->sync_batches_rejected);
    return MakeError(Status::FailedPrecondition(
        fmt::format("cluster registry: no sync runs for location '{}'", location)));
  }
  thread_local std::vector<IndexOp> ops;
  ops.resize(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) ops[i] = IndexOp{&keys[i], true};
  Result<SyncBatchResult> result = MakeError(Status::Internal("unset"));
  {
    if (!node->lock().Acquire(options_.lock_timeout)) return LockTimeoutError("worker");
    AdoptFast hold(&node->lock());
    if (node->removed()) return MakeError(UnknownWorker(origin));
    result = node->AddSyncBatch(*location_id, sync_id, batch_index, ops, now,
                                options_.full_sync_timeout, index_);
  }
  if (!result.has_value()) {
    Counters::Add(counters_->sync_batches_rejected);
    return result;
  }
  if (result->duplicate) Counters::Add(counters_->sync_batches_duplicate);
  Counters::Add(counters_->keys_admitted, result->keys_added);
  return result;
}

Result<SyncEndResult> RegistryTree::EndFullSync(const Origin& origin, std::string_view location,
                                                uint64_t sync_id, uint64_t total_keys) {
  const TimePoint now = clock_->Now();
  KVT_ASSIGN_OR_RETURN(auto node, FindWorker(origin));
  const std::optional<LocationId> location_id = locations_.Find(location);
  if (!location_id.has_value()) {
    return MakeError(Status::FailedPrecondition(
        fmt::format("cluster registry: no sync of location '{}'", location)));
  }
  NodeEvents events;
  Result<SyncEndResult> result = MakeError(Status::Internal("unset"));
  {
    if (!node->lock().Acquire(options_.lock_timeout)) return LockTimeoutError("worker");
    AdoptFast hold(&node->lock());
    if (node->removed()) return MakeError(UnknownWorker(origin));
    result = node->EndSync(*location_id, sync_id, total_keys, now, options_.full_sync_timeout,
                           locations_, &events);
  }
  Count(events);
  return result;
}

Result<WorkerSyncInfo> RegistryTree::FullSyncStatus(const Origin& origin, std::string_view location,
                                                    uint64_t sync_id) {
  const TimePoint now = clock_->Now();
  KVT_ASSIGN_OR_RETURN(auto node, FindWorker(origin));
  const std::optional<LocationId> location_id = locations_.Find(location);
  if (!node->lock().Acquire(options_.lock_timeout)) return LockTimeoutError("worker");
  AdoptFast hold(&node->lock());
  if (node->removed()) return MakeError(UnknownWorker(origin));
  if (!location_id.has_value()) {
    WorkerSyncInfo unknown;
    unknown.location = std::string(location);
    return unknown;
  }
  return node->SyncStatus(*location_id, sync_id, now, options_.full_sync_timeout, locations_);
}

Result<std::vector<ExpiredSync>> RegistryTree::ExpireSyncs() {
  const TimePoint now = clock_->Now();
  KVT_ASSIGN_OR_RETURN(auto nodes, SnapshotNodes());
  std::vector<ExpiredSync> expired;
  NodeEvents events;
  for (const auto& node : nodes) {
    if (!node->lock().Acquire(options_.lock_timeout)) {
      // Skipped (and counted), so that the syncs already failed are still reported.
      Status(LockTimeoutError("worker")).IgnoreError();
      continue;
    }
    AdoptFast hold(&node->lock());
    if (!node->removed()) node->ExpireSyncs(now, locations_, &expired, &events);
  }
  Count(events);
  return expired;
}

}  // namespace kvtier::cluster
