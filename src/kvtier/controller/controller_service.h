// ControllerService: the `kvtier controller` process's service (docs/controller.md, "The
// controller process"), startable in-process:
//
//   ControllerOptions o;
//   o.request_endpoint = "tcp://127.0.0.1:0";  // port 0: a free port (see endpoints())
//   o.events_endpoint = "tcp://127.0.0.1:0";
//   o.heartbeat_endpoint = "tcp://127.0.0.1:0";
//   o.admin_port = 0;                          // or admin_enabled = false
//   auto service = ControllerService::Start(o);
//   ... workers connect to (*service)->endpoints() ...
//   (*service)->Stop();                        // also done by the destructor
//
// Threads: one I/O thread owns the three ZeroMQ sockets (requests ROUTER, events PULL,
// heartbeats ROUTER) and runs the periodic tick between polls; it decodes every frame, hands it
// to the ControllerCore and sends the reply. Each poll round serves heartbeats first, then a
// bounded batch of requests and of events, so heartbeats never wait behind a flood of events.
// The HTTP admin server (ControllerHttpServer) serves on threads of its own and calls the core
// directly.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "kvtier/common/result.h"
#include "kvtier/controller/controller_core.h"
#include "kvtier/controller/controller_options.h"

namespace kvtier::controller {

class ControllerHttpServer;

class ControllerService {
 public:
  // Binds every socket and the admin port (failures name the endpoint and the reason: a taken
  // port is kUnavailable, a malformed endpoint kInvalidArgument) and starts serving.
  static Result<std::unique_ptr<ControllerService>> Start(const ControllerOptions& options);
  ~ControllerService();  // Stop()
  ControllerService(const ControllerService&) = delete;
  ControllerService& operator=(const ControllerService&) = delete;

  // Stops serving: requests already received are answered with kUnavailable (retryable), the
  // sockets close (lingering at most a second for replies), the HTTP server stops. Idempotent;
  // not from an HTTP handler.
  void Stop();

  const BoundEndpoints& endpoints() const { return endpoints_; }
  uint16_t admin_port() const;  // 0 when the admin API is off
  uint64_t epoch() const { return core_->epoch(); }

  // The controller's state: registry, counters, event log. Valid until destruction.
  ControllerCore& core() { return *core_; }

  struct Sockets;  // the ZeroMQ context and sockets, owned by the I/O thread once it runs

 private:
  explicit ControllerService(std::unique_ptr<ControllerCore> core);
  Status Bind(const ControllerOptions& options);
  void Loop();

  std::unique_ptr<ControllerCore> core_;
  std::unique_ptr<Sockets> sockets_;
  BoundEndpoints endpoints_;
  std::unique_ptr<ControllerHttpServer> http_;
  std::atomic<bool> stop_{false};
  std::thread io_;
};

}  // namespace kvtier::controller
