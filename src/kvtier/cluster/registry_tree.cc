// RegistryTree: construction, registration, liveness. Events and lookups are in registry_kv.cc,
// full sync in registry_sync.cc, admin views in registry_admin.cc.
#include "kvtier/cluster/registry_tree.h"

#include <algorithm>
#include <random>

#include <absl/container/flat_hash_set.h>
#include <fmt/chrono.h>
#include <fmt/format.h>

#include "kvtier/cluster/lock_holds.h"
#include "kvtier/cluster/registry_internal.h"
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

namespace {
uint64_t RandomSeed() {
  std::random_device device;
  return (uint64_t{device()} << 32) ^ device();
}
}  // namespace

RegistryTree::RegistryTree(const RegistryOptions& options)
    : options_(options),
      clock_(options.clock),
      slots_(options.max_workers),
      index_(options.num_shards, &slots_),
      registration_id_base_(RandomSeed()),
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

Result<std::shared_ptr<WorkerNode>> RegistryTree::FindWorker(const Origin& origin) const {
  if (!tree_lock_.AcquireRead(options_.lock_timeout)) return LockTimeoutError("registry");
  AdoptRead tree_hold(&tree_lock_);
  InstanceNode* instance = FindInstance(origin.instance_id);
  if (instance == nullptr) return MakeError(UnknownWorker(origin));
  if (!instance->lock().AcquireRead(options_.lock_timeout)) return LockTimeoutError("instance");
  AdoptRead instance_hold(&instance->lock());
  std::shared_ptr<WorkerNode> node = instance->Find(origin.worker_id);
  if (node == nullptr ||
      (origin.registration_id != 0 && node->registration_id() != origin.registration_id)) {
    return MakeError(UnknownWorker(origin));
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
                                                          const std::vector<LocationId>& locations,
                                                          uint64_t registration_id, uint32_t slot,
                                                          TimePoint now) {
  if (!instance->lock().AcquireWrite(options_.lock_timeout)) return LockTimeoutError("instance");
  AdoptWrite instance_hold(&instance->lock());
  const WorkerIdentity* identity = slots_.Intern(r.instance_id, r.worker_id, r.address);
  auto node = std::make_shared<WorkerNode>(identity, r, registration_id, slot, now);
  {
    sync::FastLockHolder hold(&node->lock());  // not shared yet: never contended
    for (LocationId location : locations) node->AddLocation(location);
  }
  // Resolvable before any holder of the slot can exist.
  slots_.Publish(slot, identity, node.get());
  return instance->Put(std::move(node));
}

uint64_t RegistryTree::NewRegistrationId() {
  for (;;) {
    // splitmix64's finaliser is a bijection: distinct counters give distinct ids.
    uint64_t x =
        registration_id_base_ +
        registration_counter_.fetch_add(1, std::memory_order_relaxed) * 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    x ^= x >> 31;
    if (x != 0) return x;
  }
}

void RegistryTree::Count(const NodeEvents& events) const {
  Counters& c = *counters_;
  Counters::Add(c.lost_events, events.lost_events);
  Counters::Add(c.key_count_mismatches, events.key_count_mismatches);
  Counters::Add(c.full_syncs_failed, events.syncs_failed);
  Counters::Add(c.full_syncs_superseded, events.syncs_superseded);
  Counters::Add(c.full_syncs_completed, events.syncs_completed);
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
  if (registration.locations.size() > kMaxLocationsPerWorker) {
    return MakeError(Status::InvalidArgument(fmt::format(
        "cluster registry: a worker has at most {} locations", kMaxLocationsPerWorker)));
  }
  std::vector<LocationId> locations;
  for (const std::string& name : registration.locations) {
    KVT_ASSIGN_OR_RETURN(LocationId id, locations_.Intern(name));
    locations.push_back(id);
  }
  const TimePoint now = clock_->Now();
  const uint64_t registration_id = NewRegistrationId();
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
      replaced = PutNode(instance, registration, locations, registration_id, slot, now);
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
    replaced = PutNode(instance, registration, locations, registration_id, slot, now);
  }
  if (!replaced.has_value()) {
    slots_.Release(slot);
    return MakeError(std::move(replaced).error());
  }
  generation_.fetch_add(1, std::memory_order_release);
  RegisterResult result;
  result.registration_id = registration_id;
  if (*replaced != nullptr) {
    result.re_registered = true;
    result.stale_keys_removed = RetireNode(*replaced);
  } else {
    num_workers_.fetch_add(1, std::memory_order_relaxed);
  }
  return result;
}

Result<RemovedWorkers> RegistryTree::DeregisterWorker(const Origin& origin) {
  std::shared_ptr<WorkerNode> node;
  bool instance_empty = false;
  {
    if (!tree_lock_.AcquireRead(options_.lock_timeout)) return LockTimeoutError("registry");
    AdoptRead tree_hold(&tree_lock_);
    InstanceNode* instance = FindInstance(origin.instance_id);
    if (instance == nullptr) return MakeError(UnknownWorker(origin));
    if (!instance->lock().AcquireWrite(options_.lock_timeout)) {
      return LockTimeoutError("instance");
    }
    AdoptWrite instance_hold(&instance->lock());
    std::shared_ptr<WorkerNode> current = instance->Find(origin.worker_id);
    // A deregistration of a replaced registration must not remove its successor.
    if (current == nullptr ||
        (origin.registration_id != 0 && current->registration_id() != origin.registration_id)) {
      return MakeError(UnknownWorker(origin));
    }
    node = instance->Remove(origin.worker_id);
    instance_empty = instance->empty();
  }
  num_workers_.fetch_sub(1, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  if (instance_empty) RemoveInstanceIfEmpty(origin.instance_id);
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

Result<std::vector<FullSyncRequest>> RegistryTree::Heartbeat(
    const Origin& origin, std::span<const LocationReport> reports) {
  const TimePoint now = clock_->Now();
  KVT_ASSIGN_OR_RETURN(auto node, FindWorker(origin));
  std::vector<std::pair<LocationId, LocationReport>> resolved;
  resolved.reserve(reports.size());
  for (const LocationReport& report : reports) {
    KVT_ASSIGN_OR_RETURN(LocationId id, locations_.Intern(report.location));
    resolved.emplace_back(id, report);
  }
  NodeEvents events;
  std::vector<FullSyncRequest> requests;
  {
    if (!node->lock().Acquire(options_.lock_timeout)) return LockTimeoutError("worker");
    AdoptFast hold(&node->lock());
    if (node->removed()) return MakeError(UnknownWorker(origin));
    node->Heartbeat(now);
    requests = node->CheckReports(resolved, locations_, &events);
  }
  Count(events);
  Counters::Add(counters_->full_sync_requests, requests.size());
  return requests;
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

}  // namespace kvtier::cluster
