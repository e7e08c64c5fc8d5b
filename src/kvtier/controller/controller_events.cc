// ControllerCore: events (ADMIT, EVICT, FULL_SYNC_START / BATCH / END) and key conversion.
//
// The registry applies them with the protocol's rules: sequence checks per (registration,
// location), full syncs per location, and events that arrive during a sync applied at once
// while the sync's batches skip the keys those events evicted (docs/controller.md, option (b)
// of "Full sync"), so that nothing is lost or undone.
#include <fmt/format.h>

#include "kvtier/common/logging.h"
#include "kvtier/controller/controller_core.h"

namespace kvtier::controller {
namespace {

cluster::Origin ToOrigin(const Origin& o) {
  return cluster::Origin{o.instance_id, o.worker_id, o.registration_id};
}

std::string NamespaceKey(std::string_view model, std::string_view salt) {
  std::string key;
  key.reserve(model.size() + 1 + salt.size());
  key.append(model);
  key.push_back('\0');
  key.append(salt);
  return key;
}

}  // namespace

void ControllerCore::CountDropped(DropReason reason) {
  counters_.events_dropped[static_cast<size_t>(reason)].fetch_add(1, std::memory_order_relaxed);
}

void ControllerCore::Drop(const Origin& origin, std::string_view what, const Status& status) {
  if (status.code() == StatusCode::kNotFound) {
    CountDropped(DropReason::kUnknownRegistration);
  } else {
    CountDropped(DropReason::kRejected);
  }
  KVT_LOG_DEBUG("controller: {} of {}/{} dropped: {}", what, origin.instance_id, origin.worker_id,
                status.ToString());
}

Result<std::vector<keys::ObjectKey>> ControllerCore::KeysOf(std::span<const KeyGroup> groups) {
  std::vector<keys::ObjectKey> out;
  out.reserve(CountKeys(groups));
  for (const KeyGroup& g : groups) {
    keys::NamespaceId ns = 0;
    std::string key = NamespaceKey(g.space.model, g.space.cache_salt);
    {
      MutexLock lock(&ns_mu_);
      if (auto it = namespaces_.find(key); it != namespaces_.end()) ns = it->second;
    }
    if (ns == 0) {
      KVT_ASSIGN_OR_RETURN(ns, g.space.Intern());
      MutexLock lock(&ns_mu_);
      namespaces_.emplace(std::move(key), ns);
    }
    const keys::KvRank rank = g.space.kv_rank();
    KVT_RETURN_IF_ERROR(rank.Validate());
    for (const keys::ChunkHash& hash : g.hashes) {
      KVT_ASSIGN_OR_RETURN(keys::ObjectKey k,
                           keys::ObjectKey::Create(hash, ns, rank, g.space.object_group));
      out.push_back(k);
    }
  }
  return out;
}

std::optional<keys::NamespaceId> ControllerCore::KnownNamespace(std::string_view model,
                                                                std::string_view salt) const {
  const std::string key = NamespaceKey(model, salt);
  MutexLock lock(&ns_mu_);
  auto it = namespaces_.find(key);
  if (it == namespaces_.end()) return std::nullopt;
  return it->second;
}

void ControllerCore::HandleEvent(const Event& event) {
  std::visit(
      [this](const auto& e) {
        using T = std::decay_t<decltype(e)>;
        if (!IsRegistered(e.origin)) {
          CountDropped(DropReason::kUnknownRegistration);
          return;
        }
        if constexpr (std::is_same_v<T, KvEvent>) {
          OnKvEvent(e);
        } else if constexpr (std::is_same_v<T, FullSyncStart>) {
          OnSyncStart(e);
        } else if constexpr (std::is_same_v<T, FullSyncBatch>) {
          OnSyncBatch(e);
        } else {
          static_assert(std::is_same_v<T, FullSyncEnd>);
          OnSyncEnd(e);
        }
      },
      event);
}

void ControllerCore::OnKvEvent(const KvEvent& e) {
  const char* what = e.op == KvOp::kAdmit ? "ADMIT" : "EVICT";
  auto keys = KeysOf(e.groups);
  if (!keys) return Drop(e.origin, what, keys.error());
  const cluster::Origin origin = ToOrigin(e.origin);
  auto result = e.op == KvOp::kAdmit ? registry_->Admit(origin, e.location, e.seq, *keys)
                                     : registry_->Evict(origin, e.location, e.seq, *keys);
  if (!result) return Drop(e.origin, what, result.error());
  if (result->outcome == cluster::BatchOutcome::kAppliedAfterGap) {
    counters_.seq_gaps.fetch_add(1, std::memory_order_relaxed);
    std::string gap = fmt::format(
        "{}/{} '{}': sequence gap (expected {}, got {}); a full sync will be asked for",
        e.origin.instance_id, e.origin.worker_id, e.location,
        result->expected_seq.has_value() ? std::to_string(*result->expected_seq) : "?", e.seq);
    KVT_LOG_INFO("controller: {}", gap);
    event_log_.Add("seq_gap", std::move(gap));
  } else if (result->outcome == cluster::BatchOutcome::kIgnoredStale) {
    KVT_LOG_DEBUG("controller: {} seq {} of {}/{} '{}' is stale (expected {}): ignored", what,
                  e.seq, e.origin.instance_id, e.origin.worker_id, e.location,
                  result->expected_seq.value_or(0));
  }
  if (result->failed_sync) {
    std::string failed =
        fmt::format("{}/{} '{}': the running full sync failed (events lost during it)",
                    e.origin.instance_id, e.origin.worker_id, e.location);
    KVT_LOG_WARN("controller: {}", failed);
    event_log_.Add("sync_failed", std::move(failed));
  }
}

void ControllerCore::OnSyncStart(const FullSyncStart& e) {
  Status s = registry_->StartFullSync(ToOrigin(e.origin), e.location, e.sync_id, e.base_seq,
                                      e.total_keys, e.total_batches);
  if (!s.ok()) return Drop(e.origin, "FULL_SYNC_START", s);
  std::string what =
      fmt::format("{}/{} '{}': full sync {:#x} started ({} keys in {} batches, base seq {})",
                  e.origin.instance_id, e.origin.worker_id, e.location, e.sync_id, e.total_keys,
                  e.total_batches, e.base_seq);
  KVT_LOG_DEBUG("controller: {}", what);
  event_log_.Add("sync_started", std::move(what));
}

void ControllerCore::OnSyncBatch(const FullSyncBatch& e) {
  auto keys = KeysOf(e.groups);
  if (!keys) return Drop(e.origin, "FULL_SYNC_BATCH", keys.error());
  auto result =
      registry_->AddFullSyncBatch(ToOrigin(e.origin), e.location, e.sync_id, e.batch_index, *keys);
  if (!result) return Drop(e.origin, "FULL_SYNC_BATCH", result.error());
}

void ControllerCore::OnSyncEnd(const FullSyncEnd& e) {
  auto result = registry_->EndFullSync(ToOrigin(e.origin), e.location, e.sync_id, e.total_keys);
  if (!result) return Drop(e.origin, "FULL_SYNC_END", result.error());
  switch (result->state) {
    case cluster::FullSyncState::kCompleted: {
      std::string what =
          fmt::format("{}/{} '{}': full sync {:#x} complete ({} keys)", e.origin.instance_id,
                      e.origin.worker_id, e.location, e.sync_id, result->received_keys);
      KVT_LOG_INFO("controller: {}", what);
      event_log_.Add("sync_completed", std::move(what));
      break;
    }
    case cluster::FullSyncState::kFailed: {
      std::string what = fmt::format(
          "{}/{} '{}': full sync {:#x} failed ({}); a new one will be asked for",
          e.origin.instance_id, e.origin.worker_id, e.location, e.sync_id, result->failure_reason);
      KVT_LOG_WARN("controller: {}", what);
      event_log_.Add("sync_failed", std::move(what));
      break;
    }
    case cluster::FullSyncState::kSyncing:
      KVT_LOG_DEBUG("controller: {}/{} '{}': full sync {:#x} ended with {} batches missing",
                    e.origin.instance_id, e.origin.worker_id, e.location, e.sync_id,
                    result->missing_batches.size());
      break;
    case cluster::FullSyncState::kIdle:
      break;
  }
}

}  // namespace kvtier::controller
