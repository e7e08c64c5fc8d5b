// RegistryTree: admin views (worker info, ids, stats, memory) and the consistency check.
#include <algorithm>

#include <absl/container/flat_hash_set.h>
#include <fmt/format.h>

#include "kvtier/cluster/lock_holds.h"
#include "kvtier/cluster/registry_internal.h"
#include "kvtier/cluster/registry_tree.h"

namespace kvtier::cluster {

using internal::AdoptFast;
using internal::AdoptRead;

Result<WorkerInfo> RegistryTree::GetWorkerInfo(const Origin& origin) const {
  KVT_ASSIGN_OR_RETURN(auto node, FindWorker(origin));
  if (!node->lock().Acquire(options_.lock_timeout)) return LockTimeoutError("worker");
  AdoptFast hold(&node->lock());
  if (node->removed()) return MakeError(UnknownWorker(origin));
  return node->Info(locations_);
}

Result<std::shared_ptr<const std::vector<WorkerInfo>>> RegistryTree::WorkerInfos(
    Duration max_age) const {
  const TimePoint now = clock_->Now();
  const uint64_t generation = generation_.load(std::memory_order_acquire);
  {
    MutexLock lock(&info_mu_);
    if (info_cache_ != nullptr && info_generation_ == generation && now - info_time_ <= max_age &&
        max_age > Duration::zero()) {
      return info_cache_;
    }
  }
  KVT_ASSIGN_OR_RETURN(auto nodes, SnapshotNodes());
  auto infos = std::make_shared<std::vector<WorkerInfo>>();
  infos->reserve(nodes.size());
  for (const auto& node : nodes) {
    if (!node->lock().Acquire(options_.lock_timeout)) return LockTimeoutError("worker");
    AdoptFast hold(&node->lock());
    if (!node->removed()) infos->push_back(node->Info(locations_));
  }
  std::shared_ptr<const std::vector<WorkerInfo>> snapshot = std::move(infos);
  MutexLock lock(&info_mu_);
  info_cache_ = snapshot;
  info_generation_ = generation;
  info_time_ = now;
  return snapshot;
}

std::vector<std::string> RegistryTree::InstanceIds() const {
  std::vector<std::string> ids;
  {
    sync::ReaderLock tree_hold(&tree_lock_);
    ids.reserve(instances_.size());
    for (const auto& [id, instance] : instances_) ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

Result<std::vector<WorkerId>> RegistryTree::WorkerIds(std::string_view instance_id) const {
  std::vector<std::shared_ptr<WorkerNode>> nodes;
  {
    if (!tree_lock_.AcquireRead(options_.lock_timeout)) return LockTimeoutError("registry");
    AdoptRead tree_hold(&tree_lock_);
    InstanceNode* instance = FindInstance(instance_id);
    if (instance == nullptr) {
      return MakeError(
          Status::NotFound(fmt::format("cluster registry: unknown instance '{}'", instance_id)));
    }
    if (!instance->lock().AcquireRead(options_.lock_timeout)) {
      return LockTimeoutError("instance");
    }
    AdoptRead instance_hold(&instance->lock());
    instance->AppendWorkers(&nodes);
  }
  std::vector<WorkerId> ids;
  ids.reserve(nodes.size());
  for (const auto& node : nodes) ids.push_back(node->worker_id());
  std::sort(ids.begin(), ids.end());
  return ids;
}

RegistryStats RegistryTree::Stats() const {
  const Counters& c = *counters_;
  auto get = [](const std::atomic<uint64_t>& v) { return v.load(std::memory_order_relaxed); };
  RegistryStats s;
  s.instances = static_cast<uint64_t>(std::max<int64_t>(0, num_instances_.load()));
  s.workers = static_cast<uint64_t>(std::max<int64_t>(0, num_workers_.load()));
  s.keys = index_.size();
  s.holders = index_.holders();
  s.batches_applied = get(c.batches_applied);
  s.keys_admitted = get(c.keys_admitted);
  s.keys_evicted = get(c.keys_evicted);
  s.seq_gaps = get(c.seq_gaps);
  s.stale_batches = get(c.stale_batches);
  s.unknown_worker_batches = get(c.unknown_worker_batches);
  s.lost_events = get(c.lost_events);
  s.key_count_mismatches = get(c.key_count_mismatches);
  s.full_syncs_started = get(c.full_syncs_started);
  s.full_syncs_completed = get(c.full_syncs_completed);
  s.full_syncs_failed = get(c.full_syncs_failed);
  s.full_syncs_superseded = get(c.full_syncs_superseded);
  s.full_sync_requests = get(c.full_sync_requests);
  s.sync_batches_duplicate = get(c.sync_batches_duplicate);
  s.sync_batches_rejected = get(c.sync_batches_rejected);
  s.workers_reaped = get(c.workers_reaped);
  s.lock_timeouts = get(c.lock_timeouts);
  return s;
}

RegistryMemory RegistryTree::Memory() const {
  RegistryMemory memory;
  index_.AddMemory(&memory);
  auto nodes = SnapshotNodes();
  if (nodes.has_value()) {
    for (const auto& node : *nodes) {
      sync::FastLockHolder hold(&node->lock());
      memory.worker_set_bytes += node->KeySetBytes();
    }
  }
  return memory;
}

Status RegistryTree::CheckConsistency() const {
  KVT_ASSIGN_OR_RETURN(auto nodes, SnapshotNodes());
  // (holder, ref) pairs of every worker set.
  absl::flat_hash_set<uint64_t> from_workers;
  for (const auto& node : nodes) {
    sync::FastLockHolder hold(&node->lock());
    if (node->removed()) continue;
    if (NodeAt(node->slot()) != node.get()) {
      return Status::Internal(fmt::format("slot {} does not name worker {}/{}", node->slot(),
                                          node->instance_id(), node->worker_id()));
    }
    for (LocationId location : node->LocationIds()) {
      for (KeyRef ref : node->Refs(location)) {
        from_workers.insert(uint64_t{node->HolderAt(location)} << 32 | ref);
      }
    }
  }
  uint64_t entries = 0;
  uint64_t holders = 0;
  std::string problem;
  index_.ForEach([&](const ObjectKey& key, KeyRef ref, std::span<const Holder> hs) {
    ++entries;
    if (hs.empty() && problem.empty()) problem = fmt::format("entry {:#x} has no holder", ref);
    for (Holder h : hs) {
      ++holders;
      if (!from_workers.contains(uint64_t{h} << 32 | ref) && problem.empty()) {
        problem = fmt::format("holder {:#x} of entry {:#x} ({}) is in no worker set", h, ref,
                              key.ToString());
      }
    }
  });
  if (!problem.empty()) return Status::Internal(problem);
  if (holders != from_workers.size()) {
    return Status::Internal(
        fmt::format("the index has {} holders, the worker sets {}", holders, from_workers.size()));
  }
  if (entries != index_.size() || holders != index_.holders()) {
    return Status::Internal(fmt::format("counted {} keys / {} holders, the totals say {} / {}",
                                        entries, holders, index_.size(), index_.holders()));
  }
  return Status::OK();
}

}  // namespace kvtier::cluster
