#include "kvtier/service/service.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "kvtier/admin/prometheus.h"
#include "kvtier/common/logging.h"
#include "kvtier/common/units.h"
#include "kvtier/keys/token_hasher.h"
#if defined(KVT_WITH_CUDA)
#include "kvtier/gpu/cuda_backend.h"
#endif

namespace kvtier::service {
namespace {

// The peer-fetch address to register with the controller: the first tcp endpoint as bound, with
// a wildcard host replaced by this machine's hostname; "" without a tcp endpoint.
std::string DefaultAdvertiseAddress(const std::vector<std::string>& endpoints) {
  for (const std::string& e : endpoints) {
    if (!e.starts_with("tcp://")) continue;
    const size_t colon = e.rfind(':');
    if (colon == std::string::npos || colon < 6) continue;
    const std::string host = e.substr(6, colon - 6);
    if (host != "*" && host != "0.0.0.0" && host != "::" && host != "[::]") return e;
    char name[256] = {};
    if (::gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return e;
    return fmt::format("tcp://{}{}", name, e.substr(colon));
  }
  return "";
}

}  // namespace

Service::Service(const ServiceOptions& options)
    : options_(options), started_(Clock::Real()->Now()) {}

Result<std::unique_ptr<Service>> Service::Start(const ServiceOptions& options) {
  if (options.tick_interval <= Duration::zero()) {
    return MakeError(Status::InvalidArgument("service: tick_interval must be positive"));
  }
  std::unique_ptr<Service> s(new Service(options));
  auto fail = [](std::string_view part, const Status& status) {
    return MakeError(
        Status(status.code(), fmt::format("starting the {}: {}", part, status.message())));
  };

  auto storage = storage::StorageManager::Create(options.storage);
  if (!storage) return fail("storage", storage.error());
  s->storage_ = std::move(*storage);

  if (options.reporter.enabled()) {
    // Created now: its listener must be on L1 before any client stores a chunk.
    reporter::ReporterIdentity id;
    id.instance_id = options.engine.server_id;
    id.address = options.reporter.advertise_address;
    id.software_version = fmt::format("kvtier {}", options.engine.server_version);
    id.hash_algorithm = std::string(keys::HashAlgorithmName(options.engine.hash));
    id.chunk_size = options.engine.chunk_size;
    auto reporter = reporter::Reporter::Create(options.reporter, id, &s->storage_->l1());
    if (!reporter) {
      s->storage_->Close();
      return fail("controller reporter", reporter.error());
    }
    s->reporter_ = std::move(*reporter);
  }

  if (options.copy_threads > 0)
    s->copy_pool_ = std::make_unique<transfer::CopyPool>(options.copy_threads);
  transfer::HostBackendOptions host = options.host_transfer;
  host.pool = s->copy_pool_.get();
  const uint32_t chunk_size = options.engine.chunk_size;
  const memory::HostPool* l1_pool = &s->storage_->l1().pool();
  server::BackendFactory backends = [host, chunk_size,
                                     l1_pool](const protocol::RegisterKvCacheRequest& r)
      -> Result<std::unique_ptr<transfer::TransferBackend>> {
    if (r.backend == "host") {
      KVT_ASSIGN_OR_RETURN(auto backend, transfer::HostBackend::Create(r, chunk_size, host));
      return std::unique_ptr<transfer::TransferBackend>(std::move(backend));
    }
#if defined(KVT_WITH_CUDA)
    if (r.backend == "cuda") {
      if (!l1_pool->cuda_registered()) {
        return MakeError(Status::FailedPrecondition(
            "the cuda backend needs the L1 pool pinned with CUDA, and it is not (no GPU was "
            "visible when the server started, or cudaHostRegister failed: see the server log)"));
      }
      gpu::CudaBackendOptions cuda_options;
      cuda_options.host_base = l1_pool->data();
      cuda_options.host_size = l1_pool->size();
      KVT_ASSIGN_OR_RETURN(auto backend, gpu::CudaBackend::Create(r, chunk_size, cuda_options));
      return std::unique_ptr<transfer::TransferBackend>(std::move(backend));
    }
    return MakeError(Status::NotSupported(
        fmt::format("transfer backend '{}' is not available in this server (available: host, cuda)",
                    r.backend)));
#else
    (void)l1_pool;
    return MakeError(Status::NotSupported(fmt::format(
        "transfer backend '{}' is not available in this server (available: host; this build has "
        "no CUDA)",
        r.backend)));
#endif
  };
  server::EngineOptions engine_options = options.engine;
  auto engine =
      server::Engine::Create(engine_options, s->storage_.get(), Clock::Real(), std::move(backends));
  if (!engine) {
    s->storage_->Close();
    return fail("engine", engine.error());
  }
  s->engine_ = std::move(*engine);

  server::Engine* e = s->engine_.get();
  auto transport = server::Transport::Start(
      options.transport, [e](const protocol::Request& r, server::Transport::ReplyFn reply) {
        e->Handle(r, std::move(reply));
      });
  if (!transport) {
    s->engine_->Shutdown();
    s->storage_->Close();
    return fail("transport", transport.error());
  }
  s->transport_ = std::move(*transport);
  s->tick_ = std::thread([raw = s.get()] { raw->TickLoop(); });

  if (s->reporter_) {
    Status started = Status::OK();
    if (options.reporter.advertise_address.empty()) {
      started = s->reporter_->SetAddress(DefaultAdvertiseAddress(s->transport_->endpoints()));
    }
    if (started.ok()) started = s->reporter_->Start();
    if (!started.ok()) {
      s->Shutdown();
      return fail("controller reporter", started);
    }
  }

  if (options.admin_enabled) {
    Service* raw = s.get();
    admin::AdminHandlers handlers;
    handlers.health = [raw] {
      return raw->storage_->healthy()
                 ? Status::OK()
                 : Status::Unavailable("a storage tier is unhealthy: see /api/status");
    };
    handlers.status = [raw] { return raw->StatusJson(); };
    handlers.metrics = [raw] { return raw->MetricsText(); };
    handlers.clear = [raw](bool force) -> Result<nlohmann::json> {
      return nlohmann::json{{"cleared", raw->storage_->ClearL1(force)}};
    };
    auto admin = admin::AdminServer::Start(options.admin, std::move(handlers));
    if (!admin) {
      s->Shutdown();
      return fail("admin endpoint", admin.error());
    }
    s->admin_ = std::move(*admin);
  }
  KVT_LOG_INFO("kvtier server '{}' serving on {}{}", options.engine.server_id,
               fmt::join(s->transport_->endpoints(), ", "),
               s->admin_
                   ? fmt::format(", admin on http://{}:{}", options.admin.host, s->admin_->port())
                   : "");
  return s;
}

Service::~Service() { Shutdown(); }

void Service::TickLoop() {
  for (;;) {
    {
      MutexLock lock(&tick_mu_);
      const auto deadline = std::chrono::steady_clock::now() + options_.tick_interval;
      while (!stopping_) {
        if (!tick_cv_.WaitUntil(&tick_mu_, deadline)) break;
      }
      if (stopping_) return;
    }
    engine_->Tick();
  }
}

bool Service::Shutdown() {
  if (shut_down_) return flushed_;
  shut_down_ = true;
  if (admin_) admin_->Stop();
  if (transport_) transport_->Stop();  // answers what it took; takes nothing more
  if (reporter_) reporter_->Stop();    // DEREGISTER: routers stop sending requests here
  {
    MutexLock lock(&tick_mu_);
    stopping_ = true;
    tick_cv_.NotifyAll();
  }
  if (tick_.joinable()) tick_.join();
  if (engine_) engine_->Shutdown();  // sessions' locks released, waits answered
  if (storage_) {
    flushed_ = storage_->FlushToL2(options_.flush_timeout);
    if (!flushed_)
      KVT_LOG_WARN("shutdown: L2 stores still pending after {}; they are dropped",
                   FormatDuration(options_.flush_timeout));
    storage_->Close();  // before the engine goes: prefetch watchers point into it
  }
  engine_.reset();
  copy_pool_.reset();
  KVT_LOG_INFO("kvtier server stopped");
  return flushed_;
}

nlohmann::json Service::StatusJson() const {
  nlohmann::json j;
  j["server"] = {
      {"id", options_.engine.server_id},
      {"version", options_.engine.server_version},
      {"uptime_seconds", std::chrono::duration<double>(Clock::Real()->Now() - started_).count()},
      {"chunk_size", options_.engine.chunk_size},
      {"hash_algorithm", std::string(keys::HashAlgorithmName(options_.engine.hash))},
      {"healthy", storage_->healthy()}};
  j["transport"] = transport_->StatusJson();
  j["engine"] = engine_->StatusJson();
  j["storage"] = storage_->StatusJson();
  if (admin_) j["admin"] = admin_->RequestCountsJson();
  j["reporter"] = reporter_ ? reporter_->StatusJson() : nlohmann::json{{"enabled", false}};
#if defined(KVT_WITH_CUDA)
  // CUDA IPC allocations of engines this server has open (released on unregister and reaping).
  j["gpu"] = {{"l1_pinned", storage_->l1().pool().cuda_registered()},
              {"ipc_mappings", gpu::IpcMapping::OpenCount()}};
#endif
  return j;
}

std::string Service::MetricsText() const {
  admin::PrometheusWriter w;
  std::vector<double> bounds;
  for (uint64_t us : server::LatencyHistogram::kBoundsUs)
    bounds.push_back(static_cast<double>(us) / 1e6);
  for (uint16_t op = 0; op <= protocol::kMaxOpcode; ++op) {
    const auto opcode = static_cast<protocol::Opcode>(op);
    const server::LatencyHistogram::Snapshot s = transport_->latency(opcode).Read();
    if (s.count == 0) continue;
    w.Histogram("kvtier_request_duration_seconds",
                "Time from a request's arrival to its reply (opcode INVALID: malformed requests)",
                bounds, s.cumulative, s.sum_seconds, {{"opcode", protocol::OpcodeName(opcode)}});
  }
  admin::AppendJsonAsGauges(w, "kvtier", StatusJson());
  return w.Finish();
}

}  // namespace kvtier::service
