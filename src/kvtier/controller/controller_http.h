// The controller's HTTP admin API and dashboard (cpp-httplib), documented in docs/controller.md
// ("HTTP admin API and dashboard"):
//
//   GET  /                       the dashboard (HTML; polls /api/dashboard)
//   GET  /api/dashboard          the dashboard's data
//   GET  /health                 liveness and totals
//   GET  /metrics                Prometheus text
//   GET  /controller/workers     every worker; ?instance_id=I[&worker_id=W] narrows it (404 if
//   none) GET  /query_worker_info      ?instance_id=I&worker_id=W: one worker (404 if unknown) POST
//   /lookup                 prefix lookup by chunk hashes or token ids POST /clear forget (part of)
//   the index; the workers are asked to full-sync
//
// Errors are JSON {"error", "code", "retryable"}: 400 for bad input, 404 unknown route or
// worker, 405 wrong method, 413 body too large, 500 otherwise. A bad request affects nothing
// else. No authentication: it binds 127.0.0.1 by default.
#pragma once

#include <cstdint>
#include <memory>

#include "kvtier/common/result.h"
#include "kvtier/controller/controller_core.h"
#include "kvtier/controller/controller_options.h"

namespace kvtier::controller {

// Request bodies beyond this are refused with 413 (a lookup of 65536 chunks by hashes is about
// 4.3 MB of JSON; by token ids it may be larger).
inline constexpr size_t kHttpMaxBodyBytes = 32u << 20;

class ControllerHttpServer {
 public:
  // Binds options.admin_host:admin_port now (a taken port: kUnavailable; a bad host:
  // kInvalidArgument) and serves on threads of its own until Stop(). `core` must outlive it.
  static Result<std::unique_ptr<ControllerHttpServer>> Start(const ControllerOptions& options,
                                                             ControllerCore* core,
                                                             BoundEndpoints endpoints = {});
  ~ControllerHttpServer();  // Stop()
  ControllerHttpServer(const ControllerHttpServer&) = delete;
  ControllerHttpServer& operator=(const ControllerHttpServer&) = delete;

  uint16_t port() const;
  // Stops accepting, lets requests in progress finish, joins. Idempotent; not from a handler.
  void Stop();

  class Impl;

 private:
  explicit ControllerHttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The dashboard page (dashboard.html, embedded at build time).
extern const char kDashboardHtml[];

}  // namespace kvtier::controller
