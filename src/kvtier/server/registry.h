// Registry: the engine workers that registered their KV cache (REGISTER_KV_CACHE), with their
// transfer backends and liveness.
//
// A registration is shared: a transfer in progress keeps it (and its shared-memory mapping)
// alive even if the worker is unregistered or reaped meanwhile; the mapping goes when the last
// user lets go. Liveness: STORE, RETRIEVE and PING refresh a worker's last-seen time; PING also
// marks it as pinging. The reaper removes workers silent for longer than `worker_timeout`
// (pinging ones) or `registration_grace` (ones that never pinged).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <nlohmann/json_fwd.hpp>

#include "kvtier/common/clock.h"
#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"
#include "kvtier/protocol/messages.h"
#include "kvtier/transfer/transfer_backend.h"

namespace kvtier::server {

struct Registration {
  protocol::RegisterKvCacheRequest request;
  std::unique_ptr<transfer::TransferBackend> backend;
  TimePoint registered_at;
  std::atomic<int64_t> last_seen_ns{0};  // Clock nanos
  std::atomic<bool> pinged{false};

  const std::string& instance_id() const { return request.instance_id; }
  uint64_t object_size() const { return backend->object_size(); }
};

// Builds the backend for a registration (host shared memory today; CUDA IPC later).
using BackendFactory = std::function<Result<std::unique_ptr<transfer::TransferBackend>>(
    const protocol::RegisterKvCacheRequest&)>;

class Registry {
 public:
  Registry(Clock* clock, BackendFactory factory);

  // Registers, or refreshes an identical registration. A different description under a known
  // instance id is kAlreadyExists (unregister first).
  Result<std::shared_ptr<Registration>> Register(const protocol::RegisterKvCacheRequest& request)
      KVT_EXCLUDES(mu_);
  // kNotFound for unknown ids.
  Status Unregister(const std::string& instance_id) KVT_EXCLUDES(mu_);
  // The registration, refreshed as seen now; kNotFound (naming the id) when unknown.
  Result<std::shared_ptr<Registration>> Use(const std::string& instance_id) KVT_EXCLUDES(mu_);
  // PING: refreshes and marks as pinging. False for unknown ids.
  bool Ping(const std::string& instance_id) KVT_EXCLUDES(mu_);
  // Removes and returns registrations silent for too long.
  std::vector<std::shared_ptr<Registration>> Reap(Duration worker_timeout,
                                                  Duration registration_grace) KVT_EXCLUDES(mu_);
  // The chunk object size registered for (model, world size), if any worker of it registered.
  std::optional<uint64_t> ObjectSizeFor(const std::string& model, uint16_t world_size) const
      KVT_EXCLUDES(mu_);

  size_t size() const KVT_EXCLUDES(mu_);
  std::vector<std::shared_ptr<Registration>> All() const KVT_EXCLUDES(mu_);
  nlohmann::json StatusJson() const KVT_EXCLUDES(mu_);

 private:
  Clock* const clock_;
  const BackendFactory factory_;
  mutable Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Registration>> workers_ KVT_GUARDED_BY(mu_);
};

}  // namespace kvtier::server
