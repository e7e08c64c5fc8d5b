#include "suites.h"

namespace kvtier::bench {

const std::vector<Suite>& AllSuites() {
  static const std::vector<Suite> suites = {
      {"controller",
       "cluster registry Admit ingest and FindKv vs absl::flat_hash_map; controller LOOKUP RPC "
       "vs bare ZMQ echo (ipc, tcp)",
       RunControllerSuite},
      {"gpu",
       "GPU path: kernels to mapped pinned memory vs staging + DMA; server STORE/RETRIEVE GB/s vs "
       "pinned cudaMemcpy (needs a CUDA build and a GPU)",
       RunGpuSuite},
      {"l1", "L1 lookup path, store path under eviction, metadata bytes per object", RunL1Suite},
      {"l2", "fs vs raw disk I/O, redis vs redis-benchmark, store controller overhead", RunL2Suite},
      {"server", "LOOKUP round trips vs bare ZMQ echo (ipc, tcp); STORE/RETRIEVE GB/s vs memcpy",
       RunServerSuite},
      {"sync", "FastLock vs std::mutex, RWLock vs std::shared_mutex", RunSyncSuite},
  };
  return suites;
}

}  // namespace kvtier::bench
