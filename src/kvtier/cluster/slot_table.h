// SlotTable: the small-integer slot of every registered worker, and the immutable identity
// (instance id, worker id, address) behind it. Part of RegistryTree.
//
// A holder in the ReverseIndex names a worker by slot (24 bits), so the index stays compact.
// Lookups resolve a slot to its identity without any lock: identities are interned and never
// freed (one record per distinct (instance id, worker id, address) ever registered, ~100
// bytes), so a pointer read once stays valid. A slot is published before any holder can name
// it and cleared only after every holder that named it left the index.
//
// Locks: one leaf mutex for allocation and interning; reads take none.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <absl/container/flat_hash_map.h>

#include "kvtier/cluster/types.h"
#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"

namespace kvtier::cluster {

class WorkerNode;

struct WorkerIdentity {
  // Interned: equal instance ids share one string, so a pointer compare tells instances apart.
  const std::string* instance_id = nullptr;
  WorkerId worker_id = 0;
  std::string address;
};

class SlotTable {
 public:
  explicit SlotTable(uint32_t max_slots);
  ~SlotTable();
  SlotTable(const SlotTable&) = delete;
  SlotTable& operator=(const SlotTable&) = delete;

  // A free slot; kResourceExhausted when all max_slots are in use.
  Result<uint32_t> Allocate() KVT_EXCLUDES(mu_);
  // Makes `slot` resolve to `identity` and `node` (release: before any holder names it).
  void Publish(uint32_t slot, const WorkerIdentity* identity, WorkerNode* node);
  // Clears and frees `slot`. No holder may name it any more.
  void Release(uint32_t slot) KVT_EXCLUDES(mu_);

  // nullptr when the slot is free.
  const WorkerIdentity* Identity(uint32_t slot) const {
    return entries_[slot].identity.load(std::memory_order_acquire);
  }
  WorkerNode* Node(uint32_t slot) const {
    return entries_[slot].node.load(std::memory_order_acquire);
  }

  // The identity record of (instance id, worker id, address), made once and kept for the
  // table's life.
  const WorkerIdentity* Intern(std::string_view instance_id, WorkerId worker_id,
                               std::string_view address) KVT_EXCLUDES(mu_);

 private:
  struct Entry {
    std::atomic<const WorkerIdentity*> identity{nullptr};
    std::atomic<WorkerNode*> node{nullptr};
  };

  const uint32_t max_slots_;
  std::unique_ptr<Entry[]> entries_;
  Mutex mu_;
  std::vector<uint32_t> free_ KVT_GUARDED_BY(mu_);
  uint32_t next_ KVT_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<std::string, std::unique_ptr<const std::string>> instance_ids_
      KVT_GUARDED_BY(mu_);
  // Keyed by "<instance>\0<worker>\0<address>".
  absl::flat_hash_map<std::string, std::unique_ptr<const WorkerIdentity>> identities_
      KVT_GUARDED_BY(mu_);
};

}  // namespace kvtier::cluster
