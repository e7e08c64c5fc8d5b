// Reporter: full syncs (docs/controller.md, "Full sync"). The rest is in reporter.cc.
#include <algorithm>

#include <fmt/format.h>

#include "kvtier/common/logging.h"
#include "kvtier/reporter/reporter.h"

namespace kvtier::reporter {

using controller::Reply;
using keys::ObjectKey;
using Channel = ControllerLink::Channel;

namespace {

// FULL_SYNC_BATCH messages sent per loop turn, so flushes and heartbeats interleave with a big
// sync.
constexpr int kSyncMessagesPerTurn = 64;
// Polls answered "receiving" before END is sent again (it may have been lost).
constexpr int kReceivingPollsBeforeEnd = 3;

// Orders keys by key space, so batches hold few key groups.
bool SpaceLess(const ObjectKey& a, const ObjectKey& b) {
  if (a.namespace_id() != b.namespace_id()) return a.namespace_id() < b.namespace_id();
  if (a.kv_rank().Packed() != b.kv_rank().Packed()) {
    return a.kv_rank().Packed() < b.kv_rank().Packed();
  }
  return a.object_group() < b.object_group();
}
bool SameSpace(const ObjectKey& a, const ObjectKey& b) {
  return !SpaceLess(a, b) && !SpaceLess(b, a);
}

}  // namespace

// ---- full sync ----

void Reporter::QueueFullSync(size_t location, const std::string& reason) {
  KVT_LOG_INFO("the controller asks for a full sync of {} (reason '{}')",
               locations_[location].mirror->location(), reason);
  if (sync_ && sync_->location == location) {
    sync_.reset();  // abandoned: a new one starts from a fresh snapshot
    Update([](ReporterStats& s) { ++s.full_syncs_failed; });
    sync_queue_.push_front(location);
  } else if (std::find(sync_queue_.begin(), sync_queue_.end(), location) == sync_queue_.end()) {
    sync_queue_.push_back(location);
  }
  PublishLocations();
}

void Reporter::SyncStep(TimePoint now) {
  if (!sync_) {
    if (sync_queue_.empty() || now < sync_not_before_) return;
    const size_t location = sync_queue_.front();
    sync_queue_.pop_front();
    StartSync(location, now);
  }
  if (!sync_->to_send.empty() || sync_->end_pending) {
    if (now >= sync_->next_send) SendSyncMessages(now);
  } else if (now >= sync_->next_poll) {
    PollSync(now);
  }
}

void Reporter::StartSync(size_t location, TimePoint now) {
  Location& l = locations_[location];
  auto s = std::make_unique<FullSync>();
  s->location = location;
  s->sync_id = next_sync_id_++;
  // The snapshot is exact as of now: it reflects every transition given a seq so far, and takes
  // (discards) the pending ones; later ones get base_seq + 1, ...
  s->keys = l.mirror->Snapshot();
  s->base_seq = l.last_seq;
  l.key_count = s->keys.size();
  l.seen_dropped = l.mirror->dropped_total();
  std::sort(s->keys.begin(), s->keys.end(), SpaceLess);
  // Batches of at most max_keys keys and kMaxKeyGroups key spaces.
  const size_t max_keys = registration_->max_keys;
  s->batch_start.push_back(0);
  size_t groups = 0;
  for (size_t i = 0; i < s->keys.size(); ++i) {
    const bool new_group = i == s->batch_start.back() || !SameSpace(s->keys[i - 1], s->keys[i]);
    if (i > s->batch_start.back() && (i - s->batch_start.back() == max_keys ||
                                      (new_group && groups == controller::kMaxKeyGroups))) {
      s->batch_start.push_back(i);
      groups = 0;
    }
    if (new_group || i == s->batch_start.back()) ++groups;
  }
  if (!s->keys.empty()) s->batch_start.push_back(s->keys.size());
  for (uint32_t i = 0; i < s->total_batches(); ++i) s->to_send.push_back(i);

  controller::FullSyncStart start;
  start.origin = MakeOrigin();
  start.location = l.mirror->location();
  start.sync_id = s->sync_id;
  start.base_seq = s->base_seq;
  start.total_batches = s->total_batches();
  start.total_keys = s->keys.size();
  if (!link_->SendEvent(start)) {
    // FULL_SYNC_STATUS will answer "unknown", and a new sync starts.
    KVT_LOG_WARN("FULL_SYNC_START of {} dropped (event queue full)", start.location);
  }
  KVT_LOG_INFO("full sync {} of {}: {} keys in {} batches, base seq {}", s->sync_id, start.location,
               start.total_keys, start.total_batches, s->base_seq);
  s->next_send = now;
  sync_ = std::move(s);
  Update([](ReporterStats& st) { ++st.full_syncs_started; });
  PublishLocations();
}

void Reporter::SendSyncMessages(TimePoint now) {
  FullSync& s = *sync_;
  const std::string& location = locations_[s.location].mirror->location();
  uint64_t sent = 0;
  bool blocked = false;
  for (int n = 0; n < kSyncMessagesPerTurn && !s.to_send.empty(); ++n) {
    controller::FullSyncBatch batch;
    batch.origin = MakeOrigin();
    batch.location = location;
    batch.sync_id = s.sync_id;
    batch.batch_index = s.to_send.front();
    batch.groups = controller::GroupKeys(s.batch(batch.batch_index));
    if (!link_->SendEvent(batch)) {
      blocked = true;  // the queue is full: try again later (not a loss)
      break;
    }
    s.to_send.pop_front();
    ++sent;
  }
  if (!blocked && s.to_send.empty() && s.end_pending) {
    controller::FullSyncEnd end{MakeOrigin(), location, s.sync_id, s.keys.size()};
    if (link_->SendEvent(end)) {
      s.end_pending = false;
      s.next_poll = now + options_.sync_poll_interval;
    } else {
      blocked = true;
    }
  }
  // Blocked: wait a batch interval; otherwise go on at the next loop turn.
  s.next_send = blocked ? now + options_.batch_interval : now;
  const bool resending = s.resending;
  Update([&](ReporterStats& st) {
    (resending ? st.sync_batches_resent : st.sync_batches_sent) += sent;
  });
  if (s.to_send.empty() && !s.end_pending) PublishLocations();
}

void Reporter::PollSync(TimePoint now) {
  FullSync& s = *sync_;
  const std::string location = locations_[s.location].mirror->location();
  controller::FullSyncStatusRequest request{MakeOrigin(), location, s.sync_id};
  s.next_poll = now + options_.sync_poll_interval;
  Result<Reply> reply = link_->Call(Channel::kRequests, request, options_.request_timeout,
                                    [this] { return Stopping(); });
  if (!reply) {
    if (reply.error().code() != StatusCode::kCancelled) Failed(reply.error(), nullptr);
    return;
  }
  const auto& r = std::get<controller::FullSyncStatusReply>(*reply);
  switch (r.state) {
    case controller::SyncState::kComplete:
      KVT_LOG_INFO("full sync {} of {} complete ({} keys)", s.sync_id, location, s.keys.size());
      sync_.reset();
      Update([](ReporterStats& st) { ++st.full_syncs_completed; });
      break;
    case controller::SyncState::kMissing:
      for (uint32_t i : r.missing_batches) {
        if (i < s.total_batches()) s.to_send.push_back(i);
      }
      s.resending = true;
      s.end_pending = true;
      s.next_send = now;
      KVT_LOG_INFO("full sync {} of {}: resending {} missing batches", s.sync_id, location,
                   s.to_send.size());
      break;
    case controller::SyncState::kReceiving:
      if (++s.receiving_polls >= kReceivingPollsBeforeEnd) {
        s.receiving_polls = 0;
        s.end_pending = true;  // END may have been lost
        s.next_send = now;
      }
      break;
    case controller::SyncState::kUnknown:
    case controller::SyncState::kFailed:
      KVT_LOG_WARN("full sync {} of {} {}{}; starting a new one", s.sync_id, location,
                   controller::SyncStateName(r.state),
                   r.reason.empty() ? "" : fmt::format(" ({})", r.reason));
      sync_queue_.push_front(s.location);
      sync_.reset();
      sync_not_before_ = now + options_.sync_poll_interval;
      Update([&](ReporterStats& st) {
        ++st.full_syncs_failed;
        st.last_error = fmt::format("full sync of {} {}: {}", location,
                                    controller::SyncStateName(r.state), r.reason);
      });
      break;
  }
  PublishLocations();
}

}  // namespace kvtier::reporter
