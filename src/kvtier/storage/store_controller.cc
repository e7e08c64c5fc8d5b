#include "kvtier/storage/store_controller.h"

#include <cstring>
#include <exception>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <poll.h>

#include "kvtier/common/logging.h"
#include "kvtier/common/units.h"

namespace kvtier::storage {

using keys::ObjectKey;
using l1::L1Result;

Result<std::unique_ptr<StoreController>> StoreController::Create(
    l1::L1Manager* l1, std::vector<l2::L2Adapter*> adapters, std::unique_ptr<StorePolicy> policy,
    const StoreControllerOptions& options) {
  if (l1 == nullptr || policy == nullptr) {
    return MakeError(Status::InvalidArgument("store controller needs an L1 and a store policy"));
  }
  if (options.max_pending_keys == 0 || options.max_keys_per_task == 0 ||
      options.poll_interval <= Duration::zero() || options.store_timeout < Duration::zero()) {
    return MakeError(Status::InvalidArgument(
        "store controller: max_pending_keys, max_keys_per_task and poll_interval must be > 0, "
        "store_timeout >= 0"));
  }
  KVT_ASSIGN_OR_RETURN(sync::EventFd wake, sync::EventFd::Create());
  KVT_ASSIGN_OR_RETURN(sync::EventFd stop, sync::EventFd::Create());
  std::unique_ptr<StoreController> c(new StoreController(
      l1, std::move(adapters), std::move(policy), options, std::move(wake), std::move(stop)));
  l1->AddListener(c.get());
  return c;
}

StoreController::StoreController(l1::L1Manager* l1, std::vector<l2::L2Adapter*> adapters,
                                 std::unique_ptr<StorePolicy> policy,
                                 const StoreControllerOptions& options, sync::EventFd wake,
                                 sync::EventFd stop)
    : l1_(l1),
      adapters_(std::move(adapters)),
      policy_(std::move(policy)),
      options_(options),
      wake_(std::move(wake)),
      stop_fd_(std::move(stop)) {}

StoreController::~StoreController() {
  Stop();
  l1_->RemoveListener(this);
  // Whatever the adapters still hold: the caller closed them or they never will finish; the L1
  // read locks must not outlive us (they would expire by TTL, but memory comes back sooner).
  for (auto& [id, task] : in_flight_) Release(task);
  in_flight_.clear();
}

Status StoreController::Start() {
  MutexLock lock(&thread_mu_);
  if (thread_.joinable()) return Status::FailedPrecondition("store controller already started");
  stop_.store(false);
  stop_fd_.Drain();
  thread_ = std::thread([this] { Loop(); });
  KVT_LOG_INFO("L2 store controller: policy {}, {} adapters", policy_->name(), adapters_.size());
  return Status::OK();
}

void StoreController::Stop() {
  {
    MutexLock lock(&thread_mu_);
    if (!thread_.joinable()) return;
    stop_.store(true);
    stop_fd_.Signal();
    thread_.join();
  }
  // The thread is gone: cancel what can be cancelled and release its locks.
  for (auto it = in_flight_.begin(); it != in_flight_.end();) {
    if (adapters_[it->first.first]->Cancel(it->first.second)) {
      Release(it->second);
      in_flight_.erase(it++);
    } else {
      ++it;
    }
  }
  in_flight_count_.store(in_flight_.size());
}

void StoreController::ReleaseAfterAdaptersClosed() {
  for (size_t a = 0; a < adapters_.size(); ++a) ProcessCompletions(a);
  for (auto& [id, task] : in_flight_) Release(task);  // an adapter that never answered
  in_flight_.clear();
  in_flight_count_.store(0);
}

void StoreController::OnL1KeysWriteFinished(std::span<const ObjectKey> keys) {
  {
    MutexLock lock(&mu_);
    keys_received_ += keys.size();
    idle_ = false;
    for (const ObjectKey& k : keys) pending_.push_back(k);
    if (pending_.size() > options_.max_pending_keys) {
      size_t excess = pending_.size() - options_.max_pending_keys;
      pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(excess));
      keys_dropped_ += excess;
    }
  }
  wake_.Signal();
}

void StoreController::Loop() {
  std::vector<pollfd> fds;
  fds.push_back({stop_fd_.fd(), POLLIN, 0});
  fds.push_back({wake_.fd(), POLLIN, 0});
  for (l2::L2Adapter* a : adapters_) fds.push_back({a->store_event_fd(), POLLIN, 0});
  const int timeout_ms = static_cast<int>(std::max<int64_t>(
      1, std::chrono::duration_cast<std::chrono::milliseconds>(options_.poll_interval).count()));
  while (!stop_.load(std::memory_order_acquire)) {
    int rc = ::poll(fds.data(), fds.size(), timeout_ms);
    if (rc < 0 && errno != EINTR) {
      KVT_LOG_ERROR("store controller: poll failed: {}", std::strerror(errno));
      counters_.loop_errors.fetch_add(1);
    }
    if (stop_.load(std::memory_order_acquire)) break;
    Step();
  }
}

void StoreController::RunOnce() { Step(); }

void StoreController::Step() {
  // The loop must never die: anything unexpected (a third-party exception from inside an
  // adapter, an allocation failure) is logged and counted, and the loop goes on.
  try {
    wake_.Drain();
    for (size_t a = 0; a < adapters_.size(); ++a) ProcessCompletions(a);
    ProcessNewKeys();
    if (options_.store_timeout > Duration::zero()) CheckTimeouts();
  } catch (const std::exception& e) {
    counters_.loop_errors.fetch_add(1);
    KVT_LOG_ERROR("store controller: unexpected error, continuing: {}", e.what());
  } catch (...) {
    counters_.loop_errors.fetch_add(1);
    KVT_LOG_ERROR("store controller: unexpected error, continuing");
  }
  in_flight_count_.store(in_flight_.size());
  MutexLock lock(&mu_);
  idle_ = pending_.empty() && in_flight_.empty();
  if (idle_) idle_cv_.NotifyAll();
}

bool StoreController::Flush(Timeout timeout) {
  TimePoint deadline = DeadlineFrom(timeout);
  wake_.Signal();
  MutexLock lock(&mu_);
  while (!idle_) {
    if (!idle_cv_.WaitUntil(&mu_, deadline) && std::chrono::steady_clock::now() >= deadline)
      return idle_;
  }
  return true;
}

void StoreController::ProcessNewKeys() {
  std::vector<ObjectKey> keys;
  {
    MutexLock lock(&mu_);
    keys.assign(pending_.begin(), pending_.end());
    pending_.clear();
  }
  if (keys.empty() || adapters_.empty()) return;
  std::vector<size_t> targets = policy_->SelectStoreTargets(keys, adapters_.size());
  for (size_t start = 0; start < keys.size(); start += options_.max_keys_per_task) {
    std::span<const ObjectKey> batch(keys.data() + start,
                                     std::min(options_.max_keys_per_task, keys.size() - start));
    for (size_t a : targets) {
      if (a < adapters_.size()) SubmitToAdapter(a, batch);
    }
  }
}

void StoreController::SubmitToAdapter(size_t adapter, std::span<const ObjectKey> keys) {
  // Pin the sources for the whole L2 write; keys evicted meanwhile are skipped.
  std::vector<l1::ObjectView> views;
  std::vector<L1Result> locked = l1_->ReserveRead(keys, 1, &views);
  InFlight task{adapter, {}, std::chrono::steady_clock::now()};
  std::vector<std::span<const uint8_t>> objects;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (locked[i] != L1Result::kSuccess) {
      counters_.keys_skipped.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    task.keys.push_back(keys[i]);
    objects.emplace_back(views[i].data, views[i].size);
  }
  if (task.keys.empty()) return;
  l2::TaskId id = adapters_[adapter]->SubmitStore(task.keys, objects);
  counters_.tasks_submitted.fetch_add(1, std::memory_order_relaxed);
  in_flight_.emplace(std::make_pair(adapter, id), std::move(task));
}

void StoreController::ProcessCompletions(size_t adapter) {
  for (l2::StoreResult& r : adapters_[adapter]->PopCompletedStores()) {
    auto it = in_flight_.find(std::make_pair(adapter, r.task));
    if (it == in_flight_.end()) continue;  // not ours (or cancelled)
    InFlight task = std::move(it->second);
    in_flight_.erase(it);
    Release(task);
    if (r.status.ok()) {
      counters_.tasks_succeeded.fetch_add(1, std::memory_order_relaxed);
      counters_.keys_stored.fetch_add(task.keys.size(), std::memory_order_relaxed);
      counters_.bytes_stored.fetch_add(r.bytes_written, std::memory_order_relaxed);
      std::vector<ObjectKey> drop = policy_->SelectL1DeletionsAfterStore(task.keys, adapter);
      if (!drop.empty()) {
        size_t n = 0;
        for (L1Result d : l1_->Delete(drop)) n += d == L1Result::kSuccess ? 1 : 0;
        counters_.l1_keys_deleted.fetch_add(n, std::memory_order_relaxed);
      }
    } else {
      // No retry: the data stays in L1 (and is stored again if it is written again).
      counters_.tasks_failed.fetch_add(1, std::memory_order_relaxed);
      KVT_LOG_DEBUG("L2 store of {} keys to {} failed: {}", task.keys.size(),
                    adapters_[adapter]->name(), r.status.ToString());
    }
  }
}

void StoreController::CheckTimeouts() {
  const TimePoint now = std::chrono::steady_clock::now();
  for (auto it = in_flight_.begin(); it != in_flight_.end();) {
    if (now - it->second.started < options_.store_timeout ||
        !adapters_[it->first.first]->Cancel(it->first.second)) {
      ++it;
      continue;
    }
    KVT_LOG_WARN("L2 store of {} keys to {} timed out after {}; cancelled", it->second.keys.size(),
                 adapters_[it->first.first]->name(), FormatDuration(options_.store_timeout));
    counters_.tasks_timed_out.fetch_add(1, std::memory_order_relaxed);
    Release(it->second);
    in_flight_.erase(it++);
  }
}

void StoreController::Release(const InFlight& task) { l1_->FinishRead(task.keys, 1); }

StoreControllerStats StoreController::stats() const {
  StoreControllerStats s;
  {
    MutexLock lock(&mu_);
    s.keys_received = keys_received_;
    s.keys_dropped = keys_dropped_;
    s.pending_keys = pending_.size();
  }
  s.keys_skipped = counters_.keys_skipped.load();
  s.tasks_submitted = counters_.tasks_submitted.load();
  s.tasks_succeeded = counters_.tasks_succeeded.load();
  s.tasks_failed = counters_.tasks_failed.load();
  s.tasks_timed_out = counters_.tasks_timed_out.load();
  s.keys_stored = counters_.keys_stored.load();
  s.bytes_stored = counters_.bytes_stored.load();
  s.l1_keys_deleted = counters_.l1_keys_deleted.load();
  s.loop_errors = counters_.loop_errors.load();
  s.in_flight_tasks = in_flight_count_.load();
  {
    MutexLock lock(&thread_mu_);
    s.running = thread_.joinable();
  }
  return s;
}

nlohmann::json StoreController::StatusJson() const {
  StoreControllerStats s = stats();
  return {{"running", s.running},
          {"policy", policy_->name()},
          {"adapters", adapters_.size()},
          {"pending_keys", s.pending_keys},
          {"in_flight_tasks", s.in_flight_tasks},
          {"keys_received", s.keys_received},
          {"keys_dropped", s.keys_dropped},
          {"keys_skipped", s.keys_skipped},
          {"tasks_submitted", s.tasks_submitted},
          {"tasks_succeeded", s.tasks_succeeded},
          {"tasks_failed", s.tasks_failed},
          {"tasks_timed_out", s.tasks_timed_out},
          {"keys_stored", s.keys_stored},
          {"bytes_stored", s.bytes_stored},
          {"l1_keys_deleted", s.l1_keys_deleted},
          {"loop_errors", s.loop_errors}};
}

}  // namespace kvtier::storage
