// Synthetic workloads over a RegistryTree: key generation, batched ingest, FindKv lookups, and
// an absl::flat_hash_map baseline measured on the same keys. Used by cluster_registry_bench,
// the tests, and meant for a `kvtier bench controller` suite (library kvtier::cluster_bench).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvtier/cluster/registry_tree.h"
#include "kvtier/common/result.h"

namespace kvtier::cluster {

// A deterministic key: chunk hash from `i` (uniformly mixed), namespace ("bench/model", no
// salt), the given rank, object group 0.
ObjectKey WorkloadKey(uint64_t i, keys::KvRank rank = {});
// WorkloadKey(first .. first + n - 1).
std::vector<ObjectKey> WorkloadKeys(uint64_t n, uint64_t first = 0);

struct WorkloadOptions {
  uint32_t instances = 8;
  uint32_t workers_per_instance = 8;  // 8 x 8 = 64 workers
  uint32_t batch_size = 256;
  std::string location = "L1";
};

// "inst-<i>", worker w, address "tcp://10.0.<i>.<w>:5600"; no heartbeats expected.
std::string WorkloadInstanceId(uint32_t instance);
Status RegisterWorkloadWorkers(RegistryTree& tree, const WorkloadOptions& options);

struct RunReport {
  double seconds = 0;
  uint64_t operations = 0;  // keys ingested, or lookups done
  uint64_t hits = 0;        // lookups that found a holder
  double rate() const { return seconds > 0 ? static_cast<double>(operations) / seconds : 0; }
};

// Admits `keys` in batches of options.batch_size, batch b going to worker b % workers, with
// per-worker sequence numbers starting at `first_seq`. `threads` threads share the workers
// (thread t owns the workers w with w % threads == t, so each stream stays in order). The
// workers must be registered (RegisterWorkloadWorkers).
Result<RunReport> RunIngest(RegistryTree& tree, std::span<const ObjectKey> keys,
                            const WorkloadOptions& options, uint32_t threads,
                            uint64_t first_seq = 1);

// `lookups` FindKv calls per thread over `probes` (thread t starts at a different offset).
RunReport RunFindKv(const RegistryTree& tree, std::span<const ObjectKey> probes, uint64_t lookups,
                    uint32_t threads);

// The baseline: one absl::flat_hash_map<ObjectKey, uint32_t> used by one thread, no locks.
class FlatMapBaseline {
 public:
  FlatMapBaseline();
  ~FlatMapBaseline();
  FlatMapBaseline(const FlatMapBaseline&) = delete;
  FlatMapBaseline& operator=(const FlatMapBaseline&) = delete;

  // Inserts `keys` (timed).
  RunReport Insert(std::span<const ObjectKey> keys);
  // `lookups` finds over `probes` (timed).
  RunReport Find(std::span<const ObjectKey> probes, uint64_t lookups) const;
  void Clear();

 private:
  struct Map;
  std::unique_ptr<Map> map_;
};

}  // namespace kvtier::cluster
