// RegistryTree: construction, registration, liveness, admin views and consistency checks.
// Updates and lookups are in registry_kv.cc, full sync in registry_sync.cc.
#include "kvtier/cluster/registry_tree.h"

#include <algorithm>
#include <tuple>

#include <absl/container/flat_hash_set.h>
#include <fmt/chrono.h>
#include <fmt/format.h>

#include "kvtier/cluster/lock_holds.h"
#include "kvtier/cluster/registry_counters.h"
#include "kvtier/common/check.h"
#include "kvtier/common/logging.h"

namespace kvtier::cluster {

using internal::AdoptFast;
using internal::AdoptRead;
using internal::AdoptWrite;

// ---- InstanceNode.

std::shared_ptr<WorkerNode> InstanceNode::Find(WorkerId worker_id) const {
  auto it = workers_.find(worker_id);
  return it == workers_.end() ? nullptr : it->second;
}

std::shared_ptr<WorkerNode> InstanceNode::Put(std::shared_ptr<WorkerNode> node) {
  std::shared_ptr<WorkerNode>& slot = workers_[node->worker_id()];
  std::swap(slot, node);
  return node;
}

std::shared_ptr<WorkerNode> InstanceNode::Remove(WorkerId worker_id) {
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) return nullptr;
  std::shared_ptr<WorkerNode> node = std::move(it->second);
  workers_.erase(it);
  return node;
}

void InstanceNode::AppendWorkers(std::vector<std::shared_ptr<WorkerNode>>* out) const {
  for (const auto& [id, node] : workers_) out->push_back(node);
}

// ---- RegistryTree.

Result<std::unique_ptr<RegistryTree>> RegistryTree::Create(const RegistryOptions& options) {
  if (options.num_shards == 0 || options.num_shards > kMaxIndexShards ||
      (options.num_shards & (options.num_shards - 1)) != 0) {
    return MakeError(Status::InvalidArgument(
        fmt::format("cluster registry: num_shards must be a power of two in [1, {}] (got {})",
                    kMaxIndexShards, options.num_shards)));
  }
  if (options.max_workers == 0 || options.max_workers > kMaxWorkerSlots) {
    return MakeError(Status::InvalidArgument(
        fmt::format("cluster registry: max_workers must be in [1, {}] (got {})", kMaxWorkerSlots,
                    options.max_workers)));
  }
  if (options.clock == nullptr) {
    return MakeError(Status::InvalidArgument("cluster registry: clock is null"));
  }
  if (options.lock_timeout < Duration::zero() || options.full_sync_timeout <= Duration::zero()) {
    return MakeError(Status::InvalidArgument(
        "cluster registry: lock_timeout must be >= 0 and full_sync_timeout > 0"));
  }
  return std::unique_ptr<RegistryTree>(new RegistryTree(options));
}

RegistryTree::RegistryTree(const RegistryOptions& options)
    : options_(options),
      clock_(options.clock),
      slots_(options.max_workers),
      index_(options.num_shards, &slots_),
      counters_(std::make_unique<Counters>()) {}

RegistryTree::~RegistryTree() = default;

::kvtier::internal::ReturnedError RegistryTree::LockTimeoutError(std::string_view what) const {
  counters_->lock_timeouts.fetch_add(1, std::memory_order_relaxed);
  return {Status::LockTimeout(
      fmt::format("cluster registry: {} lock not acquired within {}", what,
                  std::chrono::duration_cast<std::chrono::milliseconds>(options_.lock_timeout)))};
}

InstanceNode* RegistryTree::FindInstance(std::string_view instance_id) const {
  auto it = instances_.find(absl::string_view(instance_id.data(), instance_id.size()));
  return it == instances_.end() ? nullptr : it->second.get();
}

Result<std::shared_ptr<WorkerNode>> RegistryTree::FindWorker(std::string_view instance_id,
                                                             WorkerId worker_id) const {
  if (!tree_lock_.AcquireRead(options_.lock_timeout)) return LockTimeoutError("registry");
  AdoptRead tree_hold(&tree_lock_);
  InstanceNode* instance = FindInstance(instance_id);
  if (instance == nullptr) {
    return MakeError(
        Status::NotFound(fmt::format("cluster registry: unknown instance '{}'", instance_id)));
  }
  if (!instance->lock().AcquireRead(options_.lock_timeout)) return LockTimeoutError("instance");
  AdoptRead instance_hold(&instance->lock());
  std::shared_ptr<WorkerNode> node = instance->Find(worker_id);
  if (node == nullptr) {
    return MakeError(Status::NotFound(
        fmt::format("cluster registry: unknown worker {}/{}", instance_id, worker_id)));
  }
  return node;
}

Result<std::vector<std::shared_ptr<WorkerNode>>> RegistryTree::SnapshotNodes() const {
  std::vector<std::shared_ptr<WorkerNode>> nodes;
  {
    if (!tree_lock_.AcquireRead(options_.lock_timeout)) return LockTimeoutError("registry");
    AdoptRead tree_hold(&tree_lock_);
    for (const auto& [id, instance] : instances_) {
      if (!instance->lock().AcquireRead(options_.lock_timeout)) {
        return LockTimeoutError("instance");
      }
      AdoptRead instance_hold(&instance->lock());
      instance->AppendWorkers(&nodes);
    }
  }
  std::sort(nodes.begin(), nodes.end(), [](const auto& a, const auto& b) {
    if (a->instance_id() != b->instance_id()) return a->instance_id() < b->instance_id();
    return a->worker_id() < b->worker_id();
  });
  return nodes;
}

WorkerNode* RegistryTree::NodeAt(uint32_t slot) const {
  WorkerNode* node = slots_.Node(slot);
  KVT_DCHECK_MSG(node != nullptr, "cluster registry: holder names free slot {}", slot);
  return node;
}

Result<std::shared_ptr<WorkerNode>> RegistryTree::PutNode(InstanceNode* instance,
                                                          const WorkerRegistration& r,
                                                          uint32_t slot, TimePoint now) {
  if (!instance->lock().AcquireWrite(options_.lock_timeout)) return LockTimeoutError("instance");
  AdoptWrite instance_hold(&instance->lock());
  const WorkerIdentity* identity = slots_.Intern(r.instance_id, r.worker_id, r.address);
  auto node = std::make_shared<WorkerNode>(identity, slot, r.expects_heartbeats, now);
  // Resolvable before any holder of the slot can exist.
  slots_.Publish(slot, identity, node.get());
  return instance->Put(std::move(node));
}

uint64_t RegistryTree::RetireNode(const std::shared_ptr<WorkerNode>& node) {
  uint64_t removed = 0;
  {
    // Blocking: the node already left the tree, so its holders must go whatever the wait.
    sync::FastLockHolder hold(&node->lock());
    removed = node->Retire(index_);
  }
  slots_.Release(node->slot());
  return removed;
}

void RegistryTree::RemoveInstanceIfEmpty(std::string_view instance_id) {
  if (!tree_lock_.AcquireWrite(options_.lock_timeout)) {
    // Harmless: an empty instance lingers until its id registers again or is deregistered.
    KVT_LOG_WARN("cluster registry: empty instance '{}' not removed: {}", instance_id,
                 Status(LockTimeoutError("registry")).ToString());
    return;
  }
  AdoptWrite tree_hold(&tree_lock_);
  auto it = instances_.find(absl::string_view(instance_id.data(), instance_id.size()));
  if (it == instances_.end()) return;
  {
    InstanceNode& instance = *it->second;
    // Registrations hold the tree lock (shared) while they insert, so this cannot race one.
    sync::ReaderLock instance_hold(&instance.lock());
    if (!instance.empty()) return;
  }
  instances_.erase(it);
  num_instances_.fetch_sub(1, std::memory_order_relaxed);
}

Result<RegisterResult> RegistryTree::RegisterWorker(const WorkerRegistration& registration) {
  if (registration.instance_id.empty() || registration.instance_id.size() > kMaxInstanceIdLength) {
    return MakeError(Status::InvalidArgument(
        fmt::format("cluster registry: an instance id has 1..{} bytes (got {})",
                    kMaxInstanceIdLength, registration.instance_id.size())));
  }
  if (registration.address.size() > kMaxAddressLength) {
    return MakeError(Status::InvalidArgument(
        fmt::format("cluster registry: an address has at most {} bytes", kMaxAddressLength)));
  }
  const TimePoint now = clock_->Now();
  KVT_ASSIGN_OR_RETURN(uint32_t slot, slots_.Allocate());
  Result<std::shared_ptr<WorkerNode>> replaced = MakeError(Status::Internal("unset"));
  bool placed = false;
  {
    if (!tree_lock_.AcquireRead(options_.lock_timeout)) {
      slots_.Release(slot);
      return LockTimeoutError("registry");
    }
    AdoptRead tree_hold(&tree_lock_);
    if (InstanceNode* instance = FindInstance(registration.instance_id)) {
      replaced = PutNode(instance, registration, slot, now);
      placed = true;
    }
  }
  if (!placed) {
    if (!tree_lock_.AcquireWrite(options_.lock_timeout)) {
      slots_.Release(slot);
      return LockTimeoutError("registry");
    }
    AdoptWrite tree_hold(&tree_lock_);
    InstanceNode* instance = FindInstance(registration.instance_id);
    if (instance == nullptr) {
      auto created = std::make_unique<InstanceNode>(registration.instance_id);
      instance = created.get();
      instances_.emplace(registration.instance_id, std::move(created));
      num_instances_.fetch_add(1, std::memory_order_relaxed);
    }
    replaced = PutNode(instance, registration, slot, now);
  }
  if (!replaced.has_value()) {
    slots_.Release(slot);
    return MakeError(std::move(replaced).error());
  }
  generation_.fetch_add(1, std::memory_order_release);
  RegisterResult result;
  if (*replaced != nullptr) {
    result.re_registered = true;
    result.stale_keys_removed = RetireNode(*replaced);
  } else {
    num_workers_.fetch_add(1, std::memory_order_relaxed);
  }
  return result;
}

Result<RemovedWorkers> RegistryTree::DeregisterWorker(std::string_view instance_id,
                                                      WorkerId worker_id) {
  std::shared_ptr<WorkerNode> node;
  bool instance_empty = false;
  {
    if (!tree_lock_.AcquireRead(options_.lock_timeout)) return LockTimeoutError("registry");
    AdoptRead tree_hold(&tree_lock_);
    InstanceNode* instance = FindInstance(instance_id);
    if (instance == nullptr) {
      return MakeError(
          Status::NotFound(fmt::format("cluster registry: unknown instance '{}'", instance_id)));
    }
    if (!instance->lock().AcquireWrite(options_.lock_timeout)) {
      return LockTimeoutError("instance");
    }
    AdoptWrite instance_hold(&instance->lock());
    node = instance->Remove(worker_id);
    instance_empty = instance->empty();
  }
  if (node == nullptr) {
    return MakeError(Status::NotFound(
        fmt::format("cluster registry: unknown worker {}/{}", instance_id, worker_id)));
  }
  num_workers_.fetch_sub(1, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  if (instance_empty) RemoveInstanceIfEmpty(instance_id);
  RemovedWorkers removed;
  removed.workers = 1;
  removed.keys_removed = RetireNode(node);
  return removed;
}

Result<RemovedWorkers> RegistryTree::DeregisterInstance(std::string_view instance_id) {
  std::vector<std::shared_ptr<WorkerNode>> nodes;
  {
    if (!tree_lock_.AcquireWrite(options_.lock_timeout)) return LockTimeoutError("registry");
    AdoptWrite tree_hold(&tree_lock_);
    auto it = instances_.find(absl::string_view(instance_id.data(), instance_id.size()));
    if (it == instances_.end()) {
      return MakeError(
          Status::NotFound(fmt::format("cluster registry: unknown instance '{}'", instance_id)));
    }
    {
      sync::ReaderLock instance_hold(&it->second->lock());
      it->second->AppendWorkers(&nodes);
    }
    instances_.erase(it);
    num_instances_.fetch_sub(1, std::memory_order_relaxed);
  }
  num_workers_.fetch_sub(static_cast<int64_t>(nodes.size()), std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  RemovedWorkers removed;
  for (const auto& node : nodes) {
    removed.keys_removed += RetireNode(node);
    ++removed.workers;
  }
  return removed;
}

Status RegistryTree::Heartbeat(std::string_view instance_id, WorkerId worker_id) {
  const TimePoint now = clock_->Now();
  KVT_ASSIGN_OR_RETURN(auto node, FindWorker(instance_id, worker_id));
  if (!node->lock().Acquire(options_.lock_timeout)) return LockTimeoutError("worker");
  AdoptFast hold(&node->lock());
  if (node->removed()) {
    return Status::NotFound(
        fmt::format("cluster registry: unknown worker {}/{}", instance_id, worker_id));
  }
  node->Heartbeat(std::max(now, node->last_heartbeat()));
  return Status::OK();
}

Result<std::vector<ReapedWorker>> RegistryTree::ReapDead(Duration timeout) {
  const TimePoint now = clock_->Now();
  KVT_ASSIGN_OR_RETURN(auto nodes, SnapshotNodes());
  std::vector<ReapedWorker> reaped;
  // A lock timeout skips that worker (and is counted) rather than failing the call, so the
  // workers already reaped are always reported.
  for (const auto& node : nodes) {
    if (!node->expects_heartbeats()) continue;
    {
      if (!node->lock().Acquire(options_.lock_timeout)) {
        Status(LockTimeoutError("worker")).IgnoreError();
        continue;
      }
      AdoptFast hold(&node->lock());
      if (node->removed() || now - node->last_heartbeat() <= timeout) continue;
    }
    // Dead at a glance: take it out of the tree if it is still the registered node and still
    // silent (checked again under its lock, which then marks it removed for good).
    ReapedWorker dead;
    bool instance_empty = false;
    bool taken = false;
    {
      if (!tree_lock_.AcquireRead(options_.lock_timeout)) {
        Status(LockTimeoutError("registry")).IgnoreError();
        continue;
      }
      AdoptRead tree_hold(&tree_lock_);
      InstanceNode* instance = FindInstance(node->instance_id());
      if (instance == nullptr) continue;
      if (!instance->lock().AcquireWrite(options_.lock_timeout)) {
        Status(LockTimeoutError("instance")).IgnoreError();
        continue;
      }
      AdoptWrite instance_hold(&instance->lock());
      if (instance->Find(node->worker_id()) != node) continue;  // re-registered meanwhile
      if (!node->lock().Acquire(options_.lock_timeout)) {
        Status(LockTimeoutError("worker")).IgnoreError();
        continue;
      }
      AdoptFast hold(&node->lock());
      if (now - node->last_heartbeat() <= timeout) continue;  // a heartbeat just arrived
      dead.last_heartbeat = node->last_heartbeat();
      node->MarkRemoved();  // later heartbeats and batches get kNotFound
      instance->Remove(node->worker_id());
      instance_empty = instance->empty();
      taken = true;
    }
    if (!taken) continue;
    num_workers_.fetch_sub(1, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
    if (instance_empty) RemoveInstanceIfEmpty(node->instance_id());
    dead.instance_id = node->instance_id();
    dead.worker_id = node->worker_id();
    dead.address = node->address();
    dead.keys_removed = RetireNode(node);
    counters_->workers_reaped.fetch_add(1, std::memory_order_relaxed);
    reaped.push_back(std::move(dead));
  }
  return reaped;
}

Result<WorkerInfo> RegistryTree::GetWorkerInfo(std::string_view instance_id,
                                               WorkerId worker_id) const {
  KVT_ASSIGN_OR_RETURN(auto node, FindWorker(instance_id, worker_id));
  if (!node->lock().Acquire(options_.lock_timeout)) return LockTimeoutError("worker");
  AdoptFast hold(&node->lock());
  if (node->removed()) {
    return MakeError(Status::NotFound(
        fmt::format("cluster registry: unknown worker {}/{}", instance_id, worker_id)));
  }
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
  s.discarded_during_sync = get(c.discarded_during_sync);
  s.unknown_worker_batches = get(c.unknown_worker_batches);
  s.full_syncs_started = get(c.full_syncs_started);
  s.full_syncs_completed = get(c.full_syncs_completed);
  s.full_syncs_failed = get(c.full_syncs_failed);
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
