#include "kvtier/eviction/l1_eviction_controller.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "kvtier/common/logging.h"

namespace kvtier::eviction {

using keys::ObjectKey;
using l1::L1Result;

Result<std::unique_ptr<L1EvictionController>> L1EvictionController::Create(
    l1::L1Manager* l1, std::unique_ptr<EvictionPolicy> policy, const L1EvictionOptions& options) {
  if (l1 == nullptr || policy == nullptr) {
    return MakeError(Status::InvalidArgument("eviction controller needs an L1 and a policy"));
  }
  if (!(options.trigger_watermark > 0 && options.trigger_watermark <= 1)) {
    return MakeError(Status::InvalidArgument(fmt::format(
        "eviction trigger watermark must be in (0, 1], got {}", options.trigger_watermark)));
  }
  if (!(options.target_watermark >= 0 && options.target_watermark < options.trigger_watermark)) {
    return MakeError(Status::InvalidArgument(
        fmt::format("eviction target watermark must be in [0, trigger watermark {}), got {}",
                    options.trigger_watermark, options.target_watermark)));
  }
  if (options.check_interval <= Duration::zero() || options.victims_per_round == 0) {
    return MakeError(
        Status::InvalidArgument("eviction check interval and victims per round must be > 0"));
  }
  KVT_ASSIGN_OR_RETURN(sync::EventFd wake, sync::EventFd::Create());
  std::unique_ptr<L1EvictionController> c(
      new L1EvictionController(l1, std::move(policy), options, std::move(wake)));
  l1->AddListener(c.get());
  return c;
}

L1EvictionController::L1EvictionController(l1::L1Manager* l1,
                                           std::unique_ptr<EvictionPolicy> policy,
                                           const L1EvictionOptions& options, sync::EventFd wake)
    : l1_(l1),
      options_(options),
      trigger_bytes_(
          static_cast<uint64_t>(std::ceil(options.trigger_watermark * l1->capacity_bytes()))),
      target_bytes_(static_cast<uint64_t>(options.target_watermark * l1->capacity_bytes())),
      policy_name_(policy->name()),
      wake_(std::move(wake)),
      policy_(std::move(policy)) {}

L1EvictionController::~L1EvictionController() {
  Stop();
  l1_->RemoveListener(this);
}

Status L1EvictionController::Start() {
  MutexLock lock(&thread_mu_);
  if (thread_.joinable()) return Status::FailedPrecondition("eviction controller already started");
  stop_.store(false);
  thread_ = std::thread([this] { Loop(); });
  KVT_LOG_INFO("L1 eviction: policy {}, trigger {:.0f}%, target {:.0f}%", policy_name_,
               options_.trigger_watermark * 100, options_.target_watermark * 100);
  return Status::OK();
}

void L1EvictionController::Stop() {
  MutexLock lock(&thread_mu_);
  if (!thread_.joinable()) return;
  stop_.store(true);
  wake_.Signal();
  thread_.join();
}

void L1EvictionController::Loop() {
  while (!stop_.load(std::memory_order_acquire)) {
    wake_.WaitFor(options_.check_interval);
    wake_.Drain();
    if (stop_.load(std::memory_order_acquire)) break;
    wakeups_.fetch_add(1, std::memory_order_relaxed);
    watermark_signalled_.store(false, std::memory_order_release);
    RunOnce();
  }
}

uint32_t L1EvictionController::events() const {
  return l1::L1Listener::kReservedWrite | l1::L1Listener::kWriteFinished |
         l1::L1Listener::kWriteFinishedAndReadReserved | l1::L1Listener::kDeleted | l1::L1Listener::kAccessed |
         l1::L1Listener::kAllocationFailed;
}

void L1EvictionController::Enqueue(Kind kind, std::span<const ObjectKey> keys) {
  bool wake = false;
  {
    MutexLock lock(&queue_mu_);
    size_t before = queue_.size();
    for (size_t i = 0; i < keys.size(); ++i) queue_.push_back(Event{kind, i == 0, keys[i]});
    wake = before < options_.queue_wake_threshold && queue_.size() >= options_.queue_wake_threshold;
  }
  if (wake) wake_.Signal();
}

void L1EvictionController::OnL1KeysReservedWrite(std::span<const ObjectKey> keys) {
  // Created at reservation, so a staging buffer its writer abandons becomes evictable once its
  // write lock expires.
  Enqueue(Kind::kCreated, keys);
  if (l1_->used_bytes() >= trigger_bytes_ && !watermark_signalled_.exchange(true)) wake_.Signal();
}

void L1EvictionController::OnL1KeysWriteFinished(std::span<const ObjectKey> keys) {
  Enqueue(Kind::kCreated, keys);
}

void L1EvictionController::OnL1KeysWriteFinishedAndReadReserved(std::span<const ObjectKey> keys) {
  Enqueue(Kind::kCreated, keys);
}

void L1EvictionController::OnL1KeysDeleted(std::span<const ObjectKey> keys) {
  Enqueue(Kind::kRemoved, keys);
}

void L1EvictionController::OnL1KeysAccessed(std::span<const ObjectKey> keys) {
  Enqueue(Kind::kTouched, keys);
}

void L1EvictionController::OnL1AllocationFailed(uint64_t bytes) {
  uint64_t prev = pending_need_bytes_.load(std::memory_order_relaxed);
  while (prev < bytes && !pending_need_bytes_.compare_exchange_weak(prev, bytes)) {
  }
  allocation_failures_.fetch_add(1, std::memory_order_relaxed);
  wake_.Signal();
}

void L1EvictionController::ApplyEvents() {
  {
    MutexLock lock(&queue_mu_);
    applying_.swap(queue_);
  }
  // Each L1 call's keys, in request order, reach the policy as one batch, so its batch-order
  // rule (a request's later chunks go first) holds within a request and not across requests.
  std::vector<ObjectKey> batch;
  size_t i = 0;
  while (i < applying_.size()) {
    Kind kind = applying_[i].kind;
    batch.clear();
    for (size_t start = i; i < applying_.size() && (i == start || !applying_[i].first_of_call);
         ++i) {
      const ObjectKey& k = applying_[i].key;
      // A deletion may be reported after a concurrent re-creation of the key: keep tracking
      // keys L1 still holds.
      if (kind == Kind::kRemoved && l1_->Exists(k)) continue;
      batch.push_back(k);
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
  stats_.events_applied += applying_.size();
  applying_.clear();
}

void L1EvictionController::DropStale(std::vector<ObjectKey>* stale) {
  // "L1 does not hold it" may be old news: a key re-created since then has a newer "created"
  // event that may already be applied. Confirm now; a key created after this check has its
  // event still queued, applied after this removal.
  std::erase_if(*stale, [this](const ObjectKey& k) { return l1_->Exists(k); });
  if (!stale->empty()) {
    policy_->OnRemoved(*stale);
    stats_.stale_keys_dropped += stale->size();
  }
  stale->clear();
}

uint64_t L1EvictionController::RunOnce() {
  MutexLock lock(&policy_mu_);
  ApplyEvents();
  return EvictLocked();
}

uint64_t L1EvictionController::EvictLocked() {
  const uint64_t capacity = l1_->capacity_bytes();
  const uint64_t need = pending_need_bytes_.exchange(0, std::memory_order_acq_rel);
  uint64_t used = l1_->used_bytes();
  // Goal: at or below the target once over the trigger, and room for the failed request.
  uint64_t goal = used >= trigger_bytes_ ? target_bytes_ : used;
  if (need > 0) {
    goal = std::min(goal, need >= capacity ? 0 : capacity - need);
    stats_.allocation_failure_wakeups = allocation_failures_.load(std::memory_order_relaxed);
  }
  if (used <= goal) return 0;
  ++stats_.evictions_triggered;

  uint64_t evicted = 0;
  std::vector<ObjectKey> victims;
  std::vector<ObjectKey> stale;
  while (used > goal && !stop_.load(std::memory_order_acquire)) {
    victims.clear();
    stale.clear();
    policy_->SelectVictims(
        options_.victims_per_round,
        [&](const ObjectKey& k) {
          if (l1_->IsKeyEvictable(k)) return true;
          if (!l1_->Exists(k)) stale.push_back(k);
          return false;
        },
        &victims);
    DropStale(&stale);
    if (victims.empty()) {
      ++stats_.stalls;
      KVT_LOG_DEBUG("L1 eviction stalled: {} bytes used, goal {}, nothing evictable", used, goal);
      break;
    }
    // Delete only what the goal needs: objects can be large, so a whole round of victims
    // could overshoot by far. Slice sizes follow the bytes freed per key so far.
    size_t progress = 0;
    size_t next = 0;
    while (next < victims.size() && used > goal) {
      size_t n = 1;
      if (evicted_keys_bytes_ > 0 && evicted_keys_count_ > 0) {
        uint64_t per_key = std::max<uint64_t>(1, evicted_keys_bytes_ / evicted_keys_count_);
        n = static_cast<size_t>((used - goal + per_key - 1) / per_key);
      }
      n = std::clamp<size_t>(n, 1, victims.size() - next);
      std::span<const ObjectKey> slice(victims.data() + next, n);
      next += n;
      std::vector<L1Result> results = l1_->Delete(slice, /*force=*/false);
      size_t deleted = 0;
      for (size_t j = 0; j < slice.size(); ++j) {
        if (results[j] == L1Result::kSuccess) {
          ++deleted;
        } else if (results[j] == L1Result::kKeyNotExist) {
          stale.push_back(slice[j]);
        }
      }
      uint64_t now_used = l1_->used_bytes();
      // Approximate under concurrent writers: they allocate while we free.
      uint64_t freed = used > now_used ? used - now_used : 0;
      if (deleted > 0 && freed > 0) {
        evicted_keys_bytes_ += freed;
        evicted_keys_count_ += deleted;
        if (evicted_keys_count_ > 1024) {  // decay, so the estimate follows changing sizes
          evicted_keys_bytes_ /= 2;
          evicted_keys_count_ /= 2;
        }
      }
      stats_.evicted_bytes += freed;
      progress += deleted;
      used = now_used;
    }
    const bool found_stale = !stale.empty();
    DropStale(&stale);
    // Our own deletions come back as queued events: apply them so they are not selected again.
    ApplyEvents();
    stats_.evicted_keys += progress;
    evicted += progress;
    if (progress == 0 && !found_stale) {
      // Every victim got locked between selection and deletion; try again next wake-up.
      ++stats_.stalls;
      break;
    }
  }
  return evicted;
}

L1EvictionStats L1EvictionController::stats() const {
  L1EvictionStats s;
  {
    MutexLock lock(&policy_mu_);
    s = stats_;
    s.tracked_keys = policy_->size();
  }
  s.wakeups = wakeups_.load(std::memory_order_relaxed);
  s.allocation_failure_wakeups = allocation_failures_.load(std::memory_order_relaxed);
  {
    MutexLock lock(&thread_mu_);
    s.running = thread_.joinable();
  }
  return s;
}

}  // namespace kvtier::eviction
