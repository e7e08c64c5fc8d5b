#include "kvtier/admin/http_server.h"

#include <cerrno>
#include <exception>
#include <string_view>
#include <system_error>

#include <fcntl.h>
#include <httplib.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kvtier/common/check.h"
#include "kvtier/common/logging.h"

namespace kvtier::admin {
namespace {

using httplib::Request;
using httplib::Response;

constexpr char kJsonType[] = "application/json";
constexpr char kUnmatchedRoute[] = "unmatched";
constexpr int kListenBacklog = 64;
// The methods httplib routes to handlers (HEAD goes to GET's).
constexpr const char* kRoutedMethods[] = {"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};

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
Result<int> Listen(const std::string& name, const std::string& host, uint16_t port) {
  const std::string where = HostPort(host, port);
  if (host.empty()) return MakeError(Status::InvalidArgument(name + ": empty host"));
  const std::string numeric = host == "localhost" ? "127.0.0.1" : host;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  int rc = ::getaddrinfo(numeric.c_str(), std::to_string(port).c_str(), &hints, &found);
  if (rc != 0) {
    return MakeError(Status::InvalidArgument(name + ": cannot listen on " + where +
                                             ": invalid host (" + ::gai_strerror(rc) +
                                             "); want a numeric IPv4/IPv6 address or 'localhost'"));
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> addresses(found, &::freeaddrinfo);

  auto fail = [&name, &where](const char* call, int err) {
    // EADDRNOTAVAIL: the host is no address of this machine.
    Status status = err == EADDRNOTAVAIL ? Status::InvalidArgument("") : Status::Unavailable("");
    return MakeError(
        Status(status.code(),
               name + ": cannot listen on " + where + ": " + call + ": " + ErrnoMessage(err),
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

Result<uint16_t> BoundPort(const std::string& name, int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    return MakeError(Status::Internal(name + ": getsockname: " + ErrnoMessage(errno)));
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

// Wraps a handler: whatever it throws becomes a 500 reply, and the server keeps serving.
template <typename... Args, typename Fn>
auto Guarded(std::string name, std::string route, Fn fn) {
  return [name = std::move(name), route = std::move(route), fn = std::move(fn)](
             const Request& req, Response& res, const Args&... args) {
    std::string what;
    try {
      fn(req, res, args...);
      return;
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
      what = "an exception not derived from std::exception";
    }
    KVT_LOG_WARN("{}: the {} handler threw: {}", name, route, what);
    SetError(res, Status::Internal("the " + route + " handler threw: " + what));
  };
}

// Reads a request's body, at most `max_bytes`, and passes it on (or, without `keep`, only
// counts it: the 404/405 answers ignore bodies, so they do not buffer them).
// - A request with neither Content-Length nor Transfer-Encoding has no body (RFC 9112 6.3), as
//   `curl -X POST` sends; httplib 0.11 would wait for one until the read timeout, then 400.
// - httplib enforces the limit on a Content-Length only; we enforce it on chunked bodies too.
//   A body not read to its end closes the connection: its unread rest would otherwise be taken
//   for a request.
httplib::Server::HandlerWithContentReader ReadingBody(size_t max_bytes, bool keep,
                                                      HttpServer::BodyHandler handler) {
  return [max_bytes, keep, handler = std::move(handler)](const Request& req, Response& res,
                                                         const httplib::ContentReader& read) {
    std::string body;
    if (req.has_header("Content-Length") || req.has_header("Transfer-Encoding")) {
      bool too_large = false;
      size_t received = 0;
      bool ok = read([&](const char* data, size_t n) {
        if (received + n > max_bytes) {
          too_large = true;
          return false;
        }
        received += n;
        if (keep) body.append(data, n);
        return true;
      });
      if (!ok) {
        if (too_large) {
          res.status = 413;
        } else if (res.status < 400) {
          res.status = 400;  // httplib has set 413 for a Content-Length over the limit
        }
        res.set_header("Connection", "close");
        return;  // the error handler writes the JSON body
      }
    }
    handler(req, res, body);
  };
}

void NotFound(const Request& req, Response& res) {
  SetError(res, Status::NotFound("no route " + req.method + " " + req.path));
}

HttpServer::Handler MethodNotAllowed(std::string allow) {
  return [allow = std::move(allow)](const Request& req, Response& res) {
    SetError(res, Status::NotSupported("method " + req.method + " not allowed on " + req.path +
                                       " (allowed: " + allow + ")"));
    res.status = 405;
    res.set_header("Allow", allow);
  };
}

HttpServer::Handler AllowedMethods(std::string allow) {
  return [allow = std::move(allow)](const Request&, Response& res) {
    res.status = 204;
    res.set_header("Allow", allow);
  };
}

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

nlohmann::json ErrorJson(const Status& status) {
  return {{"error", std::string(status.message())},
          {"code", static_cast<int32_t>(status.code())},
          {"retryable", status.retryable()}};
}

void SetJson(Response& res, int http_status, const nlohmann::json& body) {
  res.status = http_status;
  res.set_content(Dump(body), kJsonType);
}

void SetError(Response& res, const Status& status) {
  SetJson(res, HttpStatusFor(status.code()), ErrorJson(status));
}

// httplib::Server with a stop that cannot be missed. httplib's stop() does nothing until the
// listen loop has marked itself running, so a Stop() right after Start() could be lost and the
// join would hang. The loop re-reads svr_sock_ before every accept(), so taking it (and shutting
// the socket down to wake a blocked accept()) works at any moment.
class HttpServer::Server : public httplib::Server {
 public:
  void AdoptListenSocket(int fd) { svr_sock_ = fd; }
  void EndListenLoop() { svr_sock_ = INVALID_SOCKET; }
};

Result<std::unique_ptr<HttpServer>> HttpServer::Create(HttpServerOptions options) {
  if (options.threads == 0) {
    return MakeError(Status::InvalidArgument(options.name + ": threads must be >= 1"));
  }
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(options)));
}

HttpServer::HttpServer(HttpServerOptions options)
    : options_(std::move(options)), server_(std::make_unique<Server>()) {}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::Get(const std::string& path, Handler handler) {
  CheckNotStarted(path);
  std::string allow = options_.answer_options ? "GET, HEAD, OPTIONS" : "GET";
  routes_.push_back(Route{path, "GET", std::move(allow), std::move(handler), nullptr});
}

void HttpServer::Post(const std::string& path, BodyHandler handler) {
  CheckNotStarted(path);
  std::string allow = options_.answer_options ? "POST, OPTIONS" : "POST";
  routes_.push_back(Route{path, "POST", std::move(allow), nullptr, std::move(handler)});
}

void HttpServer::CheckNotStarted(const std::string& path) {
  MutexLock lock(&stop_mu_);
  // The request threads read the route table without a lock once the server started.
  KVT_CHECK_MSG(!started_, "{}: route {} added after Start()", options_.name, path);
}

Status HttpServer::Start() {
  {
    MutexLock lock(&stop_mu_);
    if (started_ || stopped_) {
      return Status::Internal(options_.name + ": the server was started or stopped already");
    }
    started_ = true;
  }
  KVT_ASSIGN_OR_RETURN(int listen_fd, Listen(options_.name, options_.host, options_.port));
  ScopedFd fd(listen_fd);
  KVT_ASSIGN_OR_RETURN(port_, BoundPort(options_.name, fd.get()));
  try {
    KVT_RETURN_IF_ERROR(Install());
  } catch (const std::exception& e) {  // httplib's route regexes, allocation
    return Status::Internal(options_.name + ": cannot set up the server: " + e.what());
  }
  return Run(fd.Release());
}

Status HttpServer::Install() {
  Server& server = *server_;
  const size_t threads = options_.threads;
  server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server.set_read_timeout(options_.read_timeout);
  server.set_write_timeout(options_.write_timeout);
  server.set_keep_alive_timeout(options_.keep_alive_timeout.count());
  server.set_keep_alive_max_count(options_.keep_alive_max_requests);
  server.set_payload_max_length(options_.max_body_bytes);

  // Registers `handler` for one method (GET also serves HEAD). Methods that may carry a body
  // (POST, PUT, PATCH, DELETE) read it, see ReadingBody; only POST routes use it.
  const size_t max_body = options_.max_body_bytes;
  auto on = [&server, max_body](std::string_view method, const std::string& path, Handler handler) {
    auto discarding = [max_body](Handler h) {
      return ReadingBody(max_body, /*keep=*/false,
                         [h = std::move(h)](const Request& req, Response& res, const std::string&) {
                           h(req, res);
                         });
    };
    if (method == "GET") {
      server.Get(path, std::move(handler));
    } else if (method == "OPTIONS") {
      server.Options(path, std::move(handler));
    } else if (method == "POST") {
      server.Post(path, discarding(std::move(handler)));
    } else if (method == "PUT") {
      server.Put(path, discarding(std::move(handler)));
    } else if (method == "PATCH") {
      server.Patch(path, discarding(std::move(handler)));
    } else if (method == "DELETE") {  // httplib reads a DELETE's body only when it has a length
      server.Delete(path, discarding(handler));
      server.Delete(path, std::move(handler));
    }
  };

  // Routes match in registration order: the registered routes, then 405 (or 204 for OPTIONS)
  // for their other methods, then 404 for every other path.
  for (const Route& route : routes_) {
    if (route.method == "GET") {
      server.Get(route.path, Guarded(options_.name, route.path, route.get));
    } else {
      server.Post(route.path,
                  ReadingBody(max_body, /*keep=*/true,
                              Guarded<std::string>(options_.name, route.path, route.post)));
    }
  }
  for (const Route& route : routes_) {
    for (const char* method : kRoutedMethods) {
      if (method == route.method) continue;
      bool options = std::string_view(method) == "OPTIONS" && options_.answer_options;
      on(method, route.path, options ? AllowedMethods(route.allow) : MethodNotAllowed(route.allow));
    }
  }
  for (const char* method : kRoutedMethods) on(method, ".*", NotFound);
  if (options_.answer_options) {
    // httplib answers 400 to the methods it does not route (TRACE, CONNECT): make them 405 on
    // our paths and 404 elsewhere, like the others.
    server.set_pre_routing_handler([this](const Request& req, Response& res) {
      for (const char* method : kRoutedMethods) {
        if (req.method == method || req.method == "HEAD") {
          return httplib::Server::HandlerResponse::Unhandled;
        }
      }
      const Route* route = FindRoute(req.path);
      if (route == nullptr) {
        NotFound(req, res);
      } else {
        MethodNotAllowed(route->allow)(req, res);
      }
      return httplib::Server::HandlerResponse::Handled;
    });
  }

  // Gives httplib's own error replies (400 bad request, 413 body too large, ...) a JSON body;
  // replies that already have one are left alone.
  server.set_error_handler(httplib::Server::HandlerWithResponse(
      [name = options_.name, max_body](const Request& req, Response& res) {
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
            status = Status::InvalidArgument("request body too large (the " + name +
                                             " API takes at most " + std::to_string(max_body) +
                                             " bytes)");
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
      }));
  // A backstop: Guarded already catches what handlers throw.
  server.set_exception_handler([](const Request&, Response& res, const std::exception_ptr&) {
    SetError(res, Status::Internal("unhandled exception"));
  });
  // Runs for every reply (httplib's own errors included) before it is written, so a client
  // that got its reply also sees it counted.
  server.set_post_routing_handler(
      [this](const Request& req, Response& res) { Count(req.path, res.status); });
  return Status::OK();
}

// Takes the listening socket and starts the listen loop's thread.
Status HttpServer::Run(int listen_fd) {
  MutexLock lock(&stop_mu_);
  const std::string& name = options_.name;
  if (stopped_) {  // a Stop() came first
    ::close(listen_fd);
    return Status::Unavailable(name + ": stopped before it started");
  }
  // A second descriptor of the same socket, ours alone: Stop() shuts the socket down through it
  // even if httplib has closed listen_fd (and the number was reused) after an accept error.
  int wake_fd = ::fcntl(listen_fd, F_DUPFD_CLOEXEC, 0);
  if (wake_fd < 0) {
    Status error = Status::Internal(name + ": dup of the listening socket: " + ErrnoMessage(errno));
    ::close(listen_fd);
    stopped_ = true;
    return error;
  }
  listen_fd_ = listen_fd;
  wake_fd_ = wake_fd;
  server_->AdoptListenSocket(listen_fd);
  try {
    listen_thread_ = std::thread([this] {
      if (!server_->listen_after_bind()) {
        // httplib closed listen_fd itself.
        listen_loop_failed_.store(true);
        KVT_LOG_ERROR("{}: the accept loop on {} failed; no longer serving", options_.name,
                      HostPort(options_.host, port_));
      }
    });
  } catch (const std::system_error& e) {
    server_->EndListenLoop();
    ::close(std::exchange(wake_fd_, -1));
    ::close(std::exchange(listen_fd_, -1));
    stopped_ = true;
    return Status::Internal(name + ": cannot start the listen thread: " + e.what());
  }
  KVT_LOG_INFO("{}: serving http://{}", name, HostPort(options_.host, port_));
  return Status::OK();
}

void HttpServer::Stop() {
  MutexLock lock(&stop_mu_);
  if (stopped_) return;
  stopped_ = true;
  if (listen_fd_ < 0) return;  // not serving
  server_->EndListenLoop();
  ::shutdown(wake_fd_, SHUT_RDWR);  // wakes a blocked accept()
  // The pool joins after its connections end: requests in progress finish, idle keep-alive
  // connections close within keep_alive_timeout.
  listen_thread_.join();
  ::close(std::exchange(wake_fd_, -1));
  if (!listen_loop_failed_.load()) ::close(listen_fd_);
  listen_fd_ = -1;
  KVT_LOG_INFO("{}: stopped serving http://{}", options_.name, HostPort(options_.host, port_));
}

const HttpServer::Route* HttpServer::FindRoute(const std::string& path) const {
  for (const Route& route : routes_) {
    if (path == route.path) return &route;
  }
  return nullptr;
}

void HttpServer::Count(const std::string& path, int http_status) {
  std::string route = FindRoute(path) != nullptr ? path : kUnmatchedRoute;
  MutexLock lock(&counts_mu_);
  ++counts_[{std::move(route), http_status}];
}

std::vector<HttpServer::RequestCount> HttpServer::RequestCounts() const {
  MutexLock lock(&counts_mu_);
  std::vector<RequestCount> out;
  out.reserve(counts_.size());
  for (const auto& [key, count] : counts_) out.push_back({key.first, key.second, count});
  return out;
}

}  // namespace kvtier::admin
