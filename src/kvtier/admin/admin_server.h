// The HTTP admin endpoint of a kvtier server (cpp-httplib): health, status, Prometheus metrics
// and cache clearing. It knows nothing of the rest of the server: it calls the handlers it is
// given. Routes, responses and status codes are documented in docs/admin.md.
//
// Security: the endpoint has no authentication and POST /api/clear drops the cache. It binds
// 127.0.0.1 by default; bind anything wider only on trusted networks.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "kvtier/admin/http_server.h"  // HttpStatusFor
#include "kvtier/common/result.h"
#include "kvtier/common/status.h"

namespace kvtier::admin {

struct AdminOptions {
  // A numeric IPv4/IPv6 address ("0.0.0.0", "::1") or "localhost" (127.0.0.1). No DNS lookups.
  std::string host = "127.0.0.1";
  uint16_t port = 8080;  // 0: an ephemeral port (see AdminServer::port())
  size_t threads = 2;    // requests served in parallel, >= 1
};

// Limits applied to every connection.
inline constexpr std::chrono::seconds kAdminReadTimeout{5};
inline constexpr std::chrono::seconds kAdminWriteTimeout{5};
// An idle keep-alive connection is closed after this; it also bounds how long Stop() waits for
// one.
inline constexpr std::chrono::seconds kAdminKeepAliveTimeout{2};
// The admin API takes no request bodies beyond this (413 otherwise).
inline constexpr size_t kAdminMaxPayloadBytes = 4096;

// Every handler must be set. Handlers run on the server's worker threads, up to
// AdminOptions::threads at once: they must be thread-safe, should return quickly, and must not
// call AdminServer::Stop(). An exception escaping a handler becomes a 500 reply.
struct AdminHandlers {
  // GET /api/healthcheck: OK -> 200 {"status":"ok"}; an error -> 503
  // {"status":"unhealthy","error":message,"code":n}.
  std::function<Status()> health;
  // GET /api/status -> 200 with this JSON.
  std::function<nlohmann::json()> status;
  // GET /metrics -> 200 with this Prometheus text (format 0.0.4, see PrometheusWriter).
  std::function<std::string()> metrics;
  // POST /api/clear[?force=1] -> 200 with the JSON, or the error's HTTP status (HttpStatusFor)
  // with {"error":message,"code":n,"retryable":bool}.
  std::function<Result<nlohmann::json>(bool force)> clear;
};

class AdminServer {
 public:
  // Binds host:port now (so a taken port or a bad host fails here, with kUnavailable or
  // kInvalidArgument naming host:port and the reason) and serves on a thread of its own until
  // Stop().
  static Result<std::unique_ptr<AdminServer>> Start(const AdminOptions& options,
                                                    AdminHandlers handlers);

  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;
  // Stops.
  ~AdminServer();

  // The bound port (the ephemeral one when AdminOptions::port was 0).
  uint16_t port() const;
  const std::string& host() const;

  // Stops accepting, lets requests in progress finish, joins every thread. Idempotent and
  // thread-safe; returns once stopped (at most about kAdminReadTimeout when a client is slow).
  // Must not be called from a handler.
  void Stop();

  // Replies sent so far, per route and HTTP status, shaped for AppendJsonAsGauges:
  //   [{"name": "/api/status", "200": 12, "405": 1}, {"name": "unmatched", "404": 3}]
  // Routes are the four paths above, or "unmatched" for any other path (bounded cardinality).
  nlohmann::json RequestCountsJson() const;

 private:
  class Impl;
  explicit AdminServer(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtier::admin
