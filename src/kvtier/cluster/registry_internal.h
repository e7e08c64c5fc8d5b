// Internals shared by RegistryTree's source files: its event counters and error messages.
#pragma once

#include <atomic>
#include <cstdint>

#include <fmt/format.h>

#include "kvtier/cluster/registry_tree.h"

namespace kvtier::cluster {

struct RegistryTree::Counters {
  static void Add(std::atomic<uint64_t>& counter, uint64_t n = 1) {
    if (n != 0) counter.fetch_add(n, std::memory_order_relaxed);
  }

  std::atomic<uint64_t> batches_applied{0};
  std::atomic<uint64_t> keys_admitted{0};
  std::atomic<uint64_t> keys_evicted{0};
  std::atomic<uint64_t> seq_gaps{0};
  std::atomic<uint64_t> stale_batches{0};
  std::atomic<uint64_t> unknown_worker_batches{0};
  std::atomic<uint64_t> lost_events{0};
  std::atomic<uint64_t> key_count_mismatches{0};
  std::atomic<uint64_t> full_syncs_started{0};
  std::atomic<uint64_t> full_syncs_completed{0};
  std::atomic<uint64_t> full_syncs_failed{0};
  std::atomic<uint64_t> full_syncs_superseded{0};
  std::atomic<uint64_t> full_sync_requests{0};
  std::atomic<uint64_t> sync_batches_duplicate{0};
  std::atomic<uint64_t> sync_batches_rejected{0};
  std::atomic<uint64_t> workers_reaped{0};
  std::atomic<uint64_t> lock_timeouts{0};
};

// kNotFound for a worker that is not registered (or not under this registration id).
inline Status UnknownWorker(const Origin& origin) {
  if (origin.registration_id != 0) {
    return Status::NotFound(fmt::format("cluster registry: unknown registration {:#x} of {}/{}",
                                        origin.registration_id, origin.instance_id,
                                        origin.worker_id));
  }
  return Status::NotFound(
      fmt::format("cluster registry: unknown worker {}/{}", origin.instance_id, origin.worker_id));
}

}  // namespace kvtier::cluster
