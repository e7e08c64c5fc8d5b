#include "kvtier/controller/controller_http.h"

#include <atomic>
#include <cerrno>
#include <charconv>
#include <exception>
#include <map>
#include <system_error>
#include <thread>
#include <utility>

#include <fcntl.h>
#include <httplib.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kvtier/admin/admin_server.h"
#include "kvtier/admin/prometheus.h"
#include "kvtier/common/logging.h"
#include "kvtier/common/mutex.h"
#include "kvtier/controller/controller_admin.h"

namespace kvtier::controller {
namespace {

using nlohmann::json;

constexpr char kJsonType[] = "application/json";
constexpr char kHtmlType[] = "text/html; charset=utf-8";
constexpr char kPrometheusType[] = "text/plain; version=0.0.4; charset=utf-8";
constexpr std::chrono::seconds kReadTimeout{5};
constexpr std::chrono::seconds kWriteTimeout{5};
constexpr std::chrono::seconds kKeepAliveTimeout{2};
constexpr int kListenBacklog = 64;
// The dashboard page embeds its first data here, so it renders without waiting for a fetch.
constexpr std::string_view kInitialDataMarker = "/*KVT_INITIAL_DATA*/null";

struct Route {
  const char* path;
  const char* method;  // GET also serves HEAD
};
constexpr Route kRoutes[] = {
    {"/", "GET"},
    {"/api/dashboard", "GET"},
    {"/health", "GET"},
    {"/metrics", "GET"},
    {"/controller/workers", "GET"},
    {"/query_worker_info", "GET"},
    {"/lookup", "POST"},
    {"/clear", "POST"},
};

const Route* FindRoute(std::string_view path) {
  for (const Route& r : kRoutes) {
    if (path == r.path) return &r;
  }
  return nullptr;
}

std::string ErrnoMessage(int err) { return std::error_code(err, std::system_category()).message(); }

std::string HostPort(const std::string& host, uint16_t port) {
  const bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

// Binds and listens on host:port (numeric address or "localhost"; SO_REUSEADDR only, so a
// second controller on a taken port fails instead of sharing it). The same rules as the
// server's admin endpoint.
Result<int> Listen(const std::string& host, uint16_t port) {
  const std::string where = HostPort(host, port);
  const std::string numeric = host == "localhost" ? "127.0.0.1" : host;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (int rc = ::getaddrinfo(numeric.c_str(), std::to_string(port).c_str(), &hints, &found);
      rc != 0) {
    return MakeError(Status::InvalidArgument("controller admin: cannot listen on " + where +
                                             ": invalid host (" + ::gai_strerror(rc) +
                                             "); want a numeric IPv4/IPv6 address or localhost"));
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> addresses(found, &::freeaddrinfo);
  auto fail = [&where](const char* call, int err) {
    std::string what =
        "controller admin: cannot listen on " + where + ": " + call + ": " + ErrnoMessage(err);
    return MakeError(err == EADDRNOTAVAIL ? Status::InvalidArgument(what)
                                          : Status::Unavailable(what));
  };
  const int fd = ::socket(found->ai_family, found->ai_socktype | SOCK_CLOEXEC, found->ai_protocol);
  if (fd < 0) return fail("socket", errno);
  int one = 1;
  if (::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      ::bind(fd, found->ai_addr, found->ai_addrlen) != 0 || ::listen(fd, kListenBacklog) != 0) {
    const int err = errno;
    ::close(fd);
    return fail("bind", err);
  }
  return fd;
}

Result<uint16_t> BoundPort(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    return MakeError(Status::Internal("controller admin: getsockname: " + ErrnoMessage(errno)));
  }
  if (address.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&address)->sin6_port);
  }
  return ntohs(reinterpret_cast<const sockaddr_in*>(&address)->sin_port);
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void SetJson(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(Dump(body), kJsonType);
}

void SetError(httplib::Response& res, const Status& status, int http_status = 0) {
  SetJson(res, http_status != 0 ? http_status : admin::HttpStatusFor(status.code()),
          {{"error", std::string(status.message())},
           {"code", static_cast<int32_t>(status.code())},
           {"retryable", status.retryable()}});
}

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

// httplib::Server with a stop that cannot be missed (see admin_server.cc's ListenServer).
class ListenServer : public httplib::Server {
 public:
  void AdoptListenSocket(int fd) { svr_sock_ = fd; }
  void EndListenLoop() { svr_sock_ = INVALID_SOCKET; }
};

}  // namespace

class ControllerHttpServer::Impl {
 public:
  Impl(const ControllerOptions& options, ControllerCore* core, BoundEndpoints endpoints,
       uint16_t port)
      : host_(options.admin_host), port_(port), core_(core), endpoints_(std::move(endpoints)) {
    Install(options.admin_threads);
  }
  ~Impl() { Stop(); }

  Status Run(int listen_fd) KVT_EXCLUDES(stop_mu_) {
    MutexLock lock(&stop_mu_);
    const int wake_fd = ::fcntl(listen_fd, F_DUPFD_CLOEXEC, 0);
    if (wake_fd < 0) {
      ::close(listen_fd);
      stopped_ = true;
      return Status::Internal("controller admin: dup of the listening socket: " +
                              ErrnoMessage(errno));
    }
    listen_fd_ = listen_fd;
    wake_fd_ = wake_fd;
    server_.AdoptListenSocket(listen_fd);
    listen_thread_ = std::thread([this] {
      if (!server_.listen_after_bind()) {
        listen_loop_failed_.store(true);
        KVT_LOG_ERROR("controller admin: the accept loop on {} failed; no longer serving",
                      HostPort(host_, port_));
      }
    });
    KVT_LOG_INFO("controller admin: serving http://{}", HostPort(host_, port_));
    return Status::OK();
  }

  void Stop() KVT_EXCLUDES(stop_mu_) {
    MutexLock lock(&stop_mu_);
    if (stopped_) return;
    stopped_ = true;
    server_.EndListenLoop();
    ::shutdown(wake_fd_, SHUT_RDWR);  // wakes a blocked accept()
    listen_thread_.join();
    ::close(std::exchange(wake_fd_, -1));
    if (!listen_loop_failed_.load()) ::close(listen_fd_);
    listen_fd_ = -1;
  }

  uint16_t port() const { return port_; }

 private:
  using Request = httplib::Request;
  using Response = httplib::Response;

  void Install(size_t threads) {
    server_.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    server_.set_read_timeout(kReadTimeout);
    server_.set_write_timeout(kWriteTimeout);
    server_.set_keep_alive_timeout(kKeepAliveTimeout.count());
    server_.set_payload_max_length(kHttpMaxBodyBytes);

    Get("/", [this](const Request&, Response& res) {
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
    Get("/api/dashboard", [this](const Request&, Response& res) {
      auto data = DashboardJson(*core_, endpoints_);
      if (!data) return SetError(res, data.error());
      SetJson(res, 200, *data);
    });
    Get("/health",
        [this](const Request&, Response& res) { SetJson(res, 200, HealthJson(*core_)); });
    Get("/metrics", [this](const Request&, Response& res) {
      res.status = 200;
      res.set_content(MetricsText(*core_) + HttpMetricsText(), kPrometheusType);
    });
    Get("/controller/workers", [this](const Request& req, Response& res) {
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
    Get("/query_worker_info", [this](const Request& req, Response& res) {
      const std::string instance = req.get_param_value("instance_id");
      auto worker = UintParam(req, "worker_id");
      if (!worker) return SetError(res, worker.error());
      if (instance.empty() || !worker->has_value()) {
        return SetError(res,
                        Status::InvalidArgument("instance_id and worker_id are both required"));
      }
      OneWorker(instance, **worker, res);
    });
    Post("/lookup", [this](const Request&, Response& res, const std::string& body) {
      auto lookup = ParseLookupJson(body, core_->hasher());
      if (!lookup) return SetError(res, lookup.error());
      auto reply = core_->Lookup(lookup->request);
      if (!reply) return SetError(res, reply.error());
      SetJson(res, 200, LookupJson(*lookup, *reply, core_->hasher().chunk_size()));
    });
    Post("/clear", [this](const Request&, Response& res, const std::string& body) {
      auto request = ParseClearJson(body);
      if (!request) return SetError(res, request.error());
      auto cleared = core_->Clear(*request);
      if (!cleared) return SetError(res, cleared.error());
      SetJson(res, 200, {{"cleared_keys", *cleared}});
    });

    // Other methods on our paths: 405; other paths: 404.
    auto fallback = [](const Request& req, Response& res) {
      if (const Route* route = FindRoute(req.path)) {
        SetError(res,
                 Status::NotSupported("method " + req.method + " not allowed on " + req.path +
                                      " (allowed: " + route->method + ")"),
                 405);
        res.set_header("Allow", route->method);
      } else {
        SetError(res, Status::NotFound("no route " + req.method + " " + req.path));
      }
    };
    server_.Get(".*", fallback);
    server_.Post(".*", DiscardBody(fallback));
    server_.Put(".*", DiscardBody(fallback));
    server_.Patch(".*", DiscardBody(fallback));
    server_.Delete(".*", fallback);
    server_.Options(".*", fallback);
    server_.set_error_handler(
        httplib::Server::HandlerWithResponse([](const Request&, Response& res) {
          if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
          const Status s = res.status == 413 ? Status::InvalidArgument("request body too large")
                                             : Status::InvalidArgument("bad request");
          res.set_content(Dump({{"error", std::string(s.message())},
                                {"code", static_cast<int32_t>(s.code())},
                                {"retryable", false}}),
                          kJsonType);
          return httplib::Server::HandlerResponse::Handled;
        }));
    server_.set_exception_handler([](const Request&, Response& res, const std::exception_ptr&) {
      SetError(res, Status::Internal("unhandled exception"));
    });
    server_.set_post_routing_handler(
        [this](const Request& req, Response& res) { Count(req.path, res.status); });
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

  template <typename Fn>
  httplib::Server::Handler Guarded(const char* route, Fn fn) {
    return [route, fn = std::move(fn)](const Request& req, Response& res) {
      try {
        fn(req, res);
      } catch (const std::exception& e) {
        KVT_LOG_WARN("controller admin: the {} handler threw: {}", route, e.what());
        SetError(res, Status::Internal(std::string("handler failed: ") + e.what()));
      }
    };
  }

  template <typename Fn>
  void Get(const char* path, Fn fn) {
    server_.Get(path, Guarded(path, std::move(fn)));
  }

  // A POST route that reads its body (at most kHttpMaxBodyBytes, chunked ones included). A
  // request with neither Content-Length nor Transfer-Encoding has an empty body.
  template <typename Fn>
  void Post(const char* path, Fn fn) {
    server_.Post(path, [path, fn = std::move(fn)](const Request& req, Response& res,
                                                  const httplib::ContentReader& read) {
      std::string body;
      if (req.has_header("Content-Length") || req.has_header("Transfer-Encoding")) {
        const bool ok = read([&body](const char* data, size_t n) {
          if (body.size() + n > kHttpMaxBodyBytes) return false;
          body.append(data, n);
          return true;
        });
        if (!ok) {
          res.set_header("Connection", "close");
          return SetError(
              res,
              Status::InvalidArgument(fmt::format("request body unreadable or larger than {} bytes",
                                                  kHttpMaxBodyBytes)),
              413);
        }
      }
      try {
        fn(req, res, body);
      } catch (const std::exception& e) {
        KVT_LOG_WARN("controller admin: the {} handler threw: {}", path, e.what());
        SetError(res, Status::Internal(std::string("handler failed: ") + e.what()));
      }
    });
  }

  static httplib::Server::HandlerWithContentReader DiscardBody(httplib::Server::Handler handler) {
    return [handler = std::move(handler)](const Request& req, Response& res,
                                          const httplib::ContentReader& read) {
      if (req.has_header("Content-Length") || req.has_header("Transfer-Encoding")) {
        size_t received = 0;
        if (!read([&received](const char*, size_t n) { return (received += n) <= 4096; })) {
          res.set_header("Connection", "close");
        }
      }
      handler(req, res);
    };
  }

  void Count(const std::string& path, int status) KVT_EXCLUDES(counts_mu_) {
    const std::string route = FindRoute(path) != nullptr ? path : "unmatched";
    MutexLock lock(&counts_mu_);
    ++counts_[{route, status}];
  }

  std::string HttpMetricsText() KVT_EXCLUDES(counts_mu_) {
    admin::PrometheusWriter w;
    MutexLock lock(&counts_mu_);
    for (const auto& [key, n] : counts_) {
      w.Counter("kvtier_controller_http_requests_total", "HTTP admin requests, by route and status",
                static_cast<double>(n),
                {{"route", key.first}, {"status", std::to_string(key.second)}});
    }
    return w.Finish();
  }

  const std::string host_;
  const uint16_t port_;
  ControllerCore* const core_;
  const BoundEndpoints endpoints_;
  ListenServer server_;

  Mutex stop_mu_;
  bool stopped_ KVT_GUARDED_BY(stop_mu_) = false;
  std::thread listen_thread_ KVT_GUARDED_BY(stop_mu_);
  int listen_fd_ KVT_GUARDED_BY(stop_mu_) = -1;
  int wake_fd_ KVT_GUARDED_BY(stop_mu_) = -1;
  std::atomic<bool> listen_loop_failed_{false};

  Mutex counts_mu_;
  std::map<std::pair<std::string, int>, uint64_t> counts_ KVT_GUARDED_BY(counts_mu_);
};

Result<std::unique_ptr<ControllerHttpServer>> ControllerHttpServer::Start(
    const ControllerOptions& options, ControllerCore* core, BoundEndpoints endpoints) {
  if (core == nullptr) return MakeError(Status::InvalidArgument("controller admin: no core"));
  if (options.admin_threads == 0) {
    return MakeError(Status::InvalidArgument("controller admin: threads must be >= 1"));
  }
  KVT_ASSIGN_OR_RETURN(int fd, Listen(options.admin_host, options.admin_port));
  auto port = BoundPort(fd);
  if (!port) {
    ::close(fd);
    return MakeError(port.error());
  }
  std::unique_ptr<Impl> impl;
  try {
    impl = std::make_unique<Impl>(options, core, std::move(endpoints), *port);
  } catch (const std::exception& e) {  // httplib's route regexes, allocation
    ::close(fd);
    return MakeError(Status::Internal(std::string("controller admin: setup failed: ") + e.what()));
  }
  KVT_RETURN_IF_ERROR(impl->Run(fd));
  return std::unique_ptr<ControllerHttpServer>(new ControllerHttpServer(std::move(impl)));
}

ControllerHttpServer::ControllerHttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ControllerHttpServer::~ControllerHttpServer() { Stop(); }
uint16_t ControllerHttpServer::port() const { return impl_->port(); }
void ControllerHttpServer::Stop() { impl_->Stop(); }

}  // namespace kvtier::controller
