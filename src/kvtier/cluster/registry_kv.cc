// RegistryTree: incremental updates, lookups, per-worker key lists and clearing.
#include <algorithm>

#include <absl/container/inlined_vector.h>
#include <fmt/format.h>

#include "kvtier/cluster/lock_holds.h"
#include "kvtier/cluster/registry_internal.h"
#include "kvtier/cluster/registry_tree.h"
#include "kvtier/common/check.h"

namespace kvtier::cluster {
namespace {

using internal::AdoptFast;

// The defined order of holders: instance id, worker id, location name.
bool HolderLess(const WorkerIdentity& a, LocationId a_location, const WorkerIdentity& b,
                LocationId b_location, const LocationTable& locations) {
  if (a.instance_id != b.instance_id) return *a.instance_id < *b.instance_id;  // interned
  if (a.worker_id != b.worker_id) return a.worker_id < b.worker_id;
  return locations.Name(a_location) < locations.Name(b_location);
}

bool Excluded(const WorkerIdentity& identity, std::string_view exclude_instance) {
  return !exclude_instance.empty() && *identity.instance_id == exclude_instance;
}

}  // namespace

std::string_view BatchOutcomeName(BatchOutcome outcome) {
  switch (outcome) {
    case BatchOutcome::kApplied:
      return "applied";
    case BatchOutcome::kAppliedAfterGap:
      return "applied_after_gap";
    case BatchOutcome::kIgnoredStale:
      return "ignored_stale";
  }
  return "unknown";
}

Result<BatchResult> RegistryTree::ApplyBatch(const Origin& origin, std::string_view location,
                                             uint64_t seq, std::span<const IndexOp> ops) {
  Counters& c = *counters_;
  auto node = FindWorker(origin);
  if (!node.has_value()) {
    if (node.error().code() == StatusCode::kNotFound) Counters::Add(c.unknown_worker_batches);
    return MakeError(std::move(node).error());
  }
  KVT_ASSIGN_OR_RETURN(LocationId location_id, locations_.Intern(location));
  WorkerNode& worker = **node;
  NodeEvents events;
  Result<BatchResult> result = MakeError(Status::Internal("unset"));
  {
    if (!worker.lock().Acquire(options_.lock_timeout)) return LockTimeoutError("worker");
    AdoptFast hold(&worker.lock());
    if (worker.removed()) {
      Counters::Add(c.unknown_worker_batches);
      return MakeError(UnknownWorker(origin));
    }
    result = worker.ApplyBatch(location_id, seq, ops, index_, options_.max_sync_evictions, &events);
  }
  Count(events);
  if (!result.has_value()) return result;
  switch (result->outcome) {
    case BatchOutcome::kAppliedAfterGap:
      Counters::Add(c.seq_gaps);
      [[fallthrough]];
    case BatchOutcome::kApplied:
      Counters::Add(c.batches_applied);
      Counters::Add(c.keys_admitted, result->keys_added);
      Counters::Add(c.keys_evicted, result->keys_removed);
      break;
    case BatchOutcome::kIgnoredStale:
      Counters::Add(c.stale_batches);
      break;
  }
  return result;
}

Result<BatchResult> RegistryTree::Admit(const Origin& origin, std::string_view location,
                                        uint64_t seq, std::span<const ObjectKey> keys) {
  thread_local std::vector<IndexOp> ops;
  ops.resize(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) ops[i] = IndexOp{&keys[i], true};
  return ApplyBatch(origin, location, seq, ops);
}

Result<BatchResult> RegistryTree::Evict(const Origin& origin, std::string_view location,
                                        uint64_t seq, std::span<const ObjectKey> keys) {
  thread_local std::vector<IndexOp> ops;
  ops.resize(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) ops[i] = IndexOp{&keys[i], false};
  return ApplyBatch(origin, location, seq, ops);
}

Result<BatchResult> RegistryTree::ApplyOps(const Origin& origin, std::string_view location,
                                           uint64_t seq, std::span<const KvOp> kv_ops) {
  thread_local std::vector<IndexOp> ops;
  ops.resize(kv_ops.size());
  for (size_t i = 0; i < kv_ops.size(); ++i) {
    ops[i] = IndexOp{&kv_ops[i].key, kv_ops[i].type == KvOpType::kAdmit};
  }
  return ApplyBatch(origin, location, seq, ops);
}

std::optional<KvHolder> RegistryTree::FindKv(const ObjectKey& key,
                                             std::string_view exclude_instance) const {
  ResolvedHolders holders;
  if (!index_.ReadHolders(key, key.Hash(), &holders)) return std::nullopt;
  const ResolvedHolder* best = nullptr;
  for (const ResolvedHolder& h : holders) {
    KVT_DCHECK(h.identity != nullptr);
    if (Excluded(*h.identity, exclude_instance)) continue;
    if (best == nullptr || HolderLess(*h.identity, HolderLocation(h.holder), *best->identity,
                                      HolderLocation(best->holder), locations_)) {
      best = &h;
    }
  }
  if (best == nullptr) return std::nullopt;
  return KvHolder{*best->identity->instance_id, best->identity->worker_id,
                  locations_.Name(HolderLocation(best->holder)), best->identity->address};
}

std::vector<KvHolder> RegistryTree::FindKvAll(const ObjectKey& key,
                                              std::string_view exclude_instance) const {
  ResolvedHolders holders;
  std::vector<KvHolder> all;
  if (!index_.ReadHolders(key, key.Hash(), &holders)) return all;
  for (const ResolvedHolder& h : holders) {
    if (Excluded(*h.identity, exclude_instance)) continue;
    all.push_back(KvHolder{*h.identity->instance_id, h.identity->worker_id,
                           locations_.Name(HolderLocation(h.holder)), h.identity->address});
  }
  std::sort(all.begin(), all.end(), [](const KvHolder& a, const KvHolder& b) {
    return std::tie(a.instance_id, a.worker_id, a.location) <
           std::tie(b.instance_id, b.worker_id, b.location);
  });
  return all;
}

Result<std::optional<PeerMatch>> RegistryTree::FindKvWithWorkerInfo(
    std::span<const ObjectKey> keys, std::string_view exclude_instance) const {
  if (keys.empty()) return std::nullopt;
  struct Candidate {
    std::shared_ptr<WorkerNode> node;
    LocationId location;
  };
  absl::InlinedVector<Candidate, 4> candidates;
  index_.VisitHoldersLocked(keys[0], keys[0].Hash(), [&](std::span<const Holder> holders) {
    for (Holder h : holders) {
      WorkerNode* node = NodeAt(HolderSlot(h));
      if (Excluded(node->identity(), exclude_instance)) continue;
      // Pinned while the shard lock keeps the node alive.
      candidates.push_back(Candidate{node->shared_from_this(), HolderLocation(h)});
    }
  });
  std::sort(candidates.begin(), candidates.end(), [&](const Candidate& a, const Candidate& b) {
    return HolderLess(a.node->identity(), a.location, b.node->identity(), b.location, locations_);
  });
  std::vector<size_t> hashes(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) hashes[i] = keys[i].Hash();
  std::optional<PeerMatch> best;
  for (const Candidate& cand : candidates) {
    WorkerNode& node = *cand.node;
    if (!node.lock().Acquire(options_.lock_timeout)) return LockTimeoutError("worker");
    AdoptFast hold(&node.lock());
    if (node.removed()) continue;
    // Under the worker lock its holders cannot change: the run is a snapshot of its key set.
    const Holder holder = node.HolderAt(cand.location);
    uint32_t run = 0;
    while (run < keys.size() && index_.Contains(keys[run], hashes[run], holder)) ++run;
    if (run > 0 && (!best.has_value() || run > best->num_hit_chunks)) {
      best = PeerMatch{KvHolder{node.instance_id(), node.worker_id(),
                                locations_.Name(cand.location), node.address()},
                       run};
    }
  }
  return best;
}

std::vector<PrefixMatch> RegistryTree::PrefixLookup(std::span<const ObjectKey> keys,
                                                    uint32_t keys_per_chunk,
                                                    std::string_view exclude_instance) const {
  struct Run {
    const std::string* instance_id;  // interned: one pointer per instance id
    uint32_t chunks;                 // whole chunks held from chunk 0
    uint32_t keys_seen;              // keys of the current chunk it holds
    size_t last_key;                 // the key it was last counted for (once per key)
  };
  if (keys_per_chunk == 0 || keys.size() < keys_per_chunk) return {};
  const size_t num_chunks = keys.size() / keys_per_chunk;
  absl::InlinedVector<Run, 8> runs;
  ResolvedHolders holders;
  for (size_t chunk = 0; chunk < num_chunks; ++chunk) {
    for (Run& r : runs) r.keys_seen = 0;
    for (uint32_t k = 0; k < keys_per_chunk; ++k) {
      const size_t i = chunk * keys_per_chunk + k;
      if (!index_.ReadHolders(keys[i], keys[i].Hash(), &holders)) break;
      for (const ResolvedHolder& h : holders) {
        const std::string* id = h.identity->instance_id;
        auto it = std::find_if(runs.begin(), runs.end(),
                               [&](const Run& r) { return r.instance_id == id; });
        if (it == runs.end()) {
          // Only chunk 0 brings instances in; later chunks only extend their runs.
          if (chunk != 0 || Excluded(*h.identity, exclude_instance)) continue;
          runs.push_back(Run{id, 0, 0, SIZE_MAX});
          it = runs.end() - 1;
        }
        // Runs unbroken so far count each key once, whichever worker or location holds it.
        if (it->chunks == chunk && it->last_key != i) {
          it->last_key = i;
          ++it->keys_seen;
        }
      }
    }
    bool extended = false;
    for (Run& r : runs) {
      if (r.chunks == chunk && r.keys_seen == keys_per_chunk) {
        ++r.chunks;
        extended = true;
      }
    }
    if (!extended) break;
  }
  std::sort(runs.begin(), runs.end(), [](const Run& a, const Run& b) {
    if (a.chunks != b.chunks) return a.chunks > b.chunks;
    return *a.instance_id < *b.instance_id;
  });
  std::vector<PrefixMatch> matches;
  for (const Run& r : runs) {
    if (r.chunks > 0) matches.push_back(PrefixMatch{*r.instance_id, r.chunks});
  }
  return matches;
}

Result<std::vector<ObjectKey>> RegistryTree::ListWorkerKeys(const Origin& origin,
                                                            std::string_view location) const {
  KVT_ASSIGN_OR_RETURN(auto node, FindWorker(origin));
  std::vector<ObjectKey> keys;
  const std::optional<LocationId> location_id = locations_.Find(location);
  if (!node->lock().Acquire(options_.lock_timeout)) return LockTimeoutError("worker");
  AdoptFast hold(&node->lock());
  if (node->removed()) return MakeError(UnknownWorker(origin));
  if (!location_id.has_value()) return keys;
  std::vector<KeyRef> refs = node->Refs(*location_id);
  index_.KeysOf(refs, &keys);  // the refs stay valid while the worker lock is held
  return keys;
}

Result<uint64_t> RegistryTree::ClearWorker(const Origin& origin,
                                           std::optional<std::string_view> location) {
  KVT_ASSIGN_OR_RETURN(auto node, FindWorker(origin));
  std::optional<LocationId> location_id;
  if (location.has_value()) {
    location_id = locations_.Find(*location);
    if (!location_id.has_value()) return uint64_t{0};  // never reported by anyone
  }
  if (!node->lock().Acquire(options_.lock_timeout)) return LockTimeoutError("worker");
  AdoptFast hold(&node->lock());
  if (node->removed()) return MakeError(UnknownWorker(origin));
  return node->ClearKeys(location_id, index_, /*request_sync=*/true);
}

Result<uint64_t> RegistryTree::Clear() {
  KVT_ASSIGN_OR_RETURN(auto nodes, SnapshotNodes());
  uint64_t removed = 0;
  for (const auto& node : nodes) {
    if (!node->lock().Acquire(options_.lock_timeout)) return LockTimeoutError("worker");
    AdoptFast hold(&node->lock());
    if (!node->removed()) removed += node->ClearKeys(std::nullopt, index_, /*request_sync=*/true);
  }
  return removed;
}

}  // namespace kvtier::cluster
