#include "kvtier/l2/fault_inject_adapter.h"

#include <cerrno>
#include <cstring>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <poll.h>
#include <unistd.h>

#include "kvtier/common/check.h"
#include "kvtier/common/json_config.h"
#include "kvtier/common/logging.h"
#include "kvtier/common/units.h"
#include "kvtier/l2/factory.h"

namespace kvtier::l2 {

FaultInjectAdapter::FaultInjectAdapter(std::unique_ptr<L2Adapter> inner,
                                       const FaultInjectOptions& options, std::string name,
                                       uint64_t capacity_bytes)
    : L2Adapter("fault_inject", std::move(name), capacity_bytes),
      inner_(std::move(inner)),
      options_(options),
      rng_(options.seed) {}

Result<std::unique_ptr<FaultInjectAdapter>> FaultInjectAdapter::Create(
    std::unique_ptr<L2Adapter> inner, const FaultInjectOptions& options, std::string name) {
  KVT_CHECK(inner != nullptr);
  for (double rate : {options.store_failure_rate, options.load_failure_rate,
                      options.lookup_failure_rate, options.hang_rate}) {
    if (!(rate >= 0 && rate <= 1)) {
      return MakeError(Status::InvalidArgument(
          fmt::format("fault_inject adapter '{}': rates must be in [0, 1], got {}", name, rate)));
    }
  }
  if (options.delay < Duration::zero()) {
    return MakeError(Status::InvalidArgument(
        fmt::format("fault_inject adapter '{}': delay must not be negative", name)));
  }
  const uint64_t capacity = inner->Usage().capacity_bytes;
  std::unique_ptr<FaultInjectAdapter> adapter(
      new FaultInjectAdapter(std::move(inner), options, std::move(name), capacity));
  KVT_RETURN_IF_ERROR(adapter->InitEvents());
  KVT_ASSIGN_OR_RETURN(adapter->wake_, sync::EventFd::Create());
  adapter->inner_->AddListener(adapter.get());
  adapter->relay_ = std::thread([a = adapter.get()] { a->RelayLoop(); });
  return adapter;
}

FaultInjectAdapter::~FaultInjectAdapter() { Close(); }

size_t FaultInjectAdapter::debug_hung_count() const {
  MutexLock lock(&mu_);
  return hung_;
}

double FaultInjectAdapter::Draw() {
  // 53 random bits in [0, 1): the same sequence for a seed on every platform.
  return static_cast<double>(rng_() >> 11) * 0x1.0p-53;
}

// ---- Submission ----

void FaultInjectAdapter::DoSubmitStore(TaskId task, std::span<const ObjectKey> keys,
                                       std::span<const std::span<const uint8_t>> objects) {
  Task state;
  state.kind = Kind::kStore;
  state.keys.assign(keys.begin(), keys.end());
  state.sources.assign(objects.begin(), objects.end());
  Submit(task, std::move(state));
}

void FaultInjectAdapter::DoSubmitLookupAndLock(TaskId task, std::span<const ObjectKey> keys) {
  Task state;
  state.kind = Kind::kLookup;
  state.keys.assign(keys.begin(), keys.end());
  Submit(task, std::move(state));
}

void FaultInjectAdapter::DoSubmitLoad(TaskId task, std::span<const ObjectKey> keys,
                                      std::span<const std::span<uint8_t>> buffers) {
  Task state;
  state.kind = Kind::kLoad;
  state.keys.assign(keys.begin(), keys.end());
  state.targets.assign(buffers.begin(), buffers.end());
  Submit(task, std::move(state));
}

void FaultInjectAdapter::Submit(TaskId task, Task state) {
  const Kind kind = state.kind;
  const size_t n = state.keys.size();
  bool closed = false;
  {
    MutexLock lock(&mu_);
    if (stopping_) {
      closed = true;
    } else {
      // Every draw is made whatever the outcome, so one rate does not shift the others.
      const bool hang = Draw() < options_.hang_rate;
      if (kind == Kind::kStore) {
        state.fail = Draw() < options_.store_failure_rate;
      } else {
        const double rate =
            kind == Kind::kLookup ? options_.lookup_failure_rate : options_.load_failure_rate;
        state.drop = Bitmap(n);
        for (size_t i = 0; i < n; ++i) {
          if (Draw() < rate) state.drop.Set(i);
        }
      }
      if (hang) {
        ++hung_;
        ++injected_hangs_;
        state.phase = Phase::kHung;
        tasks_.emplace(task, std::move(state));
        return;
      }
      if (options_.delay > Duration::zero()) {
        state.phase = Phase::kDelayed;
        state.forward_at = std::chrono::steady_clock::now() + options_.delay;
        delayed_.emplace(state.forward_at, task);
        tasks_.emplace(task, std::move(state));
        wake_.Signal();
        return;
      }
      if (!state.fail) {
        Forward(task, tasks_.emplace(task, std::move(state)).first->second);
        return;
      }
      ++injected_store_failures_;
    }
  }
  // An injected store failure, or a task submitted while Close() ran (which the base class
  // has already failed, so this completion is dropped).
  switch (kind) {
    case Kind::kStore:
      CompleteStore(task,
                    closed ? Status::Unavailable("fault_inject adapter closed")
                           : Status::IOError("fault_inject: injected store failure", true),
                    {}, {});
      break;
    case Kind::kLookup:
      CompleteLookup(task, Bitmap(n));
      break;
    case Kind::kLoad:
      CompleteLoad(task, Bitmap(n), 0);
      break;
  }
}

void FaultInjectAdapter::Forward(TaskId task, Task& state) {
  switch (state.kind) {
    case Kind::kStore:
      state.inner = inner_->SubmitStore(state.keys, state.sources);
      break;
    case Kind::kLookup:
      state.inner = inner_->SubmitLookupAndLock(state.keys);
      break;
    case Kind::kLoad:
      state.inner = inner_->SubmitLoad(state.keys, state.targets);
      break;
  }
  state.phase = Phase::kForwarded;
  by_inner_[state.inner] = task;
}

void FaultInjectAdapter::DoUnlock(std::span<const ObjectKey> keys) { inner_->SubmitUnlock(keys); }

bool FaultInjectAdapter::DoCancel(TaskId task) {
  std::vector<ObjectKey> unlock, flush;
  {
    MutexLock lock(&mu_);
    auto it = tasks_.find(task);
    if (it == tasks_.end()) return true;  // completed (or unknown)
    Task& t = it->second;
    switch (t.phase) {
      case Phase::kCompleting:
        return false;
      case Phase::kHung:
        --hung_;
        break;
      case Phase::kDelayed: {
        auto [first, last] = delayed_.equal_range(t.forward_at);
        for (auto d = first; d != last; ++d) {
          if (d->second == task) {
            delayed_.erase(d);
            break;
          }
        }
        break;
      }
      case Phase::kForwarded:
        if (t.kind == Kind::kLookup) {
          // Cancelling the inner lookup after it finished would leak its locks: take the
          // result if it is there, else let it run (the relay completes it).
          std::optional<Bitmap> found = inner_->QueryLookupAndLockResult(t.inner);
          if (!found) return false;
          for (size_t i = 0; i < found->size() && i < t.keys.size(); ++i) {
            if (found->Test(i)) unlock.push_back(t.keys[i]);
          }
        } else {
          if (!inner_->Cancel(t.inner)) return false;
          // The inner store may have finished and stored keys before the cancel hid it.
          if (t.kind == Kind::kStore) flush = std::move(t.keys);
        }
        by_inner_.erase(t.inner);
        break;
    }
    tasks_.erase(it);
  }
  if (!unlock.empty()) inner_->SubmitUnlock(unlock);
  if (!flush.empty()) {
    MutexLock lock(&report_mu_);
    std::vector<ObjectKey> stored;
    std::vector<uint64_t> sizes;
    ClaimPending(flush, &stored, &sizes);
    NotifyStored(stored, sizes);
  }
  return true;
}

// ---- Relay ----

void FaultInjectAdapter::RelayLoop() {
  pollfd fds[4] = {{inner_->store_event_fd(), POLLIN, 0},
                   {inner_->lookup_event_fd(), POLLIN, 0},
                   {inner_->load_event_fd(), POLLIN, 0},
                   {wake_.fd(), POLLIN, 0}};
  TimePoint next = TimePoint::max();
  for (;;) {
    {
      MutexLock lock(&mu_);
      if (stopping_) return;
    }
    int timeout_ms = -1;
    if (next != TimePoint::max()) {
      auto left = std::chrono::duration_cast<std::chrono::microseconds>(
          next - std::chrono::steady_clock::now());
      // Rounded up, so a task is never forwarded before its time.
      timeout_ms = left.count() <= 0 ? 0 : static_cast<int>((left.count() + 999) / 1000);
    }
    if (::poll(fds, 4, timeout_ms) < 0 && errno != EINTR) {
      KVT_CHECK_MSG(false, "fault_inject relay poll: {}", std::strerror(errno));
    }
    wake_.Drain();
    // Drain before querying: a completion after the query signals again.
    for (int i = 1; i < 3; ++i) {
      uint64_t value;
      [[maybe_unused]] ssize_t r = ::read(fds[i].fd, &value, sizeof(value));
    }
    next = RelayOnce();
  }
}

TimePoint FaultInjectAdapter::RelayOnce() {
  std::vector<Completion> done;
  TimePoint next = TimePoint::max();
  {
    MutexLock lock(&mu_);
    const TimePoint now = std::chrono::steady_clock::now();
    while (!stopping_ && !delayed_.empty() && delayed_.begin()->first <= now) {
      const TaskId task = delayed_.begin()->second;
      delayed_.erase(delayed_.begin());
      Task& t = tasks_.at(task);
      if (!t.fail) {
        Forward(task, t);
        continue;
      }
      ++injected_store_failures_;
      t.phase = Phase::kCompleting;
      done.push_back(Completion{task, Kind::kStore,
                                Status::IOError("fault_inject: injected store failure", true),
                                Bitmap(), Task()});
    }
    if (!delayed_.empty()) next = delayed_.begin()->first;

    for (StoreResult& r : inner_->PopCompletedStores()) {
      auto m = by_inner_.find(r.task);
      if (m == by_inner_.end()) continue;  // cancelled in the inner adapter
      const TaskId task = m->second;
      by_inner_.erase(m);
      Take(task, std::move(r.status), Bitmap(), &done);
    }
    for (auto it = by_inner_.begin(); it != by_inner_.end();) {
      const TaskId inner_task = it->first, task = it->second;
      std::optional<Bitmap> bits;
      switch (tasks_.at(task).kind) {
        case Kind::kLookup:
          bits = inner_->QueryLookupAndLockResult(inner_task);
          break;
        case Kind::kLoad:
          bits = inner_->QueryLoadResult(inner_task);
          break;
        case Kind::kStore:
          break;
      }
      if (!bits) {
        ++it;
        continue;
      }
      by_inner_.erase(it++);
      Take(task, Status::OK(), std::move(*bits), &done);
    }
  }
  if (!done.empty()) Finish(done);
  return next;
}

void FaultInjectAdapter::Take(TaskId task, Status status, Bitmap bits,
                              std::vector<Completion>* done) {
  Task& t = tasks_.at(task);
  Completion c{task, t.kind, std::move(status), std::move(bits), std::move(t)};
  t = Task();
  t.phase = Phase::kCompleting;  // until Finish erases it: Cancel returns false
  done->push_back(std::move(c));
}

void FaultInjectAdapter::Finish(std::vector<Completion>& done) {
  // Apply the injected faults, and count them before anyone can see the completions.
  uint64_t lookup_misses = 0, load_failures = 0;
  std::vector<uint64_t> load_bytes(done.size(), 0);
  std::vector<std::vector<ObjectKey>> unlock(done.size());
  for (size_t j = 0; j < done.size(); ++j) {
    Completion& c = done[j];
    if (c.kind == Kind::kStore || c.bits.size() != c.state.keys.size()) continue;
    for (size_t i : c.state.drop.SetIndices()) {
      if (!c.bits.Test(i)) continue;
      c.bits.Reset(i);
      if (c.kind == Kind::kLookup) {
        unlock[j].push_back(c.state.keys[i]);  // the inner adapter locked it
        ++lookup_misses;
      } else {
        ++load_failures;
      }
    }
    if (c.kind == Kind::kLoad) {
      for (size_t i : c.bits.SetIndices()) load_bytes[j] += c.state.targets[i].size();
    }
  }
  {
    MutexLock lock(&mu_);
    injected_lookup_misses_ += lookup_misses;
    injected_load_failures_ += load_failures;
  }
  for (size_t j = 0; j < done.size(); ++j) {
    Completion& c = done[j];
    switch (c.kind) {
      case Kind::kStore: {
        MutexLock lock(&report_mu_);
        std::vector<ObjectKey> stored;
        std::vector<uint64_t> sizes;
        ClaimPending(c.state.keys, &stored, &sizes);
        CompleteStore(c.task, std::move(c.status), stored, sizes);
        break;
      }
      case Kind::kLookup:
        if (!unlock[j].empty()) inner_->SubmitUnlock(unlock[j]);
        CompleteLookup(c.task, std::move(c.bits));
        break;
      case Kind::kLoad:
        CompleteLoad(c.task, std::move(c.bits), load_bytes[j]);
        break;
    }
  }
  MutexLock lock(&mu_);
  for (const Completion& c : done) tasks_.erase(c.task);
}

// ---- Accounting relayed from the inner adapter ----

void FaultInjectAdapter::ClaimPending(std::span<const ObjectKey> keys,
                                      std::vector<ObjectKey>* stored,
                                      std::vector<uint64_t>* sizes) {
  for (const ObjectKey& key : keys) {
    auto it = pending_.find(key);
    if (it == pending_.end()) continue;
    stored->push_back(key);
    sizes->push_back(it->second);
    accounted_[key] = it->second;
    pending_.erase(it);
  }
}

void FaultInjectAdapter::OnL2KeysStored(std::span<const ObjectKey> keys,
                                        std::span<const uint64_t> sizes) {
  MutexLock lock(&report_mu_);
  for (size_t i = 0; i < keys.size(); ++i) {
    if (!accounted_.contains(keys[i])) pending_[keys[i]] = sizes[i];
  }
}

void FaultInjectAdapter::OnL2KeysDeleted(std::span<const ObjectKey> keys) {
  MutexLock lock(&report_mu_);
  std::vector<ObjectKey> gone;
  std::vector<uint64_t> sizes;
  for (const ObjectKey& key : keys) {
    if (pending_.erase(key) > 0) continue;  // never in this adapter's accounts
    auto it = accounted_.find(key);
    if (it == accounted_.end()) continue;
    gone.push_back(key);
    sizes.push_back(it->second);
    accounted_.erase(it);
  }
  NotifyDeleted(gone, sizes);
}

// ---- Synchronous operations ----

Result<Bitmap> FaultInjectAdapter::DoDelete(std::span<const ObjectKey> keys, bool force) {
  return inner_->Delete(keys, force);
}

Result<KeyPage> FaultInjectAdapter::DoListKeys(std::string_view model_name, size_t page_size,
                                               std::string_view cursor) {
  return inner_->ListKeys(model_name, page_size, cursor);
}

Status FaultInjectAdapter::DoStart() { return inner_->Start(); }

void FaultInjectAdapter::DoClose() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
  }
  wake_.Signal();
  if (relay_.joinable()) relay_.join();
  // The inner adapter completes (or fails) every forwarded task; relay those results here.
  inner_->Close();
  RelayOnce();
  // Keys whose store result never came through (hidden by an inner Cancel race, say).
  MutexLock lock(&report_mu_);
  std::vector<ObjectKey> stored;
  std::vector<uint64_t> sizes;
  for (const auto& [key, size] : pending_) {
    stored.push_back(key);
    sizes.push_back(size);
    accounted_[key] = size;
  }
  pending_.clear();
  NotifyStored(stored, sizes);
}

bool FaultInjectAdapter::DoHealthy() const { return inner_->healthy(); }

void FaultInjectAdapter::DoStatusJson(nlohmann::json* out) const {
  (*out)["inner"] = inner_->StatusJson();
  MutexLock lock(&mu_);
  (*out)["fault_inject"] = {{"store_failure_rate", options_.store_failure_rate},
                            {"load_failure_rate", options_.load_failure_rate},
                            {"lookup_failure_rate", options_.lookup_failure_rate},
                            {"hang_rate", options_.hang_rate},
                            {"delay", FormatDuration(options_.delay)},
                            {"seed", options_.seed},
                            {"injected_store_failures", injected_store_failures_},
                            {"injected_lookup_misses", injected_lookup_misses_},
                            {"injected_load_failures", injected_load_failures_},
                            {"injected_hangs", injected_hangs_},
                            {"hung_tasks", hung_}};
}

// ---- Factory ----

Result<std::unique_ptr<L2Adapter>> MakeFaultInjectAdapter(const nlohmann::json& config,
                                                          const std::string& name) {
  JsonConfig cfg(config, fmt::format("fault_inject adapter '{}'", name));
  KVT_ASSIGN_OR_RETURN(nlohmann::json inner_config, cfg.Object("inner", /*required=*/true));
  FaultInjectOptions options;
  KVT_ASSIGN_OR_RETURN(options.store_failure_rate, cfg.Double("store_failure_rate", 0.0, 0, 1));
  KVT_ASSIGN_OR_RETURN(options.load_failure_rate, cfg.Double("load_failure_rate", 0.0, 0, 1));
  KVT_ASSIGN_OR_RETURN(options.lookup_failure_rate, cfg.Double("lookup_failure_rate", 0.0, 0, 1));
  KVT_ASSIGN_OR_RETURN(options.hang_rate, cfg.Double("hang_rate", 0.0, 0, 1));
  KVT_ASSIGN_OR_RETURN(options.delay, cfg.Seconds("delay", Duration::zero()));
  KVT_ASSIGN_OR_RETURN(int64_t seed, cfg.Int("seed", 1, 0));
  options.seed = static_cast<uint64_t>(seed);
  KVT_RETURN_IF_ERROR(cfg.Finish());
  if (!inner_config.contains("name")) inner_config["name"] = name + ".inner";
  auto inner = MakeWrappedL2Adapter(inner_config);
  if (!inner) return MakeError(inner.error().WithContext(cfg.section() + ": 'inner'"));
  KVT_ASSIGN_OR_RETURN(std::unique_ptr<FaultInjectAdapter> adapter,
                       FaultInjectAdapter::Create(std::move(*inner), options, name));
  return std::unique_ptr<L2Adapter>(std::move(adapter));
}

}  // namespace kvtier::l2
