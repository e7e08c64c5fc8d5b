// Allocator throughput with 100k live allocations, against malloc/free of the same sizes.
//
// Every iteration allocates (one, or a batch of 64) and frees as many randomly chosen live
// allocations, so the free set keeps churning at a constant live count.
#include <cstdlib>
#include <random>
#include <vector>

#include <benchmark/benchmark.h>

#include "kvtier/common/check.h"
#include "kvtier/memory/allocator.h"

namespace kvtier::memory {
namespace {

constexpr size_t kLive = 100'000;
constexpr size_t kHeadroom = 10'000;  // free slots scattered among the live ones
constexpr size_t kBatch = 64;
constexpr uint64_t kAlignment = 4096;

// Random victim indices, precomputed so the RNG is not timed.
std::vector<uint32_t> Victims(size_t n) {
  std::mt19937 rng(1285);
  std::vector<uint32_t> v(n);
  for (auto& x : v) x = static_cast<uint32_t>(rng() % kLive);
  return v;
}

struct Fixture {
  std::unique_ptr<Allocator> allocator;
  std::vector<Allocation> live;

  explicit Fixture(uint64_t size) {
    const uint64_t rounded = (size + kAlignment - 1) / kAlignment * kAlignment;
    auto created = Allocator::Create(nullptr, (kLive + kHeadroom + kBatch) * rounded, kAlignment);
    KVT_CHECK(created.has_value());
    allocator = std::move(*created);
    KVT_CHECK(allocator->AllocateBatch(size, kLive + kHeadroom, &live).ok());
    // Punch kHeadroom random holes.
    std::mt19937 rng(7);
    for (size_t i = 0; i < kHeadroom; ++i) {
      std::swap(live[rng() % live.size()], live.back());
      live.pop_back();
    }
  }
};

void BM_AllocatorSingle(benchmark::State& state) {
  const uint64_t size = static_cast<uint64_t>(state.range(0));
  Fixture f(size);
  const std::vector<uint32_t> victims = Victims(1 << 20);
  size_t v = 0;
  for (auto _ : state) {
    auto a = f.allocator->Allocate(size);
    if (!a) {
      state.SkipWithError("allocation failed");
      break;
    }
    f.live[victims[v++ & (victims.size() - 1)]] = std::move(*a);  // frees the old one
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
  state.counters["free_extents"] = static_cast<double>(f.allocator->Stats().num_free_extents);
  f.live.clear();
}

void BM_AllocatorBatch64(benchmark::State& state) {
  const uint64_t size = static_cast<uint64_t>(state.range(0));
  Fixture f(size);
  const std::vector<uint32_t> victims = Victims(1 << 20);
  size_t v = 0;
  std::vector<Allocation> batch;
  std::vector<Allocation> evicted(kBatch);
  batch.reserve(kBatch);
  for (auto _ : state) {
    batch.clear();
    if (!f.allocator->AllocateBatch(size, kBatch, &batch).ok()) {
      state.SkipWithError("batch allocation failed");
      break;
    }
    for (size_t i = 0; i < kBatch; ++i) {
      Allocation& slot = f.live[victims[v++ & (victims.size() - 1)]];
      evicted[i] = std::move(slot);
      slot = std::move(batch[i]);
    }
    f.allocator->FreeBatch(evicted);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kBatch));
  state.counters["free_extents"] = static_cast<double>(f.allocator->Stats().num_free_extents);
  f.live.clear();
}

void BM_MallocSingle(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0));
  std::vector<void*> live(kLive);
  for (auto& p : live) p = std::malloc(size);
  const std::vector<uint32_t> victims = Victims(1 << 20);
  size_t v = 0;
  for (auto _ : state) {
    void* p = std::malloc(size);
    benchmark::DoNotOptimize(p);
    void*& slot = live[victims[v++ & (victims.size() - 1)]];
    std::free(slot);
    slot = p;
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
  for (void* p : live) std::free(p);
}

void BM_MallocBatch64(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0));
  std::vector<void*> live(kLive);
  for (auto& p : live) p = std::malloc(size);
  const std::vector<uint32_t> victims = Victims(1 << 20);
  size_t v = 0;
  void* batch[kBatch];
  for (auto _ : state) {
    for (auto& p : batch) p = std::malloc(size);
    benchmark::DoNotOptimize(batch);
    for (size_t i = 0; i < kBatch; ++i) {
      void*& slot = live[victims[v++ & (victims.size() - 1)]];
      std::free(slot);
      slot = batch[i];
    }
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kBatch));
  for (void* p : live) std::free(p);
}

// 4000 B (under one alignment unit) and 16 KiB + 100 B (a non-multiple).
#define KVT_SIZES Arg(4000)->Arg(16484)
BENCHMARK(BM_AllocatorSingle)->KVT_SIZES;
BENCHMARK(BM_MallocSingle)->KVT_SIZES;
BENCHMARK(BM_AllocatorBatch64)->KVT_SIZES;
BENCHMARK(BM_MallocBatch64)->KVT_SIZES;
#undef KVT_SIZES

}  // namespace
}  // namespace kvtier::memory
