// WorkerNode: keys, sequence numbers, heartbeat checks and the admin view. Full sync is in
// worker_sync.cc.
#include "kvtier/cluster/worker_node.h"

#include <algorithm>

#include <fmt/format.h>

#include "kvtier/common/check.h"

namespace kvtier::cluster {

WorkerNode::WorkerNode(const WorkerIdentity* identity, const WorkerRegistration& registration,
                       uint64_t registration_id, uint32_t slot, TimePoint now)
    : identity_(identity),
      registration_id_(registration_id),
      software_version_(registration.software_version),
      expects_heartbeats_(registration.expects_heartbeats),
      slot_(slot),
      registration_time_(now),
      last_heartbeat_(now) {}

WorkerNode::LocationState& WorkerNode::State(LocationId location) {
  if (LocationState* s = FindState(location)) return *s;
  return locations_.emplace_back(location);
}

WorkerNode::LocationState* WorkerNode::FindState(LocationId location) {
  for (LocationState& s : locations_) {
    if (s.id == location) return &s;
  }
  return nullptr;
}

const WorkerNode::LocationState* WorkerNode::FindState(LocationId location) const {
  for (const LocationState& s : locations_) {
    if (s.id == location) return &s;
  }
  return nullptr;
}

void WorkerNode::RequestSync(LocationState& state, std::string_view reason) {
  if (state.full_sync_reason.empty()) state.full_sync_reason = std::string(reason);
}

Status WorkerNode::ApplyOps(LocationState& state, std::span<const IndexOp> ops, ReverseIndex& index,
                            uint32_t* added, uint32_t* removed) {
  thread_local std::vector<IndexOpResult> results;
  results.resize(ops.size());
  Status status = index.Apply(ops, HolderAt(state.id), results);
  // Mirror in op order: an entry freed by an evict may be reused by a later admit of the batch.
  // The set's cache misses overlap through prefetches a few ops ahead.
  constexpr size_t kAhead = 8;
  for (size_t i = 0; i < std::min(kAhead, ops.size()); ++i) state.keys.prefetch(results[i].ref);
  for (size_t i = 0; i < ops.size(); ++i) {
    if (i + kAhead < ops.size()) state.keys.prefetch(results[i + kAhead].ref);
    if (!results[i].changed) continue;
    if (ops[i].admit) {
      const bool inserted = state.keys.insert(results[i].ref).second;
      KVT_DCHECK(inserted);
      ++*added;
    } else {
      const size_t erased = state.keys.erase(results[i].ref);
      KVT_DCHECK(erased == 1);
      ++*removed;
    }
  }
  return status;
}

Result<BatchResult> WorkerNode::ApplyBatch(LocationId location, uint64_t seq,
                                           std::span<const IndexOp> ops, ReverseIndex& index,
                                           uint64_t max_sync_evictions, NodeEvents* events) {
  LocationState& state = State(location);
  BatchResult result;
  if (state.has_last_seq) {
    result.expected_seq = state.last_seq + 1;
    if (seq <= state.last_seq) {
      // Seen already (a resend) or overtaken: applying it could undo newer state.
      ++state.stale_batches;
      result.outcome = BatchOutcome::kIgnoredStale;
      return result;
    }
    if (seq > state.last_seq + 1) {
      ++state.seq_gaps;
      result.outcome = BatchOutcome::kAppliedAfterGap;
      if (Syncing(state)) {
        FailSync(state, "seq_gap", events);
        result.failed_sync = true;
      } else {
        RequestSync(state, "seq_gap");
      }
    }
  }
  state.has_last_seq = true;
  state.last_seq = seq;
  Status status = ApplyOps(state, ops, index, &result.keys_added, &result.keys_removed);
  if (Syncing(state)) {
    // A batch of the sync is a snapshot from before these events: it must not bring back a key
    // they evicted. An admit makes the key present again, so batches may carry it.
    auto& evicted = state.sync->evicted;
    for (const IndexOp& op : ops) {
      if (op.admit) {
        evicted.erase(*op.key);
      } else {
        evicted.insert(*op.key);
      }
    }
    if (evicted.size() > max_sync_evictions) {
      FailSync(state, "sync_evictions_overflow", events);
      result.failed_sync = true;
    }
  }
  if (!status.ok()) return MakeError(std::move(status));
  return result;
}

uint64_t WorkerNode::ClearState(LocationState& state, ReverseIndex& index) {
  const uint64_t n = state.keys.size();
  if (n > 0) {
    std::vector<KeyRef> refs(state.keys.begin(), state.keys.end());
    index.RemoveHolder(refs, HolderAt(state.id));
  }
  state.keys = {};
  state.has_last_seq = false;
  state.last_seq = 0;
  return n;
}

uint64_t WorkerNode::ClearKeys(std::optional<LocationId> location, ReverseIndex& index,
                               bool request_sync) {
  uint64_t removed = 0;
  for (LocationState& state : locations_) {
    if (location.has_value() && state.id != *location) continue;
    removed += ClearState(state, index);
    if (request_sync) RequestSync(state, "cleared");
  }
  return removed;
}

uint64_t WorkerNode::Retire(ReverseIndex& index) {
  removed_ = true;
  return ClearKeys(std::nullopt, index, /*request_sync=*/false);
}

std::vector<KeyRef> WorkerNode::Refs(LocationId location) const {
  const LocationState* state = FindState(location);
  if (state == nullptr) return {};
  return std::vector<KeyRef>(state->keys.begin(), state->keys.end());
}

uint64_t WorkerNode::KeyCount(LocationId location) const {
  const LocationState* state = FindState(location);
  return state == nullptr ? 0 : state->keys.size();
}

std::vector<LocationId> WorkerNode::LocationIds() const {
  std::vector<LocationId> ids;
  ids.reserve(locations_.size());
  for (const LocationState& s : locations_) ids.push_back(s.id);
  return ids;
}

uint64_t WorkerNode::KeySetBytes() const {
  uint64_t bytes = 0;
  for (const LocationState& s : locations_) bytes += s.keys.capacity() * (sizeof(KeyRef) + 1);
  return bytes;
}

std::vector<FullSyncRequest> WorkerNode::CheckReports(
    std::span<const std::pair<LocationId, LocationReport>> reports, const LocationTable& locations,
    NodeEvents* events) {
  for (const auto& [location, report] : reports) {
    LocationState& state = State(location);
    // The previous heartbeat said the worker had sent up to reported_seq: still missing now,
    // those events were lost (a lost last event has no successor to reveal a gap).
    if (state.has_reported_seq && state.has_last_seq && state.last_seq < state.reported_seq) {
      ++events->lost_events;
      if (Syncing(state)) {
        FailSync(state, "lost_events", events);
      } else {
        RequestSync(state, "lost_events");
      }
    }
    // In step with the worker: the counts must agree (not while a sync is rebuilding them).
    if (!Syncing(state) && state.has_last_seq && state.last_seq == report.last_seq &&
        state.keys.size() != report.key_count) {
      ++events->key_count_mismatches;
      RequestSync(state, "key_count_mismatch");
    }
    state.has_reported_seq = true;
    state.reported_seq = report.last_seq;
  }
  std::vector<FullSyncRequest> requests;
  for (LocationState& state : locations_) {
    if (state.full_sync_reason.empty() || state.full_sync_requested || Syncing(state)) continue;
    state.full_sync_requested = true;
    requests.push_back(FullSyncRequest{locations.Name(state.id), state.full_sync_reason});
  }
  return requests;
}

WorkerInfo WorkerNode::Info(const LocationTable& locations) const {
  WorkerInfo info;
  info.instance_id = instance_id();
  info.worker_id = worker_id();
  info.registration_id = registration_id_;
  info.address = address();
  info.software_version = software_version_;
  info.expects_heartbeats = expects_heartbeats_;
  info.registration_time = registration_time_;
  info.last_heartbeat = last_heartbeat_;
  for (const LocationState& s : locations_) {
    LocationInfo l;
    l.location = locations.Name(s.id);
    l.keys = s.keys.size();
    if (s.has_last_seq) l.last_seq = s.last_seq;
    l.full_sync_reason = s.full_sync_reason;
    l.full_sync_requested = s.full_sync_requested;
    l.seq_gaps = s.seq_gaps;
    l.stale_batches = s.stale_batches;
    l.sync = SyncInfoOf(s, locations);
    info.total_keys += l.keys;
    info.seq_gaps += l.seq_gaps;
    info.needs_full_sync = info.needs_full_sync || !l.full_sync_reason.empty();
    info.locations.push_back(std::move(l));
  }
  std::sort(info.locations.begin(), info.locations.end(),
            [](const LocationInfo& a, const LocationInfo& b) { return a.location < b.location; });
  return info;
}

}  // namespace kvtier::cluster
