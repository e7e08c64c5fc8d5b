// RegistryTree: full sync of a worker's location.
#include <fmt/format.h>

#include "kvtier/cluster/lock_holds.h"
#include "kvtier/cluster/registry_counters.h"
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

Status RegistryTree::StartFullSync(std::string_view instance_id, WorkerId worker_id,
                                   std::string_view location, std::string_view sync_id,
                                   uint64_t expected_total_keys, uint32_t expected_batch_count) {
  if (sync_id.empty()) return Status::InvalidArgument("cluster registry: empty sync id");
  if (expected_batch_count > options_.max_sync_batches) {
    return Status::InvalidArgument(
        fmt::format("cluster registry: a sync of {} batches (max_sync_batches is {})",
                    expected_batch_count, options_.max_sync_batches));
  }
  const TimePoint now = clock_->Now();
  KVT_ASSIGN_OR_RETURN(auto node, FindWorker(instance_id, worker_id));
  KVT_ASSIGN_OR_RETURN(LocationId location_id, locations_.Intern(location));
  if (!node->lock().Acquire(options_.lock_timeout)) return LockTimeoutError("worker");
  AdoptFast hold(&node->lock());
  if (node->removed()) {
    return Status::NotFound(
        fmt::format("cluster registry: unknown worker {}/{}", instance_id, worker_id));
  }
  bool failed_previous = false;
  uint64_t cleared = 0;
  KVT_RETURN_IF_ERROR(node->StartSync(location_id, sync_id, expected_total_keys,
                                      expected_batch_count, now, options_.full_sync_timeout, index_,
                                      &failed_previous, &cleared));
  Counters::Add(counters_->full_syncs_started);
  if (failed_previous) Counters::Add(counters_->full_syncs_failed);
  return Status::OK();
}

Result<SyncBatchResult> RegistryTree::AddFullSyncBatch(
    std::string_view instance_id, WorkerId worker_id, std::string_view location,
    std::string_view sync_id, uint32_t batch_index, std::span<const ObjectKey> keys) {
  const TimePoint now = clock_->Now();
  KVT_ASSIGN_OR_RETURN(auto node, FindWorker(instance_id, worker_id));
  const std::optional<LocationId> location_id = locations_.Find(location);
  if (!location_id.has_value()) {
    Counters::Add(counters_->sync_batches_rejected);
    return MakeError(Status::FailedPrecondition(
        fmt::format("cluster registry: no sync in progress for location '{}'", location)));
  }
  thread_local std::vector<IndexOp> ops;
  ops.resize(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) ops[i] = IndexOp{&keys[i], true};
  if (!node->lock().Acquire(options_.lock_timeout)) return LockTimeoutError("worker");
  AdoptFast hold(&node->lock());
  if (node->removed()) {
    return MakeError(Status::NotFound(
        fmt::format("cluster registry: unknown worker {}/{}", instance_id, worker_id)));
  }
  auto result = node->AddSyncBatch(*location_id, sync_id, batch_index, ops, now,
                                   options_.full_sync_timeout, index_);
  if (!result.has_value()) {
    if (result.error().code() == StatusCode::kFailedPrecondition) {
      Counters::Add(counters_->sync_batches_rejected);
    }
    return result;
  }
  if (result->duplicate) Counters::Add(counters_->sync_batches_duplicate);
  Counters::Add(counters_->keys_admitted, result->keys_added);
  return result;
}

Result<SyncEndResult> RegistryTree::EndFullSync(std::string_view instance_id, WorkerId worker_id,
                                                std::string_view location, std::string_view sync_id,
                                                uint64_t actual_total_keys) {
  const TimePoint now = clock_->Now();
  KVT_ASSIGN_OR_RETURN(auto node, FindWorker(instance_id, worker_id));
  const std::optional<LocationId> location_id = locations_.Find(location);
  if (!location_id.has_value()) {
    return MakeError(Status::FailedPrecondition(
        fmt::format("cluster registry: no sync in progress for location '{}'", location)));
  }
  if (!node->lock().Acquire(options_.lock_timeout)) return LockTimeoutError("worker");
  AdoptFast hold(&node->lock());
  if (node->removed()) {
    return MakeError(Status::NotFound(
        fmt::format("cluster registry: unknown worker {}/{}", instance_id, worker_id)));
  }
  bool completed_now = false;
  auto result = node->EndSync(*location_id, sync_id, actual_total_keys, now,
                              options_.full_sync_timeout, &completed_now);
  if (completed_now) Counters::Add(counters_->full_syncs_completed);
  return result;
}

Result<WorkerSyncInfo> RegistryTree::GetSyncInfo(std::string_view instance_id,
                                                 WorkerId worker_id) const {
  KVT_ASSIGN_OR_RETURN(auto node, FindWorker(instance_id, worker_id));
  if (!node->lock().Acquire(options_.lock_timeout)) return LockTimeoutError("worker");
  AdoptFast hold(&node->lock());
  if (node->removed()) {
    return MakeError(Status::NotFound(
        fmt::format("cluster registry: unknown worker {}/{}", instance_id, worker_id)));
  }
  std::optional<WorkerSyncInfo> info = node->SyncInfo(locations_);
  return info.has_value() ? std::move(*info) : WorkerSyncInfo{};
}

Result<std::vector<ExpiredSync>> RegistryTree::ExpireSyncs() {
  const TimePoint now = clock_->Now();
  KVT_ASSIGN_OR_RETURN(auto nodes, SnapshotNodes());
  std::vector<ExpiredSync> expired;
  for (const auto& node : nodes) {
    if (!node->lock().Acquire(options_.lock_timeout)) {
      // Skipped (and counted), so that the sessions already failed are still reported.
      Status(LockTimeoutError("worker")).IgnoreError();
      continue;
    }
    AdoptFast hold(&node->lock());
    if (node->removed()) continue;
    if (auto e = node->ExpireSync(now, locations_)) {
      Counters::Add(counters_->full_syncs_failed);
      expired.push_back(std::move(*e));
    }
  }
  return expired;
}

}  // namespace kvtier::cluster
