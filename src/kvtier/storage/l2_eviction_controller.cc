#include "kvtier/storage/l2_eviction_controller.h"

#include <algorithm>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kvtier/common/json_config.h"
#include "kvtier/common/logging.h"

namespace kvtier::storage {

using keys::ObjectKey;

Result<L2EvictionOptions> ParseL2EvictionOptions(const nlohmann::json& block,
                                                 const std::string& adapter_name) {
  L2EvictionOptions o;
  JsonConfig c(block, fmt::format("eviction of L2 adapter '{}'", adapter_name));
  KVT_ASSIGN_OR_RETURN(o.policy, c.String("policy", o.policy));
  KVT_ASSIGN_OR_RETURN(o.trigger_watermark,
                       c.Double("trigger_watermark", o.trigger_watermark, 0.01, 1.0));
  KVT_ASSIGN_OR_RETURN(o.target_watermark,
                       c.Double("target_watermark", o.target_watermark, 0.0, 1.0));
  KVT_ASSIGN_OR_RETURN(o.check_interval, c.Seconds("check_interval", o.check_interval));
  KVT_RETURN_IF_ERROR(c.Finish());
  if (o.target_watermark >= o.trigger_watermark) {
    return MakeError(Status::InvalidArgument(
        fmt::format("{}: target_watermark {} must be below trigger_watermark {}", c.section(),
                    o.target_watermark, o.trigger_watermark)));
  }
  return o;
}

Result<std::unique_ptr<L2EvictionController>> L2EvictionController::Create(
    l2::L2Adapter* adapter, const L2EvictionOptions& options) {
  if (adapter == nullptr) return MakeError(Status::InvalidArgument("L2 eviction needs an adapter"));
  if (adapter->Usage().capacity_bytes == 0) {
    return MakeError(Status::InvalidArgument(
        fmt::format("L2 adapter '{}' has an eviction block but no capacity (set max_capacity)",
                    adapter->name())));
  }
  if (options.check_interval <= Duration::zero() || options.victims_per_round == 0) {
    return MakeError(
        Status::InvalidArgument("L2 eviction: check_interval and victims_per_round must be > 0"));
  }
  KVT_ASSIGN_OR_RETURN(auto policy, eviction::MakeEvictionPolicy(options.policy));
  KVT_ASSIGN_OR_RETURN(sync::EventFd wake, sync::EventFd::Create());
  std::unique_ptr<L2EvictionController> c(
      new L2EvictionController(adapter, std::move(policy), options, std::move(wake)));
  adapter->AddListener(c.get());
  return c;
}

L2EvictionController::L2EvictionController(l2::L2Adapter* adapter,
                                           std::unique_ptr<eviction::EvictionPolicy> policy,
                                           const L2EvictionOptions& options, sync::EventFd wake)
    : adapter_(adapter),
      options_(options),
      capacity_(adapter->Usage().capacity_bytes),
      wake_(std::move(wake)),
      policy_(std::move(policy)) {}

L2EvictionController::~L2EvictionController() { Stop(); }

Status L2EvictionController::Start() {
  MutexLock lock(&thread_mu_);
  if (thread_.joinable())
    return Status::FailedPrecondition("L2 eviction controller already started");
  stop_.store(false);
  thread_ = std::thread([this] { Loop(); });
  KVT_LOG_INFO("L2 eviction for {}: policy {}, trigger {:.0f}%, target {:.0f}% of {} bytes",
               adapter_->name(), options_.policy, options_.trigger_watermark * 100,
               options_.target_watermark * 100, capacity_);
  return Status::OK();
}

void L2EvictionController::Stop() {
  MutexLock lock(&thread_mu_);
  if (!thread_.joinable()) return;
  stop_.store(true);
  wake_.Signal();
  thread_.join();
}

void L2EvictionController::Loop() {
  while (!stop_.load(std::memory_order_acquire)) {
    wake_.WaitFor(options_.check_interval);
    wake_.Drain();
    if (stop_.load(std::memory_order_acquire)) break;
    RunOnce();
  }
}

void L2EvictionController::Enqueue(Kind kind, std::span<const ObjectKey> keys) {
  MutexLock lock(&queue_mu_);
  for (size_t i = 0; i < keys.size(); ++i) queue_.push_back(Event{kind, i == 0, keys[i]});
}

void L2EvictionController::OnL2KeysStored(std::span<const ObjectKey> keys,
                                          std::span<const uint64_t>) {
  Enqueue(Kind::kCreated, keys);
  if (adapter_->Usage().used_bytes >= options_.trigger_watermark * static_cast<double>(capacity_)) {
    wake_.Signal();
  }
}

void L2EvictionController::OnL2KeysAccessed(std::span<const ObjectKey> keys) {
  Enqueue(Kind::kTouched, keys);
}

void L2EvictionController::OnL2KeysDeleted(std::span<const ObjectKey> keys) {
  Enqueue(Kind::kRemoved, keys);
}

void L2EvictionController::ApplyEvents() {
  std::vector<Event> events;
  {
    MutexLock lock(&queue_mu_);
    events.swap(queue_);
  }
  std::vector<ObjectKey> batch;
  for (size_t i = 0; i < events.size();) {
    Kind kind = events[i].kind;
    batch.clear();
    for (size_t start = i; i < events.size() && (i == start || !events[i].first_of_call); ++i) {
      batch.push_back(events[i].key);
    }
    switch (kind) {
      case Kind::kCreated:
        policy_->OnCreated(batch);
        break;
      case Kind::kTouched:
        policy_->OnTouched(batch);
        break;
      case Kind::kRemoved:
        policy_->OnRemoved(batch);
        break;
    }
  }
}

uint64_t L2EvictionController::RunOnce() {
  MutexLock lock(&policy_mu_);
  ApplyEvents();
  return EvictLocked();
}

uint64_t L2EvictionController::EvictLocked() {
  const uint64_t trigger =
      static_cast<uint64_t>(options_.trigger_watermark * static_cast<double>(capacity_));
  const uint64_t goal =
      static_cast<uint64_t>(options_.target_watermark * static_cast<double>(capacity_));
  uint64_t used = adapter_->Usage().used_bytes;
  if (used < trigger) return 0;
  ++stats_.evictions_triggered;
  uint64_t evicted = 0;
  std::vector<ObjectKey> victims;
  while (used > goal && !stop_.load(std::memory_order_acquire)) {
    victims.clear();
    policy_->SelectVictims(
        VictimsFor(used - goal, used), [](const ObjectKey&) { return true; }, &victims);
    if (victims.empty()) break;
    Result<keys::Bitmap> gone = adapter_->Delete(victims, /*force=*/false);
    if (!gone) {
      ++stats_.delete_errors;
      KVT_LOG_WARN("L2 eviction for {}: delete failed: {}", adapter_->name(),
                   gone.error().ToString());
      break;
    }
    // Bit i: victims[i] is not stored any more (deleted now, or already gone). Untrack those;
    // move locked ones to the recent end so the next round sees other keys.
    std::vector<ObjectKey> removed, locked;
    for (size_t i = 0; i < victims.size(); ++i)
      (gone->Test(i) ? removed : locked).push_back(victims[i]);
    policy_->OnRemoved(removed);
    policy_->OnTouched(locked);
    stats_.locked_skips += locked.size();
    ApplyEvents();
    uint64_t now_used = adapter_->Usage().used_bytes;
    stats_.evicted_bytes += used > now_used ? used - now_used : 0;
    stats_.evicted_keys += removed.size();
    evicted += removed.size();
    used = now_used;
    if (removed.empty()) break;  // everything left is locked: try again later
  }
  return evicted;
}

size_t L2EvictionController::VictimsFor(uint64_t excess, uint64_t used) const {
  // Sizes are not tracked per key: estimate with the mean object size. The loop re-checks usage
  // after every round, so an estimate too low only costs another round.
  const size_t tracked = policy_->size();
  if (tracked == 0) return 1;
  const uint64_t mean = std::max<uint64_t>(1, used / tracked);
  const uint64_t want = (excess + mean - 1) / mean;
  return static_cast<size_t>(std::clamp<uint64_t>(want, 1, options_.victims_per_round));
}

L2EvictionStats L2EvictionController::stats() const {
  L2EvictionStats s;
  {
    MutexLock lock(&policy_mu_);
    s = stats_;
    s.tracked_keys = policy_->size();
  }
  MutexLock lock(&thread_mu_);
  s.running = thread_.joinable();
  return s;
}

nlohmann::json L2EvictionController::StatusJson() const {
  L2EvictionStats s = stats();
  return {{"adapter", adapter_->name()},
          {"running", s.running},
          {"policy", options_.policy},
          {"trigger_watermark", options_.trigger_watermark},
          {"target_watermark", options_.target_watermark},
          {"capacity_bytes", capacity_},
          {"evictions_triggered", s.evictions_triggered},
          {"evicted_keys", s.evicted_keys},
          {"evicted_bytes", s.evicted_bytes},
          {"locked_skips", s.locked_skips},
          {"delete_errors", s.delete_errors},
          {"tracked_keys", s.tracked_keys}};
}

}  // namespace kvtier::storage
