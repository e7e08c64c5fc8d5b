// MockAdapter: the reference L2 adapter (LMCache's "mock"), used by tests and demos.
//
// Holds in-memory copies of the stored objects. A store skips keys already present, fails when
// an object is larger than the whole capacity, then evicts FIFO (oldest stored first) skipping
// locked keys, and fails without changing anything when the task still cannot fit. Evictions
// are reported through NotifyDeleted. A load fails a key whose stored size differs from its
// buffer's size. A forced Delete removes a locked key but keeps its lock count: the holder's
// later SubmitUnlock releases it as usual.
//
// One worker thread runs tasks in submission order, so results are deterministic. An optional
// throttle delays each task by `latency` plus bytes / `bandwidth` (a deadline wait on the
// worker, woken by Close). Cancel returns true for a task the worker has not started.
//
// Config (JsonConfig section "mock adapter '<name>'"; unknown keys are errors):
//   {"type": "mock", "capacity": "1GiB", "bandwidth": "2GiB", "latency": "1ms"}
//   capacity   required, > 0
//   bandwidth  bytes per second for stores and loads; absent or 0: unthrottled
//   latency    added to every task; default 0
//
// Lock order: report_mu_, then mu_ (then the base class's lock). report_mu_ is held from an
// index change until the base has been told of it, so accounting and listeners see stores
// and deletions of a key in index order; listeners run under it and must not call Delete on
// this adapter (L2Listener: enqueue and signal).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <nlohmann/json_fwd.hpp>

#include "kvtier/common/clock.h"
#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"
#include "kvtier/l2/adapter.h"

namespace kvtier::l2 {

struct MockAdapterOptions {
  uint64_t capacity_bytes = 0;              // > 0
  uint64_t bandwidth_bytes_per_second = 0;  // 0: no bandwidth throttle
  Duration latency{0};                      // added to every task
};

class MockAdapter final : public L2Adapter {
 public:
  static Result<std::unique_ptr<MockAdapter>> Create(const MockAdapterOptions& options,
                                                     std::string name);
  ~MockAdapter() override;

  // Test and debug views of the content (not of the base class's accounts).
  size_t debug_stored_count() const;
  // Keys with at least one lock (a force-deleted key keeps its lock count).
  size_t debug_locked_count() const;
  bool debug_has_key(const ObjectKey& key) const;
  // Usage computed from the objects actually held, to check the base class's accounts.
  AdapterUsage debug_actual_usage() const;

  // While paused the worker starts no new task (so tests can Cancel queued tasks).
  void SetPausedForTesting(bool paused);
  // Waits until the worker is running `task` (started, not yet completed); false on timeout.
  // Meant for tasks that stay running, e.g. under a long latency.
  bool WaitUntilRunningForTesting(TaskId task, Timeout timeout);

 protected:
  void DoSubmitStore(TaskId task, std::span<const ObjectKey> keys,
                     std::span<const std::span<const uint8_t>> objects) override;
  void DoSubmitLookupAndLock(TaskId task, std::span<const ObjectKey> keys) override;
  void DoUnlock(std::span<const ObjectKey> keys) override;
  void DoSubmitLoad(TaskId task, std::span<const ObjectKey> keys,
                    std::span<const std::span<uint8_t>> buffers) override;
  bool DoCancel(TaskId task) override;
  Result<Bitmap> DoDelete(std::span<const ObjectKey> keys, bool force) override;
  Result<KeyPage> DoListKeys(std::string_view model_name, size_t page_size,
                             std::string_view cursor) override;
  void DoClose() override;
  void DoStatusJson(nlohmann::json* out) const override;

 private:
  enum class Kind : uint8_t { kStore, kLookup, kLoad };
  struct Task {
    TaskId id = 0;
    Kind kind = Kind::kStore;
    std::vector<ObjectKey> keys;
    std::vector<std::span<const uint8_t>> sources;  // stores
    std::vector<std::span<uint8_t>> targets;        // loads
  };
  struct Entry {
    std::vector<uint8_t> data;
    uint64_t seq = 0;  // position in fifo_
  };

  MockAdapter(const MockAdapterOptions& options, std::string name);

  void Enqueue(Task task);
  void WorkerLoop();
  // The throttle delay of a task.
  Duration DelayOf(const Task& task) const;
  void RunStore(const Task& task);
  void RunLookup(const Task& task);
  void RunLoad(const Task& task);
  // Inserts a store task's new keys, evicting as needed; all or nothing.
  Status Insert(const Task& task, std::vector<ObjectKey>* stored, std::vector<uint64_t>* sizes,
                std::vector<ObjectKey>* evicted, std::vector<uint64_t>* evicted_sizes)
      KVT_REQUIRES(mu_);
  void Erase(const ObjectKey& key) KVT_REQUIRES(mu_);

  const MockAdapterOptions options_;

  Mutex report_mu_ KVT_ACQUIRED_BEFORE(mu_);
  mutable Mutex mu_;
  CondVar cv_;  // queue_, paused_, stopping_ and running_ changes; throttle waits
  absl::flat_hash_map<ObjectKey, Entry, keys::ObjectKeyHash> objects_ KVT_GUARDED_BY(mu_);
  std::map<uint64_t, ObjectKey> fifo_ KVT_GUARDED_BY(mu_);  // by seq: insertion order
  uint64_t next_seq_ KVT_GUARDED_BY(mu_) = 1;
  uint64_t used_bytes_ KVT_GUARDED_BY(mu_) = 0;
  KeyLockTable locks_ KVT_GUARDED_BY(mu_);
  std::deque<Task> queue_ KVT_GUARDED_BY(mu_);
  TaskId running_ KVT_GUARDED_BY(mu_) = 0;  // started, not yet completed
  bool paused_ KVT_GUARDED_BY(mu_) = false;
  bool stopping_ KVT_GUARDED_BY(mu_) = false;
  std::thread worker_;
};

// The "mock" entry of the adapter factory. `config` has "type", "name" and "eviction" removed.
Result<std::unique_ptr<L2Adapter>> MakeMockAdapter(const nlohmann::json& config,
                                                   const std::string& name);

}  // namespace kvtier::l2
