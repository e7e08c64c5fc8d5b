// Reporter: counters, per-location stats and the status JSON. The rest is in reporter.cc.
#include <algorithm>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kvtier/reporter/reporter.h"

namespace kvtier::reporter {

// ---- stats ----

void Reporter::Update(const std::function<void(ReporterStats&)>& change) {
  MutexLock lock(&stats_mu_);
  change(stats_);
  stats_cv_.NotifyAll();
}

void Reporter::PublishLocations() {
  std::vector<LocationStats> out;
  for (size_t i = 0; i < locations_.size(); ++i) {
    LocationStats ls;
    ls.location = locations_[i].mirror->location();
    ls.last_seq = locations_[i].last_seq;
    if (sync_ && sync_->location == i) {
      ls.sync = sync_->to_send.empty() && !sync_->end_pending ? "polling" : "sending";
    } else if (std::find(sync_queue_.begin(), sync_queue_.end(), i) != sync_queue_.end()) {
      ls.sync = "queued";
    } else {
      ls.sync = "idle";
    }
    out.push_back(std::move(ls));
  }
  const uint64_t stale = link_ ? link_->stale_replies() : 0;
  Update([&](ReporterStats& s) {
    s.locations = std::move(out);
    s.stale_replies = stale;
  });
}

ReporterStats Reporter::stats() const {
  ReporterStats s;
  {
    MutexLock lock(&stats_mu_);
    s = stats_;
  }
  for (size_t i = 0; i < s.locations.size() && i < locations_.size(); ++i) {
    const KeyMirror& m = *locations_[i].mirror;
    s.locations[i].keys = m.size();
    s.locations[i].pending_keys = m.pending();
    s.locations[i].keys_dropped = m.dropped_total();
    s.keys_dropped += m.dropped_total();
  }
  return s;
}

bool Reporter::WaitForStats(const std::function<bool(const ReporterStats&)>& done,
                            Duration timeout) const {
  const TimePoint deadline = std::chrono::steady_clock::now() + timeout;
  MutexLock lock(&stats_mu_);
  while (!done(stats_)) {
    if (!stats_cv_.WaitUntil(&stats_mu_, deadline)) return done(stats_);
  }
  return true;
}

nlohmann::json Reporter::StatusJson() const {
  const ReporterStats s = stats();
  nlohmann::json locations = nlohmann::json::array();
  for (const LocationStats& l : s.locations) {
    locations.push_back({{"name", l.location},
                         {"keys", l.keys},
                         {"last_seq", l.last_seq},
                         {"pending_keys", l.pending_keys},
                         {"keys_dropped", l.keys_dropped},
                         {"sync", l.sync}});
  }
  return nlohmann::json{{"enabled", true},
                        {"endpoint", endpoints_.requests},
                        {"events_endpoint", endpoints_.events},
                        {"heartbeat_endpoint", endpoints_.heartbeats},
                        {"instance_id", identity_.instance_id},
                        {"address", identity_.address},
                        {"state", s.state},
                        {"registered", s.state == "registered"},
                        // Ids as strings: they are random 64-bit numbers, not metrics.
                        {"registration_id", fmt::format("{:x}", s.registration_id)},
                        {"controller_epoch", fmt::format("{:x}", s.controller_epoch)},
                        {"registrations", s.registrations},
                        {"registration_failures", s.registration_failures},
                        {"reregistrations", s.reregistrations},
                        {"heartbeats", s.heartbeats},
                        {"heartbeat_failures", s.heartbeat_failures},
                        {"commands", s.commands},
                        {"batches_sent", s.batches_sent},
                        {"keys_reported", s.keys_reported},
                        {"events_dropped", s.events_dropped},
                        {"keys_dropped", s.keys_dropped},
                        {"full_syncs_started", s.full_syncs_started},
                        {"full_syncs_completed", s.full_syncs_completed},
                        {"full_syncs_failed", s.full_syncs_failed},
                        {"sync_batches_sent", s.sync_batches_sent},
                        {"sync_batches_resent", s.sync_batches_resent},
                        {"deregistrations", s.deregistrations},
                        {"stale_replies", s.stale_replies},
                        {"last_error", s.last_error},
                        {"locations", std::move(locations)}};
}

}  // namespace kvtier::reporter
