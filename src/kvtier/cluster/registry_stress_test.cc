// RegistryTree stress (label "stress"; meaningful under TSan): owners, churners, readers and a
// reaper run at once for KVT_STRESS_SECONDS (default 2), then the invariants are checked:
// every owner's key sets equal its model, the reverse index equals the union of the worker key
// sets, and the counts agree.
#include <atomic>
#include <cstdlib>
#include <latch>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <absl/container/flat_hash_set.h>
#include <gtest/gtest.h>

#include "kvtier/cluster/registry_tree.h"
#include "kvtier/cluster/registry_workload.h"
#include "kvtier/common/check.h"

namespace kvtier::cluster {
namespace {

using namespace std::chrono_literals;

double StressSeconds() {
  const char* s = std::getenv("KVT_STRESS_SECONDS");
  return s ? std::atof(s) : 2.0;
}

constexpr int kOwners = 3;
constexpr int kChurners = 2;
constexpr int kReaders = 2;
constexpr uint64_t kSharedKeys = 2048;  // owners and churners admit these: many holders a key
constexpr uint32_t kChain = 16;         // each owner's pinned prefix chain
const std::vector<std::string> kLocations = {"L1", "fs", "redis"};  // the owners' tiers

std::vector<ObjectKey> PinnedChain(int owner) {
  return WorkloadKeys(kChain, 1'000'000 + static_cast<uint64_t>(owner) * 1000);
}

// One owner thread: its workers never leave, and it keeps an exact model of their key sets
// (what a worker would hold), including full syncs whose batches interleave with events.
class Owner {
 public:
  Owner(RegistryTree* tree, int id) : tree_(tree), rng_(1000 + id) {
    instance_ = "owner" + std::to_string(id);
    for (WorkerId w = 0; w < 2; ++w) {
      WorkerRegistration r;
      r.instance_id = instance_;
      r.worker_id = w;
      r.address = "tcp://" + instance_ + ":" + std::to_string(w);
      r.locations = kLocations;
      r.expects_heartbeats = false;
      KVT_CHECK(tree_->RegisterWorker(r).has_value());
    }
    // The pinned chain: worker 0, location "pin", never touched again.
    KVT_CHECK(tree_->Admit({instance_, 0}, "pin", 1, PinnedChain(id)).has_value());
  }

  void Step() {
    const WorkerId w = static_cast<WorkerId>(rng_() % 2);
    const size_t loc = rng_() % kLocations.size();
    switch (rng_() % 16) {
      case 0:
        FullSync(w, loc);
        return;
      case 1:
        KVT_CHECK(tree_->ClearWorker({instance_, w}, kLocations[loc]).has_value());
        model_[w][loc].clear();
        return;
      case 2: {  // a heartbeat with exact reports: never a lost event or a count mismatch
        std::vector<LocationReport> reports;
        for (size_t l = 0; l < kLocations.size(); ++l) {
          reports.push_back(LocationReport{kLocations[l], seq_[w][l], model_[w][l].size()});
        }
        KVT_CHECK(tree_->Heartbeat({instance_, w}, reports).has_value());
        return;
      }
      default:
        Event(w, loc);
    }
  }

  void Verify() const {
    for (WorkerId w = 0; w < 2; ++w) {
      for (size_t loc = 0; loc < kLocations.size(); ++loc) {
        auto listed = tree_->ListWorkerKeys({instance_, w}, kLocations[loc]);
        ASSERT_TRUE(listed.has_value());
        absl::flat_hash_set<ObjectKey, keys::ObjectKeyHash> got(listed->begin(), listed->end());
        EXPECT_EQ(got.size(), listed->size()) << "duplicates in a key list";
        EXPECT_TRUE(got == model_[w][loc]) << instance_ << "/" << w << " " << kLocations[loc];
      }
    }
  }

 private:
  // One admit, evict or mixed batch of the location, in sequence.
  void Event(WorkerId w, size_t loc) {
    auto& model = model_[w][loc];
    std::vector<KvOp> ops;
    const size_t n = 1 + rng_() % 64;
    const uint64_t kind = rng_() % 4;  // 0, 1: admit; 2: evict; 3: mixed
    for (size_t i = 0; i < n; ++i) {
      const KvOpType type = kind < 2    ? KvOpType::kAdmit
                            : kind == 2 ? KvOpType::kEvict
                                        : (rng_() % 2 ? KvOpType::kAdmit : KvOpType::kEvict);
      ops.push_back(KvOp{type, WorkloadKey(rng_() % kSharedKeys)});
    }
    auto r = tree_->ApplyOps({instance_, w}, kLocations[loc], ++seq_[w][loc], ops);
    KVT_CHECK(r.has_value() && r->outcome == BatchOutcome::kApplied && !r->failed_sync);
    for (const KvOp& op : ops) {
      if (op.type == KvOpType::kAdmit) {
        model.insert(op.key);
      } else {
        model.erase(op.key);
      }
    }
  }

  // A snapshot of a fresh key set (the worker's truth from now on), sent in shuffled batches
  // with resends, while events of the location go on.
  void FullSync(WorkerId w, size_t loc) {
    std::set<uint64_t> ids;
    const size_t total = rng_() % 200;
    for (size_t i = 0; i < total; ++i) ids.insert(rng_() % kSharedKeys);
    std::vector<ObjectKey> snapshot;
    for (uint64_t id : ids) snapshot.push_back(WorkloadKey(id));
    const auto batches = static_cast<uint32_t>((snapshot.size() + 31) / 32);
    const uint64_t sync_id = ++syncs_;
    const Origin origin{instance_, w};
    const std::string& location = kLocations[loc];
    KVT_CHECK(
        tree_->StartFullSync(origin, location, sync_id, seq_[w][loc], snapshot.size(), batches)
            .ok());
    model_[w][loc] =
        absl::flat_hash_set<ObjectKey, keys::ObjectKeyHash>(snapshot.begin(), snapshot.end());
    std::vector<uint32_t> order(batches);
    for (uint32_t b = 0; b < batches; ++b) order[b] = b;
    std::shuffle(order.begin(), order.end(), rng_);
    for (uint32_t b : order) {
      const size_t first = size_t{b} * 32;
      const std::vector<ObjectKey> part(
          snapshot.begin() + static_cast<ptrdiff_t>(first),
          snapshot.begin() + static_cast<ptrdiff_t>(std::min(snapshot.size(), first + 32)));
      KVT_CHECK(tree_->AddFullSyncBatch(origin, location, sync_id, b, part).has_value());
      if (rng_() % 4 == 0) {
        KVT_CHECK(tree_->AddFullSyncBatch(origin, location, sync_id, b, part)->duplicate);
      }
      if (rng_() % 2 == 0) Event(w, loc);  // an event between batches
    }
    auto end = tree_->EndFullSync(origin, location, sync_id, snapshot.size());
    KVT_CHECK(end.has_value() && end->state == FullSyncState::kCompleted);
  }

  RegistryTree* tree_;
  std::mt19937_64 rng_;
  std::string instance_;
  uint64_t syncs_ = 0;
  absl::flat_hash_set<ObjectKey, keys::ObjectKeyHash> model_[2][3];
  uint64_t seq_[2][3] = {};  // the last seq sent per location
};

TEST(RegistryStressTest, EveryOperationAtOnceKeepsTheIndexConsistent) {
  FakeClock clock;
  RegistryOptions o;
  o.num_shards = 16;
  o.clock = &clock;
  o.full_sync_timeout = std::chrono::hours(24 * 365);  // owners' syncs never expire
  auto tree = RegistryTree::Create(o).value();
  std::vector<std::unique_ptr<Owner>> owners;
  for (int i = 0; i < kOwners; ++i) owners.push_back(std::make_unique<Owner>(tree.get(), i));

  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(StressSeconds());
  auto running = [&] { return std::chrono::steady_clock::now() < deadline; };
  std::atomic<uint64_t> lookup_failures{0}, reaped{0}, churn_batches{0}, owner_steps{0};
  const int kThreads = kOwners + kChurners + kReaders + 1;
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kOwners; ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      while (running()) {
        owners[i]->Step();
        owner_steps.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  for (int c = 0; c < kChurners; ++c) {
    threads.emplace_back([&, c] {
      std::mt19937_64 rng(2000 + c);
      const std::string instance = "churn" + std::to_string(c);
      uint64_t seq[4] = {};
      start.arrive_and_wait();
      while (running()) {
        const WorkerId w = static_cast<WorkerId>(rng() % 4);
        switch (rng() % 12) {
          case 0: {
            WorkerRegistration r;
            r.instance_id = instance;
            r.worker_id = w;
            r.address = "tcp://" + instance;
            KVT_CHECK(tree->RegisterWorker(r).has_value());
            seq[w] = 0;
            break;
          }
          case 1:
            (void)tree->DeregisterWorker({instance, w});
            break;
          case 2:
            (void)tree->DeregisterInstance(instance);
            break;
          case 3:
            (void)tree->Heartbeat({instance, w});
            break;
          default: {
            std::vector<ObjectKey> batch;
            for (int i = 0; i < 32; ++i) batch.push_back(WorkloadKey(rng() % kSharedKeys));
            auto r = rng() % 3 == 0 ? tree->Evict({instance, w}, "L1", seq[w], batch)
                                    : tree->Admit({instance, w}, "L1", seq[w], batch);
            if (r.has_value()) {
              KVT_CHECK(r->outcome == BatchOutcome::kApplied);
              ++seq[w];
              churn_batches.fetch_add(1, std::memory_order_relaxed);
            } else {
              // Reaped or deregistered meanwhile: register again (a new baseline).
              KVT_CHECK(r.error().code() == StatusCode::kNotFound);
              WorkerRegistration again;
              again.instance_id = instance;
              again.worker_id = w;
              again.address = "tcp://" + instance;
              KVT_CHECK(tree->RegisterWorker(again).has_value());
              seq[w] = 0;
            }
          }
        }
      }
    });
  }
  for (int r = 0; r < kReaders; ++r) {
    threads.emplace_back([&, r] {
      std::mt19937_64 rng(3000 + r);
      start.arrive_and_wait();
      while (running()) {
        const int owner = static_cast<int>(rng() % kOwners);
        const auto chain = PinnedChain(owner);
        const std::string instance = "owner" + std::to_string(owner);
        // The pinned chain is always there, whatever else happens.
        auto holder = tree->FindKv(chain[rng() % kChain]);
        if (!holder.has_value() || holder->instance_id != instance) lookup_failures.fetch_add(1);
        auto prefix = tree->PrefixLookup(chain);
        if (prefix.size() != 1 || prefix[0].num_chunks != kChain) lookup_failures.fetch_add(1);
        auto peer = tree->FindKvWithWorkerInfo(chain, "someone-else");
        if (!peer.has_value() || !peer->has_value() || (*peer)->num_hit_chunks != kChain) {
          lookup_failures.fetch_add(1);
        }
        // Shared keys: anything goes, but it must not crash or race.
        const ObjectKey shared = WorkloadKey(rng() % kSharedKeys);
        (void)tree->FindKv(shared, "owner0");
        (void)tree->FindKvAll(shared);
        std::vector<ObjectKey> run = WorkloadKeys(4, rng() % kSharedKeys);
        (void)tree->PrefixLookup(run);
        (void)tree->FindKvWithWorkerInfo(run);
        if (rng() % 64 == 0) KVT_CHECK(tree->WorkerInfos(1ms).has_value());
        (void)tree->Stats();
        (void)tree->TotalKeyCount();
      }
    });
  }
  threads.emplace_back([&] {
    start.arrive_and_wait();
    while (running()) {
      clock.Advance(1s);
      auto dead = tree->ReapDead(3s);
      KVT_CHECK(dead.has_value());
      reaped.fetch_add(dead->size(), std::memory_order_relaxed);
      KVT_CHECK(tree->ExpireSyncs().has_value());
    }
  });
  for (auto& th : threads) th.join();

  EXPECT_EQ(lookup_failures.load(), 0u);
  EXPECT_GT(owner_steps.load(), 0u);
  EXPECT_GT(churn_batches.load(), 0u);
  for (const auto& owner : owners) owner->Verify();
  Status consistent = tree->CheckConsistency();
  EXPECT_TRUE(consistent.ok()) << consistent.ToString();
  RegistryStats s = tree->Stats();
  EXPECT_EQ(s.seq_gaps, 0u);
  EXPECT_EQ(s.stale_batches, 0u);
  EXPECT_EQ(s.lost_events, 0u);
  EXPECT_EQ(s.key_count_mismatches, 0u);
  EXPECT_EQ(s.lock_timeouts, 0u);
  EXPECT_EQ(s.workers_reaped, reaped.load());
  EXPECT_EQ(s.full_syncs_failed, 0u);
  EXPECT_EQ(s.full_syncs_started, s.full_syncs_completed);
  // Churners gone, only the owners' holders remain, and the index still agrees.
  for (int c = 0; c < kChurners; ++c) (void)tree->DeregisterInstance("churn" + std::to_string(c));
  EXPECT_TRUE(tree->CheckConsistency().ok());
  EXPECT_EQ(tree->Stats().workers, static_cast<uint64_t>(kOwners * 2));
  ASSERT_TRUE(tree->Clear().has_value());
  EXPECT_EQ(tree->TotalKeyCount(), 0u);
  EXPECT_EQ(tree->Stats().holders, 0u);
  EXPECT_TRUE(tree->CheckConsistency().ok());
  std::printf("owner steps %lu, churn batches %lu, reaped %lu, syncs %lu\n",
              static_cast<unsigned long>(owner_steps.load()),
              static_cast<unsigned long>(churn_batches.load()),
              static_cast<unsigned long>(reaped.load()),
              static_cast<unsigned long>(s.full_syncs_completed));
}

}  // namespace
}  // namespace kvtier::cluster
