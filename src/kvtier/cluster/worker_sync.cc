// WorkerNode: the full-sync state machine of one location (docs/cluster_registry.md).
#include <fmt/format.h>

#include "kvtier/cluster/worker_node.h"

namespace kvtier::cluster {

void WorkerNode::FailSync(LocationState& state, std::string_view reason, NodeEvents* events) {
  SyncSession& session = *state.sync;
  session.state = FullSyncState::kFailed;
  session.failure_reason = std::string(reason);
  session.evicted = {};
  ++events->syncs_failed;
  // The keys that arrived stay (true at the snapshot, events applied on top); a new sync
  // replaces them.
  RequestSync(state, "sync_failed");
}

std::vector<uint32_t> WorkerNode::MissingBatches(const SyncSession& session) {
  std::vector<uint32_t> missing;
  if (session.state != FullSyncState::kSyncing) return missing;
  for (uint32_t i = 0; i < session.expected_batch_count; ++i) {
    if (!session.received[i]) missing.push_back(i);
  }
  return missing;
}

void WorkerNode::StartSync(LocationId location, uint64_t sync_id, std::optional<uint64_t> base_seq,
                           uint64_t expected_total_keys, uint32_t expected_batch_count,
                           TimePoint now, Duration timeout, ReverseIndex& index,
                           NodeEvents* events) {
  LocationState& state = State(location);
  if (Syncing(state)) ++events->syncs_superseded;  // abandoned (the same sync id restarts too)
  auto session = std::make_unique<SyncSession>();
  session->sync_id = sync_id;
  session->base_seq = base_seq;
  session->start_time = now;
  session->last_activity = now;
  session->deadline = now + timeout;
  session->expected_total_keys = expected_total_keys;
  session->expected_batch_count = expected_batch_count;
  session->received.assign(expected_batch_count, false);
  state.sync = std::move(session);
  ClearState(state, index);
  if (base_seq.has_value()) {
    // The snapshot reflects every event up to base_seq; the next one is base_seq + 1.
    state.has_last_seq = true;
    state.last_seq = *base_seq;
  }
  state.full_sync_reason.clear();
  state.full_sync_requested = false;
}

Result<SyncBatchResult> WorkerNode::AddSyncBatch(LocationId location, uint64_t sync_id,
                                                 uint32_t batch_index, std::span<const IndexOp> ops,
                                                 TimePoint now, Duration timeout,
                                                 ReverseIndex& index) {
  LocationState* state = FindState(location);
  if (state == nullptr || !Syncing(*state) || state->sync->sync_id != sync_id) {
    return MakeError(Status::FailedPrecondition(
        fmt::format("cluster registry: worker {}/{} runs no sync {} of this location",
                    instance_id(), worker_id(), sync_id)));
  }
  SyncSession& session = *state->sync;
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
  thread_local std::vector<IndexOp> admits;
  admits.clear();
  for (const IndexOp& op : ops) {
    if (session.evicted.contains(*op.key)) {
      ++result.keys_skipped;
    } else {
      admits.push_back(IndexOp{op.key, true});
    }
  }
  uint32_t removed = 0;
  Status status = ApplyOps(*state, admits, index, &result.keys_added, &removed);
  if (!status.ok()) return MakeError(std::move(status));
  session.received[batch_index] = true;
  ++session.received_batch_count;
  session.received_keys += ops.size();
  return result;
}

Result<SyncEndResult> WorkerNode::EndSync(LocationId location, uint64_t sync_id,
                                          uint64_t total_keys, TimePoint now, Duration timeout,
                                          const LocationTable& locations, NodeEvents* events) {
  LocationState* state = FindState(location);
  if (state == nullptr || state->sync == nullptr || state->sync->sync_id != sync_id) {
    return MakeError(Status::FailedPrecondition(
        fmt::format("cluster registry: worker {}/{} has no sync {} of location '{}'", instance_id(),
                    worker_id(), sync_id, locations.Name(location))));
  }
  SyncSession& session = *state->sync;
  SyncEndResult result;
  if (session.state == FullSyncState::kSyncing) {
    session.last_activity = now;
    session.deadline = now + timeout;
    session.end_received = true;
    result.missing_batches = MissingBatches(session);
    if (total_keys != session.expected_total_keys) {
      FailSync(*state, "key_count_mismatch", events);  // start and end disagree
    } else if (result.missing_batches.empty()) {
      if (session.received_keys != session.expected_total_keys) {
        FailSync(*state, "key_count_mismatch", events);
      } else {
        session.state = FullSyncState::kCompleted;
        session.evicted = {};
        ++events->syncs_completed;
      }
    }
  }
  // A repeated end of a completed or failed sync gets the same answer.
  result.state = session.state;
  result.received_keys = session.received_keys;
  result.failure_reason = session.failure_reason;
  if (result.state != FullSyncState::kSyncing) result.missing_batches.clear();
  return result;
}

WorkerSyncInfo WorkerNode::SyncInfoOf(const LocationState& state,
                                      const LocationTable& locations) const {
  WorkerSyncInfo info;
  info.location = locations.Name(state.id);
  if (state.sync == nullptr) return info;
  const SyncSession& s = *state.sync;
  info.sync_id = s.sync_id;
  info.state = s.state;
  info.end_received = s.end_received;
  info.failure_reason = s.failure_reason;
  info.base_seq = s.base_seq;
  info.start_time = s.start_time;
  info.last_activity = s.last_activity;
  info.deadline = s.deadline;
  info.expected_total_keys = s.expected_total_keys;
  info.expected_batch_count = s.expected_batch_count;
  info.received_batch_count = s.received_batch_count;
  info.received_keys = s.received_keys;
  info.duplicate_batches = s.duplicate_batches;
  info.evicted_during_sync = s.evicted.size();
  info.missing_batches = MissingBatches(s);
  return info;
}

WorkerSyncInfo WorkerNode::SyncStatus(LocationId location, uint64_t sync_id, TimePoint now,
                                      Duration timeout, const LocationTable& locations) {
  LocationState* state = FindState(location);
  if (state == nullptr || state->sync == nullptr || state->sync->sync_id != sync_id) {
    WorkerSyncInfo unknown;
    unknown.location = locations.Name(location);
    return unknown;
  }
  if (Syncing(*state)) {
    state->sync->last_activity = now;
    state->sync->deadline = now + timeout;
  }
  return SyncInfoOf(*state, locations);
}

void WorkerNode::ExpireSyncs(TimePoint now, const LocationTable& locations,
                             std::vector<ExpiredSync>* out, NodeEvents* events) {
  for (LocationState& state : locations_) {
    if (!Syncing(state) || now <= state.sync->deadline) continue;
    ExpiredSync expired;
    expired.instance_id = instance_id();
    expired.worker_id = worker_id();
    expired.location = locations.Name(state.id);
    expired.sync_id = state.sync->sync_id;
    expired.missing_batches = static_cast<uint32_t>(MissingBatches(*state.sync).size());
    FailSync(state, "timeout", events);
    out->push_back(std::move(expired));
  }
}

}  // namespace kvtier::cluster
