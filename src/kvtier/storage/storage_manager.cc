#include "kvtier/storage/storage_manager.h"

#include <fmt/format.h>

#include "kvtier/common/logging.h"
#include "kvtier/l2/factory.h"

namespace kvtier::storage {

using keys::Bitmap;
using keys::ObjectKey;
using l1::L1Result;

Result<std::unique_ptr<StorageManager>> StorageManager::Create(const StorageOptions& options) {
  std::unique_ptr<StorageManager> m(new StorageManager());
  KVT_ASSIGN_OR_RETURN(m->l1_, l1::L1Manager::Create(options.l1));
  KVT_ASSIGN_OR_RETURN(auto l1_policy, eviction::MakeEvictionPolicy(options.l1_eviction_policy));
  KVT_ASSIGN_OR_RETURN(m->l1_eviction_,
                       eviction::L1EvictionController::Create(m->l1_.get(), std::move(l1_policy),
                                                              options.l1_eviction));
  KVT_RETURN_IF_ERROR(m->l1_eviction_->Start());

  std::vector<l2::L2Adapter*> raw;
  for (size_t i = 0; i < options.l2_adapters.size(); ++i) {
    const nlohmann::json& config = options.l2_adapters[i];
    KVT_ASSIGN_OR_RETURN(auto adapter, l2::MakeL2Adapter(config, i));
    if (config.is_object() && config.contains("eviction")) {
      KVT_ASSIGN_OR_RETURN(L2EvictionOptions eo,
                           ParseL2EvictionOptions(config["eviction"], adapter->name()));
      KVT_ASSIGN_OR_RETURN(auto controller, L2EvictionController::Create(adapter.get(), eo));
      KVT_RETURN_IF_ERROR(controller->Start());
      m->l2_eviction_.push_back(std::move(controller));
    }
    for (const auto& other : m->adapters_) {
      if (other->name() == adapter->name()) {
        return MakeError(Status::InvalidArgument(
            fmt::format("two L2 adapters are named '{}'", adapter->name())));
      }
    }
    // Listeners are attached: start-up work (e.g. the fs recovery scan) reaches them.
    KVT_RETURN_IF_ERROR(adapter->Start());
    raw.push_back(adapter.get());
    m->adapters_.push_back(std::move(adapter));
  }

  KVT_ASSIGN_OR_RETURN(auto store_policy, MakeStorePolicy(options.store_policy));
  KVT_ASSIGN_OR_RETURN(m->store_, StoreController::Create(m->l1_.get(), raw,
                                                          std::move(store_policy), options.store));
  KVT_RETURN_IF_ERROR(m->store_->Start());
  KVT_ASSIGN_OR_RETURN(m->prefetch_,
                       PrefetchController::Create(m->l1_.get(), raw, options.prefetch));
  KVT_RETURN_IF_ERROR(m->prefetch_->Start());
  KVT_LOG_INFO("storage ready: L1 {} bytes, {} L2 adapters", m->l1_->capacity_bytes(),
               m->adapters_.size());
  return m;
}

StorageManager::~StorageManager() { Close(); }

void StorageManager::Close() {
  if (closed_) return;
  closed_ = true;
  if (prefetch_) prefetch_->Stop();
  if (store_) store_->Stop();
  for (auto& c : l2_eviction_) c->Stop();
  for (auto& a : adapters_) a->Close();
  if (store_) store_->ReleaseAfterAdaptersClosed();
  if (prefetch_) prefetch_->ReleaseAfterAdaptersClosed();
  if (l1_eviction_) l1_eviction_->Stop();
}

std::vector<L1Result> StorageManager::ReserveWrite(std::span<const ObjectKey> keys,
                                                   uint64_t object_size,
                                                   std::vector<l1::ObjectView>* views) {
  return l1_->ReserveWrite(keys, object_size, /*temporary=*/false, l1::kDefaultWriter, views);
}

std::vector<L1Result> StorageManager::FinishWrite(std::span<const ObjectKey> keys) {
  return l1_->FinishWrite(keys, l1::kDefaultWriter);
}

std::vector<L1Result> StorageManager::AbortWrite(std::span<const ObjectKey> keys) {
  return l1_->FinishWriteAndDelete(keys, l1::kDefaultWriter);
}

PrefetchHandle StorageManager::SubmitPrefetch(std::span<const ObjectKey> keys, uint64_t object_size,
                                              uint32_t read_locks, Duration l2_timeout) {
  PrefetchHandle h;
  h.total = keys.size();
  std::vector<L1Result> found = l1_->ReserveRead(keys, read_locks);
  while (h.l1_hits < keys.size() && found[h.l1_hits] == L1Result::kSuccess) ++h.l1_hits;
  // Hits after the first miss are useless for a prefix: give their locks back.
  std::vector<ObjectKey> release;
  for (size_t i = h.l1_hits; i < keys.size(); ++i) {
    if (found[i] == L1Result::kSuccess) release.push_back(keys[i]);
  }
  if (!release.empty()) l1_->FinishRead(release, read_locks);
  if (h.l1_hits < keys.size() && !adapters_.empty()) {
    PrefetchRequest request;
    request.keys.assign(keys.begin() + static_cast<std::ptrdiff_t>(h.l1_hits), keys.end());
    request.object_size = object_size;
    request.read_locks = read_locks;
    request.timeout = l2_timeout;
    h.l2_request = prefetch_->Submit(std::move(request));
  }
  return h;
}

std::optional<Bitmap> StorageManager::QueryPrefetch(const PrefetchHandle& handle) {
  Bitmap result(handle.total);
  for (size_t i = 0; i < handle.l1_hits; ++i) result.Set(i);
  if (handle.l2_request == 0) return result;
  std::optional<Bitmap> l2 = prefetch_->QueryResult(handle.l2_request);
  if (!l2) return std::nullopt;
  for (size_t i = 0; i < l2->size() && handle.l1_hits + i < handle.total; ++i) {
    if (l2->Test(i)) result.Set(handle.l1_hits + i);
  }
  return result;
}

bool StorageManager::WaitPrefetch(const PrefetchHandle& handle, Timeout timeout) {
  return handle.l2_request == 0 || prefetch_->Wait(handle.l2_request, timeout);
}

void StorageManager::NotifyWhenPrefetchDone(const PrefetchHandle& handle,
                                            std::function<void()> fn) {
  if (handle.l2_request == 0) {
    fn();
    return;
  }
  prefetch_->NotifyWhenDone(handle.l2_request, std::move(fn));
}

std::optional<size_t> StorageManager::QueryPrefetchLookupHits(const PrefetchHandle& handle) {
  if (handle.l2_request == 0) return handle.l1_hits;
  std::optional<size_t> l2 = prefetch_->QueryLookupHits(handle.l2_request);
  if (!l2) return std::nullopt;
  return handle.l1_hits + *l2;
}

Result<std::vector<l1::ObjectView>> StorageManager::ReadPrefetched(
    std::span<const ObjectKey> keys) {
  std::vector<l1::ObjectView> views;
  std::vector<L1Result> r = l1_->UnsafeRead(keys, &views);
  for (size_t i = 0; i < keys.size(); ++i) {
    if (r[i] != L1Result::kSuccess) {
      return MakeError(Status::NotFound(fmt::format("{} is not prefetched in L1 ({})",
                                                    keys[i].ToString(), l1::L1ResultName(r[i]))));
    }
  }
  return views;
}

void StorageManager::FinishReadPrefetched(std::span<const ObjectKey> keys, uint32_t read_locks) {
  l1_->FinishRead(keys, read_locks);
}

bool StorageManager::healthy() const {
  if (closed_) return false;
  l1::L1Status st = l1_->GetStatus();
  if (!st.healthy) return false;
  if (!l1_eviction_->stats().running || !store_->stats().running || !prefetch_->stats().running)
    return false;
  for (const auto& a : adapters_) {
    if (!a->healthy()) return false;
  }
  return true;
}

nlohmann::json L1StatusJson(const l1::L1Status& s) {
  return {{"healthy", s.healthy},
          {"resident_objects", s.resident_objects},
          {"read_locked_objects", s.read_locked_objects},
          {"temporary_objects", s.temporary_objects},
          {"staging_objects", s.staging_objects},
          {"live_staging_objects", s.live_staging_objects},
          {"resident_bytes", s.resident_bytes},
          {"staging_bytes", s.staging_bytes},
          {"used_bytes", s.used_bytes},
          {"capacity_bytes", s.capacity_bytes},
          {"usage_ratio", s.usage_ratio},
          {"allocation_failures", s.allocation_failures},
          {"read_ttl_seconds", std::chrono::duration<double>(s.read_ttl).count()},
          {"write_ttl_seconds", std::chrono::duration<double>(s.write_ttl).count()},
          {"cuda_registered", s.cuda_registered}};
}

nlohmann::json StorageManager::StatusJson() const {
  nlohmann::json j;
  j["healthy"] = healthy();
  j["l1"] = L1StatusJson(l1_->GetStatus());
  eviction::L1EvictionStats e = l1_eviction_->stats();
  j["l1_eviction"] = {{"policy", l1_eviction_->policy_name()},
                      {"running", e.running},
                      {"trigger_watermark", l1_eviction_->options().trigger_watermark},
                      {"target_watermark", l1_eviction_->options().target_watermark},
                      {"wakeups", e.wakeups},
                      {"evictions_triggered", e.evictions_triggered},
                      {"evicted_keys", e.evicted_keys},
                      {"evicted_bytes", e.evicted_bytes},
                      {"stalls", e.stalls},
                      {"allocation_failure_wakeups", e.allocation_failure_wakeups},
                      {"tracked_keys", e.tracked_keys}};
  j["store_controller"] = store_->StatusJson();
  j["prefetch_controller"] = prefetch_->StatusJson();
  j["l2_adapters"] = nlohmann::json::array();
  for (const auto& a : adapters_) j["l2_adapters"].push_back(a->StatusJson());
  j["l2_eviction"] = nlohmann::json::array();
  for (const auto& c : l2_eviction_) j["l2_eviction"].push_back(c->StatusJson());
  return j;
}

}  // namespace kvtier::storage
