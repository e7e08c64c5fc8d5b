// ControllerCore: creation, requests and the periodic tick. Events are in controller_events.cc.
#include "kvtier/controller/controller_core.h"

#include <algorithm>
#include <limits>
#include <random>

#include <fmt/chrono.h>
#include <fmt/format.h>

#include "kvtier/common/logging.h"

namespace kvtier::controller {
namespace {

using std::chrono::milliseconds;

// Addresses come from the registry's worker-info snapshot, which every (de)registration
// invalidates: they are never stale, whatever this age.
constexpr Duration kAddressSnapshotAge = std::chrono::hours(1);

uint64_t RandomNonzero() {
  std::random_device device;
  std::mt19937_64 gen((uint64_t{device()} << 32) ^ device());
  uint64_t v = 0;
  while (v == 0) v = gen();
  return v;
}

uint32_t WireMs(Duration d) {
  const auto ms = std::chrono::duration_cast<milliseconds>(d).count();
  return static_cast<uint32_t>(std::clamp<int64_t>(ms, 1, std::numeric_limits<uint32_t>::max()));
}

cluster::Origin ToOrigin(const Origin& o) {
  return cluster::Origin{o.instance_id, o.worker_id, o.registration_id};
}

std::string RegKey(std::string_view instance_id, uint32_t worker_id) {
  std::string key(instance_id);
  key.push_back('\0');
  key.append(std::to_string(worker_id));
  return key;
}

SyncState ToSyncState(const cluster::WorkerSyncInfo& s) {
  switch (s.state) {
    case cluster::FullSyncState::kIdle:
      return SyncState::kUnknown;
    case cluster::FullSyncState::kSyncing:
      return s.end_received ? SyncState::kMissing : SyncState::kReceiving;
    case cluster::FullSyncState::kCompleted:
      return SyncState::kComplete;
    case cluster::FullSyncState::kFailed:
      return SyncState::kFailed;
  }
  return SyncState::kUnknown;
}

// The lowest worker id of `instance_id` with a peer-fetch address in `infos` (sorted by instance
// and worker), or "".
std::string InstanceAddress(const std::vector<cluster::WorkerInfo>& infos,
                            std::string_view instance_id) {
  auto it = std::lower_bound(
      infos.begin(), infos.end(), instance_id,
      [](const cluster::WorkerInfo& w, std::string_view id) { return w.instance_id < id; });
  for (; it != infos.end() && it->instance_id == instance_id; ++it) {
    if (!it->address.empty()) return it->address;
  }
  return "";
}

}  // namespace

const char* DropReasonName(DropReason reason) {
  switch (reason) {
    case DropReason::kDecodeError:
      return "decode_error";
    case DropReason::kUnknownRegistration:
      return "unknown_registration";
    case DropReason::kRejected:
      return "rejected";
    case DropReason::kCount:
      break;
  }
  return "unknown";
}

// ---- EventLog.

void EventLog::Add(std::string kind, std::string message) {
  const int64_t now_ms =
      std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  MutexLock lock(&mu_);
  entries_.push_front(Entry{now_ms, std::move(kind), std::move(message)});
  if (entries_.size() > capacity_) entries_.pop_back();
  ++total_;
}

nlohmann::json EventLog::Json() const {
  nlohmann::json out = nlohmann::json::array();
  MutexLock lock(&mu_);
  for (const Entry& e : entries_) {
    out.push_back({{"time_ms", e.time_ms}, {"kind", e.kind}, {"message", e.message}});
  }
  return out;
}

uint64_t EventLog::total() const {
  MutexLock lock(&mu_);
  return total_;
}

// ---- ControllerCore.

Result<std::unique_ptr<ControllerCore>> ControllerCore::Create(const ControllerOptions& options) {
  KVT_RETURN_IF_ERROR(ValidateControllerOptions(options));
  KVT_ASSIGN_OR_RETURN(keys::HashAlgorithm algorithm,
                       keys::ParseHashAlgorithm(options.hash_algorithm));
  KVT_ASSIGN_OR_RETURN(keys::TokenHasher hasher,
                       keys::TokenHasher::Create(algorithm, options.chunk_size));
  cluster::RegistryOptions r;
  r.max_workers = options.max_workers;
  r.full_sync_timeout = options.sync_timeout;
  r.clock = options.clock;
  KVT_ASSIGN_OR_RETURN(std::unique_ptr<cluster::RegistryTree> registry,
                       cluster::RegistryTree::Create(r));
  return std::unique_ptr<ControllerCore>(
      new ControllerCore(options, std::move(registry), hasher, RandomNonzero()));
}

ControllerCore::ControllerCore(const ControllerOptions& options,
                               std::unique_ptr<cluster::RegistryTree> registry,
                               keys::TokenHasher hasher, uint64_t epoch)
    : options_(options),
      registry_(std::move(registry)),
      hasher_(hasher),
      epoch_(epoch),
      started_(options.clock->Now()),
      event_log_(options.recent_events) {}

int64_t ControllerCore::ToUnixMs(TimePoint t) const {
  if (t == TimePoint{}) return 0;
  const auto age = options_.clock->Now() - t;
  return std::chrono::duration_cast<milliseconds>(
             (std::chrono::system_clock::now() - age).time_since_epoch())
      .count();
}

bool ControllerCore::IsRegistered(const Origin& origin) const {
  const std::string key = RegKey(origin.instance_id, origin.worker_id);
  MutexLock lock(&reg_mu_);
  auto it = registered_.find(key);
  return it != registered_.end() && it->second == origin.registration_id;
}

void ControllerCore::SetRegistered(std::string_view instance_id, uint32_t worker_id,
                                   uint64_t registration_id) {
  registered_[RegKey(instance_id, worker_id)] = registration_id;
}

void ControllerCore::ForgetRegistered(std::string_view instance_id, uint32_t worker_id) {
  registered_.erase(RegKey(instance_id, worker_id));
}

Reply ControllerCore::HandleRequest(const Request& request) {
  Reply reply = std::visit(
      [this](const auto& r) -> Reply {
        using T = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<T, RegisterRequest>) {
          return OnRegister(r);
        } else if constexpr (std::is_same_v<T, DeregisterRequest>) {
          return OnDeregister(r);
        } else if constexpr (std::is_same_v<T, HeartbeatRequest>) {
          return OnHeartbeat(r);
        } else if constexpr (std::is_same_v<T, FullSyncStatusRequest>) {
          return OnFullSyncStatus(r);
        } else if constexpr (std::is_same_v<T, LookupRequest>) {
          auto result = Lookup(r);
          if (!result) return ToErrorReply(result.error());
          return std::move(*result);
        } else if constexpr (std::is_same_v<T, FindKvRequest>) {
          auto result = FindKv(r);
          if (!result) return ToErrorReply(result.error());
          return std::move(*result);
        } else if constexpr (std::is_same_v<T, WorkersRequest>) {
          return OnWorkers(r);
        } else if constexpr (std::is_same_v<T, ClearRequest>) {
          auto result = Clear(r);
          if (!result) return ToErrorReply(result.error());
          return ClearReply{*result};
        } else {
          static_assert(std::is_same_v<T, PingRequest>);
          return PingReply{epoch_};
        }
      },
      request);
  if (std::holds_alternative<ErrorReply>(reply)) {
    counters_.request_errors.fetch_add(1, std::memory_order_relaxed);
  }
  return reply;
}

Reply ControllerCore::OnRegister(const RegisterRequest& r) {
  auto algorithm = keys::ParseHashAlgorithm(r.hash_algorithm);
  if (!algorithm || *algorithm != hasher_.algorithm() || r.chunk_size != hasher_.chunk_size()) {
    counters_.registrations_refused.fetch_add(1, std::memory_order_relaxed);
    std::string why = fmt::format(
        "REGISTER refused: worker {}/{} hashes {}-token chunks with '{}', the cluster {}-token "
        "chunks with '{}'; their chunk hashes would never match",
        r.instance_id, r.worker_id, r.chunk_size, r.hash_algorithm, hasher_.chunk_size(),
        keys::HashAlgorithmName(hasher_.algorithm()));
    KVT_LOG_ERROR("controller: {}", why);
    event_log_.Add("register_refused", why);
    return ToErrorReply(Status::FailedPrecondition(std::move(why)));
  }
  cluster::WorkerRegistration registration;
  registration.instance_id = r.instance_id;
  registration.worker_id = r.worker_id;
  registration.address = r.address;
  registration.locations = r.locations;
  registration.software_version = r.software_version;
  registration.expects_heartbeats = true;
  cluster::RegisterResult result;
  {
    MutexLock lock(&reg_mu_);
    auto registered = registry_->RegisterWorker(registration);
    if (!registered) {
      KVT_LOG_WARN("controller: REGISTER of {}/{} failed: {}", r.instance_id, r.worker_id,
                   registered.error().ToString());
      return ToErrorReply(registered.error());
    }
    result = *registered;
    SetRegistered(r.instance_id, r.worker_id, result.registration_id);
  }
  counters_.registrations.fetch_add(1, std::memory_order_relaxed);
  if (result.re_registered) counters_.reregistrations.fetch_add(1, std::memory_order_relaxed);
  std::string what = fmt::format(
      "{}/{} {} (address '{}', locations {}, {}){}", r.instance_id, r.worker_id,
      result.re_registered ? "re-registered" : "registered", r.address, fmt::join(r.locations, ","),
      r.software_version.empty() ? "no version" : r.software_version,
      result.re_registered
          ? fmt::format("; {} keys of its previous registration dropped", result.stale_keys_removed)
          : "");
  KVT_LOG_INFO("controller: {}", what);
  event_log_.Add(result.re_registered ? "reregistered" : "registered", std::move(what));

  RegisterReply reply;
  reply.registration_id = result.registration_id;
  reply.controller_epoch = epoch_;
  reply.heartbeat_interval_ms = WireMs(options_.heartbeat_interval);
  reply.worker_timeout_ms = options_.reap_dead_workers ? WireMs(options_.worker_timeout)
                                                       : std::numeric_limits<uint32_t>::max();
  reply.heartbeat_endpoint = options_.advertised_heartbeat_endpoint;
  reply.max_keys_per_message = options_.max_keys_per_message;
  return reply;
}

Reply ControllerCore::OnDeregister(const DeregisterRequest& r) {
  Result<cluster::RemovedWorkers> removed = MakeError(Status::Internal("unset"));
  {
    MutexLock lock(&reg_mu_);
    removed = registry_->DeregisterWorker(ToOrigin(r.origin));
    if (removed) ForgetRegistered(r.origin.instance_id, r.origin.worker_id);
  }
  if (!removed) {
    if (removed.error().code() == StatusCode::kNotFound) return DeregisterReply{false};
    return ToErrorReply(removed.error());
  }
  counters_.deregistrations.fetch_add(1, std::memory_order_relaxed);
  std::string what = fmt::format("{}/{} deregistered; {} keys dropped", r.origin.instance_id,
                                 r.origin.worker_id, removed->keys_removed);
  KVT_LOG_INFO("controller: {}", what);
  event_log_.Add("deregistered", std::move(what));
  return DeregisterReply{true};
}

Reply ControllerCore::OnHeartbeat(const HeartbeatRequest& r) {
  std::vector<cluster::LocationReport> reports;
  reports.reserve(r.locations.size());
  for (const LocationReport& l : r.locations) {
    reports.push_back(cluster::LocationReport{l.location, l.last_seq, l.key_count});
  }
  HeartbeatReply reply;
  reply.controller_epoch = epoch_;
  reply.heartbeat_interval_ms = WireMs(options_.heartbeat_interval);
  auto requests = registry_->Heartbeat(ToOrigin(r.origin), reports);
  if (!requests) {
    if (requests.error().code() != StatusCode::kNotFound) return ToErrorReply(requests.error());
    // After a controller restart or a reap: the worker registers again, then full-syncs.
    counters_.reregister_commands.fetch_add(1, std::memory_order_relaxed);
    KVT_LOG_DEBUG("controller: heartbeat of unknown registration {}/{} ({:#x}): reregister",
                  r.origin.instance_id, r.origin.worker_id, r.origin.registration_id);
    event_log_.Add("reregister", fmt::format("{}/{}: heartbeat of an unknown registration",
                                             r.origin.instance_id, r.origin.worker_id));
    reply.commands.push_back(
        Command{CommandKind::kReregister, "", "", std::string("unknown_registration")});
    return reply;
  }
  for (cluster::FullSyncRequest& request : *requests) {
    if (reply.commands.size() == kMaxCommands) break;
    counters_.full_sync_commands.fetch_add(1, std::memory_order_relaxed);
    std::string what = fmt::format("{}/{} asked to full-sync '{}' ({})", r.origin.instance_id,
                                   r.origin.worker_id, request.location, request.reason);
    KVT_LOG_INFO("controller: {}", what);
    event_log_.Add("full_sync_requested", std::move(what));
    reply.commands.push_back(Command{CommandKind::kFullSync, "", std::move(request.location),
                                     std::move(request.reason)});
  }
  return reply;
}

Reply ControllerCore::OnFullSyncStatus(const FullSyncStatusRequest& r) {
  auto info = registry_->FullSyncStatus(ToOrigin(r.origin), r.location, r.sync_id);
  if (!info) return ToErrorReply(info.error());
  FullSyncStatusReply reply;
  reply.state = info->sync_id == r.sync_id ? ToSyncState(*info) : SyncState::kUnknown;
  if (reply.state == SyncState::kUnknown) return reply;
  reply.total_batches = info->expected_batch_count;
  reply.received_batches = info->received_batch_count;
  if (reply.state == SyncState::kMissing) {
    const size_t n = std::min(info->missing_batches.size(), kMaxMissingListed);
    reply.missing_batches.assign(info->missing_batches.begin(), info->missing_batches.begin() + n);
  }
  if (reply.state == SyncState::kFailed) reply.reason = info->failure_reason;
  return reply;
}

Reply ControllerCore::OnWorkers(const WorkersRequest& r) const {
  auto infos = registry_->WorkerInfos(Duration::zero());
  if (!infos) return ToErrorReply(infos.error());
  WorkersReply reply;
  for (const cluster::WorkerInfo& w : **infos) {
    if (!r.instance_id.empty() && w.instance_id != r.instance_id) continue;
    if (reply.workers.size() == kMaxListed) {
      reply.truncated = true;
      break;
    }
    WorkerInfo out;
    out.instance_id = w.instance_id;
    out.worker_id = w.worker_id;
    out.address = w.address;
    out.software_version = w.software_version;
    out.registered_at_ms = static_cast<uint64_t>(ToUnixMs(w.registration_time));
    out.last_heartbeat_ms = static_cast<uint64_t>(ToUnixMs(w.last_heartbeat));
    for (const cluster::LocationInfo& l : w.locations) {
      out.locations.push_back(
          LocationInfo{l.location, l.keys, l.last_seq.value_or(0), ToSyncState(l.sync)});
    }
    reply.workers.push_back(std::move(out));
  }
  return reply;
}

Result<LookupReply> ControllerCore::Lookup(const LookupRequest& r) const {
  LookupReply reply;
  const keys::KvRank first_rank{r.world_size, r.rank.value_or(0)};
  if (Status s = first_rank.Validate(); !s.ok()) {
    return MakeError(Status::InvalidArgument(fmt::format("LOOKUP: {}", s.message())));
  }
  const std::optional<keys::NamespaceId> ns = KnownNamespace(r.model, r.cache_salt);
  if (r.hashes.empty() || !ns.has_value()) return reply;  // nobody reported that key space

  std::vector<keys::ObjectKey> keys;
  auto build = [&](uint16_t rank, size_t n) {
    keys.clear();
    for (size_t i = 0; i < n; ++i) {
      keys.push_back(*keys::ObjectKey::Create(r.hashes[i], *ns, keys::KvRank{r.world_size, rank},
                                              r.object_group));
    }
  };
  std::vector<cluster::PrefixMatch> matches;
  if (r.rank.has_value()) {
    build(*r.rank, r.hashes.size());
    matches = registry_->PrefixLookup(keys, 1, r.exclude_instance);
  } else {
    // Every rank: an instance's prefix is the shortest of its per-rank prefixes. Each rank's
    // lookup reads only as many chunks as the longest prefix left, so the work is bounded by
    // what the index holds, not by world_size * chunks.
    // Instance ids are views of names interned for the registry's lifetime.
    absl::flat_hash_map<std::string_view, uint32_t> prefix;
    size_t bound = r.hashes.size();
    for (uint32_t rank = 0; rank < r.world_size; ++rank) {
      build(static_cast<uint16_t>(rank), bound);
      absl::flat_hash_map<std::string_view, uint32_t> next;
      for (const cluster::PrefixMatch& m : registry_->PrefixLookup(keys, 1, r.exclude_instance)) {
        if (rank == 0) {
          next.emplace(m.instance_id, m.num_chunks);
        } else if (auto it = prefix.find(m.instance_id); it != prefix.end()) {
          next.emplace(m.instance_id, std::min(it->second, m.num_chunks));
        }
      }
      prefix = std::move(next);
      if (prefix.empty()) break;
      bound = 0;
      for (const auto& [id, chunks] : prefix) bound = std::max<size_t>(bound, chunks);
    }
    for (const auto& [id, chunks] : prefix) matches.push_back(cluster::PrefixMatch{id, chunks});
    std::sort(matches.begin(), matches.end(), [](const auto& a, const auto& b) {
      if (a.num_chunks != b.num_chunks) return a.num_chunks > b.num_chunks;
      return a.instance_id < b.instance_id;
    });
  }
  if (matches.empty()) return reply;
  auto infos = registry_->WorkerInfos(kAddressSnapshotAge);
  if (!infos) return MakeError(infos.error());
  for (const cluster::PrefixMatch& m : matches) {
    if (reply.matches.size() == kMaxListed) break;
    if (m.num_chunks == 0) continue;
    reply.matches.push_back(LookupMatch{std::string(m.instance_id),
                                        InstanceAddress(**infos, m.instance_id), m.num_chunks});
  }
  return reply;
}

Result<FindKvReply> ControllerCore::FindKv(const FindKvRequest& r) const {
  FindKvReply reply;
  if (Status s = r.space.kv_rank().Validate(); !s.ok()) {
    return MakeError(Status::InvalidArgument(fmt::format("FIND_KV: {}", s.message())));
  }
  const std::optional<keys::NamespaceId> ns = KnownNamespace(r.space.model, r.space.cache_salt);
  if (!ns.has_value()) return reply;
  auto key = keys::ObjectKey::Create(r.hash, *ns, r.space.kv_rank(), r.space.object_group);
  if (!key) return MakeError(key.error());
  for (const cluster::KvHolder& h : registry_->FindKvAll(*key, r.exclude_instance)) {
    if (reply.holders.size() == kMaxListed) break;
    reply.holders.push_back(Holder{std::string(h.instance_id), h.worker_id, std::string(h.location),
                                   std::string(h.address)});
  }
  return reply;
}

Result<uint64_t> ControllerCore::Clear(const ClearRequest& r) {
  if (r.worker_id.has_value() && r.instance_id.empty()) {
    return MakeError(Status::InvalidArgument("CLEAR: worker_id needs an instance_id"));
  }
  const std::optional<std::string_view> location =
      r.location.empty() ? std::nullopt : std::optional<std::string_view>(r.location);
  uint64_t cleared = 0;
  if (r.instance_id.empty() && !location.has_value()) {
    KVT_ASSIGN_OR_RETURN(cleared, registry_->Clear());
  } else {
    // The (instance, worker) pairs to clear.
    std::vector<std::pair<std::string, uint32_t>> targets;
    if (r.worker_id.has_value()) {
      targets.emplace_back(r.instance_id, *r.worker_id);
    } else if (!r.instance_id.empty()) {
      auto ids = registry_->WorkerIds(r.instance_id);
      if (!ids && ids.error().code() != StatusCode::kNotFound) return MakeError(ids.error());
      if (ids) {
        for (uint32_t id : *ids) targets.emplace_back(r.instance_id, id);
      }
    } else {
      KVT_ASSIGN_OR_RETURN(auto infos, registry_->WorkerInfos(Duration::zero()));
      for (const cluster::WorkerInfo& w : *infos) targets.emplace_back(w.instance_id, w.worker_id);
    }
    for (const auto& [instance_id, worker_id] : targets) {
      auto n = registry_->ClearWorker(cluster::Origin{instance_id, worker_id, 0}, location);
      if (!n) {
        if (n.error().code() == StatusCode::kNotFound) continue;  // left meanwhile
        return MakeError(n.error());
      }
      cleared += *n;
    }
  }
  std::string what =
      fmt::format("index cleared (instance '{}', worker {}, location '{}'): {} keys forgotten",
                  r.instance_id.empty() ? "*" : r.instance_id,
                  r.worker_id.has_value() ? std::to_string(*r.worker_id) : "*",
                  r.location.empty() ? "*" : r.location, cleared);
  KVT_LOG_INFO("controller: {}", what);
  event_log_.Add("cleared", std::move(what));
  return cleared;
}

void ControllerCore::Tick() {
  counters_.ticks.fetch_add(1, std::memory_order_relaxed);
  if (options_.reap_dead_workers) {
    Result<std::vector<cluster::ReapedWorker>> reaped = MakeError(Status::Internal("unset"));
    {
      MutexLock lock(&reg_mu_);
      reaped = registry_->ReapDead(options_.worker_timeout);
      if (reaped) {
        for (const cluster::ReapedWorker& w : *reaped) ForgetRegistered(w.instance_id, w.worker_id);
      }
    }
    if (!reaped) {
      KVT_LOG_WARN("controller: reaping failed: {}", reaped.error().ToString());
    } else {
      for (const cluster::ReapedWorker& w : *reaped) {
        counters_.workers_reaped.fetch_add(1, std::memory_order_relaxed);
        std::string what = fmt::format(
            "reaped {}/{} (address '{}'): no heartbeat for {} (timeout {}); {} keys dropped",
            w.instance_id, w.worker_id, w.address,
            std::chrono::duration_cast<milliseconds>(options_.clock->Now() - w.last_heartbeat),
            std::chrono::duration_cast<milliseconds>(options_.worker_timeout), w.keys_removed);
        KVT_LOG_WARN("controller: {}", what);
        event_log_.Add("reaped", std::move(what));
      }
    }
  }
  auto expired = registry_->ExpireSyncs();
  if (!expired) {
    KVT_LOG_WARN("controller: sync expiry failed: {}", expired.error().ToString());
    return;
  }
  for (const cluster::ExpiredSync& s : *expired) {
    counters_.syncs_expired.fetch_add(1, std::memory_order_relaxed);
    std::string what = fmt::format(
        "full sync {:#x} of {}/{} '{}' timed out ({} batches missing); asked again at the next "
        "heartbeat",
        s.sync_id, s.instance_id, s.worker_id, s.location, s.missing_batches);
    KVT_LOG_WARN("controller: {}", what);
    event_log_.Add("sync_expired", std::move(what));
  }
}

}  // namespace kvtier::controller
