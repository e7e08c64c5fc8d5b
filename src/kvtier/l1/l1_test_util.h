// Test helpers for code built on the L1Manager.
#pragma once

#include <span>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kvtier/common/mutex.h"
#include "kvtier/keys/object_key.h"
#include "kvtier/l1/l1_manager.h"

namespace kvtier::l1::testing {

// Distinct keys: chunk hash bytes spell `first + i`.
inline std::vector<ObjectKey> MakeKeys(size_t n, size_t first = 0,
                                       std::string_view model = "test-model") {
  std::vector<ObjectKey> keys;
  keys.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    keys::ChunkHash h;
    uint64_t v = first + i;
    for (int b = 0; b < 8; ++b) h.bytes[b] = static_cast<uint8_t>(v >> (8 * b));
    h.bytes[31] = 0x5a;
    keys.push_back(ObjectKey::Create(h, model, keys::KvRank{1, 0}, 0).value());
  }
  return keys;
}

inline std::vector<L1Result> All(size_t n, L1Result r) { return std::vector<L1Result>(n, r); }

// Records every event, in order, for assertions.
class RecordingListener : public L1Listener {
 public:
  struct Record {
    std::string event;
    std::vector<ObjectKey> keys;
  };

  uint32_t events() const override { return 0xffffffffu; }
  void OnL1KeysReservedRead(std::span<const ObjectKey> k) override { Add("reserved_read", k); }
  void OnL1KeysReadFinished(std::span<const ObjectKey> k) override { Add("read_finished", k); }
  void OnL1KeysReservedWrite(std::span<const ObjectKey> k) override { Add("reserved_write", k); }
  void OnL1KeysWriteFinished(std::span<const ObjectKey> k) override { Add("write_finished", k); }
  void OnL1KeysWriteFinishedAndReadReserved(std::span<const ObjectKey> k) override {
    Add("write_finished_and_read_reserved", k);
  }
  void OnL1KeysDeleted(std::span<const ObjectKey> k) override { Add("deleted", k); }
  void OnL1KeysAccessed(std::span<const ObjectKey> k) override { Add("accessed", k); }
  void OnL1AllocationFailed(uint64_t bytes) override {
    MutexLock lock(&mu_);
    records_.push_back({"allocation_failed", {}});
  }

  std::vector<Record> Take() {
    MutexLock lock(&mu_);
    return std::exchange(records_, {});
  }
  std::vector<std::string> TakeNames() {
    std::vector<std::string> names;
    for (auto& r : Take()) names.push_back(r.event);
    return names;
  }

 private:
  void Add(const char* event, std::span<const ObjectKey> k) {
    MutexLock lock(&mu_);
    records_.push_back({event, std::vector<ObjectKey>(k.begin(), k.end())});
  }
  Mutex mu_;
  std::vector<Record> records_ KVT_GUARDED_BY(mu_);
};

}  // namespace kvtier::l1::testing
