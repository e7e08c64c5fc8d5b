// Eviction policy micro-benchmarks at 1M tracked keys (run the release preset).
//
// Each policy is filled to kTrackedKeys and warmed with mixed traffic (new requests, re-creates
// of older keys, touches, select + remove) until its ghost lists are in steady state; it then
// persists across the benchmarks of that policy. Only the operation named by the benchmark is
// timed (manual time); the work that keeps the size constant is not.
//
// Counters: bytes_per_key = MemoryBytes() / size(); heap_bytes_per_key = malloc'd bytes
// (mallinfo2) grown while building and warming the policy, per tracked key.
#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include <benchmark/benchmark.h>
#include <malloc.h>

#include "kvtier/eviction/arc_policy.h"
#include "kvtier/eviction/lru_policy.h"
#include "kvtier/eviction/policy_test_util.h"
#include "kvtier/eviction/s3fifo_policy.h"

namespace kvtier::eviction {
namespace {

using test_util::AcceptAll;
using test_util::TestKey;

constexpr size_t kTrackedKeys = 1 << 20;
constexpr size_t kBatch = 64;

// Bytes malloc'd, mmap'd chunks included.
size_t HeapBytes() {
  const struct mallinfo2 info = mallinfo2();
  return info.uordblks + info.hblkhd;
}

template <typename Policy>
struct Warm {
  std::unique_ptr<Policy> policy = std::make_unique<Policy>();
  uint64_t next_id = 0;
  std::mt19937_64 rng{42};
  std::vector<ObjectKey> batch = std::vector<ObjectKey>(kBatch);
  std::vector<ObjectKey> victims;
  double heap_bytes_per_key = 0;

  void NewBatch() {
    for (ObjectKey& key : batch) key = TestKey(next_id++);
  }
  // Keys drawn from the most recent `window` ids: mostly tracked, some already evicted.
  void RecentBatch(uint64_t window) {
    for (ObjectKey& key : batch) key = TestKey(next_id - 1 - rng() % std::min(next_id, window));
  }
  void EvictBatch() {
    victims.clear();
    policy->SelectVictims(kBatch, AcceptAll, &victims);
    policy->OnRemoved(victims);
  }

  Warm() {
    const size_t heap_before = HeapBytes();
    while (next_id < kTrackedKeys) {
      NewBatch();
      policy->OnCreated(batch);
    }
    for (size_t round = 0; round < kTrackedKeys / kBatch; ++round) {
      NewBatch();
      policy->OnCreated(batch);
      if (round % 4 == 0) {  // a re-created request: tracked keys and ghost hits
        RecentBatch(2 * kTrackedKeys);
        policy->OnCreated(batch);
      } else {
        RecentBatch(kTrackedKeys);
        policy->OnTouched(batch);
      }
      while (policy->size() > kTrackedKeys) EvictBatch();
    }
    heap_bytes_per_key = static_cast<double>(HeapBytes() - heap_before) / policy->size();
  }

  void Report(benchmark::State& state) const {
    state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kBatch));
    state.counters["tracked"] = static_cast<double>(policy->size());
    state.counters["bytes_per_key"] =
        static_cast<double>(policy->MemoryBytes()) / static_cast<double>(policy->size());
    state.counters["heap_bytes_per_key"] = heap_bytes_per_key;
  }
};

template <typename Policy>
Warm<Policy>& GetWarm() {
  static Warm<Policy>* warm = new Warm<Policy>();
  return *warm;
}

template <typename F>
double TimeIt(F&& f) {
  const auto start = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// OnCreated of a batch of 64 new keys (one request's chunks).
template <typename Policy>
void BM_OnCreated(benchmark::State& state) {
  Warm<Policy>& w = GetWarm<Policy>();
  for (auto _ : state) {
    w.NewBatch();
    state.SetIterationTime(TimeIt([&] { w.policy->OnCreated(w.batch); }));
    w.EvictBatch();
  }
  w.Report(state);
}

// OnTouched of 64 recently created keys.
template <typename Policy>
void BM_OnTouched(benchmark::State& state) {
  Warm<Policy>& w = GetWarm<Policy>();
  for (auto _ : state) {
    w.RecentBatch(kTrackedKeys / 2);
    state.SetIterationTime(TimeIt([&] { w.policy->OnTouched(w.batch); }));
  }
  w.Report(state);
}

// SelectVictims(64) with an accept-all filter, then OnRemoved of the victims.
template <typename Policy>
void BM_SelectAndRemove(benchmark::State& state) {
  Warm<Policy>& w = GetWarm<Policy>();
  for (auto _ : state) {
    state.SetIterationTime(TimeIt([&] { w.EvictBatch(); }));
    w.NewBatch();
    w.policy->OnCreated(w.batch);
  }
  w.Report(state);
}

#define KVT_POLICY_BENCH(Policy)                             \
  BENCHMARK_TEMPLATE(BM_OnCreated, Policy)->UseManualTime(); \
  BENCHMARK_TEMPLATE(BM_OnTouched, Policy)->UseManualTime(); \
  BENCHMARK_TEMPLATE(BM_SelectAndRemove, Policy)->UseManualTime()

KVT_POLICY_BENCH(LruPolicy);
KVT_POLICY_BENCH(S3FifoPolicy);
KVT_POLICY_BENCH(ArcPolicy);

}  // namespace
}  // namespace kvtier::eviction
