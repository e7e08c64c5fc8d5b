#include "kvtier/cluster/registry_workload.h"

#include <atomic>
#include <chrono>
#include <cstring>
#include <latch>
#include <thread>

#include <absl/container/flat_hash_map.h>
#include <fmt/format.h>

#include "kvtier/common/check.h"

namespace kvtier::cluster {
namespace {

uint64_t SplitMix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

keys::NamespaceId WorkloadNamespace() {
  static const keys::NamespaceId ns = [] {
    auto id = keys::InternNamespace("bench/model", "");
    KVT_CHECK(id.has_value());
    return *id;
  }();
  return ns;
}

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

ObjectKey WorkloadKey(uint64_t i, keys::KvRank rank) {
  keys::ChunkHash hash;
  for (size_t w = 0; w < 4; ++w) {
    uint64_t v = SplitMix(i * 4 + w);
    std::memcpy(hash.bytes.data() + w * 8, &v, sizeof(v));
  }
  auto key = ObjectKey::Create(hash, WorkloadNamespace(), rank, 0);
  KVT_CHECK(key.has_value());
  return *key;
}

std::vector<ObjectKey> WorkloadKeys(uint64_t n, uint64_t first) {
  std::vector<ObjectKey> out;
  out.reserve(n);
  for (uint64_t i = 0; i < n; ++i) out.push_back(WorkloadKey(first + i));
  return out;
}

std::string WorkloadInstanceId(uint32_t instance) { return fmt::format("inst-{}", instance); }

Status RegisterWorkloadWorkers(RegistryTree& tree, const WorkloadOptions& options) {
  for (uint32_t i = 0; i < options.instances; ++i) {
    for (uint32_t w = 0; w < options.workers_per_instance; ++w) {
      WorkerRegistration r;
      r.instance_id = WorkloadInstanceId(i);
      r.worker_id = w;
      r.address = fmt::format("tcp://10.0.{}.{}:5600", i, w);
      r.expects_heartbeats = false;
      auto result = tree.RegisterWorker(r);
      if (!result.has_value()) return result.error();
    }
  }
  return Status::OK();
}

Result<RunReport> RunIngest(RegistryTree& tree, std::span<const ObjectKey> keys,
                            const WorkloadOptions& options, uint32_t threads, uint64_t first_seq) {
  const uint32_t workers = options.instances * options.workers_per_instance;
  if (workers == 0 || options.batch_size == 0 || threads == 0) {
    return MakeError(Status::InvalidArgument("workload: no workers, batch size or threads"));
  }
  std::vector<std::string> instance_ids;
  for (uint32_t i = 0; i < options.instances; ++i) instance_ids.push_back(WorkloadInstanceId(i));
  const uint64_t batches = (keys.size() + options.batch_size - 1) / options.batch_size;
  std::atomic<bool> failed{false};
  Status first_error;
  std::atomic_flag error_taken = ATOMIC_FLAG_INIT;
  std::latch start(threads + 1);
  std::vector<std::thread> pool;
  for (uint32_t t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      std::vector<uint64_t> seq(workers, first_seq);
      start.arrive_and_wait();
      for (uint64_t b = 0; b < batches && !failed.load(std::memory_order_relaxed); ++b) {
        const uint32_t w = static_cast<uint32_t>(b % workers);
        if (w % threads != t) continue;
        const size_t begin = b * options.batch_size;
        const size_t n = std::min<size_t>(options.batch_size, keys.size() - begin);
        const Origin origin{instance_ids[w / options.workers_per_instance],
                            w % options.workers_per_instance};
        auto r = tree.Admit(origin, options.location, seq[w]++, keys.subspan(begin, n));
        if (!r.has_value() && !error_taken.test_and_set()) {
          first_error = r.error();
          failed.store(true);
        }
      }
    });
  }
  start.arrive_and_wait();
  const auto t0 = std::chrono::steady_clock::now();
  for (auto& th : pool) th.join();
  const auto t1 = std::chrono::steady_clock::now();
  if (failed.load()) return MakeError(std::move(first_error));
  return RunReport{Seconds(t0, t1), keys.size(), 0};
}

RunReport RunFindKv(const RegistryTree& tree, std::span<const ObjectKey> probes, uint64_t lookups,
                    uint32_t threads) {
  KVT_CHECK(!probes.empty() && threads > 0);
  std::vector<uint64_t> hits(threads, 0);
  std::latch start(threads + 1);
  std::vector<std::thread> pool;
  for (uint32_t t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      size_t j = (probes.size() / threads) * t;
      uint64_t found = 0;
      start.arrive_and_wait();
      for (uint64_t i = 0; i < lookups; ++i) {
        if (tree.FindKv(probes[j]).has_value()) ++found;
        if (++j == probes.size()) j = 0;
      }
      hits[t] = found;
    });
  }
  start.arrive_and_wait();
  const auto t0 = std::chrono::steady_clock::now();
  for (auto& th : pool) th.join();
  const auto t1 = std::chrono::steady_clock::now();
  RunReport report{Seconds(t0, t1), lookups * threads, 0};
  for (uint64_t h : hits) report.hits += h;
  return report;
}

struct FlatMapBaseline::Map {
  absl::flat_hash_map<ObjectKey, uint32_t, keys::ObjectKeyHash> map;
};

FlatMapBaseline::FlatMapBaseline() : map_(std::make_unique<Map>()) {}
FlatMapBaseline::~FlatMapBaseline() = default;

RunReport FlatMapBaseline::Insert(std::span<const ObjectKey> keys) {
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < keys.size(); ++i) {
    map_->map.try_emplace(keys[i], static_cast<uint32_t>(i));
  }
  const auto t1 = std::chrono::steady_clock::now();
  return RunReport{Seconds(t0, t1), keys.size(), 0};
}

RunReport FlatMapBaseline::Find(std::span<const ObjectKey> probes, uint64_t lookups) const {
  KVT_CHECK(!probes.empty());
  uint64_t found = 0;
  size_t j = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (uint64_t i = 0; i < lookups; ++i) {
    if (map_->map.find(probes[j]) != map_->map.end()) ++found;
    if (++j == probes.size()) j = 0;
  }
  const auto t1 = std::chrono::steady_clock::now();
  return RunReport{Seconds(t0, t1), lookups, found};
}

void FlatMapBaseline::Clear() { map_->map = {}; }

}  // namespace kvtier::cluster
