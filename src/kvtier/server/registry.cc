#include "kvtier/server/registry.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kvtier/common/logging.h"

namespace kvtier::server {

Registry::Registry(Clock* clock, BackendFactory factory)
    : clock_(clock), factory_(std::move(factory)) {}

Result<std::shared_ptr<Registration>> Registry::Register(
    const protocol::RegisterKvCacheRequest& request) {
  {
    MutexLock lock(&mu_);
    auto it = workers_.find(request.instance_id);
    if (it != workers_.end()) {
      if (it->second->request == request) {
        it->second->last_seen_ns.store(clock_->NowNanos());
        return it->second;
      }
      return MakeError(Status::AlreadyExists(
          fmt::format("instance '{}' is registered with a different KV cache; unregister it first",
                      request.instance_id)));
    }
  }
  // Map the memory outside the lock: it may take a while.
  KVT_ASSIGN_OR_RETURN(auto backend, factory_(request));
  auto r = std::make_shared<Registration>();
  r->request = request;
  r->backend = std::move(backend);
  r->registered_at = clock_->Now();
  r->last_seen_ns.store(clock_->NowNanos());
  MutexLock lock(&mu_);
  auto [it, inserted] = workers_.emplace(request.instance_id, r);
  if (!inserted) {
    // A concurrent registration of the same id won.
    if (it->second->request == request) return it->second;
    return MakeError(Status::AlreadyExists(
        fmt::format("instance '{}' is registered with a different KV cache; unregister it first",
                    request.instance_id)));
  }
  KVT_LOG_INFO("registered {} ({} rank {}/{}, {} layers, object {} bytes)", request.instance_id,
               request.model, request.worker_rank, request.world_size, request.layout.num_layers,
               r->object_size());
  return r;
}

Status Registry::Unregister(const std::string& instance_id) {
  MutexLock lock(&mu_);
  if (workers_.erase(instance_id) == 0) {
    return Status::NotFound(fmt::format("instance '{}' is not registered", instance_id));
  }
  KVT_LOG_INFO("unregistered {}", instance_id);
  return Status::OK();
}

Result<std::shared_ptr<Registration>> Registry::Use(const std::string& instance_id) {
  MutexLock lock(&mu_);
  auto it = workers_.find(instance_id);
  if (it == workers_.end()) {
    return MakeError(Status::NotFound(fmt::format(
        "instance '{}' is not registered (REGISTER_KV_CACHE first; it may have been reaped)",
        instance_id)));
  }
  it->second->last_seen_ns.store(clock_->NowNanos());
  return it->second;
}

bool Registry::Ping(const std::string& instance_id) {
  MutexLock lock(&mu_);
  auto it = workers_.find(instance_id);
  if (it == workers_.end()) return false;
  it->second->last_seen_ns.store(clock_->NowNanos());
  it->second->pinged.store(true);
  return true;
}

std::vector<std::shared_ptr<Registration>> Registry::Reap(Duration worker_timeout,
                                                          Duration registration_grace) {
  const int64_t now = clock_->NowNanos();
  std::vector<std::shared_ptr<Registration>> reaped;
  MutexLock lock(&mu_);
  for (auto it = workers_.begin(); it != workers_.end();) {
    const Registration& r = *it->second;
    Duration limit = r.pinged.load() ? worker_timeout : registration_grace;
    if (Duration(now - r.last_seen_ns.load()) > limit) {
      KVT_LOG_WARN("reaping {}: silent for more than {}s", r.instance_id(),
                   std::chrono::duration_cast<std::chrono::seconds>(limit).count());
      reaped.push_back(std::move(it->second));
      workers_.erase(it++);
    } else {
      ++it;
    }
  }
  return reaped;
}

std::optional<uint64_t> Registry::ObjectSizeFor(const std::string& model,
                                                uint16_t world_size) const {
  MutexLock lock(&mu_);
  for (const auto& [id, r] : workers_) {
    if (r->request.model == model && r->request.world_size == world_size) return r->object_size();
  }
  return std::nullopt;
}

size_t Registry::size() const {
  MutexLock lock(&mu_);
  return workers_.size();
}

std::vector<std::shared_ptr<Registration>> Registry::All() const {
  MutexLock lock(&mu_);
  std::vector<std::shared_ptr<Registration>> all;
  for (const auto& [id, r] : workers_) all.push_back(r);
  return all;
}

nlohmann::json Registry::StatusJson() const {
  const int64_t now = clock_->NowNanos();
  nlohmann::json workers = nlohmann::json::array();
  for (const auto& r : All()) {
    workers.push_back(
        {{"instance_id", r->instance_id()},
         {"model", r->request.model},
         {"world_size", r->request.world_size},
         {"worker_rank", r->request.worker_rank},
         {"backend", r->request.backend},
         {"num_layers", r->request.layout.num_layers},
         {"num_blocks", r->request.layout.num_blocks},
         {"block_size", r->request.layout.block_size},
         {"format", protocol::KvFormatName(r->request.layout.format)},
         {"dtype", protocol::DTypeName(r->request.layout.dtype)},
         {"object_size", r->object_size()},
         {"pinged", r->pinged.load()},
         {"seconds_since_seen", static_cast<double>(now - r->last_seen_ns.load()) / 1e9}});
  }
  return workers;
}

}  // namespace kvtier::server
