#include "kvtier/cluster/worker_node.h"

#include <algorithm>

#include <fmt/format.h>

#include "kvtier/common/check.h"

namespace kvtier::cluster {

WorkerNode::WorkerNode(const WorkerIdentity* identity, uint32_t slot, bool expects_heartbeats,
                       TimePoint now)
    : identity_(identity),
      expects_heartbeats_(expects_heartbeats),
      slot_(slot),
      registration_time_(now),
      last_heartbeat_(now) {}

WorkerNode::LocationState& WorkerNode::State(LocationId location) {
  for (LocationState& s : locations_) {
    if (s.id == location) return s;
  }
  return locations_.emplace_back(location);
}

const WorkerNode::LocationState* WorkerNode::FindState(LocationId location) const {
  for (const LocationState& s : locations_) {
    if (s.id == location) return &s;
  }
  return nullptr;
}

bool WorkerNode::SyncingAt(LocationId location) const {
  return sync_.has_value() && sync_->state == FullSyncState::kSyncing &&
         sync_->location == location;
}

Status WorkerNode::ApplyOps(LocationState& state, std::span<const IndexOp> ops, ReverseIndex& index,
                            uint32_t* added, uint32_t* removed) {
  thread_local std::vector<IndexOpResult> results;
  results.resize(ops.size());
  Status status = index.Apply(ops, HolderAt(state.id), results);
  // Mirror in op order: an entry freed by an evict may be reused by a later admit of the batch.
  for (size_t i = 0; i < ops.size(); ++i) {
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
                                           std::span<const IndexOp> ops, ReverseIndex& index) {
  LocationState& state = State(location);
  BatchResult result;
  if (SyncingAt(location)) {
    ++state.discarded_during_sync;
    result.outcome = BatchOutcome::kDiscardedSyncing;
    return result;
  }
  if (state.has_next_seq) {
    result.expected_seq = state.next_seq;
    if (seq < state.next_seq) {
      // Seen already, or from before a restart this registry did not hear of: applying it
      // could undo newer state, so it is dropped, and a full sync repairs whatever was lost.
      ++state.stale_batches;
      state.needs_full_sync = true;
      result.outcome = BatchOutcome::kIgnoredStale;
      return result;
    }
    if (seq > state.next_seq) {
      ++state.seq_gaps;
      state.needs_full_sync = true;
      result.outcome = BatchOutcome::kAppliedAfterGap;
    }
  }
  state.has_next_seq = true;
  state.next_seq = seq + 1;
  Status status = ApplyOps(state, ops, index, &result.keys_added, &result.keys_removed);
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
  state.has_next_seq = false;
  state.next_seq = 0;
  return n;
}

uint64_t WorkerNode::ClearKeys(std::optional<LocationId> location, ReverseIndex& index) {
  uint64_t removed = 0;
  for (LocationState& state : locations_) {
    if (!location.has_value() || state.id == *location) removed += ClearState(state, index);
  }
  return removed;
}

uint64_t WorkerNode::Retire(ReverseIndex& index) {
  removed_ = true;
  return ClearKeys(std::nullopt, index);
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

uint64_t WorkerNode::TotalKeyCount() const {
  uint64_t n = 0;
  for (const LocationState& s : locations_) n += s.keys.size();
  return n;
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

Status WorkerNode::StartSync(LocationId location, std::string_view sync_id,
                             uint64_t expected_total_keys, uint32_t expected_batch_count,
                             TimePoint now, Duration timeout, ReverseIndex& index,
                             bool* failed_previous, uint64_t* keys_cleared) {
  *failed_previous = false;
  if (sync_.has_value() && sync_->state == FullSyncState::kSyncing) {
    if (sync_->sync_id != sync_id) {
      if (now <= sync_->deadline) {
        return Status::FailedPrecondition(
            fmt::format("cluster registry: worker {}/{} is already syncing (sync id '{}')",
                        instance_id(), worker_id(), sync_->sync_id));
      }
      *failed_previous = true;  // stalled past its deadline: replaced
    } else if (sync_->location != location) {
      return Status::InvalidArgument(fmt::format(
          "cluster registry: sync id '{}' is in progress for another location", sync_id));
    }
    // The same sync id again: the worker restarts its sync from scratch.
  }
  SyncSession session;
  session.sync_id = std::string(sync_id);
  session.location = location;
  session.state = FullSyncState::kSyncing;
  session.start_time = now;
  session.last_activity = now;
  session.deadline = now + timeout;
  session.expected_total_keys = expected_total_keys;
  session.expected_batch_count = expected_batch_count;
  session.received.assign(expected_batch_count, false);
  sync_ = std::move(session);
  LocationState& state = State(location);
  *keys_cleared = ClearState(state, index);
  state.needs_full_sync = true;  // until this sync completes
  return Status::OK();
}

Result<SyncBatchResult> WorkerNode::AddSyncBatch(LocationId location, std::string_view sync_id,
                                                 uint32_t batch_index, std::span<const IndexOp> ops,
                                                 TimePoint now, Duration timeout,
                                                 ReverseIndex& index) {
  if (!SyncingAt(location) || sync_->sync_id != sync_id) {
    return MakeError(Status::FailedPrecondition(
        fmt::format("cluster registry: worker {}/{} has no sync '{}' in progress for this location",
                    instance_id(), worker_id(), sync_id)));
  }
  SyncSession& session = *sync_;
  if (batch_index >= session.expected_batch_count) {
    return MakeError(
        Status::OutOfRange(fmt::format("cluster registry: sync batch {} of a sync with {} batches",
                                       batch_index, session.expected_batch_count)));
  }
  session.last_activity = now;
  session.deadline = now + timeout;
  SyncBatchResult result;
  if (session.received[batch_index]) {
    ++session.duplicate_batches;
    result.duplicate = true;
    return result;
  }
  uint32_t removed = 0;
  Status status = ApplyOps(State(location), ops, index, &result.keys_added, &removed);
  if (!status.ok()) return MakeError(std::move(status));
  session.received[batch_index] = true;
  ++session.received_batch_count;
  session.received_keys += ops.size();
  return result;
}

std::vector<uint32_t> WorkerNode::MissingBatches() const {
  std::vector<uint32_t> missing;
  if (!sync_.has_value() || sync_->state != FullSyncState::kSyncing) return missing;
  for (uint32_t i = 0; i < sync_->expected_batch_count; ++i) {
    if (!sync_->received[i]) missing.push_back(i);
  }
  return missing;
}

Result<SyncEndResult> WorkerNode::EndSync(LocationId location, std::string_view sync_id,
                                          uint64_t actual_total_keys, TimePoint now,
                                          Duration timeout, bool* completed_now) {
  *completed_now = false;
  if (!sync_.has_value() || sync_->sync_id != sync_id || sync_->location != location) {
    return MakeError(Status::FailedPrecondition(
        fmt::format("cluster registry: worker {}/{} has no sync '{}' for this location",
                    instance_id(), worker_id(), sync_id)));
  }
  SyncSession& session = *sync_;
  SyncEndResult result;
  result.received_keys = session.received_keys;
  result.key_count_matches = session.received_keys == actual_total_keys;
  switch (session.state) {
    case FullSyncState::kCompleted:  // a repeated end: same answer
      result.state = FullSyncState::kCompleted;
      return result;
    case FullSyncState::kFailed:
      return MakeError(Status::FailedPrecondition(
          fmt::format("cluster registry: sync '{}' failed (timed out); start a new one", sync_id)));
    case FullSyncState::kIdle:
    case FullSyncState::kSyncing:
      break;
  }
  session.last_activity = now;
  session.deadline = now + timeout;
  result.missing_batches = MissingBatches();
  if (!result.missing_batches.empty()) {
    result.state = FullSyncState::kSyncing;
    return result;
  }
  session.state = FullSyncState::kCompleted;
  LocationState& state = State(location);
  state.needs_full_sync = false;
  // The worker's next incremental batch sets a new baseline.
  state.has_next_seq = false;
  result.state = FullSyncState::kCompleted;
  *completed_now = true;
  return result;
}

std::optional<ExpiredSync> WorkerNode::ExpireSync(TimePoint now, const LocationTable& locations) {
  if (!sync_.has_value() || sync_->state != FullSyncState::kSyncing || now <= sync_->deadline) {
    return std::nullopt;
  }
  ExpiredSync expired;
  expired.instance_id = instance_id();
  expired.worker_id = worker_id();
  expired.location = locations.Name(sync_->location);
  expired.sync_id = sync_->sync_id;
  expired.missing_batches = static_cast<uint32_t>(MissingBatches().size());
  sync_->state = FullSyncState::kFailed;  // the location keeps needs_full_sync
  return expired;
}

FullSyncState WorkerNode::sync_state() const {
  return sync_.has_value() ? sync_->state : FullSyncState::kIdle;
}

std::optional<WorkerSyncInfo> WorkerNode::SyncInfo(const LocationTable& locations) const {
  if (!sync_.has_value()) return std::nullopt;
  const SyncSession& s = *sync_;
  WorkerSyncInfo info;
  info.sync_id = s.sync_id;
  info.location = locations.Name(s.location);
  info.state = s.state;
  info.start_time = s.start_time;
  info.last_activity = s.last_activity;
  info.deadline = s.deadline;
  info.expected_total_keys = s.expected_total_keys;
  info.expected_batch_count = s.expected_batch_count;
  info.received_batch_count = s.received_batch_count;
  info.received_keys = s.received_keys;
  info.duplicate_batches = s.duplicate_batches;
  info.missing_batches = MissingBatches();
  return info;
}

WorkerInfo WorkerNode::Info(const LocationTable& locations) const {
  WorkerInfo info;
  info.instance_id = instance_id();
  info.worker_id = worker_id();
  info.address = address();
  info.expects_heartbeats = expects_heartbeats_;
  info.registration_time = registration_time_;
  info.last_heartbeat = last_heartbeat_;
  for (const LocationState& s : locations_) {
    LocationInfo l;
    l.location = locations.Name(s.id);
    l.keys = s.keys.size();
    if (s.has_next_seq) l.next_seq = s.next_seq;
    l.needs_full_sync = s.needs_full_sync;
    l.seq_gaps = s.seq_gaps;
    l.stale_batches = s.stale_batches;
    l.discarded_during_sync = s.discarded_during_sync;
    info.total_keys += l.keys;
    info.seq_gaps += l.seq_gaps;
    info.needs_full_sync = info.needs_full_sync || l.needs_full_sync;
    info.locations.push_back(std::move(l));
  }
  std::sort(info.locations.begin(), info.locations.end(),
            [](const LocationInfo& a, const LocationInfo& b) { return a.location < b.location; });
  info.sync = SyncInfo(locations);
  return info;
}

}  // namespace kvtier::cluster
