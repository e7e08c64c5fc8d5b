// RegistryTree throughput at the target scale: 10M keys over 64 workers (8 instances x 8).
//   BM_Ingest/threads:N    batched Admit (256 keys a batch) of every key into an empty registry
//   BM_FindKv/threads:N    FindKv of random present keys in the full registry
//   BM_PrefixLookup        PrefixLookup of 32-chunk prefixes (every chunk present)
// Each iteration also runs the baseline right after the registry: an
// absl::flat_hash_map<ObjectKey, uint32_t>, one thread, no locks, the same keys (insert) or
// probes (find). Counters: the registry's rate, the baseline's, and vs_flat_map (registry
// rate / baseline rate, over all iterations), so that load from other processes on a shared
// machine hits both sides alike. KVT_BENCH_KEYS overrides the key count (default 10000000).
#include <cstdlib>
#include <fstream>
#include <memory>
#include <random>

#include <benchmark/benchmark.h>
#include <unistd.h>

#include "kvtier/cluster/registry_workload.h"
#include "kvtier/common/check.h"

namespace kvtier::cluster {
namespace {

uint64_t NumKeys() {
  const char* s = std::getenv("KVT_BENCH_KEYS");
  return s ? std::strtoull(s, nullptr, 10) : 10'000'000;
}

const std::vector<ObjectKey>& AllKeys() {
  static const std::vector<ObjectKey> keys = WorkloadKeys(NumKeys());
  return keys;
}

// 1M present keys in random order: lookups touch the whole table.
const std::vector<ObjectKey>& Probes() {
  static const std::vector<ObjectKey> probes = [] {
    const auto& all = AllKeys();
    std::mt19937_64 rng(7);
    std::vector<ObjectKey> p;
    const size_t n = std::min<size_t>(all.size(), 1'000'000);
    p.reserve(n);
    for (size_t i = 0; i < n; ++i) p.push_back(all[rng() % all.size()]);
    return p;
  }();
  return probes;
}

uint64_t RssBytes() {
  std::ifstream statm("/proc/self/statm");
  uint64_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

std::unique_ptr<RegistryTree> NewTree() {
  auto tree = RegistryTree::Create(RegistryOptions{});
  KVT_CHECK(tree.has_value());
  KVT_CHECK(RegisterWorkloadWorkers(**tree, WorkloadOptions{}).ok());
  return std::move(*tree);
}

struct Filled {
  std::unique_ptr<RegistryTree> tree;
  uint64_t rss_delta = 0;
  FlatMapBaseline baseline;
};

// The full registry and baseline map shared by the lookup benchmarks (built once).
Filled& Full() {
  static Filled* filled = [] {
    auto* f = new Filled;
    AllKeys();
    const uint64_t before = RssBytes();
    f->tree = NewTree();
    KVT_CHECK(RunIngest(*f->tree, AllKeys(), WorkloadOptions{}, 1).has_value());
    f->rss_delta = RssBytes() - before;
    f->baseline.Insert(AllKeys());
    return f;
  }();
  return *filled;
}

void Report(benchmark::State& state, const char* unit, const RunReport& mine,
            const RunReport& base) {
  const double rate = mine.rate();
  state.counters[unit] = rate;
  state.counters["baseline"] = base.rate();
  state.counters["vs_flat_map"] = rate / base.rate();
}

void BM_Ingest(benchmark::State& state) {
  const auto threads = static_cast<uint32_t>(state.range(0));
  const auto& keys = AllKeys();
  RunReport mine, base;
  RegistryMemory memory;
  for (auto _ : state) {
    auto tree = NewTree();
    auto report = RunIngest(*tree, keys, WorkloadOptions{}, threads);
    KVT_CHECK(report.has_value());
    KVT_CHECK(tree->TotalKeyCount() == keys.size());
    memory = tree->Memory();
    tree.reset();
    FlatMapBaseline baseline;
    const RunReport b = baseline.Insert(keys);
    state.SetIterationTime(report->seconds);
    mine.seconds += report->seconds;
    mine.operations += report->operations;
    base.seconds += b.seconds;
    base.operations += b.operations;
  }
  Report(state, "keys/s", mine, base);
  state.counters["bytes/key"] =
      static_cast<double>(memory.total()) / static_cast<double>(keys.size());
}
BENCHMARK(BM_Ingest)->Arg(1)->Arg(2)->ArgName("threads")->UseManualTime()->Iterations(2);

void BM_FindKv(benchmark::State& state) {
  const auto threads = static_cast<uint32_t>(state.range(0));
  Filled& full = Full();
  constexpr uint64_t kLookups = 4'000'000;  // per thread and iteration
  RunReport mine, base;
  for (auto _ : state) {
    const RunReport r = RunFindKv(*full.tree, Probes(), kLookups, threads);
    KVT_CHECK(r.hits == r.operations);
    const RunReport b = full.baseline.Find(Probes(), kLookups);
    KVT_CHECK(b.hits == b.operations);
    state.SetIterationTime(r.seconds);
    mine.seconds += r.seconds;
    mine.operations += r.operations;
    base.seconds += b.seconds;
    base.operations += b.operations;
  }
  Report(state, "lookups/s", mine, base);
  const double n = static_cast<double>(AllKeys().size());
  state.counters["rss_bytes/key"] = static_cast<double>(full.rss_delta) / n;
  state.counters["bytes/key"] = static_cast<double>(full.tree->Memory().total()) / n;
}
BENCHMARK(BM_FindKv)->Arg(1)->Arg(2)->ArgName("threads")->UseManualTime()->Iterations(5);

void BM_PrefixLookup(benchmark::State& state) {
  const Filled& full = Full();
  const auto& keys = AllKeys();
  constexpr size_t kChunks = 32;
  // Batch b of 256 keys went to one worker: a prefix from one batch is held by one instance.
  std::mt19937_64 rng(11);
  uint64_t chunks = 0;
  for (auto _ : state) {
    const size_t batch = rng() % (keys.size() / 256);
    auto matches = full.tree->PrefixLookup(std::span(keys).subspan(batch * 256, kChunks));
    benchmark::DoNotOptimize(matches.data());
    KVT_CHECK(matches.size() == 1 && matches[0].num_chunks == kChunks);
    chunks += kChunks;
  }
  state.counters["chunks/s"] =
      benchmark::Counter(static_cast<double>(chunks), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_PrefixLookup);

}  // namespace
}  // namespace kvtier::cluster
