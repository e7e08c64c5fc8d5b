#include "kvtier/cluster/slot_table.h"

#include <fmt/format.h>

namespace kvtier::cluster {

SlotTable::SlotTable(uint32_t max_slots)
    : max_slots_(max_slots), entries_(std::make_unique<Entry[]>(max_slots)) {}

SlotTable::~SlotTable() = default;

Result<uint32_t> SlotTable::Allocate() {
  MutexLock lock(&mu_);
  if (!free_.empty()) {
    const uint32_t slot = free_.back();
    free_.pop_back();
    return slot;
  }
  if (next_ >= max_slots_) {
    return MakeError(Status::ResourceExhausted(
        fmt::format("cluster registry: {} workers registered (max_workers)", max_slots_)));
  }
  return next_++;
}

void SlotTable::Publish(uint32_t slot, const WorkerIdentity* identity, WorkerNode* node) {
  entries_[slot].node.store(node, std::memory_order_release);
  entries_[slot].identity.store(identity, std::memory_order_release);
}

void SlotTable::Release(uint32_t slot) {
  entries_[slot].identity.store(nullptr, std::memory_order_release);
  entries_[slot].node.store(nullptr, std::memory_order_release);
  MutexLock lock(&mu_);
  free_.push_back(slot);
}

const WorkerIdentity* SlotTable::Intern(std::string_view instance_id, WorkerId worker_id,
                                        std::string_view address) {
  std::string key;
  key.reserve(instance_id.size() + address.size() + 16);
  key.append(instance_id).push_back('\0');
  key.append(std::to_string(worker_id)).push_back('\0');
  key.append(address);
  MutexLock lock(&mu_);
  auto it = identities_.find(key);
  if (it != identities_.end()) return it->second.get();
  auto& name = instance_ids_[absl::string_view(instance_id.data(), instance_id.size())];
  if (name == nullptr) name = std::make_unique<const std::string>(instance_id);
  auto identity = std::make_unique<WorkerIdentity>();
  identity->instance_id = name.get();
  identity->worker_id = worker_id;
  identity->address = std::string(address);
  const WorkerIdentity* result = identity.get();
  identities_.emplace(std::move(key), std::move(identity));
  return result;
}

}  // namespace kvtier::cluster
