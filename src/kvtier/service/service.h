// Service: a whole kvtier server in one object: storage (L1, L2, controllers), the engine
// (request handlers), the ZMQ transport, the upkeep thread (session expiry, worker reaping), the
// HTTP admin endpoint and, when configured, the cluster controller reporter. `kvtier server` is
// a Service plus signal handling; integration tests and benchmarks start one in-process the same
// way.
//
// Start builds everything or nothing: on any error what was built is torn down and the error
// names the part that failed. Shutdown is graceful and ordered: stop taking requests (the
// transport answers what it already took), deregister from the cluster controller, release every
// session's locks, flush pending L2 stores (bounded by flush_timeout), close the tiers.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include <nlohmann/json_fwd.hpp>

#include "kvtier/admin/admin_server.h"
#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"
#include "kvtier/reporter/reporter.h"
#include "kvtier/server/engine.h"
#include "kvtier/server/transport.h"
#include "kvtier/storage/storage_manager.h"
#include "kvtier/transfer/copy_pool.h"
#include "kvtier/transfer/host_backend.h"

namespace kvtier::service {

struct ServiceOptions {
  server::TransportOptions transport;
  server::EngineOptions engine;
  storage::StorageOptions storage;
  transfer::HostBackendOptions host_transfer;  // its pool is the service's (copy_threads)
  size_t copy_threads = 4;                     // 0: host copies run on the transfer threads
  bool admin_enabled = true;
  admin::AdminOptions admin;
  Duration tick_interval = std::chrono::seconds(1);
  Duration flush_timeout = std::chrono::seconds(30);
  // The cluster controller to report to (off while reporter.endpoint is empty). The server
  // registers as instance engine.server_id; an empty advertise_address is derived from the first
  // tcp endpoint once bound.
  reporter::ReporterOptions reporter;
};

class Service {
 public:
  static Result<std::unique_ptr<Service>> Start(const ServiceOptions& options);
  ~Service();  // Shutdown()

  // Idempotent. Returns false when L2 stores were still pending at flush_timeout (they are
  // lost; the log says how many).
  bool Shutdown();

  const std::vector<std::string>& endpoints() const { return transport_->endpoints(); }
  // 0 when the admin endpoint is off.
  uint16_t admin_port() const { return admin_ ? admin_->port() : 0; }
  server::Engine& engine() { return *engine_; }
  storage::StorageManager& storage() { return *storage_; }
  // Null when reporting is off.
  reporter::Reporter* reporter() { return reporter_.get(); }

  // {"server", "transport", "engine", "storage", "admin", "controller"}
  nlohmann::json StatusJson() const;
  // Prometheus text exposition of StatusJson's numbers (kvtier_...).
  std::string MetricsText() const;

 private:
  explicit Service(const ServiceOptions& options);
  void TickLoop();

  const ServiceOptions options_;
  const TimePoint started_;
  // Before storage_: destroyed after it, since L1 calls the reporter's listener until it goes.
  std::unique_ptr<reporter::Reporter> reporter_;
  std::unique_ptr<storage::StorageManager> storage_;
  std::unique_ptr<transfer::CopyPool> copy_pool_;
  std::unique_ptr<server::Engine> engine_;
  std::unique_ptr<server::Transport> transport_;
  std::unique_ptr<admin::AdminServer> admin_;

  Mutex tick_mu_;
  CondVar tick_cv_;
  bool stopping_ KVT_GUARDED_BY(tick_mu_) = false;
  std::thread tick_;
  bool shut_down_ = false;
  bool flushed_ = true;
};

}  // namespace kvtier::service
