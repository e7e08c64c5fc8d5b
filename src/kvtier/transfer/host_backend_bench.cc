// HostBackend Gather/Scatter throughput against a plain memcpy of the same number of bytes.
//
// Llama-3.1-8B-shaped cache (32 layers, 8 KV heads of 128, bf16, block 16, chunk 256: 32 MiB
// chunk objects) in every MHA format, and a DeepSeek-V3-shaped MLA cache (61 layers, 576 bf16
// per token: 17.2 MiB objects). Each iteration moves 4 chunks (64 scattered blocks of 128).
// Argument: CopyPool threads (0: no pool; n: n pool threads plus the caller).
// `vs_memcpy` is the throughput divided by a single-threaded memcpy's.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include <benchmark/benchmark.h>

#include "kvtier/common/check.h"
#include "kvtier/transfer/copy_pool.h"
#include "kvtier/transfer/host_backend.h"
#include "kvtier/transfer/reference_copy.h"
#include "kvtier/transfer/test_shm.h"

namespace kvtier::transfer {
namespace {

using protocol::DType;
using protocol::KvFormat;

constexpr size_t kObjects = 4;
constexpr uint32_t kBlocks = 128;

testing::TestSpec SpecFor(KvFormat format) {
  // Page-aligned layer tensors, as an engine allocates them.
  if (format == KvFormat::kMla) return {format, DType::kBf16, 61, kBlocks, 16, 1, 576, 256, true};
  return {format, DType::kBf16, 32, kBlocks, 16, 8, 128, 256, true};
}

// One segment and its objects, kept across benchmark runs of the same format.
struct Env {
  KvFormat format;
  std::unique_ptr<testing::TestShm> shm;
  protocol::RegisterKvCacheRequest request;
  std::vector<uint32_t> ids;
  std::vector<testing::Bytes> objects;  // line-aligned, like L1's page-aligned objects

  explicit Env(KvFormat f) : format(f) {
    const testing::TestSpec spec = SpecFor(f);
    uint64_t size = 0;
    const testing::RefLayout ref = testing::MakeRefLayout(spec, &size);
    shm = std::make_unique<testing::TestShm>(size);
    shm->Fill(1);
    request = testing::MakeRequest(spec, ref, shm->name(), size);
    ids.resize(kBlocks);
    std::iota(ids.begin(), ids.end(), 0u);
    std::shuffle(ids.begin(), ids.end(), std::mt19937_64(2));
    objects.assign(kObjects, testing::Bytes(ref.ObjectBytes(), 1));  // touched
  }
};

Env& EnvFor(KvFormat format) {
  static std::unique_ptr<Env> env;
  if (!env || env->format != format) {
    env.reset();  // free the old segment first
    env = std::make_unique<Env>(format);
  }
  return *env;
}

// Single-threaded memcpy throughput (bytes/s) for `bytes`: the best of a few runs.
double MemcpyRate(uint64_t bytes) {
  static uint64_t measured_bytes = 0;
  static double rate = 0;
  if (measured_bytes == bytes) return rate;
  std::vector<uint8_t> src(bytes, 1);
  std::vector<uint8_t> dst(bytes, 2);
  double best = 0;
  for (int i = 0; i < 5; ++i) {
    const auto start = std::chrono::steady_clock::now();
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::DoNotOptimize(dst.data());
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    best = std::max(best, static_cast<double>(bytes) / took.count());
  }
  measured_bytes = bytes;
  rate = best;
  return rate;
}

void Report(benchmark::State& state, uint64_t bytes_per_iteration) {
  const double bytes = static_cast<double>(bytes_per_iteration) * state.iterations();
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
  state.counters["vs_memcpy"] =
      benchmark::Counter(bytes / MemcpyRate(bytes_per_iteration), benchmark::Counter::kIsRate);
}

template <bool kGather>
void BM_HostBackend(benchmark::State& state, KvFormat format) {
  Env& env = EnvFor(format);
  const size_t threads = static_cast<size_t>(state.range(0));
  std::unique_ptr<CopyPool> pool = threads > 0 ? std::make_unique<CopyPool>(threads) : nullptr;
  HostBackendOptions options;
  options.pool = pool.get();
  auto backend = HostBackend::Create(env.request, 256, options);
  KVT_CHECK(backend.has_value());
  std::vector<std::span<uint8_t>> out(env.objects.begin(), env.objects.end());
  std::vector<std::span<const uint8_t>> in(env.objects.begin(), env.objects.end());
  for (auto _ : state) {
    Status s = kGather ? (*backend)->Gather(env.ids, out) : (*backend)->Scatter(in, env.ids, 0);
    if (!s.ok()) {
      state.SkipWithError(s.ToString().c_str());
      break;
    }
    benchmark::ClobberMemory();
  }
  Report(state, kObjects * (*backend)->object_size());
}

void BM_Gather(benchmark::State& state, KvFormat format) { BM_HostBackend<true>(state, format); }
void BM_Scatter(benchmark::State& state, KvFormat format) { BM_HostBackend<false>(state, format); }

void BM_Memcpy(benchmark::State& state, KvFormat format) {
  Env& env = EnvFor(format);
  const uint64_t bytes = kObjects * env.objects[0].size();
  std::vector<uint8_t> src(bytes, 1);
  std::vector<uint8_t> dst(bytes, 2);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::ClobberMemory();
  }
  Report(state, bytes);
}

void Threads(benchmark::internal::Benchmark* b) {
  b->ArgName("pool_threads")->Arg(0)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
}

#define KVT_BENCH_FORMAT(name, format)                                                      \
  BENCHMARK_CAPTURE(BM_Memcpy, name, format)->UseRealTime()->Unit(benchmark::kMillisecond); \
  BENCHMARK_CAPTURE(BM_Gather, name, format)->Apply(Threads);                               \
  BENCHMARK_CAPTURE(BM_Scatter, name, format)->Apply(Threads)

KVT_BENCH_FORMAT(kv_nhd, KvFormat::kKvNhd);
KVT_BENCH_FORMAT(nb_kv_nhd, KvFormat::kNbKvNhd);
KVT_BENCH_FORMAT(kv_hnd, KvFormat::kKvHnd);
KVT_BENCH_FORMAT(nb_kv_hnd, KvFormat::kNbKvHnd);
KVT_BENCH_FORMAT(mla, KvFormat::kMla);

}  // namespace
}  // namespace kvtier::transfer
