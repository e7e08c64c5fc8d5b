// Fixture shared by the RegistryTree tests.
#pragma once

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kvtier/cluster/registry_tree.h"
#include "kvtier/cluster/registry_workload.h"

namespace kvtier::cluster {

inline WorkerRegistration Registration(std::string instance, WorkerId worker,
                                       std::string address = "", bool expects_heartbeats = true) {
  WorkerRegistration r;
  r.instance_id = std::move(instance);
  r.worker_id = worker;
  r.address = std::move(address);
  r.expects_heartbeats = expects_heartbeats;
  return r;
}

class RegistryTestBase : public ::testing::Test {
 protected:
  void SetUp() override { Make(); }

  void Make(RegistryOptions options = {}) {
    tree_.reset();
    options.clock = &clock_;
    if (options.num_shards == RegistryOptions{}.num_shards) options.num_shards = 16;
    tree_ = RegistryTree::Create(options).value();
  }

  // The address Register gives a worker by default.
  static std::string DefaultAddress(const std::string& instance, WorkerId worker) {
    return "tcp://" + instance + ":" + std::to_string(5600 + worker);
  }

  // Registers and returns the registration id (0 on failure, with a test failure).
  uint64_t Register(const std::string& instance, WorkerId worker, const std::string& address = "",
                    bool expects_heartbeats = true) {
    auto result = tree_->RegisterWorker(
        Registration(instance, worker, address.empty() ? DefaultAddress(instance, worker) : address,
                     expects_heartbeats));
    EXPECT_TRUE(result.has_value()) << result.error().ToString();
    return result.has_value() ? result->registration_id : 0;
  }

  // A holder with the default address (its strings kept alive by the fixture).
  KvHolder H(const std::string& instance, WorkerId worker, const std::string& location) {
    const std::string& i = strings_.emplace_back(instance);
    const std::string& l = strings_.emplace_back(location);
    const std::string& a = strings_.emplace_back(DefaultAddress(instance, worker));
    return KvHolder{i, worker, l, a};
  }

  // Admits/evicts and expects success; returns the result.
  BatchResult Admit(const std::string& instance, WorkerId worker, const std::string& location,
                    uint64_t seq, const std::vector<ObjectKey>& keys) {
    auto r = tree_->Admit({instance, worker}, location, seq, keys);
    EXPECT_TRUE(r.has_value()) << r.error().ToString();
    return r.value_or(BatchResult{});
  }
  BatchResult Evict(const std::string& instance, WorkerId worker, const std::string& location,
                    uint64_t seq, const std::vector<ObjectKey>& keys) {
    auto r = tree_->Evict({instance, worker}, location, seq, keys);
    EXPECT_TRUE(r.has_value()) << r.error().ToString();
    return r.value_or(BatchResult{});
  }

  size_t KeyCount(const std::string& instance, WorkerId worker, const std::string& location) {
    auto keys = tree_->ListWorkerKeys({instance, worker}, location);
    EXPECT_TRUE(keys.has_value());
    return keys.has_value() ? keys->size() : 0;
  }

  static std::vector<ObjectKey> Keys(uint64_t first, uint64_t n) { return WorkloadKeys(n, first); }
  static std::vector<ObjectKey> Pick(const std::vector<ObjectKey>& keys,
                                     std::initializer_list<size_t> indices) {
    std::vector<ObjectKey> out;
    for (size_t i : indices) out.push_back(keys[i]);
    return out;
  }

  FakeClock clock_;
  std::unique_ptr<RegistryTree> tree_;
  std::deque<std::string> strings_;
};

}  // namespace kvtier::cluster
