#include "kvtier/controller/controller_http.h"

#include <charconv>
#include <optional>
#include <string_view>
#include <utility>

#include <httplib.h>

#include "kvtier/admin/http_server.h"
#include "kvtier/admin/prometheus.h"
#include "kvtier/common/logging.h"
#include "kvtier/controller/controller_admin.h"

namespace kvtier::controller {
namespace {

using nlohmann::json;

using admin::SetError;
using admin::SetJson;

constexpr char kHtmlType[] = "text/html; charset=utf-8";
constexpr char kPrometheusType[] = "text/plain; version=0.0.4; charset=utf-8";
// httplib's default, which the controller has always used.
constexpr size_t kKeepAliveMaxRequests = 5;
// The dashboard page embeds its first data here, so it renders without waiting for a fetch.
constexpr std::string_view kInitialDataMarker = "/*KVT_INITIAL_DATA*/null";

// A uint32 query parameter; absent: nullopt.
Result<std::optional<uint32_t>> UintParam(const httplib::Request& req, const char* name) {
  if (!req.has_param(name)) return std::optional<uint32_t>();
  const std::string v = req.get_param_value(name);
  uint32_t out = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc() || end != v.data() + v.size() || v.empty()) {
    return MakeError(Status::InvalidArgument(
        fmt::format("query parameter '{}' must be an integer in [0, 2^32), got '{}'", name, v)));
  }
  return std::optional<uint32_t>(out);
}

// JSON embedded in a <script> element: nothing in it may close the element or start a comment.
std::string ScriptSafeJson(const json& j) {
  const std::string text = j.dump(-1, ' ', true, json::error_handler_t::replace);
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '<':
        out += "\\u003c";
        break;
      case '>':
        out += "\\u003e";
        break;
      case '&':
        out += "\\u0026";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

}  // namespace

class ControllerHttpServer::Impl {
 public:
  using HttpServer = admin::HttpServer;
  using Request = httplib::Request;
  using Response = httplib::Response;

  Impl(ControllerCore* core, BoundEndpoints endpoints)
      : core_(core), endpoints_(std::move(endpoints)) {}

  // Registers the routes on http_ (their handlers use core_, so http_ must not outlive this).
  void InstallRoutes() {
    HttpServer& http = *http_;
    http.Get("/", [this](const Request&, Response& res) {
      std::string page = kDashboardHtml;
      auto data = DashboardJson(*core_, endpoints_);
      const size_t at = page.find(kInitialDataMarker);
      if (data && at != std::string::npos) {
        page.replace(at, kInitialDataMarker.size(), ScriptSafeJson(*data));
      }
      res.status = 200;
      res.set_header("Cache-Control", "no-store");
      res.set_content(page, kHtmlType);
    });
    http.Get("/api/dashboard", [this](const Request&, Response& res) {
      auto data = DashboardJson(*core_, endpoints_);
      if (!data) return SetError(res, data.error());
      SetJson(res, 200, *data);
    });
    http.Get("/health",
             [this](const Request&, Response& res) { SetJson(res, 200, HealthJson(*core_)); });
    http.Get("/metrics", [this](const Request&, Response& res) {
      res.status = 200;
      res.set_content(MetricsText(*core_) + HttpMetricsText(), kPrometheusType);
    });
    http.Get("/controller/workers", [this](const Request& req, Response& res) {
      const std::string instance = req.get_param_value("instance_id");
      auto worker = UintParam(req, "worker_id");
      if (!worker) return SetError(res, worker.error());
      if (worker->has_value() && instance.empty()) {
        return SetError(res, Status::InvalidArgument("worker_id needs an instance_id"));
      }
      if (worker->has_value()) return OneWorker(instance, **worker, res);
      auto workers = WorkersJson(*core_, instance);
      if (!workers) return SetError(res, workers.error());
      if (!instance.empty() && (*workers)["total_count"] == 0) {
        return SetError(res, Status::NotFound("no instance '" + instance + "'"));
      }
      SetJson(res, 200, *workers);
    });
    http.Get("/query_worker_info", [this](const Request& req, Response& res) {
      const std::string instance = req.get_param_value("instance_id");
      auto worker = UintParam(req, "worker_id");
      if (!worker) return SetError(res, worker.error());
      if (instance.empty() || !worker->has_value()) {
        return SetError(res,
                        Status::InvalidArgument("instance_id and worker_id are both required"));
      }
      OneWorker(instance, **worker, res);
    });
    http.Post("/lookup", [this](const Request&, Response& res, const std::string& body) {
      auto lookup = ParseLookupJson(body, core_->hasher());
      if (!lookup) return SetError(res, lookup.error());
      auto reply = core_->Lookup(lookup->request);
      if (!reply) return SetError(res, reply.error());
      SetJson(res, 200, LookupJson(*lookup, *reply, core_->hasher().chunk_size()));
    });
    http.Post("/clear", [this](const Request&, Response& res, const std::string& body) {
      auto request = ParseClearJson(body);
      if (!request) return SetError(res, request.error());
      auto cleared = core_->Clear(*request);
      if (!cleared) return SetError(res, cleared.error());
      SetJson(res, 200, {{"cleared_keys", *cleared}});
    });
  }

  void OneWorker(const std::string& instance, uint32_t worker_id, Response& res) {
    auto info = core_->registry().GetWorkerInfo(cluster::Origin{instance, worker_id, 0});
    if (!info) {
      if (info.error().code() == StatusCode::kNotFound) {
        return SetError(res, Status::NotFound(fmt::format("no worker {} of instance '{}'",
                                                          worker_id, instance)));
      }
      return SetError(res, info.error());
    }
    SetJson(res, 200, WorkerJson(*core_, *info));
  }

  std::string HttpMetricsText() const {
    admin::PrometheusWriter w;
    for (const HttpServer::RequestCount& count : http_->RequestCounts()) {
      w.Counter("kvtier_controller_http_requests_total", "HTTP admin requests, by route and status",
                static_cast<double>(count.count),
                {{"route", count.route}, {"status", std::to_string(count.status)}});
    }
    return w.Finish();
  }

  ControllerCore* const core_;
  const BoundEndpoints endpoints_;
  // Last: destroyed (so stopped) first, while what its handlers use is still there.
  std::unique_ptr<HttpServer> http_;
};

Result<std::unique_ptr<ControllerHttpServer>> ControllerHttpServer::Start(
    const ControllerOptions& options, ControllerCore* core, BoundEndpoints endpoints) {
  if (core == nullptr) return MakeError(Status::InvalidArgument("controller admin: no core"));
  admin::HttpServerOptions http_options;
  http_options.name = "controller admin";
  http_options.host = options.admin_host;
  http_options.port = options.admin_port;
  http_options.threads = options.admin_threads;
  http_options.keep_alive_max_requests = kKeepAliveMaxRequests;
  http_options.max_body_bytes = kHttpMaxBodyBytes;
  auto impl = std::make_unique<Impl>(core, std::move(endpoints));
  KVT_ASSIGN_OR_RETURN(impl->http_, admin::HttpServer::Create(std::move(http_options)));
  impl->InstallRoutes();
  KVT_RETURN_IF_ERROR(impl->http_->Start());
  return std::unique_ptr<ControllerHttpServer>(new ControllerHttpServer(std::move(impl)));
}

ControllerHttpServer::ControllerHttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ControllerHttpServer::~ControllerHttpServer() { Stop(); }
uint16_t ControllerHttpServer::port() const { return impl_->http_->port(); }
void ControllerHttpServer::Stop() { impl_->http_->Stop(); }

}  // namespace kvtier::controller
