// The HTTP server under both admin APIs, the server's (AdminServer) and the controller's
// (controller::ControllerHttpServer), over cpp-httplib: binding host:port, a lifecycle whose
// Stop() cannot be missed, JSON error replies, and everything around the routes a user
// registers:
//   - a handler that throws gets a 500 JSON reply, and the server keeps serving;
//   - a POST body is read up to HttpServerOptions::max_body_bytes (413 beyond, chunked bodies
//     included, and the connection is closed); a request with neither Content-Length nor
//     Transfer-Encoding has an empty body;
//   - another method on a registered path is a 405 with an Allow header, any other path a 404;
//   - httplib's own errors (400 malformed, 413, 414) get a JSON body;
//   - replies are counted per route and HTTP status (RequestCounts()).
// Error bodies are {"error": message, "code": n, "retryable": bool}, with the HTTP status of
// HttpStatusFor(code).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"
#include "kvtier/common/status.h"

namespace httplib {
struct Request;
struct Response;
}  // namespace httplib

namespace kvtier::admin {

struct HttpServerOptions {
  // Prefixes every error message and log line: "admin", "controller admin".
  std::string name = "admin";
  // A numeric IPv4/IPv6 address ("0.0.0.0", "::1") or "localhost" (127.0.0.1). No DNS lookups.
  std::string host = "127.0.0.1";
  uint16_t port = 0;   // 0: an ephemeral port (see HttpServer::port())
  size_t threads = 2;  // requests served in parallel, >= 1
  std::chrono::seconds read_timeout{5};
  std::chrono::seconds write_timeout{5};
  // An idle keep-alive connection is closed after this; it also bounds how long Stop() waits
  // for one.
  std::chrono::seconds keep_alive_timeout{2};
  size_t keep_alive_max_requests = 5;  // per connection
  // Request bodies beyond this are refused with 413.
  size_t max_body_bytes = 4096;
  // true: OPTIONS on a registered path answers 204 with the Allow header, which lists HEAD (with
  // GET) and OPTIONS too ("GET, HEAD, OPTIONS", "POST, OPTIONS"), and the methods httplib does
  // not route (TRACE, CONNECT) get 405 or 404 like the others. false: Allow names the path's
  // one method ("GET"), OPTIONS is a 405 like any other method, TRACE and CONNECT are 400.
  bool answer_options = false;
};

// The HTTP status an error reply carries: kInvalidArgument 400, kNotFound 404, kUnavailable
// 503, anything else 500 (OK: 200).
int HttpStatusFor(StatusCode code);

// res <- status `http_status` with `body` as application/json (invalid UTF-8 replaced).
void SetJson(httplib::Response& res, int http_status, const nlohmann::json& body);
// res <- HttpStatusFor(status.code()) with {"error", "code", "retryable"}.
void SetError(httplib::Response& res, const Status& status);
nlohmann::json ErrorJson(const Status& status);

class HttpServer {
 public:
  using Handler = std::function<void(const httplib::Request&, httplib::Response&)>;
  using BodyHandler =
      std::function<void(const httplib::Request&, httplib::Response&, const std::string& body)>;

  // Checks the options; binds nothing yet (see Start()).
  static Result<std::unique_ptr<HttpServer>> Create(HttpServerOptions options);

  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  // Stops.
  ~HttpServer();

  // Registers a route, before Start(): GET (which also serves HEAD) or POST of one exact path.
  // Handlers run on the server's worker threads, up to HttpServerOptions::threads at once: they
  // must be thread-safe and must not call Stop().
  void Get(const std::string& path, Handler handler);
  void Post(const std::string& path, BodyHandler handler);

  // Binds host:port (a taken port: kUnavailable; a bad host or an address of another machine:
  // kInvalidArgument; the message names host:port and the reason) and serves on threads of its
  // own until Stop(). Once only.
  Status Start();

  // Stops accepting, lets requests in progress finish, joins every thread. Idempotent and
  // thread-safe; returns once stopped (at most about read_timeout when a client is slow).
  void Stop();

  // The bound port (the ephemeral one when the options' port was 0); 0 before Start().
  uint16_t port() const { return port_; }
  const std::string& host() const { return options_.host; }

  // Replies sent so far, by route (a registered path, or "unmatched" for any other path, so
  // the cardinality is bounded) and HTTP status, in that order.
  struct RequestCount {
    std::string route;
    int status = 0;
    uint64_t count = 0;
  };
  std::vector<RequestCount> RequestCounts() const;

 private:
  class Server;  // httplib::Server with a stop that cannot be missed
  struct Route {
    std::string path;
    std::string method;  // "GET" (also serves HEAD) or "POST"
    std::string allow;   // the Allow header of 405 (and OPTIONS) replies
    Handler get;         // GET routes
    BodyHandler post;    // POST routes
  };

  explicit HttpServer(HttpServerOptions options);
  Status Install();
  // Aborts when a route is added after Start().
  void CheckNotStarted(const std::string& path) KVT_EXCLUDES(stop_mu_);
  Status Run(int listen_fd);
  const Route* FindRoute(const std::string& path) const;
  void Count(const std::string& path, int http_status);

  const HttpServerOptions options_;
  std::vector<Route> routes_;  // set before Start(), read-only after
  std::unique_ptr<Server> server_;
  uint16_t port_ = 0;

  Mutex stop_mu_;
  bool started_ KVT_GUARDED_BY(stop_mu_) = false;
  bool stopped_ KVT_GUARDED_BY(stop_mu_) = false;
  std::thread listen_thread_ KVT_GUARDED_BY(stop_mu_);
  int listen_fd_ KVT_GUARDED_BY(stop_mu_) = -1;
  int wake_fd_ KVT_GUARDED_BY(stop_mu_) = -1;
  std::atomic<bool> listen_loop_failed_{false};  // set by the listen thread before it ends

  mutable Mutex counts_mu_;
  std::map<std::pair<std::string, int>, uint64_t> counts_ KVT_GUARDED_BY(counts_mu_);
};

}  // namespace kvtier::admin
