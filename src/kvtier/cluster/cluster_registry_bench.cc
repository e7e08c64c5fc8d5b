// RegistryTree throughput at the target scale: 10M keys over 64 workers (8 instances x 8).
//   BM_Ingest/threads:N    batched Admit (256 keys a batch) into an empty registry
//   BM_FindKv/threads:N    FindKv of random present keys in the full registry
//   BM_PrefixLookup        PrefixLookup of 32-chunk prefixes (every chunk present)
//   BM_FlatMapBaseline     absl::flat_hash_map<ObjectKey, uint32_t> insert and find of the
//                          same keys on one thread: the same-run yardstick
// Counters: keys/s or lookups/s, and vs_flat_map: that rate over the baseline's single-thread
// rate, measured in the same process. KVT_BENCH_KEYS overrides the key count (default 10000000).
#include <cstdio>
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

const BaselineReport& Baseline() {
  static const BaselineReport report = RunFlatMapBaseline(AllKeys(), Probes(), 10'000'000);
  return report;
}

std::unique_ptr<RegistryTree> NewTree() {
  auto tree = RegistryTree::Create(RegistryOptions{});
  KVT_CHECK(tree.has_value());
  KVT_CHECK(RegisterWorkloadWorkers(**tree, WorkloadOptions{}).ok());
  return std::move(*tree);
}

struct FilledTree {
  std::unique_ptr<RegistryTree> tree;
  uint64_t rss_delta = 0;
};

// The full registry shared by the lookup benchmarks (built once).
const FilledTree& Filled() {
  static const FilledTree filled = [] {
    FilledTree f;
    AllKeys();
    const uint64_t before = RssBytes();
    f.tree = NewTree();
    KVT_CHECK(RunIngest(*f.tree, AllKeys(), WorkloadOptions{}, 1).has_value());
    f.rss_delta = RssBytes() - before;
    return f;
  }();
  return filled;
}

void BM_Ingest(benchmark::State& state) {
  const auto threads = static_cast<uint32_t>(state.range(0));
  const auto& keys = AllKeys();
  const double baseline = Baseline().insert.rate();
  RegistryMemory memory;
  double seconds = 0;
  for (auto _ : state) {
    state.PauseTiming();
    auto tree = NewTree();
    state.ResumeTiming();
    auto report = RunIngest(*tree, keys, WorkloadOptions{}, threads);
    KVT_CHECK(report.has_value());
    state.SetIterationTime(report->seconds);
    seconds += report->seconds;
    state.PauseTiming();
    memory = tree->Memory();
    KVT_CHECK(tree->TotalKeyCount() == keys.size());
    tree.reset();
    state.ResumeTiming();
  }
  const double n = static_cast<double>(keys.size());
  const double rate = n * static_cast<double>(state.iterations()) / seconds;
  state.counters["keys/s"] = rate;
  state.counters["vs_flat_map"] = rate / baseline;
  state.counters["bytes/key"] = static_cast<double>(memory.total()) / n;
}
BENCHMARK(BM_Ingest)->Arg(1)->Arg(2)->ArgName("threads")->UseManualTime()->Iterations(1);

void BM_FindKv(benchmark::State& state) {
  const auto threads = static_cast<uint32_t>(state.range(0));
  const FilledTree& filled = Filled();
  const double baseline = Baseline().find.rate();
  constexpr uint64_t kLookups = 4'000'000;  // per thread and iteration
  uint64_t hits = 0, lookups = 0;
  double seconds = 0;
  for (auto _ : state) {
    RunReport report = RunFindKv(*filled.tree, Probes(), kLookups, threads);
    state.SetIterationTime(report.seconds);
    seconds += report.seconds;
    hits += report.hits;
    lookups += report.operations;
  }
  KVT_CHECK(hits == lookups);
  const double rate = static_cast<double>(lookups) / seconds;
  state.counters["lookups/s"] = rate;
  state.counters["vs_flat_map"] = rate / baseline;
  state.counters["rss_bytes/key"] =
      static_cast<double>(filled.rss_delta) / static_cast<double>(AllKeys().size());
  state.counters["bytes/key"] =
      static_cast<double>(filled.tree->Memory().total()) / static_cast<double>(AllKeys().size());
}
BENCHMARK(BM_FindKv)->Arg(1)->Arg(2)->ArgName("threads")->UseManualTime()->Iterations(3);

void BM_PrefixLookup(benchmark::State& state) {
  const FilledTree& filled = Filled();
  const auto& keys = AllKeys();
  constexpr size_t kChunks = 32;
  // Every instance holds the keys of every 64th batch; make prefixes from single batches.
  std::mt19937_64 rng(11);
  uint64_t chunks = 0;
  for (auto _ : state) {
    const size_t batch = rng() % (keys.size() / 256);
    auto matches = filled.tree->PrefixLookup(std::span(keys).subspan(batch * 256, kChunks));
    benchmark::DoNotOptimize(matches.data());
    KVT_CHECK(matches.size() == 1 && matches[0].num_chunks == kChunks);
    chunks += kChunks;
  }
  state.counters["chunks/s"] =
      benchmark::Counter(static_cast<double>(chunks), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_PrefixLookup);

void BM_FlatMapBaseline(benchmark::State& state) {
  for (auto _ : state) {
    BaselineReport report = RunFlatMapBaseline(AllKeys(), Probes(), 10'000'000);
    state.SetIterationTime(report.insert.seconds + report.find.seconds);
    state.counters["insert_keys/s"] = report.insert.rate();
    state.counters["finds/s"] = report.find.rate();
  }
}
BENCHMARK(BM_FlatMapBaseline)->UseManualTime()->Iterations(1);

}  // namespace
}  // namespace kvtier::cluster
