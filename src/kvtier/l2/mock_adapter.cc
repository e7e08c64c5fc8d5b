#include "kvtier/l2/mock_adapter.h"

#include <algorithm>
#include <charconv>
#include <cstring>

#include <absl/container/flat_hash_set.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kvtier/common/check.h"
#include "kvtier/common/json_config.h"
#include "kvtier/common/units.h"

namespace kvtier::l2 {

MockAdapter::MockAdapter(const MockAdapterOptions& options, std::string name)
    : L2Adapter("mock", std::move(name), options.capacity_bytes), options_(options) {}

Result<std::unique_ptr<MockAdapter>> MockAdapter::Create(const MockAdapterOptions& options,
                                                         std::string name) {
  if (options.capacity_bytes == 0) {
    return MakeError(Status::InvalidArgument(
        fmt::format("mock adapter '{}': capacity must be greater than 0", name)));
  }
  std::unique_ptr<MockAdapter> adapter(new MockAdapter(options, std::move(name)));
  KVT_RETURN_IF_ERROR(adapter->InitEvents());
  adapter->worker_ = std::thread([a = adapter.get()] { a->WorkerLoop(); });
  return adapter;
}

MockAdapter::~MockAdapter() { Close(); }

// ---- Submission (caller threads) ----

void MockAdapter::Enqueue(Task task) {
  {
    MutexLock lock(&mu_);
    if (!stopping_) {
      queue_.push_back(std::move(task));
      cv_.NotifyAll();
      return;
    }
  }
  // Submitted while Close() ran: the base class has already failed the task, so this
  // completion is dropped; it only keeps the hook's promise to complete every task.
  switch (task.kind) {
    case Kind::kStore:
      CompleteStore(task.id, Status::Unavailable("mock adapter closed"), {}, {});
      break;
    case Kind::kLookup:
      CompleteLookup(task.id, Bitmap(task.keys.size()));
      break;
    case Kind::kLoad:
      CompleteLoad(task.id, Bitmap(task.keys.size()), 0);
      break;
  }
}

void MockAdapter::DoSubmitStore(TaskId task, std::span<const ObjectKey> keys,
                                std::span<const std::span<const uint8_t>> objects) {
  Enqueue(
      Task{task, Kind::kStore, {keys.begin(), keys.end()}, {objects.begin(), objects.end()}, {}});
}

void MockAdapter::DoSubmitLookupAndLock(TaskId task, std::span<const ObjectKey> keys) {
  Enqueue(Task{task, Kind::kLookup, {keys.begin(), keys.end()}, {}, {}});
}

void MockAdapter::DoSubmitLoad(TaskId task, std::span<const ObjectKey> keys,
                               std::span<const std::span<uint8_t>> buffers) {
  Enqueue(
      Task{task, Kind::kLoad, {keys.begin(), keys.end()}, {}, {buffers.begin(), buffers.end()}});
}

void MockAdapter::DoUnlock(std::span<const ObjectKey> keys) {
  MutexLock lock(&mu_);
  for (const ObjectKey& key : keys) locks_.Unlock(key);
}

bool MockAdapter::DoCancel(TaskId task) {
  MutexLock lock(&mu_);
  if (running_ == task) return false;
  auto it =
      std::find_if(queue_.begin(), queue_.end(), [task](const Task& t) { return t.id == task; });
  if (it != queue_.end()) queue_.erase(it);
  return true;  // not started, or already completed
}

// ---- Worker ----

Duration MockAdapter::DelayOf(const Task& task) const {
  uint64_t bytes = 0;
  for (const auto& s : task.sources) bytes += s.size();
  for (const auto& s : task.targets) bytes += s.size();
  Duration delay = options_.latency;
  if (options_.bandwidth_bytes_per_second > 0 && bytes > 0) {
    delay +=
        Duration(static_cast<int64_t>(static_cast<double>(bytes) * 1e9 /
                                      static_cast<double>(options_.bandwidth_bytes_per_second)));
  }
  return delay;
}

void MockAdapter::WorkerLoop() {
  for (;;) {
    Task task;
    {
      MutexLock lock(&mu_);
      while (!stopping_ && (paused_ || queue_.empty())) cv_.Wait(&mu_);
      if (stopping_) return;
      task = std::move(queue_.front());
      queue_.pop_front();
      running_ = task.id;
      cv_.NotifyAll();
      Duration delay = DelayOf(task);
      if (delay > Duration::zero()) {
        const TimePoint deadline = std::chrono::steady_clock::now() + delay;
        while (!stopping_ && std::chrono::steady_clock::now() < deadline) {
          cv_.WaitUntil(&mu_, deadline);
        }
        // Closing mid-delay abandons the task (its buffers untouched); Close fails it.
        if (stopping_) return;
      }
    }
    switch (task.kind) {
      case Kind::kStore:
        RunStore(task);
        break;
      case Kind::kLookup:
        RunLookup(task);
        break;
      case Kind::kLoad:
        RunLoad(task);
        break;
    }
    MutexLock lock(&mu_);
    running_ = 0;
    cv_.NotifyAll();
  }
}

void MockAdapter::Erase(const ObjectKey& key) {
  auto it = objects_.find(key);
  KVT_DCHECK(it != objects_.end());
  used_bytes_ -= it->second.data.size();
  fifo_.erase(it->second.seq);
  objects_.erase(it);
}

Status MockAdapter::Insert(const Task& task, std::vector<ObjectKey>* stored,
                           std::vector<uint64_t>* sizes, std::vector<ObjectKey>* evicted,
                           std::vector<uint64_t>* evicted_sizes) {
  const uint64_t capacity = options_.capacity_bytes;
  // The new keys (first occurrence of each) and the room they need.
  std::vector<size_t> fresh;
  absl::flat_hash_set<ObjectKey, keys::ObjectKeyHash> seen;
  uint64_t need = 0;
  for (size_t i = 0; i < task.keys.size(); ++i) {
    if (objects_.contains(task.keys[i]) || !seen.insert(task.keys[i]).second) continue;
    const uint64_t size = task.sources[i].size();
    if (size > capacity) {
      return Status(StatusCode::kResourceExhausted,
                    fmt::format("mock adapter {}: an object of {} is larger than the capacity {}",
                                name(), FormatSize(size), FormatSize(capacity)),
                    /*retryable=*/false);
    }
    fresh.push_back(i);
    need += size;
  }
  if (need > capacity) {
    return Status(StatusCode::kResourceExhausted,
                  fmt::format("mock adapter {}: a task of {} is larger than the capacity {}",
                              name(), FormatSize(need), FormatSize(capacity)),
                  /*retryable=*/false);
  }
  if (used_bytes_ + need > capacity) {
    // Oldest first, skipping locked keys; evict only when the whole task then fits.
    std::vector<ObjectKey> victims;
    uint64_t freed = 0;
    for (const auto& [seq, key] : fifo_) {
      if (used_bytes_ - freed + need <= capacity) break;
      if (locks_.IsLocked(key)) continue;
      victims.push_back(key);
      freed += objects_.at(key).data.size();
    }
    if (used_bytes_ - freed + need > capacity) {
      return Status::ResourceExhausted(fmt::format(
          "mock adapter {}: cannot fit {} ({} used of {}, {} evictable)", name(), FormatSize(need),
          FormatSize(used_bytes_), FormatSize(capacity), FormatSize(freed)));
    }
    for (const ObjectKey& key : victims) {
      evicted->push_back(key);
      evicted_sizes->push_back(objects_.at(key).data.size());
      Erase(key);
    }
  }
  for (size_t i : fresh) {
    const auto& src = task.sources[i];
    Entry entry;
    entry.data.assign(src.begin(), src.end());
    entry.seq = next_seq_++;
    fifo_.emplace(entry.seq, task.keys[i]);
    used_bytes_ += src.size();
    objects_.emplace(task.keys[i], std::move(entry));
    stored->push_back(task.keys[i]);
    sizes->push_back(src.size());
  }
  return Status::OK();
}

void MockAdapter::RunStore(const Task& task) {
  std::vector<ObjectKey> stored, evicted;
  std::vector<uint64_t> sizes, evicted_sizes;
  MutexLock report(&report_mu_);
  Status status;
  {
    MutexLock lock(&mu_);
    status = Insert(task, &stored, &sizes, &evicted, &evicted_sizes);
  }
  NotifyDeleted(evicted, evicted_sizes);
  CompleteStore(task.id, std::move(status), stored, sizes);
}

void MockAdapter::RunLookup(const Task& task) {
  Bitmap found(task.keys.size());
  {
    MutexLock lock(&mu_);
    for (size_t i = 0; i < task.keys.size(); ++i) {
      if (!objects_.contains(task.keys[i])) continue;
      found.Set(i);
      locks_.Lock(task.keys[i]);
    }
  }
  CompleteLookup(task.id, std::move(found));
}

void MockAdapter::RunLoad(const Task& task) {
  Bitmap loaded(task.keys.size());
  uint64_t bytes = 0;
  {
    MutexLock lock(&mu_);
    for (size_t i = 0; i < task.keys.size(); ++i) {
      auto it = objects_.find(task.keys[i]);
      if (it == objects_.end()) continue;
      const std::vector<uint8_t>& data = it->second.data;
      const std::span<uint8_t> target = task.targets[i];
      if (data.size() != target.size()) continue;
      if (!data.empty()) std::memcpy(target.data(), data.data(), data.size());
      loaded.Set(i);
      bytes += data.size();
    }
  }
  CompleteLoad(task.id, std::move(loaded), bytes);
}

// ---- Synchronous operations ----

Result<Bitmap> MockAdapter::DoDelete(std::span<const ObjectKey> keys, bool force) {
  Bitmap deleted(keys.size());
  std::vector<ObjectKey> gone;
  std::vector<uint64_t> sizes;
  MutexLock report(&report_mu_);
  {
    MutexLock lock(&mu_);
    for (size_t i = 0; i < keys.size(); ++i) {
      auto it = objects_.find(keys[i]);
      if (it == objects_.end()) {
        deleted.Set(i);  // not stored: nothing to delete
        continue;
      }
      if (!force && locks_.IsLocked(keys[i])) continue;
      gone.push_back(keys[i]);
      sizes.push_back(it->second.data.size());
      Erase(keys[i]);
      deleted.Set(i);
    }
  }
  NotifyDeleted(gone, sizes);
  return deleted;
}

Result<KeyPage> MockAdapter::DoListKeys(std::string_view model_name, size_t page_size,
                                        std::string_view cursor) {
  // The cursor is the insertion sequence number to resume from: keys stored later come after
  // every key already listed, so a key is listed at most once.
  uint64_t start = 0;
  if (!cursor.empty()) {
    auto [end, ec] = std::from_chars(cursor.data(), cursor.data() + cursor.size(), start);
    if (ec != std::errc() || end != cursor.data() + cursor.size()) {
      return MakeError(Status::InvalidArgument(
          fmt::format("mock adapter {}: invalid ListKeys cursor '{}'", name(), cursor)));
    }
  }
  KeyPage page;
  MutexLock lock(&mu_);
  for (auto it = fifo_.lower_bound(start); it != fifo_.end(); ++it) {
    if (it->second.model_name() != model_name) continue;
    if (page.keys.size() == page_size) {
      page.next_cursor = std::to_string(it->first);
      break;
    }
    page.keys.emplace_back(it->second, objects_.at(it->second).data.size());
  }
  return page;
}

void MockAdapter::DoClose() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
    cv_.NotifyAll();
  }
  if (worker_.joinable()) worker_.join();
  MutexLock lock(&mu_);
  queue_.clear();  // never started: the base class fails them
}

void MockAdapter::DoStatusJson(nlohmann::json* out) const {
  MutexLock lock(&mu_);
  (*out)["stored_objects"] = objects_.size();
  (*out)["locked_keys"] = locks_.size();
  (*out)["queued_tasks"] = queue_.size();
  (*out)["bandwidth_bytes_per_second"] = options_.bandwidth_bytes_per_second;
  (*out)["latency"] = FormatDuration(options_.latency);
}

// ---- Test and debug views ----

size_t MockAdapter::debug_stored_count() const {
  MutexLock lock(&mu_);
  return objects_.size();
}

size_t MockAdapter::debug_locked_count() const {
  MutexLock lock(&mu_);
  return locks_.size();
}

bool MockAdapter::debug_has_key(const ObjectKey& key) const {
  MutexLock lock(&mu_);
  return objects_.contains(key);
}

AdapterUsage MockAdapter::debug_actual_usage() const {
  AdapterUsage usage;
  usage.capacity_bytes = options_.capacity_bytes;
  MutexLock lock(&mu_);
  for (const auto& [key, entry] : objects_) {
    usage.used_bytes += entry.data.size();
    if (!entry.data.empty())
      usage.bytes_by_cache_salt[std::string(key.cache_salt())] += entry.data.size();
  }
  return usage;
}

void MockAdapter::SetPausedForTesting(bool paused) {
  MutexLock lock(&mu_);
  paused_ = paused;
  cv_.NotifyAll();
}

bool MockAdapter::WaitUntilRunningForTesting(TaskId task, Timeout timeout) {
  const TimePoint deadline = DeadlineFrom(timeout);
  MutexLock lock(&mu_);
  while (running_ != task) {
    if (!cv_.WaitUntil(&mu_, deadline) && std::chrono::steady_clock::now() >= deadline) {
      return running_ == task;
    }
  }
  return true;
}

// ---- Factory ----

Result<std::unique_ptr<L2Adapter>> MakeMockAdapter(const nlohmann::json& config,
                                                   const std::string& name) {
  JsonConfig cfg(config, fmt::format("mock adapter '{}'", name));
  MockAdapterOptions options;
  KVT_ASSIGN_OR_RETURN(options.capacity_bytes, cfg.Size("capacity"));
  KVT_ASSIGN_OR_RETURN(options.bandwidth_bytes_per_second, cfg.Size("bandwidth", 0));
  KVT_ASSIGN_OR_RETURN(options.latency, cfg.Seconds("latency", Duration::zero()));
  KVT_RETURN_IF_ERROR(cfg.Finish());
  if (options.capacity_bytes == 0) {
    return MakeError(Status::InvalidArgument(
        fmt::format("{}: 'capacity': must be greater than 0", cfg.section())));
  }
  KVT_ASSIGN_OR_RETURN(std::unique_ptr<MockAdapter> adapter, MockAdapter::Create(options, name));
  return std::unique_ptr<L2Adapter>(std::move(adapter));
}

}  // namespace kvtier::l2
