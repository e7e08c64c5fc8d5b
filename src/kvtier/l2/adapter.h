// L2Adapter: the interface of every slower tier (disk, Redis, ...).
//
// Everything is asynchronous and non-blocking: Submit* return a task id at once; the adapter
// completes tasks on its own threads and signals one of three eventfds (store, lookup, load),
// which the storage controllers poll. Results are collected with PopCompletedStores (all
// finished stores) and the one-shot QueryLookupAndLockResult / QueryLoadResult.
//
// Non-virtual interface: the public methods here do the bookkeeping every adapter needs (task
// ids, completion queues and eventfds, byte accounting per adapter and per cache salt, metrics,
// listener calls); an implementation overrides only the protected Do* hooks and reports
// through the protected Complete* / Notify* methods.
//
// Buffers: a store reads the caller's buffers and a load writes into them, until the task
// completes or is cancelled (Cancel returned true). The caller keeps them valid until then
// (L1 holds read locks on store sources and staging write locks on load targets).
//
// Locks: lookup-and-lock takes, per key found, a lock that keeps the adapter from evicting or
// deleting the key until SubmitUnlock. Thread-safe: the store and prefetch controllers call
// an adapter from different threads.
//
// Lifecycle: make (factory) -> AddListener -> Start (start-up work such as the fs recovery
// scan, reported to the listeners) -> use -> Close.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <nlohmann/json_fwd.hpp>

#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"
#include "kvtier/keys/bitmap.h"
#include "kvtier/keys/object_key.h"
#include "kvtier/sync/event_fd.h"

namespace kvtier::l2 {

using keys::Bitmap;
using keys::ObjectKey;

using TaskId = uint64_t;  // per adapter, from 1

// One finished store task. Success or failure is per task: either every key was stored (or
// already present) or the task failed.
struct StoreResult {
  TaskId task = 0;
  Status status;
  uint64_t bytes_written = 0;
};

struct AdapterUsage {
  uint64_t used_bytes = 0;
  uint64_t capacity_bytes = 0;  // 0: unbounded (no eviction by capacity)
  absl::flat_hash_map<std::string, uint64_t> bytes_by_cache_salt;
};

struct KeyPage {
  std::vector<std::pair<ObjectKey, uint64_t>> keys;  // key, stored size
  std::string next_cursor;                           // empty: no more pages
};

// Counters every adapter keeps (monotonic since creation, except in_flight_tasks).
struct AdapterCounters {
  uint64_t store_tasks = 0, store_tasks_failed = 0, store_keys = 0, store_bytes = 0;
  uint64_t lookup_tasks = 0, lookup_keys = 0, lookup_hits = 0;
  uint64_t load_tasks = 0, load_keys = 0, load_keys_failed = 0, load_bytes = 0;
  uint64_t deleted_keys = 0, cancelled_tasks = 0;
  uint64_t in_flight_tasks = 0;  // submitted, not yet completed or cancelled
};

// Observers of what the adapter holds (the L2 eviction controller). Called from any thread,
// possibly under an adapter's internal ordering lock (so that a key's store and deletion reach
// listeners in order): must be quick (enqueue and signal) and must not call back into the
// adapter, except for the read-only Usage() and Counters().
class L2Listener {
 public:
  virtual ~L2Listener() = default;
  virtual void OnL2KeysStored(std::span<const ObjectKey> keys, std::span<const uint64_t> sizes) {}
  // The keys a load task read successfully, in the task's order (the base class reports them
  // for every adapter when the load completes). Lookups are not accesses: a lookup hit is
  // followed by a load from the adapter the prefetch plan picks, and counting both would touch
  // a key twice per use (frequency-based policies) or touch copies in adapters never read.
  // Not ordered against OnL2KeysDeleted: an access may arrive after the key's deletion, which
  // listeners ignore (the eviction policies do).
  virtual void OnL2KeysAccessed(std::span<const ObjectKey> keys) {}
  virtual void OnL2KeysDeleted(std::span<const ObjectKey> keys) {}
};

class L2Adapter {
 public:
  virtual ~L2Adapter();
  L2Adapter(const L2Adapter&) = delete;
  L2Adapter& operator=(const L2Adapter&) = delete;

  // "fs", "redis", "mock", "fault_inject".
  std::string_view type() const { return type_; }
  // Unique among a server's adapters (config "name", default "<type><index>").
  const std::string& name() const { return name_; }

  // Three distinct fds, distinct across adapters, owned by the adapter. Readable when a task of
  // that kind completed; the controllers drain them (EventFd semantics).
  int store_event_fd() const { return store_fd_.fd(); }
  int lookup_event_fd() const { return lookup_fd_.fd(); }
  int load_event_fd() const { return load_fd_.fd(); }

  // Stores objects[i] under keys[i]. Keys already present are skipped (success).
  TaskId SubmitStore(std::span<const ObjectKey> keys,
                     std::span<const std::span<const uint8_t>> objects);
  // Every store that finished since the last call (never blocks).
  std::vector<StoreResult> PopCompletedStores();

  // Which keys exist; each found key is locked against eviction until SubmitUnlock.
  TaskId SubmitLookupAndLock(std::span<const ObjectKey> keys);
  // The bitmap (bit i: keys[i] found and locked) once the task finished, exactly once; then,
  // and before, std::nullopt. An unknown or already-consumed task is std::nullopt too.
  std::optional<Bitmap> QueryLookupAndLockResult(TaskId task);
  // Releases one lock per key. Fire and forget; unknown keys are ignored.
  void SubmitUnlock(std::span<const ObjectKey> keys);

  // Loads keys[i] into buffers[i]. A key whose stored size differs from its buffer's size fails.
  TaskId SubmitLoad(std::span<const ObjectKey> keys, std::span<const std::span<uint8_t>> buffers);
  // Per-key success bitmap once finished, exactly once (as QueryLookupAndLockResult). A key
  // whose data is missing, corrupt or of the wrong size is a failure, never garbage.
  std::optional<Bitmap> QueryLoadResult(TaskId task);

  // Gives up on a task. True when the adapter will not touch the task's buffers any more (the
  // caller may release them) and the task will never be reported; false when its I/O is in
  // progress (the caller must keep the buffers until it completes). Unknown tasks: true. A
  // lookup that finished but was not collected is dropped and the locks it took released.
  bool Cancel(TaskId task);

  // Deletes keys now (synchronous). Locked keys are skipped unless `force`. Bit i: keys[i] is
  // not stored any more (deleted now, or absent already); a clear bit means it may still be
  // stored (locked, its deletion failed, or its outcome is unknown because the adapter lost its
  // connection part-way). Keys known deleted are reported to the listeners either way.
  Result<Bitmap> Delete(std::span<const ObjectKey> keys, bool force = false);

  // Keys of one model, a page at a time; "" starts. kNotSupported for adapters that cannot.
  Result<KeyPage> ListKeys(std::string_view model_name, size_t page_size, std::string_view cursor);

  AdapterUsage Usage() const;
  AdapterCounters Counters() const;
  // Health and details for /api/status: {"name", "type", "healthy", "usage", "counters", ...}.
  nlohmann::json StatusJson() const;
  bool healthy() const;

  // Listeners are added before Start and must outlive the adapter.
  void AddListener(L2Listener* listener);
  // The adapter's start-up work (the fs adapter's recovery scan reports existing keys to the
  // listeners here). Call once, after AddListener and before sharing the adapter. An adapter
  // works without it, only without that start-up work. Idempotent.
  Status Start();

  // Stops the adapter's threads. Tasks not finished complete as failed (stores) or empty
  // (lookups, loads) and never touch their buffers afterwards. Idempotent; the destructor of
  // every implementation must call it.
  void Close();

 protected:
  L2Adapter(std::string type, std::string name, uint64_t capacity_bytes);
  // Set up the eventfds; implementations call it from their factory and fail if it fails.
  Status InitEvents();

  // Hooks. Submit hooks must not block: they hand the task to the adapter's own threads.
  virtual void DoSubmitStore(TaskId task, std::span<const ObjectKey> keys,
                             std::span<const std::span<const uint8_t>> objects) = 0;
  virtual void DoSubmitLookupAndLock(TaskId task, std::span<const ObjectKey> keys) = 0;
  virtual void DoUnlock(std::span<const ObjectKey> keys) = 0;
  virtual void DoSubmitLoad(TaskId task, std::span<const ObjectKey> keys,
                            std::span<const std::span<uint8_t>> buffers) = 0;
  virtual bool DoCancel(TaskId task) = 0;
  virtual Result<Bitmap> DoDelete(std::span<const ObjectKey> keys, bool force) = 0;
  virtual Result<KeyPage> DoListKeys(std::string_view model_name, size_t page_size,
                                     std::string_view cursor);
  virtual void DoClose() = 0;
  virtual Status DoStart() { return Status::OK(); }
  virtual bool DoHealthy() const { return true; }
  // Adapter-specific fields merged into StatusJson().
  virtual void DoStatusJson(nlohmann::json* out) const {}

  // Completions, from any thread, once per task. A completion of a task that was cancelled (or
  // failed by Close) is dropped. `stored_keys` lists the keys this task newly stored, with
  // their sizes (keys already present are not in it), for the byte accounting.
  void CompleteStore(TaskId task, Status status, std::span<const ObjectKey> stored_keys,
                     std::span<const uint64_t> stored_sizes);
  void CompleteLookup(TaskId task, Bitmap found);
  void CompleteLoad(TaskId task, Bitmap loaded, uint64_t bytes);

  // Keys that appeared or vanished outside a store task of this process: found by a recovery
  // scan at start, evicted or deleted by the adapter itself.
  void NotifyStored(std::span<const ObjectKey> keys, std::span<const uint64_t> sizes);
  void NotifyDeleted(std::span<const ObjectKey> keys, std::span<const uint64_t> sizes);

 private:
  const std::string type_;
  const std::string name_;
  const uint64_t capacity_bytes_;
  sync::EventFd store_fd_, lookup_fd_, load_fd_;
  std::atomic<TaskId> next_task_{1};
  std::atomic<bool> closed_{false};
  std::atomic<bool> started_{false};

  enum class Kind : uint8_t { kStore, kLookup, kLoad };
  TaskId Begin(Kind kind, size_t keys);
  // Removes `task` from the in-flight set; false when it is not there (cancelled or closed).
  bool End(TaskId task) KVT_REQUIRES(mu_);
  // Removes a lookup's result and keys; returns the keys it found (and locked).
  std::vector<ObjectKey> DropLookup(TaskId task) KVT_REQUIRES(mu_);
  void Account(std::span<const ObjectKey> keys, std::span<const uint64_t> sizes, bool add)
      KVT_REQUIRES(mu_);

  mutable Mutex mu_;  // completion queues and accounting; never held across a hook call
  absl::flat_hash_map<TaskId, Kind> in_flight_ KVT_GUARDED_BY(mu_);
  std::vector<StoreResult> completed_stores_ KVT_GUARDED_BY(mu_);
  absl::flat_hash_map<TaskId, Bitmap> completed_lookups_ KVT_GUARDED_BY(mu_);
  // The keys of each lookup until its result is collected: a cancelled finished lookup's locks
  // are released through them.
  absl::flat_hash_map<TaskId, std::vector<ObjectKey>> lookup_keys_ KVT_GUARDED_BY(mu_);
  absl::flat_hash_map<TaskId, Bitmap> completed_loads_ KVT_GUARDED_BY(mu_);
  // The keys of each load in flight, for OnL2KeysAccessed (kept only when there are listeners).
  absl::flat_hash_map<TaskId, std::vector<ObjectKey>> load_keys_ KVT_GUARDED_BY(mu_);
  uint64_t used_bytes_ KVT_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<keys::NamespaceId, uint64_t> bytes_by_namespace_ KVT_GUARDED_BY(mu_);
  AdapterCounters counters_ KVT_GUARDED_BY(mu_);

  std::vector<L2Listener*> listeners_;  // fixed before the adapter is shared
};

// Counts per-key locks for adapters (lookup-and-lock). Not thread-safe: guard it with the
// adapter's index lock, so a key is never evicted between being found and being locked.
class KeyLockTable {
 public:
  void Lock(const ObjectKey& key) { ++counts_[key]; }
  // Unknown or unlocked keys are ignored.
  void Unlock(const ObjectKey& key);
  bool IsLocked(const ObjectKey& key) const { return counts_.contains(key); }
  size_t size() const { return counts_.size(); }

 private:
  absl::flat_hash_map<ObjectKey, uint32_t, keys::ObjectKeyHash> counts_;
};

}  // namespace kvtier::l2
