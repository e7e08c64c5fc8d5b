#include "kvtier/eviction/lru_policy.h"

namespace kvtier::eviction {

using internal::kNilIndex;

static_assert(sizeof(internal::KeyTable<ObjectKey>::Node) == 52,
              "an LRU node is a key and two links");

void LruPolicy::OnCreated(std::span<const ObjectKey> keys) {
  for (auto it = keys.rbegin(); it != keys.rend(); ++it) {
    auto [index, inserted] = table_.FindOrInsert(*it);
    if (inserted) {
      list_.PushBack(table_, index);
    } else {
      list_.MoveToBack(table_, index);
    }
  }
}

void LruPolicy::OnTouched(std::span<const ObjectKey> keys) {
  for (auto it = keys.rbegin(); it != keys.rend(); ++it) {
    uint32_t index = table_.Find(*it);
    if (index != kNilIndex) list_.MoveToBack(table_, index);
  }
}

void LruPolicy::OnRemoved(std::span<const ObjectKey> keys) {
  for (const ObjectKey& key : keys) {
    const uint32_t index = table_.Remove(key);
    if (index == kNilIndex) continue;
    list_.Unlink(table_, index);
    table_.Free(index);
  }
}

void LruPolicy::SelectVictims(size_t max, const std::function<bool(const ObjectKey&)>& eligible,
                              std::vector<ObjectKey>* out) {
  size_t taken = 0;
  for (uint32_t index = list_.front(); index != kNilIndex && taken < max;
       index = table_.node(index).next) {
    const ObjectKey& key = table_.node(index).key;
    if (eligible(key)) {
      out->push_back(key);
      ++taken;
    }
  }
}

bool LruPolicy::Contains(const ObjectKey& key) const { return table_.Find(key) != kNilIndex; }

}  // namespace kvtier::eviction
