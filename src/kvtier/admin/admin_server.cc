#include "kvtier/admin/admin_server.h"

#include <string>
#include <utility>

#include <httplib.h>

#include "kvtier/admin/http_server.h"

namespace kvtier::admin {
namespace {

constexpr char kPrometheusType[] = "text/plain; version=0.0.4; charset=utf-8";
constexpr size_t kKeepAliveMaxRequests = 100;

constexpr char kHealthPath[] = "/api/healthcheck";
constexpr char kStatusPath[] = "/api/status";
constexpr char kMetricsPath[] = "/metrics";
constexpr char kClearPath[] = "/api/clear";

// "1"/"true" or "0"/"false"; absent is false.
Result<bool> ParseForce(const httplib::Request& req) {
  if (!req.has_param("force")) return false;
  std::string value = req.get_param_value("force");
  if (value == "1" || value == "true") return true;
  if (value == "0" || value == "false") return false;
  return MakeError(
      Status::InvalidArgument("force must be 1, true, 0 or false, got '" + value + "'"));
}

}  // namespace

class AdminServer::Impl {
 public:
  explicit Impl(AdminHandlers handlers) : handlers_(std::move(handlers)) {}

  // Registers the four routes on `http` (their handlers call handlers_, so `http` must not
  // outlive this).
  void InstallRoutes(HttpServer& http) {
    using httplib::Request;
    using httplib::Response;
    http.Get(kHealthPath, [this](const Request&, Response& res) {
      Status health = handlers_.health();
      if (health.ok()) return SetJson(res, 200, {{"status", "ok"}});
      nlohmann::json body = ErrorJson(health);
      body["status"] = "unhealthy";
      SetJson(res, 503, body);
    });
    http.Get(kStatusPath,
             [this](const Request&, Response& res) { SetJson(res, 200, handlers_.status()); });
    http.Get(kMetricsPath, [this](const Request&, Response& res) {
      res.status = 200;
      res.set_content(handlers_.metrics(), kPrometheusType);
    });
    // No route takes a body: one within kAdminMaxPayloadBytes is read and dropped.
    http.Post(kClearPath, [this](const Request& req, Response& res, const std::string&) {
      Result<bool> force = ParseForce(req);
      if (!force) return SetError(res, force.error());
      Result<nlohmann::json> cleared = handlers_.clear(*force);
      if (!cleared) return SetError(res, cleared.error());
      SetJson(res, 200, *cleared);
    });
  }

  const AdminHandlers handlers_;
  // Last: destroyed (so stopped) first, while the handlers it calls are still there.
  std::unique_ptr<HttpServer> http_;
};

Result<std::unique_ptr<AdminServer>> AdminServer::Start(const AdminOptions& options,
                                                        AdminHandlers handlers) {
  for (const auto& [set, name] : {std::pair{static_cast<bool>(handlers.health), "health"},
                                  std::pair{static_cast<bool>(handlers.status), "status"},
                                  std::pair{static_cast<bool>(handlers.metrics), "metrics"},
                                  std::pair{static_cast<bool>(handlers.clear), "clear"}}) {
    if (!set) {
      return MakeError(
          Status::InvalidArgument(std::string("admin: the ") + name + " handler is not set"));
    }
  }
  HttpServerOptions http_options;
  http_options.name = "admin";
  http_options.host = options.host;
  http_options.port = options.port;
  http_options.threads = options.threads;
  http_options.read_timeout = kAdminReadTimeout;
  http_options.write_timeout = kAdminWriteTimeout;
  http_options.keep_alive_timeout = kAdminKeepAliveTimeout;
  http_options.keep_alive_max_requests = kKeepAliveMaxRequests;
  http_options.max_body_bytes = kAdminMaxPayloadBytes;
  http_options.answer_options = true;
  auto impl = std::make_unique<Impl>(std::move(handlers));
  KVT_ASSIGN_OR_RETURN(impl->http_, HttpServer::Create(std::move(http_options)));
  impl->InstallRoutes(*impl->http_);
  KVT_RETURN_IF_ERROR(impl->http_->Start());
  return std::unique_ptr<AdminServer>(new AdminServer(std::move(impl)));
}

AdminServer::AdminServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

AdminServer::~AdminServer() { Stop(); }

uint16_t AdminServer::port() const { return impl_->http_->port(); }
const std::string& AdminServer::host() const { return impl_->http_->host(); }
void AdminServer::Stop() { impl_->http_->Stop(); }

nlohmann::json AdminServer::RequestCountsJson() const {
  nlohmann::json out = nlohmann::json::array();
  for (const HttpServer::RequestCount& count : impl_->http_->RequestCounts()) {
    if (out.empty() || out.back()["name"] != count.route) out.push_back({{"name", count.route}});
    out.back()[std::to_string(count.status)] = count.count;
  }
  return out;
}

}  // namespace kvtier::admin
