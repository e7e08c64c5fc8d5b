// Test helpers for the storage controllers: a small L1, mock adapters, waits on completions.
#pragma once

#include <cstring>
#include <memory>
#include <vector>

#include <gtest/gtest.h>
#include <poll.h>

#include "kvtier/common/units.h"
#include "kvtier/l1/l1_test_util.h"
#include "kvtier/l2/factory.h"
#include "kvtier/l2/mock_adapter.h"

namespace kvtier::storage::testing {

using keys::ObjectKey;
using l1::L1Result;
using l1::ObjectView;
using l1::testing::All;
using l1::testing::MakeKeys;

constexpr uint64_t kObj = 16 * kKiB;

inline std::unique_ptr<l1::L1Manager> MakeL1(uint64_t objects, Clock* clock = Clock::Real()) {
  l1::L1Options o;
  o.capacity_bytes = objects * kObj;
  o.num_shards = 4;
  o.clock = clock;
  return l1::L1Manager::Create(o).value();
}

inline std::unique_ptr<l2::L2Adapter> MakeMock(uint64_t objects = 1024,
                                               std::string name = "mock0") {
  l2::MockAdapterOptions o;
  o.capacity_bytes = objects * kObj;
  return l2::MockAdapter::Create(o, std::move(name)).value();
}

inline std::unique_ptr<l2::L2Adapter> MakeAdapter(const nlohmann::json& config) {
  return l2::MakeL2Adapter(config, 0).value();
}

// Object bytes as a function of the key, so any copy can be checked.
inline uint8_t PatternOf(const ObjectKey& k) {
  return static_cast<uint8_t>(k.chunk_hash().Prefix64() * 131 + 17);
}

// Stores `keys` in L1 (reserve, fill with their pattern, admit).
inline void WriteL1(l1::L1Manager* l1, std::span<const ObjectKey> keys) {
  std::vector<ObjectView> views;
  ASSERT_EQ(l1->ReserveWrite(keys, kObj, false, l1::kDefaultWriter, &views),
            All(keys.size(), L1Result::kSuccess));
  for (size_t i = 0; i < keys.size(); ++i) std::memset(views[i].data, PatternOf(keys[i]), kObj);
  ASSERT_EQ(l1->FinishWrite(keys, l1::kDefaultWriter), All(keys.size(), L1Result::kSuccess));
}

inline bool Intact(const ObjectKey& k, const ObjectView& v) {
  return v.size == kObj && v.data[0] == PatternOf(k) && v.data[kObj - 1] == PatternOf(k) &&
         v.data[kObj / 2] == PatternOf(k);
}

// Stores objects straight into an adapter (bypassing L1) and waits for the task.
inline void PutL2(l2::L2Adapter* a, std::span<const ObjectKey> keys) {
  std::vector<std::vector<uint8_t>> data;
  std::vector<std::span<const uint8_t>> spans;
  data.reserve(keys.size());
  for (const auto& k : keys) {
    data.emplace_back(kObj, PatternOf(k));
    spans.emplace_back(data.back());
  }
  l2::TaskId t = a->SubmitStore(keys, spans);
  for (;;) {
    pollfd p{a->store_event_fd(), POLLIN, 0};
    ASSERT_GT(::poll(&p, 1, 10000), 0) << "store did not complete";
    for (auto& r : a->PopCompletedStores()) {
      if (r.task == t) {
        ASSERT_TRUE(r.status.ok()) << r.status.ToString();
        return;
      }
    }
  }
}

// Counts keys an adapter stored: waits for background stores without sleeping.
class StoredCounter : public l2::L2Listener {
 public:
  void OnL2KeysStored(std::span<const ObjectKey> keys, std::span<const uint64_t>) override {
    MutexLock lock(&mu_);
    stored_ += keys.size();
    cv_.NotifyAll();
  }
  // True once at least `n` keys were stored; false after `timeout`.
  bool WaitFor(size_t n, Duration timeout = std::chrono::seconds(30)) {
    TimePoint deadline = DeadlineFrom(timeout);
    MutexLock lock(&mu_);
    while (stored_ < n) {
      if (!cv_.WaitUntil(&mu_, deadline) && std::chrono::steady_clock::now() >= deadline)
        return stored_ >= n;
    }
    return true;
  }

 private:
  Mutex mu_;
  CondVar cv_;
  size_t stored_ KVT_GUARDED_BY(mu_) = 0;
};

// Counts keys an adapter reported accessed (loaded). Added after an L2 eviction controller, it
// hears of an access only once the controller has (listeners are called in order).
class AccessCounter : public l2::L2Listener {
 public:
  void OnL2KeysAccessed(std::span<const ObjectKey> keys) override {
    MutexLock lock(&mu_);
    accessed_ += keys.size();
    cv_.NotifyAll();
  }
  // True once at least `n` keys were accessed; false after `timeout`.
  bool WaitFor(size_t n, Duration timeout = std::chrono::seconds(30)) {
    TimePoint deadline = DeadlineFrom(timeout);
    MutexLock lock(&mu_);
    while (accessed_ < n) {
      if (!cv_.WaitUntil(&mu_, deadline) && std::chrono::steady_clock::now() >= deadline)
        return accessed_ >= n;
    }
    return true;
  }

 private:
  Mutex mu_;
  CondVar cv_;
  size_t accessed_ KVT_GUARDED_BY(mu_) = 0;
};

}  // namespace kvtier::storage::testing
