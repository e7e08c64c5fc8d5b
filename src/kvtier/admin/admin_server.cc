#include "kvtier/admin/admin_server.h"

#include <atomic>
#include <cerrno>
#include <exception>
#include <map>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>

#include <fcntl.h>
#include <httplib.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kvtier/common/logging.h"
#include "kvtier/common/mutex.h"

namespace kvtier::admin {
namespace {

constexpr char kJsonType[] = "application/json";
constexpr char kPrometheusType[] = "text/plain; version=0.0.4; charset=utf-8";
constexpr char kUnmatchedRoute[] = "unmatched";
constexpr size_t kKeepAliveMaxRequests = 100;
constexpr int kListenBacklog = 64;

constexpr char kHealthPath[] = "/api/healthcheck";
constexpr char kStatusPath[] = "/api/status";
constexpr char kMetricsPath[] = "/metrics";
constexpr char kClearPath[] = "/api/clear";

struct RouteInfo {
  const char* path;
  const char* method;  // the one method served; GET also serves HEAD
  const char* allow;   // the Allow header of 405 and OPTIONS replies
};
constexpr RouteInfo kRoutes[] = {
    {kHealthPath, "GET", "GET, HEAD, OPTIONS"},
    {kStatusPath, "GET", "GET, HEAD, OPTIONS"},
    {kMetricsPath, "GET", "GET, HEAD, OPTIONS"},
    {kClearPath, "POST", "POST, OPTIONS"},
};
// The methods httplib routes to handlers (HEAD goes to GET's).
constexpr const char* kRoutedMethods[] = {"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};

const RouteInfo* FindRoute(std::string_view path) {
  for (const RouteInfo& route : kRoutes) {
    if (path == route.path) return &route;
  }
  return nullptr;
}

std::string ErrnoMessage(int err) { return std::error_code(err, std::system_category()).message(); }

// "[::1]:8080" for IPv6, "127.0.0.1:8080" otherwise.
std::string HostPort(const std::string& host, uint16_t port) {
  bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

class ScopedFd {
 public:
  explicit ScopedFd(int fd) : fd_(fd) {}
  ~ScopedFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  int get() const { return fd_; }
  int Release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

// Binds and listens on host:port; returns the socket. No DNS: a numeric address or "localhost".
// SO_REUSEADDR only (a restarted server may rebind a port with connections in TIME_WAIT). Not
// httplib's SO_REUSEPORT, with which a second server would silently share a taken port.
Result<int> Listen(const std::string& host, uint16_t port) {
  const std::string where = HostPort(host, port);
  if (host.empty()) return MakeError(Status::InvalidArgument("admin: empty host"));
  const std::string numeric = host == "localhost" ? "127.0.0.1" : host;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  int rc = ::getaddrinfo(numeric.c_str(), std::to_string(port).c_str(), &hints, &found);
  if (rc != 0) {
    return MakeError(Status::InvalidArgument("admin: cannot listen on " + where +
                                             ": invalid host (" + ::gai_strerror(rc) +
                                             "); want a numeric IPv4/IPv6 address or 'localhost'"));
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> addresses(found, &::freeaddrinfo);

  auto fail = [&where](const char* call, int err) {
    // EADDRNOTAVAIL: the host is no address of this machine.
    Status status = err == EADDRNOTAVAIL ? Status::InvalidArgument("") : Status::Unavailable("");
    return MakeError(Status(
        status.code(), "admin: cannot listen on " + where + ": " + call + ": " + ErrnoMessage(err),
        status.retryable()));
  };
  ScopedFd fd(::socket(found->ai_family, found->ai_socktype | SOCK_CLOEXEC, found->ai_protocol));
  if (fd.get() < 0) return fail("socket", errno);
  int one = 1;
  if (::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) {
    return fail("setsockopt(SO_REUSEADDR)", errno);
  }
  if (::bind(fd.get(), found->ai_addr, found->ai_addrlen) != 0) return fail("bind", errno);
  if (::listen(fd.get(), kListenBacklog) != 0) return fail("listen", errno);
  return fd.Release();
}

Result<uint16_t> BoundPort(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    return MakeError(Status::Internal("admin: getsockname: " + ErrnoMessage(errno)));
  }
  if (address.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&address)->sin6_port);
  }
  return ntohs(reinterpret_cast<const sockaddr_in*>(&address)->sin_port);
}

std::string Dump(const nlohmann::json& json) {
  // Replace invalid UTF-8 (say, in an error message) instead of throwing.
  return json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

nlohmann::json ErrorJson(const Status& status) {
  return {{"error", std::string(status.message())},
          {"code", static_cast<int32_t>(status.code())},
          {"retryable", status.retryable()}};
}

void SetJson(httplib::Response& res, int http_status, const nlohmann::json& body) {
  res.status = http_status;
  res.set_content(Dump(body), kJsonType);
}

void SetError(httplib::Response& res, const Status& status) {
  SetJson(res, HttpStatusFor(status.code()), ErrorJson(status));
}

// "1"/"true" or "0"/"false"; absent is false.
Result<bool> ParseForce(const httplib::Request& req) {
  if (!req.has_param("force")) return false;
  std::string value = req.get_param_value("force");
  if (value == "1" || value == "true") return true;
  if (value == "0" || value == "false") return false;
  return MakeError(
      Status::InvalidArgument("force must be 1, true, 0 or false, got '" + value + "'"));
}

// httplib::Server with a stop that cannot be missed. httplib's stop() does nothing until the
// listen loop has marked itself running, so a Stop() right after Start() could be lost and the
// join would hang. The loop re-reads svr_sock_ before every accept(), so taking it (and shutting
// the socket down to wake a blocked accept()) works at any moment.
class ListenServer : public httplib::Server {
 public:
  void AdoptListenSocket(int fd) { svr_sock_ = fd; }
  void EndListenLoop() { svr_sock_ = INVALID_SOCKET; }
};

}  // namespace

int HttpStatusFor(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return 200;
    case StatusCode::kInvalidArgument:
      return 400;
    case StatusCode::kNotFound:
      return 404;
    case StatusCode::kUnavailable:
      return 503;
    default:
      return 500;
  }
}

class AdminServer::Impl {
 public:
  Impl(const AdminOptions& options, AdminHandlers handlers, uint16_t port)
      : host_(options.host), port_(port), handlers_(std::move(handlers)) {
    InstallRoutes(options.threads);
  }
  ~Impl() { Stop(); }

  // Takes the listening socket and starts the listen loop's thread.
  Status Run(int listen_fd) KVT_EXCLUDES(stop_mu_) {
    MutexLock lock(&stop_mu_);
    // A second descriptor of the same socket, ours alone: Stop() shuts the socket down through
    // it even if httplib has closed listen_fd (and the number was reused) after an accept error.
    int wake_fd = ::fcntl(listen_fd, F_DUPFD_CLOEXEC, 0);
    if (wake_fd < 0) {
      Status error = Status::Internal("admin: dup of the listening socket: " + ErrnoMessage(errno));
      ::close(listen_fd);
      stopped_ = true;
      return error;
    }
    listen_fd_ = listen_fd;
    wake_fd_ = wake_fd;
    server_.AdoptListenSocket(listen_fd);
    try {
      listen_thread_ = std::thread([this] {
        if (!server_.listen_after_bind()) {
          // httplib closed listen_fd itself.
          listen_loop_failed_.store(true);
          KVT_LOG_ERROR("admin: the accept loop on {} failed; no longer serving",
                        HostPort(host_, port_));
        }
      });
    } catch (const std::system_error& e) {
      server_.EndListenLoop();
      ::close(std::exchange(wake_fd_, -1));
      ::close(std::exchange(listen_fd_, -1));
      stopped_ = true;
      return Status::Internal(std::string("admin: cannot start the listen thread: ") + e.what());
    }
    KVT_LOG_INFO("admin: serving http://{}", HostPort(host_, port_));
    return Status::OK();
  }

  void Stop() KVT_EXCLUDES(stop_mu_) {
    MutexLock lock(&stop_mu_);
    if (stopped_) return;
    stopped_ = true;
    server_.EndListenLoop();
    ::shutdown(wake_fd_, SHUT_RDWR);  // wakes a blocked accept()
    // The pool joins after its connections end: requests in progress finish, idle keep-alive
    // connections close within kAdminKeepAliveTimeout.
    listen_thread_.join();
    ::close(std::exchange(wake_fd_, -1));
    if (!listen_loop_failed_.load()) ::close(listen_fd_);
    listen_fd_ = -1;
    KVT_LOG_INFO("admin: stopped serving http://{}", HostPort(host_, port_));
  }

  nlohmann::json RequestCountsJson() const KVT_EXCLUDES(counts_mu_) {
    nlohmann::json out = nlohmann::json::array();
    MutexLock lock(&counts_mu_);
    for (const auto& [route, by_status] : counts_) {
      nlohmann::json entry = {{"name", route}};
      for (const auto& [http_status, count] : by_status) entry[std::to_string(http_status)] = count;
      out.push_back(std::move(entry));
    }
    return out;
  }

  const std::string& host() const { return host_; }
  uint16_t port() const { return port_; }

 private:
  using Request = httplib::Request;
  using Response = httplib::Response;

  void InstallRoutes(size_t threads) {
    server_.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    server_.set_read_timeout(kAdminReadTimeout);
    server_.set_write_timeout(kAdminWriteTimeout);
    server_.set_keep_alive_timeout(kAdminKeepAliveTimeout.count());
    server_.set_keep_alive_max_count(kKeepAliveMaxRequests);
    server_.set_payload_max_length(kAdminMaxPayloadBytes);

    // Routes match in registration order: the four routes, then 405 (or 204 for OPTIONS) for
    // their other methods, then 404 for every other path.
    On("GET", kHealthPath, Guarded(kHealthPath, [this](const Request&, Response& res) {
         Status health = handlers_.health();
         if (health.ok()) return SetJson(res, 200, {{"status", "ok"}});
         nlohmann::json body = ErrorJson(health);
         body["status"] = "unhealthy";
         SetJson(res, 503, body);
       }));
    On("GET", kStatusPath, Guarded(kStatusPath, [this](const Request&, Response& res) {
         SetJson(res, 200, handlers_.status());
       }));
    On("GET", kMetricsPath, Guarded(kMetricsPath, [this](const Request&, Response& res) {
         res.status = 200;
         res.set_content(handlers_.metrics(), kPrometheusType);
       }));
    On("POST", kClearPath, Guarded(kClearPath, [this](const Request& req, Response& res) {
         Result<bool> force = ParseForce(req);
         if (!force) return SetError(res, force.error());
         Result<nlohmann::json> cleared = handlers_.clear(*force);
         if (!cleared) return SetError(res, cleared.error());
         SetJson(res, 200, *cleared);
       }));
    for (const RouteInfo& route : kRoutes) {
      for (const char* method : kRoutedMethods) {
        if (std::string_view(method) == route.method) continue;
        On(method, route.path,
           std::string_view(method) == "OPTIONS" ? AllowedMethods(route.allow)
                                                 : MethodNotAllowed(route.allow));
      }
    }
    for (const char* method : kRoutedMethods) On(method, ".*", NotFound);
    // httplib answers 400 to the methods it does not route (TRACE, CONNECT): make them 405 on
    // our paths and 404 elsewhere, like the others.
    server_.set_pre_routing_handler([](const Request& req, Response& res) {
      for (const char* method : kRoutedMethods) {
        if (req.method == method || req.method == "HEAD") {
          return httplib::Server::HandlerResponse::Unhandled;
        }
      }
      const RouteInfo* route = FindRoute(req.path);
      if (route == nullptr) {
        NotFound(req, res);
      } else {
        MethodNotAllowed(route->allow)(req, res);
      }
      return httplib::Server::HandlerResponse::Handled;
    });

    server_.set_error_handler(httplib::Server::HandlerWithResponse(
        [](const Request& req, Response& res) { return FillHttpError(req, res); }));
    // A backstop: Guarded already catches what handlers throw.
    server_.set_exception_handler([](const Request&, Response& res, const std::exception_ptr&) {
      SetError(res, Status::Internal("unhandled exception"));
    });
    // Runs for every reply (httplib's own errors included) before it is written, so a client
    // that got its reply also sees it counted.
    server_.set_post_routing_handler(
        [this](const Request& req, Response& res) { Count(req.path, res.status); });
  }

  // Registers `handler` for one method (GET also serves HEAD). Methods that may carry a body
  // (POST, PUT, PATCH, DELETE) get it through a ContentReader, see DiscardingBody.
  void On(std::string_view method, const std::string& path, httplib::Server::Handler handler) {
    if (method == "GET") {
      server_.Get(path, std::move(handler));
    } else if (method == "OPTIONS") {
      server_.Options(path, std::move(handler));
    } else if (method == "POST") {
      server_.Post(path, DiscardingBody(std::move(handler)));
    } else if (method == "PUT") {
      server_.Put(path, DiscardingBody(std::move(handler)));
    } else if (method == "PATCH") {
      server_.Patch(path, DiscardingBody(std::move(handler)));
    } else if (method == "DELETE") {  // httplib reads a DELETE's body only when it has a length
      server_.Delete(path, DiscardingBody(handler));
      server_.Delete(path, std::move(handler));
    }
  }

  // No route takes a body: read it (at most kAdminMaxPayloadBytes, else 413) and drop it.
  // - A request with neither Content-Length nor Transfer-Encoding has no body (RFC 9112 6.3), as
  //   `curl -X POST` sends; httplib 0.11 would wait for one until the read timeout, then 400.
  // - httplib enforces the limit on a Content-Length only; we enforce it on chunked bodies too,
  //   and close such a connection, whose unread rest would otherwise be taken for a request.
  static httplib::Server::HandlerWithContentReader DiscardingBody(
      httplib::Server::Handler handler) {
    return [handler = std::move(handler)](const Request& req, Response& res,
                                          const httplib::ContentReader& read) {
      if (req.has_header("Content-Length") || req.has_header("Transfer-Encoding")) {
        size_t received = 0;
        bool ok = read([&received](const char*, size_t n) {
          received += n;
          return received <= kAdminMaxPayloadBytes;
        });
        if (received > kAdminMaxPayloadBytes) {
          res.status = 413;
          res.set_header("Connection", "close");
        } else if (!ok && res.status < 400) {
          res.status = 400;  // httplib has set 413 for a Content-Length over the limit
        }
        if (!ok) return;  // FillHttpError writes the JSON body
      }
      handler(req, res);
    };
  }

  static void NotFound(const Request& req, Response& res) {
    SetError(res, Status::NotFound("no route " + req.method + " " + req.path));
  }

  // Wraps a handler: whatever it throws becomes a 500 reply, and the server keeps serving.
  template <typename Fn>
  static httplib::Server::Handler Guarded(const char* route, Fn fn) {
    return [route, fn = std::move(fn)](const Request& req, Response& res) {
      std::string what;
      try {
        fn(req, res);
        return;
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
        what = "an exception not derived from std::exception";
      }
      KVT_LOG_WARN("admin: the {} handler threw: {}", route, what);
      SetError(res, Status::Internal("the " + std::string(route) + " handler threw: " + what));
    };
  }

  static httplib::Server::Handler MethodNotAllowed(const char* allow) {
    return [allow](const Request& req, Response& res) {
      SetError(res, Status::NotSupported("method " + req.method + " not allowed on " + req.path +
                                         " (allowed: " + allow + ")"));
      res.status = 405;
      res.set_header("Allow", allow);
    };
  }

  static httplib::Server::Handler AllowedMethods(const char* allow) {
    return [allow](const Request&, Response& res) {
      res.status = 204;
      res.set_header("Allow", allow);
    };
  }

  // Gives httplib's own error replies (400 bad request, 413 body too large, ...) a JSON body;
  // replies that already have one are left alone.
  static httplib::Server::HandlerResponse FillHttpError(const Request& req, Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    Status status;
    switch (res.status) {
      case 400:
        status = Status::InvalidArgument("bad request");
        break;
      case 404:
        status = Status::NotFound("no route " + req.method + " " + req.path);
        break;
      case 413:
        status = Status::InvalidArgument("request body too large (the admin API takes at most " +
                                         std::to_string(kAdminMaxPayloadBytes) + " bytes)");
        break;
      case 414:
        status = Status::InvalidArgument("request URI too long");
        break;
      default:
        status = Status::Internal("HTTP error " + std::to_string(res.status));
        break;
    }
    res.set_content(Dump(ErrorJson(status)), kJsonType);  // keeps res.status
    return httplib::Server::HandlerResponse::Handled;
  }

  void Count(const std::string& path, int http_status) KVT_EXCLUDES(counts_mu_) {
    std::string route = FindRoute(path) != nullptr ? path : kUnmatchedRoute;
    MutexLock lock(&counts_mu_);
    ++counts_[route][http_status];
  }

  const std::string host_;
  const uint16_t port_;
  const AdminHandlers handlers_;
  ListenServer server_;

  Mutex stop_mu_;
  bool stopped_ KVT_GUARDED_BY(stop_mu_) = false;
  std::thread listen_thread_ KVT_GUARDED_BY(stop_mu_);
  int listen_fd_ KVT_GUARDED_BY(stop_mu_) = -1;
  int wake_fd_ KVT_GUARDED_BY(stop_mu_) = -1;
  std::atomic<bool> listen_loop_failed_{false};  // set by the listen thread before it ends

  mutable Mutex counts_mu_;
  std::map<std::string, std::map<int, uint64_t>> counts_ KVT_GUARDED_BY(counts_mu_);
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
  if (options.threads == 0) {
    return MakeError(Status::InvalidArgument("admin: threads must be >= 1"));
  }
  KVT_ASSIGN_OR_RETURN(int listen_fd, Listen(options.host, options.port));
  ScopedFd fd(listen_fd);
  KVT_ASSIGN_OR_RETURN(uint16_t port, BoundPort(fd.get()));
  std::unique_ptr<Impl> impl;
  try {
    impl = std::make_unique<Impl>(options, std::move(handlers), port);
  } catch (const std::exception& e) {  // httplib's route regexes, allocation
    return MakeError(Status::Internal(std::string("admin: cannot set up the server: ") + e.what()));
  }
  KVT_RETURN_IF_ERROR(impl->Run(fd.Release()));
  return std::unique_ptr<AdminServer>(new AdminServer(std::move(impl)));
}

AdminServer::AdminServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

AdminServer::~AdminServer() { Stop(); }

uint16_t AdminServer::port() const { return impl_->port(); }
const std::string& AdminServer::host() const { return impl_->host(); }
void AdminServer::Stop() { impl_->Stop(); }
nlohmann::json AdminServer::RequestCountsJson() const { return impl_->RequestCountsJson(); }

}  // namespace kvtier::admin
