#include "kvtier/admin/admin_server.h"

#include <atomic>
#include <chrono>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kvtier/admin/prometheus.h"
#include "kvtier/common/mutex.h"

namespace kvtier::admin {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

constexpr char kJsonType[] = "application/json";
constexpr char kPrometheusType[] = "text/plain; version=0.0.4; charset=utf-8";

// Handlers that all succeed; tests replace the ones they exercise.
AdminHandlers OkHandlers() {
  AdminHandlers h;
  h.health = [] { return Status::OK(); };
  h.status = [] { return Json{{"uptime_seconds", 1}, {"role", "server"}}; };
  h.metrics = [] { return std::string("# TYPE up gauge\nup 1\n"); };
  h.clear = [](bool force) -> Result<Json> { return Json{{"cleared", 5}, {"force", force}}; };
  return h;
}

class AdminServerTest : public ::testing::Test {
 protected:
  // Starts on an ephemeral port of 127.0.0.1 and connects client_ to it.
  void StartServer(AdminHandlers handlers, size_t threads = 2) {
    AdminOptions options;
    options.port = 0;
    options.threads = threads;
    auto started = AdminServer::Start(options, std::move(handlers));
    ASSERT_TRUE(started) << started.error().ToString();
    server_ = std::move(*started);
    ASSERT_NE(server_->port(), 0);
    client_ = NewClient();
  }

  std::unique_ptr<httplib::Client> NewClient() const {
    auto client = std::make_unique<httplib::Client>("127.0.0.1", server_->port());
    client->set_connection_timeout(std::chrono::seconds(5));
    client->set_read_timeout(std::chrono::seconds(20));
    return client;
  }

  std::unique_ptr<AdminServer> server_;
  std::unique_ptr<httplib::Client> client_;
};

// Asserts a JSON reply and returns its parsed body.
Json JsonBody(const httplib::Result& res, int want_status) {
  if (!res) {
    ADD_FAILURE() << "no reply: " << httplib::to_string(res.error());
    return {};
  }
  EXPECT_EQ(res->status, want_status) << res->body;
  EXPECT_EQ(res->get_header_value("Content-Type"), kJsonType);
  Json body = Json::parse(res->body, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(body.is_discarded()) << "not JSON: " << res->body;
  return body;
}

// Sends `request` as is and returns the reply (headers and body). For what httplib::Client
// cannot send.
std::string RawExchange(uint16_t port, const std::string& request) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "socket failed";
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval timeout{20, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  std::string reply;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
      ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
          static_cast<ssize_t>(request.size())) {
    char buf[4096];
    ssize_t n;
    while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) {
      reply.append(buf, static_cast<size_t>(n));
      // Done once the headers and Content-Length bytes of body are in (every reply has one).
      size_t end = reply.find("\r\n\r\n");
      size_t length_at = reply.find("Content-Length: ");
      if (end != std::string::npos && length_at != std::string::npos && length_at < end &&
          reply.size() >= end + 4 + std::stoul(reply.substr(length_at + 16))) {
        break;
      }
    }
  }
  ::close(fd);
  return reply;
}

TEST_F(AdminServerTest, HealthcheckOk) {
  ASSERT_NO_FATAL_FAILURE(StartServer(OkHandlers()));
  EXPECT_EQ(JsonBody(client_->Get("/api/healthcheck"), 200), (Json{{"status", "ok"}}));
}

TEST_F(AdminServerTest, HealthcheckUnhealthyIs503) {
  AdminHandlers h = OkHandlers();
  h.health = [] { return Status::Unavailable("l2 unreachable"); };
  ASSERT_NO_FATAL_FAILURE(StartServer(std::move(h)));
  EXPECT_EQ(JsonBody(client_->Get("/api/healthcheck"), 503),
            (Json{{"status", "unhealthy"},
                  {"error", "l2 unreachable"},
                  {"code", static_cast<int>(StatusCode::kUnavailable)},
                  {"retryable", true}}));
}

TEST_F(AdminServerTest, StatusReturnsTheHandlersJson) {
  ASSERT_NO_FATAL_FAILURE(StartServer(OkHandlers()));
  EXPECT_EQ(JsonBody(client_->Get("/api/status"), 200),
            (Json{{"uptime_seconds", 1}, {"role", "server"}}));
}

TEST_F(AdminServerTest, MetricsIsPrometheusText) {
  ASSERT_NO_FATAL_FAILURE(StartServer(OkHandlers()));
  auto res = client_->Get("/metrics");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), kPrometheusType);
  EXPECT_EQ(res->body, "# TYPE up gauge\nup 1\n");
}

TEST_F(AdminServerTest, HeadOnAGetRouteHasHeadersButNoBody) {
  ASSERT_NO_FATAL_FAILURE(StartServer(OkHandlers()));
  auto res = client_->Head("/api/status");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), kJsonType);
  EXPECT_EQ(res->body, "");
}

TEST_F(AdminServerTest, ClearPassesForce) {
  ASSERT_NO_FATAL_FAILURE(StartServer(OkHandlers()));
  const struct {
    const char* path;
    bool force;
  } cases[] = {{"/api/clear", false},
               {"/api/clear?force=1", true},
               {"/api/clear?force=true", true},
               {"/api/clear?force=0", false},
               {"/api/clear?force=false", false}};
  for (const auto& c : cases) {
    EXPECT_EQ(JsonBody(client_->Post(c.path), 200), (Json{{"cleared", 5}, {"force", c.force}}))
        << c.path;
  }
}

TEST_F(AdminServerTest, ClearRejectsAMalformedForceWithoutCallingTheHandler) {
  std::atomic<int> calls{0};
  AdminHandlers h = OkHandlers();
  h.clear = [&calls](bool) -> Result<Json> {
    ++calls;
    return Json::object();
  };
  ASSERT_NO_FATAL_FAILURE(StartServer(std::move(h)));
  Json body = JsonBody(client_->Post("/api/clear?force=yes"), 400);
  EXPECT_EQ(body["code"], static_cast<int>(StatusCode::kInvalidArgument));
  EXPECT_THAT(body["error"].get<std::string>(), HasSubstr("'yes'"));
  EXPECT_EQ(calls.load(), 0);
}

struct ErrorCase {
  Status status;
  int http_status;
};

class ClearErrorTest : public AdminServerTest, public ::testing::WithParamInterface<ErrorCase> {};

TEST_P(ClearErrorTest, HandlerErrorsMapToHttpStatus) {
  const ErrorCase& c = GetParam();
  AdminHandlers h = OkHandlers();
  h.clear = [status = c.status](bool) -> Result<Json> { return MakeError(status); };
  ASSERT_NO_FATAL_FAILURE(StartServer(std::move(h)));
  EXPECT_EQ(HttpStatusFor(c.status.code()), c.http_status);
  EXPECT_EQ(JsonBody(client_->Post("/api/clear"), c.http_status),
            (Json{{"error", std::string(c.status.message())},
                  {"code", static_cast<int>(c.status.code())},
                  {"retryable", c.status.retryable()}}));
}

INSTANTIATE_TEST_SUITE_P(Codes, ClearErrorTest,
                         ::testing::Values(ErrorCase{Status::InvalidArgument("bad tier"), 400},
                                           ErrorCase{Status::NotFound("no such adapter"), 404},
                                           ErrorCase{Status::Unavailable("storage busy"), 503},
                                           ErrorCase{Status::Internal("broken"), 500},
                                           ErrorCase{Status::Timeout("too slow"), 500},
                                           ErrorCase{Status(StatusCode::kL1KeyIsLocked, "locked"),
                                                     500}));

TEST_F(AdminServerTest, InvalidUtf8InAnErrorStillGivesJson) {
  AdminHandlers h = OkHandlers();
  h.clear = [](bool) -> Result<Json> {
    return MakeError(Status::InvalidArgument("bad \xff byte"));
  };
  ASSERT_NO_FATAL_FAILURE(StartServer(std::move(h)));
  Json body = JsonBody(client_->Post("/api/clear"), 400);
  EXPECT_THAT(body["error"].get<std::string>(), HasSubstr("bad "));
}

TEST_F(AdminServerTest, UnknownPathsAre404Json) {
  ASSERT_NO_FATAL_FAILURE(StartServer(OkHandlers()));
  for (const auto& res :
       {client_->Get("/nope"), client_->Post("/nope"), client_->Get("/api/status/"),
        client_->Delete("/"), client_->Options("/api")}) {
    Json body = JsonBody(res, 404);
    EXPECT_EQ(body["code"], static_cast<int>(StatusCode::kNotFound));
    EXPECT_THAT(body["error"].get<std::string>(), HasSubstr("no route"));
  }
}

TEST_F(AdminServerTest, WrongMethodIs405WithAllow) {
  ASSERT_NO_FATAL_FAILURE(StartServer(OkHandlers()));
  const struct {
    httplib::Result res;
    const char* allow;
  } cases[] = {
      {client_->Post("/api/status"), "GET, HEAD, OPTIONS"},
      {client_->Put("/api/healthcheck"), "GET, HEAD, OPTIONS"},
      {client_->Delete("/metrics"), "GET, HEAD, OPTIONS"},
      {client_->Patch("/metrics"), "GET, HEAD, OPTIONS"},
      {client_->Get("/api/clear"), "POST, OPTIONS"},
      {client_->Head("/api/clear"), "POST, OPTIONS"},
      {client_->Delete("/api/clear"), "POST, OPTIONS"},
  };
  for (const auto& c : cases) {
    ASSERT_TRUE(c.res) << httplib::to_string(c.res.error());
    EXPECT_EQ(c.res->status, 405);
    EXPECT_EQ(c.res->get_header_value("Allow"), c.allow);
    if (c.res->body.empty()) continue;  // HEAD
    Json body = JsonBody(c.res, 405);
    EXPECT_EQ(body["code"], static_cast<int>(StatusCode::kNotSupported));
    EXPECT_THAT(body["error"].get<std::string>(), HasSubstr("not allowed"));
  }
}

TEST_F(AdminServerTest, OptionsListsTheAllowedMethods) {
  ASSERT_NO_FATAL_FAILURE(StartServer(OkHandlers()));
  auto res = client_->Options("/api/clear");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 204);
  EXPECT_EQ(res->get_header_value("Allow"), "POST, OPTIONS");
}

// curl -X POST sends neither Content-Length nor Transfer-Encoding: no body (RFC 9112 6.3), not
// a wait for one.
TEST_F(AdminServerTest, APostWithoutContentLengthHasNoBody) {
  ASSERT_NO_FATAL_FAILURE(StartServer(OkHandlers()));
  std::string reply = RawExchange(
      server_->port(), "POST /api/clear?force=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  EXPECT_TRUE(reply.starts_with("HTTP/1.1 200 ")) << reply;
  EXPECT_THAT(reply, HasSubstr(R"({"cleared":5,"force":true})"));
  reply = RawExchange(server_->port(),
                      "POST /api/status HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  EXPECT_TRUE(reply.starts_with("HTTP/1.1 405 ")) << reply;
}

TEST_F(AdminServerTest, AChunkedBodyOverTheLimitIs413) {
  std::atomic<int> calls{0};
  AdminHandlers h = OkHandlers();
  h.clear = [&calls](bool) -> Result<Json> {
    ++calls;
    return Json::object();
  };
  ASSERT_NO_FATAL_FAILURE(StartServer(std::move(h)));
  auto chunked = [](size_t size) {
    std::ostringstream chunk_size;
    chunk_size << std::hex << size;
    return "POST /api/clear HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
           "Connection: close\r\n\r\n" +
           chunk_size.str() + "\r\n" + std::string(size, 'x') + "\r\n0\r\n\r\n";
  };
  std::string reply = RawExchange(server_->port(), chunked(kAdminMaxPayloadBytes + 1));
  EXPECT_TRUE(reply.starts_with("HTTP/1.1 413 ")) << reply;
  EXPECT_THAT(reply, HasSubstr("too large"));
  EXPECT_EQ(calls.load(), 0);
  reply = RawExchange(server_->port(), chunked(kAdminMaxPayloadBytes));
  EXPECT_TRUE(reply.starts_with("HTTP/1.1 200 ")) << reply;
  EXPECT_EQ(calls.load(), 1);
}

TEST_F(AdminServerTest, MethodsHttplibDoesNotRouteAre405Or404) {
  ASSERT_NO_FATAL_FAILURE(StartServer(OkHandlers()));
  std::string reply = RawExchange(
      server_->port(), "TRACE /api/status HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  EXPECT_TRUE(reply.starts_with("HTTP/1.1 405 ")) << reply;
  EXPECT_THAT(reply, HasSubstr("Allow: GET, HEAD, OPTIONS\r\n"));
  EXPECT_THAT(reply, HasSubstr(R"("code":9)"));
  reply = RawExchange(server_->port(),
                      "TRACE /elsewhere HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  EXPECT_TRUE(reply.starts_with("HTTP/1.1 404 ")) << reply;
}

TEST_F(AdminServerTest, AMalformedRequestIs400Json) {
  ASSERT_NO_FATAL_FAILURE(StartServer(OkHandlers()));
  std::string reply = RawExchange(server_->port(), "NONSENSE\r\n\r\n");
  EXPECT_TRUE(reply.starts_with("HTTP/1.1 400 ")) << reply;
  EXPECT_THAT(reply, HasSubstr("Content-Type: application/json\r\n"));
  EXPECT_THAT(reply, HasSubstr(R"("code":1)"));
  JsonBody(client_->Get("/api/healthcheck"), 200);
}

TEST_F(AdminServerTest, AThrowingHandlerIs500AndTheServerKeepsServing) {
  std::atomic<int> calls{0};
  AdminHandlers h = OkHandlers();
  h.status = [&calls]() -> Json {
    if (calls++ == 0) throw std::runtime_error("boom");
    return Json{{"ok", true}};
  };
  h.metrics = []() -> std::string { throw 42; };
  h.health = []() -> Status { throw std::bad_alloc(); };
  ASSERT_NO_FATAL_FAILURE(StartServer(std::move(h)));

  Json body = JsonBody(client_->Get("/api/status"), 500);
  EXPECT_EQ(body["code"], static_cast<int>(StatusCode::kInternal));
  EXPECT_THAT(body["error"].get<std::string>(), HasSubstr("boom"));
  EXPECT_EQ(JsonBody(client_->Get("/api/status"), 200), (Json{{"ok", true}}));

  body = JsonBody(client_->Get("/metrics"), 500);
  EXPECT_THAT(body["error"].get<std::string>(), HasSubstr("not derived from std::exception"));
  JsonBody(client_->Get("/api/healthcheck"), 500);
  EXPECT_EQ(JsonBody(client_->Post("/api/clear"), 200)["cleared"], 5);
}

TEST_F(AdminServerTest, ABodyOverTheLimitIs413WithoutCallingTheHandler) {
  std::atomic<int> calls{0};
  AdminHandlers h = OkHandlers();
  h.clear = [&calls](bool) -> Result<Json> {
    ++calls;
    return Json::object();
  };
  ASSERT_NO_FATAL_FAILURE(StartServer(std::move(h)));
  Json body = JsonBody(
      client_->Post("/api/clear", std::string(kAdminMaxPayloadBytes + 1, 'x'), "text/plain"), 413);
  EXPECT_THAT(body["error"].get<std::string>(), HasSubstr("too large"));
  EXPECT_EQ(calls.load(), 0);
  JsonBody(client_->Post("/api/clear", std::string(kAdminMaxPayloadBytes, 'x'), "text/plain"), 200);
  EXPECT_EQ(calls.load(), 1);
}

TEST_F(AdminServerTest, CountsRepliesPerRouteAndStatus) {
  ASSERT_NO_FATAL_FAILURE(StartServer(OkHandlers()));
  EXPECT_EQ(server_->RequestCountsJson(), Json::array());
  client_->Get("/api/status");
  client_->Get("/api/status");
  client_->Post("/api/status");
  client_->Get("/metrics");
  client_->Get("/no/such/path");
  client_->Get("/another");
  client_->Post("/api/clear");
  client_->Post("/api/clear", std::string(kAdminMaxPayloadBytes + 1, 'x'), "text/plain");
  // Each reply is counted before it is sent, so the counts are exact once the client has it.
  EXPECT_EQ(server_->RequestCountsJson(), Json::parse(R"([
    {"name": "/api/clear", "200": 1, "413": 1},
    {"name": "/api/status", "200": 2, "405": 1},
    {"name": "/metrics", "200": 1},
    {"name": "unmatched", "404": 2}
  ])"));
}

TEST_F(AdminServerTest, RequestCountsFlattenIntoLabelledGauges) {
  ASSERT_NO_FATAL_FAILURE(StartServer(OkHandlers()));
  client_->Get("/api/status");
  PrometheusWriter w;
  AppendJsonAsGauges(w, "kvtier_admin_requests", server_->RequestCountsJson());
  EXPECT_EQ(w.Finish(),
            "# HELP kvtier_admin_requests_200 kvtier status field [].200\n"
            "# TYPE kvtier_admin_requests_200 gauge\n"
            "kvtier_admin_requests_200{name=\"/api/status\"} 1\n");
}

TEST_F(AdminServerTest, ATakenPortIsAClearError) {
  ASSERT_NO_FATAL_FAILURE(StartServer(OkHandlers()));
  AdminOptions options;
  options.port = server_->port();
  auto second = AdminServer::Start(options, OkHandlers());
  ASSERT_FALSE(second);
  EXPECT_EQ(second.error().code(), StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.error().message()),
              HasSubstr("127.0.0.1:" + std::to_string(server_->port())));
  EXPECT_THAT(std::string(second.error().message()), HasSubstr("in use"));
  // The first server is unaffected.
  JsonBody(client_->Get("/api/healthcheck"), 200);
}

TEST(AdminServerStartTest, AnInvalidHostIsAClearError) {
  AdminOptions options;
  options.port = 0;
  for (const char* host : {"not-an-address", "127.0.0.256", "example.com", ""}) {
    options.host = host;
    auto started = AdminServer::Start(options, OkHandlers());
    ASSERT_FALSE(started) << host;
    EXPECT_EQ(started.error().code(), StatusCode::kInvalidArgument) << host;
    if (*host != '\0') {
      EXPECT_THAT(std::string(started.error().message()), HasSubstr(std::string(host) + ":0"));
    }
  }
}

TEST(AdminServerStartTest, AnAddressOfAnotherMachineIsInvalid) {
  AdminOptions options;
  options.port = 0;
  options.host = "192.0.2.1";  // TEST-NET-1: never an address of this machine
  auto started = AdminServer::Start(options, OkHandlers());
  ASSERT_FALSE(started);
  EXPECT_EQ(started.error().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(started.error().message()), HasSubstr("192.0.2.1:0"));
}

TEST(AdminServerStartTest, LocalhostMeansLoopback) {
  AdminOptions options;
  options.port = 0;
  options.host = "localhost";
  auto started = AdminServer::Start(options, OkHandlers());
  ASSERT_TRUE(started) << started.error().ToString();
  httplib::Client client("127.0.0.1", (*started)->port());
  JsonBody(client.Get("/api/healthcheck"), 200);
}

TEST(AdminServerStartTest, EveryHandlerAndAThreadAreRequired) {
  AdminOptions options;
  options.port = 0;
  AdminHandlers h = OkHandlers();
  h.metrics = nullptr;
  auto started = AdminServer::Start(options, std::move(h));
  ASSERT_FALSE(started);
  EXPECT_EQ(started.error().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(started.error().message()), HasSubstr("metrics"));

  options.threads = 0;
  started = AdminServer::Start(options, OkHandlers());
  ASSERT_FALSE(started);
  EXPECT_EQ(started.error().code(), StatusCode::kInvalidArgument);
}

TEST_F(AdminServerTest, StopIsIdempotentAndFreesThePort) {
  ASSERT_NO_FATAL_FAILURE(StartServer(OkHandlers()));
  JsonBody(client_->Get("/api/healthcheck"), 200);
  const uint16_t port = server_->port();
  server_->Stop();
  server_->Stop();
  auto res = client_->Get("/api/healthcheck");
  EXPECT_FALSE(res) << "served after Stop(): " << res->status;

  AdminOptions options;
  options.port = port;
  auto again = AdminServer::Start(options, OkHandlers());
  ASSERT_TRUE(again) << again.error().ToString();
  EXPECT_EQ((*again)->port(), port);
}

TEST_F(AdminServerTest, ConcurrentStopsAllReturn) {
  ASSERT_NO_FATAL_FAILURE(StartServer(OkHandlers()));
  std::vector<std::thread> stoppers;
  stoppers.reserve(4);
  for (int i = 0; i < 4; ++i) stoppers.emplace_back([this] { server_->Stop(); });
  for (auto& t : stoppers) t.join();
  EXPECT_FALSE(client_->Get("/api/healthcheck"));
}

TEST(AdminServerStartTest, StopRightAfterStartDoesNotHang) {
  AdminOptions options;
  options.port = 0;
  for (int i = 0; i < 50; ++i) {
    auto started = AdminServer::Start(options, OkHandlers());
    ASSERT_TRUE(started) << started.error().ToString();
    (*started)->Stop();
  }
}

TEST(AdminServerStartTest, TheDestructorStopsAndFreesThePort) {
  AdminOptions options;
  options.port = 0;
  auto first = AdminServer::Start(options, OkHandlers());
  ASSERT_TRUE(first) << first.error().ToString();
  options.port = (*first)->port();
  first->reset();
  auto second = AdminServer::Start(options, OkHandlers());
  ASSERT_TRUE(second) << second.error().ToString();
}

TEST_F(AdminServerTest, StopFinishesWithAnIdleKeepAliveConnectionOpen) {
  ASSERT_NO_FATAL_FAILURE(StartServer(OkHandlers()));
  client_->set_keep_alive(true);
  for (int i = 0; i < 3; ++i) JsonBody(client_->Get("/api/healthcheck"), 200);
  auto start = std::chrono::steady_clock::now();
  server_->Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - start, kAdminKeepAliveTimeout + kAdminReadTimeout);
}

// With threads = 2, two requests are inside handlers at the same time: each waits for the
// other (with a deadline, so a server that serialised them fails instead of hanging).
TEST_F(AdminServerTest, ServesRequestsInParallel) {
  struct Rendezvous {
    Mutex mu;
    CondVar cv;
    int inside KVT_GUARDED_BY(mu) = 0;
  } rendezvous;
  AdminHandlers h = OkHandlers();
  h.status = [&rendezvous] {
    MutexLock lock(&rendezvous.mu);
    ++rendezvous.inside;
    rendezvous.cv.NotifyAll();
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (rendezvous.inside < 2) {
      if (!rendezvous.cv.WaitUntil(&rendezvous.mu, deadline)) break;
    }
    return Json{{"met", rendezvous.inside >= 2}};
  };
  ASSERT_NO_FATAL_FAILURE(StartServer(std::move(h), /*threads=*/2));
  Json replies[2];
  std::vector<std::thread> clients;
  for (Json& reply : replies) {
    clients.emplace_back([this, &reply] {
      auto client = NewClient();
      reply = JsonBody(client->Get("/api/status"), 200);
    });
  }
  for (auto& t : clients) t.join();
  for (const Json& reply : replies) EXPECT_EQ(reply, (Json{{"met", true}}));
}

TEST_F(AdminServerTest, ManyConcurrentClients) {
  std::atomic<int> clears{0};
  AdminHandlers h = OkHandlers();
  h.clear = [&clears](bool) -> Result<Json> { return Json{{"n", ++clears}}; };
  ASSERT_NO_FATAL_FAILURE(StartServer(std::move(h), /*threads=*/4));
  constexpr int kThreads = 4;
  constexpr int kRounds = 20;
  std::atomic<int> failures{0};
  std::vector<std::thread> clients;
  clients.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    clients.emplace_back([this, &failures] {
      auto client = NewClient();
      for (int i = 0; i < kRounds; ++i) {
        auto status = client->Get("/api/status");
        auto metrics = client->Get("/metrics");
        auto clear = client->Post("/api/clear");
        auto missing = client->Get("/missing");
        if (!status || status->status != 200 || !metrics || metrics->status != 200 || !clear ||
            clear->status != 200 || !missing || missing->status != 404) {
          ++failures;
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(clears.load(), kThreads * kRounds);
  const int n = kThreads * kRounds;
  EXPECT_EQ(server_->RequestCountsJson(), Json::array({Json{{"name", "/api/clear"}, {"200", n}},
                                                       Json{{"name", "/api/status"}, {"200", n}},
                                                       Json{{"name", "/metrics"}, {"200", n}},
                                                       Json{{"name", "unmatched"}, {"404", n}}}));
}

// Parses Prometheus text format 0.0.4 strictly enough to catch what a scraper would reject:
// every line is "# HELP name text", "# TYPE name counter|gauge" or "name{labels} value"; a
// family's TYPE comes before its samples, which are contiguous; no series repeats. Returns
// "name{labels}" -> value text.
std::map<std::string, std::string> ParseExposition(const std::string& text) {
  static const std::regex kHelp(R"re(# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (\\[\\n]|[^\\\n])*)re");
  static const std::regex kType(R"re(# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge))re");
  static const std::regex kSample(
      R"re(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:\\[\\"n]|[^"\\\n])*")re"
      R"re((?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:\\[\\"n]|[^"\\\n])*")*\})? )re"
      R"re((NaN|[+-]Inf|-?[0-9]+(?:\.[0-9]+)?(?:e[+-][0-9]+)?))re");
  std::map<std::string, std::string> series;
  std::set<std::string> finished_families;
  std::string current;
  EXPECT_TRUE(text.empty() || text.back() == '\n') << "no final newline";
  std::istringstream lines(text);
  std::string line;
  std::smatch m;
  while (std::getline(lines, line)) {
    if (std::regex_match(line, m, kHelp) || std::regex_match(line, m, kType)) {
      std::string family = m[1];
      if (family != current) {
        EXPECT_TRUE(finished_families.insert(current).second || current.empty())
            << "family " << current << " split";
        EXPECT_EQ(finished_families.count(family), 0u) << "family " << family << " split";
        current = family;
      }
      continue;
    }
    if (!std::regex_match(line, m, kSample)) {
      ADD_FAILURE() << "not a valid line: '" << line << "'";
      continue;
    }
    EXPECT_EQ(m[1].str(), current) << "sample outside its family: " << line;
    std::string key = m[1].str() + m[2].str();
    EXPECT_TRUE(series.emplace(key, m[3].str()).second) << "repeated series " << key;
  }
  return series;
}

TEST_F(AdminServerTest, MetricsOfARealisticStatusTreeParseBack) {
  const Json tree = Json::parse(R"({
    "uptime_seconds": 3600.25,
    "ready": true,
    "version": "0.1.0",
    "l1": {"capacity_bytes": 21474836480, "used_bytes": 1073741824, "entries": 1234,
           "hit_ratio": 0.875, "evictions": {"total": 17, "bytes": 1048576}},
    "l2": {"enabled": true, "adapters": [
      {"name": "nvme0", "kind": "fs", "read_bytes": 5e9, "write_bytes": 1.25e9,
       "queue_depth": 0, "healthy": true, "latency_ms": {"p50": 0.12, "p99": 4.5}},
      {"name": "redis:6379 \"shared\"", "kind": "redis", "read_bytes": 0, "write_bytes": 0,
       "queue_depth": 3, "healthy": false, "latency_ms": {"p50": null, "p99": null}}]},
    "sessions": {"active": 4, "by_engine": [{"name": "vllm-0", "active": 3},
                                            {"name": "vllm-1", "active": 1}]},
    "recent_errors": ["timeout", "refused"],
    "Weird Key-Name.x": -1.5e-7,
    "huge": 1e300,
    "nan_like": null
  })");
  AdminHandlers h = OkHandlers();
  h.status = [tree] { return Json(tree); };
  h.metrics = [tree] {
    PrometheusWriter w;
    w.Counter("kvtier_build_info_total", "Build information.\nSecond line.", 1,
              {{"version", "0.1.0"}, {"compiler", "clang \"16\" \\ c++20"}});
    AppendJsonAsGauges(w, "kvtier", tree);
    return w.Finish();
  };
  ASSERT_NO_FATAL_FAILURE(StartServer(std::move(h)));
  auto res = client_->Get("/metrics");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  ASSERT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), kPrometheusType);
  std::map<std::string, std::string> series = ParseExposition(res->body);
  EXPECT_EQ(series.size(), 25u) << res->body;
  const std::map<std::string, std::string> expected = {
      {"kvtier_uptime_seconds", "3600.25"},
      {"kvtier_ready", "1"},
      {"kvtier_l1_capacity_bytes", "21474836480"},
      {"kvtier_l1_hit_ratio", "0.875"},
      {"kvtier_l1_evictions_total", "17"},
      {"kvtier_l2_enabled", "1"},
      {"kvtier_l2_adapters_read_bytes{name=\"nvme0\"}", "5000000000"},
      {"kvtier_l2_adapters_healthy{name=\"redis:6379 \\\"shared\\\"\"}", "0"},
      {"kvtier_l2_adapters_latency_ms_p99{name=\"nvme0\"}", "4.5"},
      {"kvtier_sessions_by_engine_active{name=\"vllm-1\"}", "1"},
      {"kvtier_weird_key_name_x", "-1.5e-07"},
      {"kvtier_huge", "1e+300"},
      {"kvtier_build_info_total{version=\"0.1.0\",compiler=\"clang \\\"16\\\" \\\\ c++20\"}", "1"},
  };
  for (const auto& [key, value] : expected) {
    auto it = series.find(key);
    if (it == series.end()) {
      ADD_FAILURE() << "missing " << key << " in\n" << res->body;
    } else {
      EXPECT_EQ(it->second, value) << key;
    }
  }
  EXPECT_EQ(series.count("kvtier_l2_adapters_latency_ms_p99{name=\"redis:6379 \\\"shared\\\"\"}"),
            0u);  // null is skipped
}

}  // namespace
}  // namespace kvtier::admin
