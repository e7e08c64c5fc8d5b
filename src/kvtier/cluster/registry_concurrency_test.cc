// RegistryTree under concurrent callers (label "concurrency"; run it under TSan too).
#include <atomic>
#include <latch>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kvtier/cluster/registry_test_util.h"
#include "kvtier/cluster/registry_tree.h"

namespace kvtier::cluster {

// Reaches the tree's locks to provoke timeouts.
class RegistryTreeTestPeer {
 public:
  static sync::RWLock& TreeLock(RegistryTree& tree) { return tree.tree_lock_; }
  static std::shared_ptr<WorkerNode> Worker(RegistryTree& tree, std::string_view instance,
                                            WorkerId worker) {
    return tree.FindWorker({instance, worker}).value();
  }
};

namespace {

using namespace std::chrono_literals;

class RegistryConcurrencyTest : public RegistryTestBase {
 protected:
  // Runs fn(t) on `n` threads that start together.
  template <typename Fn>
  static void RunThreads(int n, Fn fn) {
    std::latch start(n);
    std::vector<std::thread> threads;
    for (int t = 0; t < n; ++t) {
      threads.emplace_back([&, t] {
        start.arrive_and_wait();
        fn(t);
      });
    }
    for (auto& th : threads) th.join();
  }
};

TEST_F(RegistryConcurrencyTest, BatchesToOneWorkerFromManyThreads) {
  Register("a", 0);
  const auto keys = Keys(0, 1000);
  RunThreads(10, [&](int t) {
    // Each thread is its own location stream of the same worker.
    for (int b = 0; b < 10; ++b) {
      const size_t first = static_cast<size_t>(t * 100 + b * 10);
      std::vector<ObjectKey> batch(keys.begin() + first, keys.begin() + first + 10);
      ASSERT_TRUE(tree_->Admit({"a", 0}, "loc" + std::to_string(t), b, batch).has_value());
    }
  });
  EXPECT_EQ(tree_->GetWorkerInfo({"a", 0})->total_keys, 1000u);
  EXPECT_EQ(tree_->TotalKeyCount(), 1000u);
  EXPECT_EQ(tree_->Stats().seq_gaps, 0u);
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistryConcurrencyTest, MixedAdmitsAndEvictsOnSharedKeys) {
  Register("a", 0);
  Register("b", 0);
  const auto keys = Keys(0, 100);
  RunThreads(8, [&](int t) {
    const std::string instance = t % 2 == 0 ? "a" : "b";
    const std::string location = "loc" + std::to_string(t / 2);
    ASSERT_TRUE(tree_->Admit({instance, 0}, location, 0, keys).has_value());
    std::vector<ObjectKey> even;
    for (size_t i = 0; i < keys.size(); i += 2) even.push_back(keys[i]);
    ASSERT_TRUE(tree_->Evict({instance, 0}, location, 1, even).has_value());
  });
  EXPECT_EQ(tree_->Stats().holders, 8u * 50);
  EXPECT_EQ(tree_->TotalKeyCount(), 50u);
  EXPECT_EQ(tree_->FindKvAll(keys[1]).size(), 8u);
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistryConcurrencyTest, InstancesWorkIndependently) {
  RunThreads(5, [&](int t) {
    const std::string instance = "inst" + std::to_string(t);
    for (WorkerId w = 0; w < 20; ++w) {
      WorkerRegistration r = Registration(instance, w, "", true);
      ASSERT_TRUE(tree_->RegisterWorker(r).has_value());
      ASSERT_TRUE(tree_->Admit({instance, w}, "L1", 0, Keys(w * 10, 10)).has_value());
    }
  });
  RegistryStats s = tree_->Stats();
  EXPECT_EQ(s.instances, 5u);
  EXPECT_EQ(s.workers, 100u);
  EXPECT_EQ(s.holders, 1000u);
  EXPECT_EQ(s.keys, 200u);
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistryConcurrencyTest, ConcurrentRegisterAndDeregisterInOneInstance) {
  RunThreads(20, [&](int t) {
    const WorkerId w = static_cast<WorkerId>(t);
    for (int round = 0; round < 10; ++round) {
      WorkerRegistration r = Registration("a", w, "", true);
      ASSERT_TRUE(tree_->RegisterWorker(r).has_value());
      ASSERT_TRUE(tree_->Admit({"a", w}, "L1", 0, Keys(t * 5, 5)).has_value());
      ASSERT_TRUE(tree_->DeregisterWorker({"a", w}).has_value());
    }
  });
  EXPECT_TRUE(tree_->InstanceIds().empty());  // removed with its last worker
  EXPECT_EQ(tree_->Stats().workers, 0u);
  EXPECT_EQ(tree_->TotalKeyCount(), 0u);
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistryConcurrencyTest, FindKvSeesEveryCompletedAdmit) {
  Register("a", 0);
  const auto keys = Keys(0, 4000);
  std::atomic<size_t> admitted{0};
  std::atomic<uint64_t> misses{0};
  RunThreads(3, [&](int t) {
    if (t == 0) {
      for (size_t b = 0; b < keys.size() / 100; ++b) {
        std::vector<ObjectKey> batch(keys.begin() + b * 100, keys.begin() + b * 100 + 100);
        ASSERT_TRUE(tree_->Admit({"a", 0}, "L1", b, batch).has_value());
        admitted.store((b + 1) * 100, std::memory_order_release);
      }
      return;
    }
    size_t i = static_cast<size_t>(t);
    while (admitted.load(std::memory_order_acquire) < keys.size()) {
      const size_t done = admitted.load(std::memory_order_acquire);
      if (done == 0) continue;
      i = (i * 7 + 13) % done;
      if (!tree_->FindKv(keys[i]).has_value()) misses.fetch_add(1);
      if (tree_->PrefixLookup(std::span(keys).first(1 + i % 8)).empty()) misses.fetch_add(1);
    }
  });
  EXPECT_EQ(misses.load(), 0u);
}

TEST_F(RegistryConcurrencyTest, HeartbeatsFromManyThreads) {
  Register("a", 0);
  RunThreads(20, [&](int t) {
    for (int i = 0; i < 100; ++i) {
      clock_.Advance(1ms);
      ASSERT_TRUE(tree_->Heartbeat({"a", 0}).has_value());
    }
  });
  EXPECT_EQ(tree_->GetWorkerInfo({"a", 0})->last_heartbeat, clock_.Now());
}

TEST_F(RegistryConcurrencyTest, WorkerInfosWhileWorkersRegister) {
  RunThreads(2, [&](int t) {
    if (t == 0) {
      for (WorkerId w = 0; w < 100; ++w) {
        WorkerRegistration r = Registration("inst" + std::to_string(w % 7), w, "", true);
        ASSERT_TRUE(tree_->RegisterWorker(r).has_value());
      }
      return;
    }
    size_t last = 0;
    while (last < 100) {
      auto infos = tree_->WorkerInfos(Duration::zero());
      ASSERT_TRUE(infos.has_value());
      ASSERT_GE((*infos)->size(), last);  // never goes back
      last = (*infos)->size();
      for (size_t i = 1; i < last; ++i) {
        const auto& a = (**infos)[i - 1];
        const auto& b = (**infos)[i];
        ASSERT_TRUE(a.instance_id < b.instance_id ||
                    (a.instance_id == b.instance_id && a.worker_id < b.worker_id));
      }
    }
  });
}

TEST_F(RegistryConcurrencyTest, RegisterAdmitReadDeregisterFromThirtyThreads) {
  RunThreads(30, [&](int t) {
    const std::string instance = "inst" + std::to_string(t % 3);
    const WorkerId w = static_cast<WorkerId>(t);
    for (int i = 0; i < 30; ++i) {
      WorkerRegistration r = Registration(instance, w, "tcp://x:" + std::to_string(i), true);
      ASSERT_TRUE(tree_->RegisterWorker(r).has_value());
      const auto keys = Keys(static_cast<uint64_t>(i), 4);
      ASSERT_TRUE(tree_->Admit({instance, w}, "L1", 0, keys).has_value());
      ASSERT_TRUE(tree_->GetWorkerInfo({instance, w}).has_value());
      ASSERT_FALSE(tree_->FindKvAll(keys[0]).empty());  // at least this worker
      ASSERT_TRUE(tree_->FindKvWithWorkerInfo(keys, "nobody").has_value());
      ASSERT_TRUE(tree_->DeregisterWorker({instance, w}).has_value());
    }
  });
  EXPECT_EQ(tree_->Stats().workers, 0u);
  EXPECT_EQ(tree_->TotalKeyCount(), 0u);
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistryConcurrencyTest, FiveInstancesTenWorkersFiftyKeysEach) {
  RunThreads(50, [&](int t) {
    const std::string instance = "inst" + std::to_string(t / 10);
    const WorkerId w = static_cast<WorkerId>(t % 10);
    WorkerRegistration r = Registration(instance, w, "", true);
    ASSERT_TRUE(tree_->RegisterWorker(r).has_value());
    ASSERT_TRUE(tree_->Admit({instance, w}, "L1", 0, Keys(t * 50, 50)).has_value());
  });
  EXPECT_EQ(tree_->TotalKeyCount(), 2500u);
  EXPECT_EQ(tree_->Stats().workers, 50u);
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistryConcurrencyTest, TwoThreadsDeregisterTheSameWorkers) {
  for (WorkerId w = 0; w < 50; ++w) {
    Register("a", w);
    Admit("a", w, "L1", 0, Keys(w * 100, 100));
  }
  std::atomic<int> removed{0};
  std::atomic<int> not_found{0};
  RunThreads(2, [&](int t) {
    for (int pass = 0; pass < 2; ++pass) {
      for (WorkerId w = 0; w < 50; ++w) {
        auto r = tree_->DeregisterWorker({"a", (w + static_cast<WorkerId>(t) * 25) % 50});
        if (r.has_value()) {
          removed.fetch_add(1);
        } else {
          ASSERT_EQ(r.error().code(), StatusCode::kNotFound);
          not_found.fetch_add(1);
        }
      }
    }
  });
  EXPECT_EQ(removed.load(), 50);  // each exactly once
  EXPECT_EQ(not_found.load(), 150);
  EXPECT_EQ(tree_->TotalKeyCount(), 0u);
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistryConcurrencyTest, LookupsOfADyingWorkerAreSafe) {
  const auto keys = Keys(0, 16);
  Register("stay", 0);
  Admit("stay", 0, "L1", 0, std::vector<ObjectKey>(keys.begin(), keys.begin() + 4));
  std::atomic<bool> done{false};
  RunThreads(3, [&](int t) {
    if (t == 0) {
      for (int i = 0; i < 200; ++i) {
        Register("churn", 0, "tcp://churn:" + std::to_string(i));
        ASSERT_TRUE(tree_->Admit({"churn", 0}, "L1", 0, keys).has_value());
        if (i % 2 == 0) {
          ASSERT_TRUE(tree_->DeregisterWorker({"churn", 0}).has_value());
        } else {
          ASSERT_TRUE(tree_->DeregisterInstance("churn").has_value());
        }
      }
      done.store(true);
      return;
    }
    while (!done.load()) {
      auto peer = tree_->FindKvWithWorkerInfo(keys, "nobody");
      ASSERT_TRUE(peer.has_value());
      ASSERT_TRUE(peer->has_value());  // "stay" holds the first four at least
      ASSERT_GE((*peer)->num_hit_chunks, 4u);
      ASSERT_FALSE(tree_->PrefixLookup(keys).empty());
      ASSERT_GE(tree_->FindKvAll(keys[0]).size(), 1u);
      (void)tree_->FindKv(keys[8]);
    }
  });
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

TEST_F(RegistryConcurrencyTest, LockTimeoutsAreReportedAndLookupsNeedNoTreeLock) {
  RegistryOptions o;
  o.lock_timeout = 20ms;
  Make(o);
  Register("a", 0);
  const auto keys = Keys(0, 2);
  Admit("a", 0, "L1", 0, keys);
  std::latch held(1);
  std::latch release(1);
  std::thread holder([&] {
    sync::WriterLock hold(&RegistryTreeTestPeer::TreeLock(*tree_));
    held.count_down();
    release.wait();
  });
  held.wait();
  EXPECT_EQ(tree_->Admit({"a", 0}, "L1", 1, keys).error().code(), StatusCode::kLockTimeout);
  EXPECT_EQ(tree_->Heartbeat({"a", 0}).error().code(), StatusCode::kLockTimeout);
  WorkerRegistration r = Registration("b", 0, "", true);
  EXPECT_EQ(tree_->RegisterWorker(r).error().code(), StatusCode::kLockTimeout);
  // Lookups only take reverse-index shard locks.
  EXPECT_EQ(tree_->FindKv(keys[0]), H("a", 0, "L1"));
  EXPECT_EQ(tree_->PrefixLookup(keys).size(), 1u);
  release.count_down();
  holder.join();
  EXPECT_GE(tree_->Stats().lock_timeouts, 3u);
  EXPECT_TRUE(tree_->Admit({"a", 0}, "L1", 1, keys).has_value());
  EXPECT_TRUE(tree_->RegisterWorker(r).has_value());  // the slot was given back

  // A worker lock held elsewhere times out that worker's calls only.
  std::latch worker_held(1);
  std::latch worker_release(1);
  std::thread worker_holder([&] {
    auto node = RegistryTreeTestPeer::Worker(*tree_, "a", 0);
    sync::FastLockHolder hold(&node->lock());
    worker_held.count_down();
    worker_release.wait();
  });
  worker_held.wait();
  EXPECT_EQ(tree_->Admit({"a", 0}, "L1", 2, keys).error().code(), StatusCode::kLockTimeout);
  EXPECT_EQ(tree_->FindKvWithWorkerInfo(keys).error().code(), StatusCode::kLockTimeout);
  EXPECT_TRUE(tree_->Admit({"b", 0}, "L1", 0, keys).has_value());
  clock_.Advance(1s);
  auto reaped = tree_->ReapDead(500ms);  // a/0 is locked: skipped (and counted); b/0 goes
  ASSERT_TRUE(reaped.has_value());
  ASSERT_EQ(reaped->size(), 1u);
  EXPECT_EQ((*reaped)[0].instance_id, "b");
  worker_release.count_down();
  worker_holder.join();
  EXPECT_TRUE(tree_->Admit({"a", 0}, "L1", 2, keys).has_value());
  EXPECT_TRUE(tree_->CheckConsistency().ok());
}

}  // namespace
}  // namespace kvtier::cluster
