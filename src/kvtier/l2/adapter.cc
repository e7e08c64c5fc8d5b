#include "kvtier/l2/adapter.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kvtier/common/check.h"
#include "kvtier/common/logging.h"

namespace kvtier::l2 {

L2Adapter::L2Adapter(std::string type, std::string name, uint64_t capacity_bytes)
    : type_(std::move(type)), name_(std::move(name)), capacity_bytes_(capacity_bytes) {}

L2Adapter::~L2Adapter() {
  MutexLock lock(&mu_);
  KVT_DCHECK_MSG(in_flight_.empty() || closed_.load(),
                 "L2 adapter {} destroyed without Close() while tasks are in flight", name_);
}

Status L2Adapter::InitEvents() {
  KVT_ASSIGN_OR_RETURN(store_fd_, sync::EventFd::Create());
  KVT_ASSIGN_OR_RETURN(lookup_fd_, sync::EventFd::Create());
  KVT_ASSIGN_OR_RETURN(load_fd_, sync::EventFd::Create());
  return Status::OK();
}

TaskId L2Adapter::Begin(Kind kind, size_t keys) {
  TaskId task = next_task_.fetch_add(1, std::memory_order_relaxed);
  MutexLock lock(&mu_);
  in_flight_.emplace(task, kind);
  switch (kind) {
    case Kind::kStore:
      ++counters_.store_tasks;
      counters_.store_keys += keys;
      break;
    case Kind::kLookup:
      ++counters_.lookup_tasks;
      counters_.lookup_keys += keys;
      break;
    case Kind::kLoad:
      ++counters_.load_tasks;
      counters_.load_keys += keys;
      break;
  }
  return task;
}

bool L2Adapter::End(TaskId task) { return in_flight_.erase(task) == 1; }

TaskId L2Adapter::SubmitStore(std::span<const ObjectKey> keys,
                              std::span<const std::span<const uint8_t>> objects) {
  KVT_CHECK_MSG(keys.size() == objects.size(), "SubmitStore: {} keys, {} objects", keys.size(),
                objects.size());
  TaskId task = Begin(Kind::kStore, keys.size());
  if (closed_.load(std::memory_order_acquire)) {
    CompleteStore(task, Status::Unavailable(fmt::format("L2 adapter {} is closed", name_)), {}, {});
  } else {
    DoSubmitStore(task, keys, objects);
  }
  return task;
}

std::vector<StoreResult> L2Adapter::PopCompletedStores() {
  store_fd_.Drain();
  MutexLock lock(&mu_);
  return std::exchange(completed_stores_, {});
}

TaskId L2Adapter::SubmitLookupAndLock(std::span<const ObjectKey> keys) {
  TaskId task = Begin(Kind::kLookup, keys.size());
  {
    MutexLock lock(&mu_);
    lookup_keys_.emplace(task, std::vector<ObjectKey>(keys.begin(), keys.end()));
  }
  if (closed_.load(std::memory_order_acquire)) {
    CompleteLookup(task, Bitmap(keys.size()));
  } else {
    DoSubmitLookupAndLock(task, keys);
  }
  return task;
}

std::optional<Bitmap> L2Adapter::QueryLookupAndLockResult(TaskId task) {
  MutexLock lock(&mu_);
  auto it = completed_lookups_.find(task);
  if (it == completed_lookups_.end()) return std::nullopt;
  Bitmap result = std::move(it->second);
  completed_lookups_.erase(it);
  lookup_keys_.erase(task);
  return result;
}

std::vector<ObjectKey> L2Adapter::DropLookup(TaskId task) {
  std::vector<ObjectKey> found;
  auto keys = lookup_keys_.find(task);
  auto done = completed_lookups_.find(task);
  if (keys != lookup_keys_.end() && done != completed_lookups_.end()) {
    for (size_t i = 0; i < done->second.size() && i < keys->second.size(); ++i) {
      if (done->second.Test(i)) found.push_back(keys->second[i]);
    }
  }
  if (done != completed_lookups_.end()) completed_lookups_.erase(done);
  if (keys != lookup_keys_.end()) lookup_keys_.erase(keys);
  return found;
}

void L2Adapter::SubmitUnlock(std::span<const ObjectKey> keys) {
  if (!keys.empty() && !closed_.load(std::memory_order_acquire)) DoUnlock(keys);
}

TaskId L2Adapter::SubmitLoad(std::span<const ObjectKey> keys,
                             std::span<const std::span<uint8_t>> buffers) {
  KVT_CHECK_MSG(keys.size() == buffers.size(), "SubmitLoad: {} keys, {} buffers", keys.size(),
                buffers.size());
  TaskId task = Begin(Kind::kLoad, keys.size());
  if (!listeners_.empty()) {
    MutexLock lock(&mu_);
    load_keys_.emplace(task, std::vector<ObjectKey>(keys.begin(), keys.end()));
  }
  if (closed_.load(std::memory_order_acquire)) {
    CompleteLoad(task, Bitmap(keys.size()), 0);
  } else {
    DoSubmitLoad(task, keys, buffers);
  }
  return task;
}

std::optional<Bitmap> L2Adapter::QueryLoadResult(TaskId task) {
  MutexLock lock(&mu_);
  auto it = completed_loads_.find(task);
  if (it == completed_loads_.end()) return std::nullopt;
  Bitmap result = std::move(it->second);
  completed_loads_.erase(it);
  return result;
}

bool L2Adapter::Cancel(TaskId task) {
  std::vector<ObjectKey> unlock;
  bool finished;
  {
    MutexLock lock(&mu_);
    finished = !in_flight_.contains(task);
    if (finished) {
      // Finished already (or unknown): drop a result nobody will collect, and the locks a
      // lookup took.
      unlock = DropLookup(task);
      completed_loads_.erase(task);
      load_keys_.erase(task);
      std::erase_if(completed_stores_, [task](const StoreResult& r) { return r.task == task; });
    }
  }
  if (finished) {
    if (!unlock.empty()) SubmitUnlock(unlock);
    return true;
  }
  if (!DoCancel(task)) return false;
  {
    MutexLock lock(&mu_);
    if (End(task)) ++counters_.cancelled_tasks;
    // A completion that raced the cancel may have landed: drop it too.
    unlock = DropLookup(task);
    completed_loads_.erase(task);
    load_keys_.erase(task);
    std::erase_if(completed_stores_, [task](const StoreResult& r) { return r.task == task; });
  }
  if (!unlock.empty()) SubmitUnlock(unlock);
  return true;
}

Status L2Adapter::Start() {
  if (started_.exchange(true)) return Status::OK();
  if (closed_.load(std::memory_order_acquire)) {
    return Status::Unavailable(fmt::format("L2 adapter {} is closed", name_));
  }
  return DoStart().WithContext(fmt::format("starting L2 adapter {}", name_));
}

Result<Bitmap> L2Adapter::Delete(std::span<const ObjectKey> keys, bool force) {
  if (closed_.load(std::memory_order_acquire)) {
    return MakeError(Status::Unavailable(fmt::format("L2 adapter {} is closed", name_)));
  }
  return DoDelete(keys, force);
}

Result<KeyPage> L2Adapter::ListKeys(std::string_view model_name, size_t page_size,
                                    std::string_view cursor) {
  if (page_size == 0) return MakeError(Status::InvalidArgument("ListKeys: page_size must be > 0"));
  return DoListKeys(model_name, page_size, cursor);
}

Result<KeyPage> L2Adapter::DoListKeys(std::string_view, size_t, std::string_view) {
  return MakeError(
      Status::NotSupported(fmt::format("L2 adapter {} ({}) cannot list its keys", name_, type_)));
}

void L2Adapter::Account(std::span<const ObjectKey> keys, std::span<const uint64_t> sizes,
                        bool add) {
  KVT_CHECK(keys.size() == sizes.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    uint64_t& ns_bytes = bytes_by_namespace_[keys[i].namespace_id()];
    if (add) {
      used_bytes_ += sizes[i];
      ns_bytes += sizes[i];
    } else {
      // Clamp at zero: a key reported deleted twice must not wrap the counters.
      used_bytes_ -= std::min(used_bytes_, sizes[i]);
      ns_bytes -= std::min(ns_bytes, sizes[i]);
    }
  }
}

void L2Adapter::CompleteStore(TaskId task, Status status, std::span<const ObjectKey> stored_keys,
                              std::span<const uint64_t> stored_sizes) {
  uint64_t bytes = 0;
  for (uint64_t s : stored_sizes) bytes += s;
  {
    MutexLock lock(&mu_);
    if (!End(task)) return;  // cancelled or failed by Close
    // Keys a failed task stored anyway (part of a batch) exist all the same: account them, as
    // the listeners below are told, so a later deletion does not drive the accounts negative.
    Account(stored_keys, stored_sizes, /*add=*/true);
    counters_.store_bytes += bytes;
    if (!status.ok()) ++counters_.store_tasks_failed;
    completed_stores_.push_back(StoreResult{task, std::move(status), bytes});
  }
  if (!stored_keys.empty()) {
    for (L2Listener* l : listeners_) l->OnL2KeysStored(stored_keys, stored_sizes);
  }
  store_fd_.Signal();
}

void L2Adapter::CompleteLookup(TaskId task, Bitmap found) {
  {
    MutexLock lock(&mu_);
    if (!End(task)) return;
    counters_.lookup_hits += found.PopCount();
    completed_lookups_.emplace(task, std::move(found));
  }
  lookup_fd_.Signal();
}

void L2Adapter::CompleteLoad(TaskId task, Bitmap loaded, uint64_t bytes) {
  std::vector<ObjectKey> accessed;
  {
    MutexLock lock(&mu_);
    auto keys = load_keys_.find(task);
    if (keys != load_keys_.end()) {
      // Keys loaded successfully are the accesses the eviction policies order by.
      for (size_t i = 0; i < loaded.size() && i < keys->second.size(); ++i) {
        if (loaded.Test(i)) accessed.push_back(keys->second[i]);
      }
      load_keys_.erase(keys);
    }
    if (!End(task)) return;  // cancelled or failed by Close: nobody used the bytes
    counters_.load_keys_failed += loaded.size() - loaded.PopCount();
    counters_.load_bytes += bytes;
    completed_loads_.emplace(task, std::move(loaded));
  }
  if (!accessed.empty()) {
    for (L2Listener* l : listeners_) l->OnL2KeysAccessed(accessed);
  }
  load_fd_.Signal();
}

void L2Adapter::NotifyStored(std::span<const ObjectKey> keys, std::span<const uint64_t> sizes) {
  if (keys.empty()) return;
  {
    MutexLock lock(&mu_);
    Account(keys, sizes, /*add=*/true);
  }
  for (L2Listener* l : listeners_) l->OnL2KeysStored(keys, sizes);
}

void L2Adapter::NotifyDeleted(std::span<const ObjectKey> keys, std::span<const uint64_t> sizes) {
  if (keys.empty()) return;
  {
    MutexLock lock(&mu_);
    Account(keys, sizes, /*add=*/false);
    counters_.deleted_keys += keys.size();
  }
  for (L2Listener* l : listeners_) l->OnL2KeysDeleted(keys);
}

AdapterUsage L2Adapter::Usage() const {
  AdapterUsage u;
  u.capacity_bytes = capacity_bytes_;
  MutexLock lock(&mu_);
  u.used_bytes = used_bytes_;
  for (const auto& [ns, bytes] : bytes_by_namespace_) {
    if (bytes > 0) u.bytes_by_cache_salt[std::string(keys::NamespaceCacheSalt(ns))] += bytes;
  }
  return u;
}

AdapterCounters L2Adapter::Counters() const {
  MutexLock lock(&mu_);
  AdapterCounters c = counters_;
  c.in_flight_tasks = in_flight_.size();
  return c;
}

bool L2Adapter::healthy() const { return !closed_.load(std::memory_order_acquire) && DoHealthy(); }

nlohmann::json L2Adapter::StatusJson() const {
  AdapterUsage u = Usage();
  AdapterCounters c = Counters();
  nlohmann::json j;
  j["name"] = name_;
  j["type"] = type_;
  j["healthy"] = healthy();
  j["usage"] = {{"used_bytes", u.used_bytes},
                {"capacity_bytes", u.capacity_bytes},
                {"bytes_by_cache_salt", u.bytes_by_cache_salt}};
  j["counters"] = {{"store_tasks", c.store_tasks},
                   {"store_tasks_failed", c.store_tasks_failed},
                   {"store_keys", c.store_keys},
                   {"store_bytes", c.store_bytes},
                   {"lookup_tasks", c.lookup_tasks},
                   {"lookup_keys", c.lookup_keys},
                   {"lookup_hits", c.lookup_hits},
                   {"load_tasks", c.load_tasks},
                   {"load_keys", c.load_keys},
                   {"load_keys_failed", c.load_keys_failed},
                   {"load_bytes", c.load_bytes},
                   {"deleted_keys", c.deleted_keys},
                   {"cancelled_tasks", c.cancelled_tasks},
                   {"in_flight_tasks", c.in_flight_tasks}};
  DoStatusJson(&j);
  return j;
}

void L2Adapter::AddListener(L2Listener* listener) { listeners_.push_back(listener); }

void L2Adapter::Close() {
  if (closed_.exchange(true)) return;
  DoClose();
  // The adapter's threads are gone: whatever is still in flight will never complete.
  std::vector<std::pair<TaskId, Kind>> orphans;
  {
    MutexLock lock(&mu_);
    orphans.assign(in_flight_.begin(), in_flight_.end());
    in_flight_.clear();
    for (const auto& [task, kind] : orphans) {
      switch (kind) {
        case Kind::kStore:
          ++counters_.store_tasks_failed;
          completed_stores_.push_back(StoreResult{
              task, Status::Unavailable(fmt::format("L2 adapter {} closed", name_)), 0});
          break;
        case Kind::kLookup:
          completed_lookups_.emplace(task, Bitmap());
          lookup_keys_.erase(task);  // the adapter is closed: its locks are moot
          break;
        case Kind::kLoad:
          completed_loads_.emplace(task, Bitmap());
          load_keys_.erase(task);
          break;
      }
    }
  }
  if (!orphans.empty()) {
    KVT_LOG_WARN("L2 adapter {} closed with {} tasks in flight; they failed", name_,
                 orphans.size());
    store_fd_.Signal();
    lookup_fd_.Signal();
    load_fd_.Signal();
  }
}

void KeyLockTable::Unlock(const ObjectKey& key) {
  auto it = counts_.find(key);
  if (it == counts_.end()) return;
  if (--it->second == 0) counts_.erase(it);
}

}  // namespace kvtier::l2
