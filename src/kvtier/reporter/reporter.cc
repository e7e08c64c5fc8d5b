#include "kvtier/reporter/reporter.h"

#include <algorithm>
#include <bit>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kvtier/common/check.h"
#include "kvtier/common/logging.h"
#include "kvtier/common/units.h"

namespace kvtier::reporter {

using controller::Reply;
using keys::ObjectKey;
using Channel = ControllerLink::Channel;

namespace {

TimePoint Now() { return std::chrono::steady_clock::now(); }

// Printable ASCII without spaces, as the protocol's identifiers.
Status CheckIdentifier(std::string_view what, std::string_view value, size_t max, bool empty_ok) {
  if (value.empty() && !empty_ok) return Status::InvalidArgument(fmt::format("{} is empty", what));
  if (value.size() > max) {
    return Status::InvalidArgument(fmt::format("{} is longer than {} bytes", what, max));
  }
  for (char c : value) {
    if (c < 0x21 || c > 0x7e) {
      return Status::InvalidArgument(fmt::format(
          "{} '{}' is not a controller identifier (printable ASCII, no spaces)", what, value));
    }
  }
  return Status::OK();
}

}  // namespace

Reporter::Reporter(const ReporterOptions& options, ReporterIdentity identity,
                   ControllerEndpoints endpoints)
    : options_(options),
      identity_(std::move(identity)),
      endpoints_(std::move(endpoints)),
      rng_(std::random_device{}()) {}

Reporter::~Reporter() { Stop(); }

Result<std::unique_ptr<Reporter>> Reporter::Create(const ReporterOptions& options,
                                                   ReporterIdentity identity, l1::L1Manager* l1) {
  KVT_CHECK(l1 != nullptr);
  auto invalid = [](std::string msg) { return MakeError(Status::InvalidArgument(std::move(msg))); };
  if (options.batch_keys < 1 || options.batch_keys > controller::kMaxKeysPerMessage) {
    return invalid(fmt::format("controller.batch_keys must be in [1, {}], got {}",
                               controller::kMaxKeysPerMessage, options.batch_keys));
  }
  if (options.batch_interval <= Duration::zero() || options.request_timeout <= Duration::zero() ||
      options.sync_poll_interval <= Duration::zero() ||
      options.retry_backoff_min <= Duration::zero() ||
      options.retry_backoff_max < options.retry_backoff_min) {
    return invalid(
        "controller: batch_interval, request_timeout, sync_poll_interval and the retry "
        "backoffs must be positive (and the backoff's max >= its min)");
  }
  if (options.max_pending_keys < 1) return invalid("controller.max_pending_keys must be >= 1");
  KVT_RETURN_IF_ERROR(
      CheckIdentifier("the server id", identity.instance_id, controller::kMaxIdLength, false));
  KVT_RETURN_IF_ERROR(CheckIdentifier("controller.advertise_address", identity.address,
                                      controller::kMaxAddressLength, true));
  KVT_RETURN_IF_ERROR(CheckIdentifier("the hash algorithm", identity.hash_algorithm, 64, false));
  if (identity.chunk_size < 1 || identity.chunk_size > controller::kMaxChunkSize) {
    return invalid(fmt::format("chunk size {} is out of range", identity.chunk_size));
  }
  if (identity.software_version.size() > controller::kMaxTextLength) {
    identity.software_version.resize(controller::kMaxTextLength);
  }
  KVT_ASSIGN_OR_RETURN(ControllerEndpoints endpoints, ResolveEndpoints(options));

  std::unique_ptr<Reporter> r(new Reporter(options, std::move(identity), std::move(endpoints)));
  KVT_ASSIGN_OR_RETURN(r->wake_, sync::EventFd::Create());
  KVT_ASSIGN_OR_RETURN(
      r->link_, ControllerLink::Create(r->endpoints_, options.send_queue_messages, &r->wake_));
  Location l1_location;
  l1_location.mirror = std::make_unique<KeyMirror>(
      kL1Location, [l1](const ObjectKey& key) { return l1->Contains(key); },
      options.max_pending_keys);
  const sync::EventFd* wake = &r->wake_;
  l1_location.mirror->SetWake(options.batch_keys, [wake] { wake->Signal(); });
  r->l1_listener_ = std::make_unique<L1MirrorListener>(l1_location.mirror.get());
  r->locations_.push_back(std::move(l1_location));
  l1->AddListener(r->l1_listener_.get());
  r->PublishLocations();
  return r;
}

Status Reporter::SetAddress(std::string address) {
  KVT_CHECK_MSG(!started_, "Reporter::SetAddress after Start");
  KVT_RETURN_IF_ERROR(CheckIdentifier("controller.advertise_address", address,
                                      controller::kMaxAddressLength, true));
  identity_.address = std::move(address);
  return Status::OK();
}

Status Reporter::Start() {
  KVT_CHECK_MSG(!started_, "Reporter::Start called twice");
  started_ = true;
  Update([](ReporterStats& s) { s.state = "registering"; });
  try {
    thread_ = std::thread([this] { Run(); });
  } catch (const std::system_error& e) {
    return Status::ResourceExhausted(
        fmt::format("reporter: cannot start its thread: {}", e.what()));
  }
  KVT_LOG_INFO("reporting to the cluster controller at {} as '{}' (events {}, heartbeats {})",
               endpoints_.requests, identity_.instance_id, endpoints_.events,
               endpoints_.heartbeats);
  return Status::OK();
}

void Reporter::Stop() {
  if (stopped_) return;
  stopped_ = true;
  stopping_.store(true, std::memory_order_release);
  if (wake_.valid()) wake_.Signal();
  if (thread_.joinable()) thread_.join();
  link_.reset();
  Update([](ReporterStats& s) {
    s.state = "stopped";
    s.registration_id = 0;
  });
}

controller::Origin Reporter::MakeOrigin() const {
  return controller::Origin{identity_.instance_id, identity_.worker_id,
                            registration_ ? registration_->id : 0};
}

// ---- the loop ----

void Reporter::Run() {
  Duration backoff = options_.retry_backoff_min;
  TimePoint next_register = Now();
  while (!Stopping()) {
    TimePoint now = Now();
    if (!registration_) {
      if (now >= next_register) {
        Status s = Register();
        if (s.ok()) {
          backoff = options_.retry_backoff_min;
        } else if (s.code() != StatusCode::kCancelled) {
          // Refused for good (hash or chunk size differ): retry slowly, in case the cluster
          // changes (a controller restarted with other settings).
          if (s.code() == StatusCode::kFailedPrecondition) backoff = options_.retry_backoff_max;
          // Jitter: servers that lost one controller do not all come back at the same instant.
          std::uniform_real_distribution<double> jitter(0.5, 1.0);
          next_register = Now() + std::chrono::duration_cast<Duration>(backoff * jitter(rng_));
          backoff = std::min(backoff * 2, options_.retry_backoff_max);
        }
      }
    } else {
      if (now >= next_heartbeat_) Heartbeat();
      if (registration_ && (Now() >= next_flush_ || PendingBatchFull())) Flush();
      if (registration_) SyncStep(Now());
    }
    if (Stopping()) break;
    if (!registration_ && next_register <= Now()) continue;  // re-register at once
    const TimePoint deadline = NextDeadline(next_register);
    now = Now();
    if (deadline > now && !(registration_ && PendingBatchFull())) {
      if (wake_.WaitFor(deadline - now)) wake_.Drain();
    }
  }
  if (registration_) Deregister();
}

bool Reporter::PendingBatchFull() const {
  for (const Location& l : locations_) {
    if (l.mirror->pending() >= options_.batch_keys) return true;
  }
  return false;
}

TimePoint Reporter::NextDeadline(TimePoint next_register) const {
  if (!registration_) return next_register;
  TimePoint next = std::min(next_heartbeat_, next_flush_);
  if (sync_) {
    if (!sync_->to_send.empty() || sync_->end_pending) {
      next = std::min(next, sync_->next_send);
    } else {
      next = std::min(next, sync_->next_poll);
    }
  } else if (!sync_queue_.empty()) {
    next = std::min(next, sync_not_before_);
  }
  return next;
}

void Reporter::Failed(const Status& status, uint64_t ReporterStats::*counter) {
  Update([&](ReporterStats& s) {
    if (counter != nullptr) ++(s.*counter);
    s.last_error = std::string(status.message());
  });
  if (status.code() == StatusCode::kNotFound && registration_) {
    Reregister(
        fmt::format("the controller does not know this registration ({})", status.message()));
  }
}

// ---- registration and heartbeats ----

Status Reporter::Register() {
  controller::RegisterRequest request;
  request.instance_id = identity_.instance_id;
  request.worker_id = identity_.worker_id;
  request.address = identity_.address;
  for (const Location& l : locations_) request.locations.push_back(l.mirror->location());
  request.software_version = identity_.software_version;
  request.hash_algorithm = identity_.hash_algorithm;
  request.chunk_size = identity_.chunk_size;
  Result<Reply> reply = link_->Call(Channel::kRequests, request, options_.request_timeout,
                                    [this] { return Stopping(); });
  if (!reply) {
    const Status& s = reply.error();
    if (s.code() == StatusCode::kCancelled) return s;
    uint64_t failures = 0;
    Update([&](ReporterStats& st) {
      failures = ++st.registration_failures;
      st.last_error = std::string(s.message());
    });
    if (s.code() == StatusCode::kFailedPrecondition) {
      KVT_LOG_ERROR("the cluster controller refuses this server ({}); retrying every {}",
                    s.message(), FormatDuration(options_.retry_backoff_max));
    } else if (std::has_single_bit(failures) || failures % 100 == 0) {
      KVT_LOG_WARN("registering with the cluster controller failed ({} attempts so far): {}",
                   failures, s.message());
    }
    return s;
  }
  const auto& r = std::get<controller::RegisterReply>(*reply);
  Registration reg;
  reg.id = r.registration_id;
  reg.epoch = r.controller_epoch;
  reg.heartbeat_interval =
      std::chrono::milliseconds(std::max<uint32_t>(r.heartbeat_interval_ms, 1));
  reg.max_keys = std::clamp<size_t>(std::min<size_t>(options_.batch_keys, r.max_keys_per_message),
                                    1, controller::kMaxKeysPerMessage);
  const std::string heartbeats =
      r.heartbeat_endpoint.empty() ? endpoints_.heartbeats : r.heartbeat_endpoint;
  if (Status s = link_->ConnectHeartbeats(heartbeats); !s.ok()) {
    KVT_LOG_ERROR("heartbeat endpoint '{}' from the controller: {}; keeping the configured {}",
                  heartbeats, s.message(), endpoints_.heartbeats);
    (void)link_->ConnectHeartbeats(endpoints_.heartbeats);
  }
  registration_ = reg;
  // Every location full-syncs now; what was pending predates the snapshots.
  sync_.reset();
  sync_queue_.clear();
  for (size_t i = 0; i < locations_.size(); ++i) {
    locations_[i].mirror->DiscardPending();
    locations_[i].seen_dropped = locations_[i].mirror->dropped_total();
    sync_queue_.push_back(i);
  }
  const TimePoint now = Now();
  sync_not_before_ = now;
  next_heartbeat_ = now + reg.heartbeat_interval;  // registering counts as the first heartbeat
  next_flush_ = now + options_.batch_interval;
  Update([&](ReporterStats& s) {
    ++s.registrations;
    s.state = "registered";
    s.registration_id = reg.id;
    s.controller_epoch = reg.epoch;
  });
  KVT_LOG_INFO(
      "registered with the cluster controller {} (registration {:x}, controller epoch {:x}, "
      "heartbeat every {}); full-syncing {} location(s)",
      endpoints_.requests, reg.id, reg.epoch, FormatDuration(reg.heartbeat_interval),
      locations_.size());
  return Status::OK();
}

void Reporter::Reregister(const std::string& why) {
  KVT_LOG_WARN("registering with the cluster controller again: {}", why);
  registration_.reset();
  sync_.reset();
  sync_queue_.clear();
  Update([](ReporterStats& s) {
    ++s.reregistrations;
    s.state = "registering";
    s.registration_id = 0;
  });
  PublishLocations();
}

void Reporter::Heartbeat() {
  controller::HeartbeatRequest request;
  request.origin = MakeOrigin();
  for (const Location& l : locations_) {
    request.locations.push_back({l.mirror->location(), l.last_seq, l.key_count});
  }
  const Duration interval = registration_->heartbeat_interval;
  next_heartbeat_ = Now() + interval;
  const Duration timeout = std::max<Duration>(std::min(options_.request_timeout, interval / 2),
                                              std::chrono::milliseconds(1));
  Result<Reply> reply =
      link_->Call(Channel::kHeartbeats, request, timeout, [this] { return Stopping(); });
  if (!reply) {
    if (reply.error().code() == StatusCode::kCancelled) return;
    uint64_t failures = 0;
    Update([&](ReporterStats& s) { failures = s.heartbeat_failures; });
    if (std::has_single_bit(failures + 1)) {
      KVT_LOG_WARN("heartbeat to the cluster controller failed: {}", reply.error().message());
    }
    Failed(reply.error(), &ReporterStats::heartbeat_failures);
    return;
  }
  auto& r = std::get<controller::HeartbeatReply>(*reply);
  Update([](ReporterStats& s) { ++s.heartbeats; });
  if (r.controller_epoch != registration_->epoch) {
    Reregister(fmt::format("the controller restarted (epoch {:x}, registered under {:x})",
                           r.controller_epoch, registration_->epoch));
    return;
  }
  if (r.heartbeat_interval_ms > 0 &&
      std::chrono::milliseconds(r.heartbeat_interval_ms) != interval) {
    registration_->heartbeat_interval = std::chrono::milliseconds(r.heartbeat_interval_ms);
    next_heartbeat_ = Now() + registration_->heartbeat_interval;
  }
  for (const controller::Command& command : r.commands) {
    Update([](ReporterStats& s) { ++s.commands; });
    RunCommand(command);
    if (!registration_) return;  // reregister: every location syncs after registering
  }
}

void Reporter::RunCommand(const controller::Command& command) {
  switch (command.kind) {
    case controller::CommandKind::kReregister:
      Reregister(fmt::format("the controller asked (reason '{}')", command.reason));
      return;
    case controller::CommandKind::kFullSync:
      for (size_t i = 0; i < locations_.size(); ++i) {
        if (locations_[i].mirror->location() == command.location) {
          QueueFullSync(i, command.reason);
          return;
        }
      }
      KVT_LOG_WARN("the controller asked for a full sync of unknown location '{}'; skipped",
                   command.location);
      return;
    case controller::CommandKind::kUnknown:
      KVT_LOG_INFO("skipping the controller's unknown command '{}'", command.name);
      return;
  }
}

void Reporter::Deregister() {
  controller::DeregisterRequest request{MakeOrigin()};
  Update([](ReporterStats& s) { s.state = "stopping"; });
  Result<Reply> reply = link_->Call(Channel::kRequests, request, options_.request_timeout, {});
  if (!reply) {
    KVT_LOG_WARN("deregistering from the cluster controller failed: {}", reply.error().message());
    Update([&](ReporterStats& s) { s.last_error = std::string(reply.error().message()); });
    return;
  }
  registration_.reset();
  Update([](ReporterStats& s) { ++s.deregistrations; });
  KVT_LOG_INFO("deregistered from the cluster controller");
}

// ---- events ----

void Reporter::Flush() {
  next_flush_ = Now() + options_.batch_interval;
  for (Location& l : locations_) {
    const uint64_t dropped_total = l.mirror->dropped_total();
    if (l.mirror->pending() == 0 && dropped_total == l.seen_dropped) continue;
    l.seen_dropped = dropped_total;
    KeyMirror::Changes changes = l.mirror->Drain();
    if (changes.dropped > 0) {
      // Transitions were lost before they had a seq: skip one so the controller sees a gap and
      // asks for a full sync.
      ++l.last_seq;
      KVT_LOG_WARN(
          "{} transitions of location {} were dropped (pending list full); the "
          "controller will ask for a full sync",
          changes.dropped, l.mirror->location());
    }
    SendKeys(l, controller::KvOp::kAdmit, changes.admitted);
    SendKeys(l, controller::KvOp::kEvict, changes.evicted);
    l.key_count = changes.key_count;
  }
  PublishLocations();
}

void Reporter::SendKeys(Location& location, controller::KvOp op, std::span<const ObjectKey> keys) {
  const size_t max_keys = registration_->max_keys;
  for (size_t begin = 0; begin < keys.size(); begin += max_keys) {
    const auto chunk = keys.subspan(begin, std::min(max_keys, keys.size() - begin));
    std::vector<controller::KeyGroup> groups = controller::GroupKeys(chunk);
    for (size_t g = 0; g < groups.size(); g += controller::kMaxKeyGroups) {
      controller::KvEvent event;
      event.op = op;
      event.origin = MakeOrigin();
      event.location = location.mirror->location();
      event.seq = ++location.last_seq;  // used even when the send fails: the gap shows
      const size_t end = std::min(groups.size(), g + controller::kMaxKeyGroups);
      event.groups.assign(std::make_move_iterator(groups.begin() + g),
                          std::make_move_iterator(groups.begin() + end));
      const size_t n = controller::CountKeys(event.groups);
      const bool sent = link_->SendEvent(event);
      Update([&](ReporterStats& s) {
        if (sent) {
          ++s.batches_sent;
          s.keys_reported += n;
        } else {
          if (s.events_dropped == 0) {
            KVT_LOG_WARN(
                "the controller's event queue is full; dropping events (seq gaps make "
                "the controller ask for full syncs)");
          }
          ++s.events_dropped;
          s.keys_dropped += n;
        }
      });
    }
  }
}

}  // namespace kvtier::reporter
