#include "kvtier/admin/http_server.h"

#include <atomic>
#include <chrono>
#include <future>
#include <stdexcept>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>

namespace kvtier::admin {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

constexpr size_t kMaxBody = 64;

HttpServerOptions TestOptions(bool answer_options = false) {
  HttpServerOptions options;
  options.name = "test http";
  options.port = 0;
  options.max_body_bytes = kMaxBody;
  options.answer_options = answer_options;
  return options;
}

// Asserts a JSON reply and returns its parsed body.
Json JsonBody(const httplib::Result& res, int want_status) {
  if (!res) {
    ADD_FAILURE() << "no reply: " << httplib::to_string(res.error());
    return {};
  }
  EXPECT_EQ(res->status, want_status) << res->body;
  EXPECT_EQ(res->get_header_value("Content-Type"), "application/json");
  Json body = Json::parse(res->body, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(body.is_discarded()) << "not JSON: " << res->body;
  return body;
}

class HttpServerTest : public ::testing::Test {
 protected:
  // Creates the server with a GET /get and a POST /echo (which replies with the body's size);
  // the test may add routes before StartServer().
  void CreateServer(HttpServerOptions options) {
    auto created = HttpServer::Create(std::move(options));
    ASSERT_TRUE(created) << created.error().ToString();
    server_ = std::move(*created);
    server_->Get("/get", [](const httplib::Request&, httplib::Response& res) {
      SetJson(res, 200, {{"ok", true}});
    });
    server_->Post("/echo",
                  [](const httplib::Request&, httplib::Response& res, const std::string& body) {
                    SetJson(res, 200, {{"size", body.size()}});
                  });
  }

  void StartServer() {
    ASSERT_TRUE(server_->Start().ok());
    ASSERT_NE(server_->port(), 0);
    client_ = std::make_unique<httplib::Client>("127.0.0.1", server_->port());
    client_->set_connection_timeout(std::chrono::seconds(5));
    client_->set_read_timeout(std::chrono::seconds(20));
  }

  std::unique_ptr<HttpServer> server_;
  std::unique_ptr<httplib::Client> client_;
};

TEST_F(HttpServerTest, ServesRegisteredRoutes) {
  ASSERT_NO_FATAL_FAILURE(CreateServer(TestOptions()));
  ASSERT_NO_FATAL_FAILURE(StartServer());
  EXPECT_EQ(JsonBody(client_->Get("/get"), 200), (Json{{"ok", true}}));
  EXPECT_EQ(JsonBody(client_->Post("/echo", "hello", "text/plain"), 200)["size"], 5);
  EXPECT_EQ(JsonBody(client_->Post("/echo"), 200)["size"], 0);
}

TEST_F(HttpServerTest, UnknownPathIs404AndWrongMethodIs405WithAllow) {
  ASSERT_NO_FATAL_FAILURE(CreateServer(TestOptions()));
  ASSERT_NO_FATAL_FAILURE(StartServer());
  Json body = JsonBody(client_->Get("/nowhere"), 404);
  EXPECT_EQ(body["code"], static_cast<int>(StatusCode::kNotFound));
  EXPECT_THAT(body["error"].get<std::string>(), HasSubstr("no route GET /nowhere"));
  EXPECT_EQ(JsonBody(client_->Post("/nowhere", "x", "text/plain"), 404)["code"],
            static_cast<int>(StatusCode::kNotFound));

  auto res = client_->Post("/get", "x", "text/plain");
  body = JsonBody(res, 405);
  EXPECT_EQ(res->get_header_value("Allow"), "GET");
  EXPECT_THAT(body["error"].get<std::string>(), HasSubstr("allowed: GET"));
  res = client_->Get("/echo");
  JsonBody(res, 405);
  EXPECT_EQ(res->get_header_value("Allow"), "POST");
  res = client_->Options("/echo");
  JsonBody(res, 405);  // answer_options is off
  EXPECT_EQ(res->get_header_value("Allow"), "POST");
}

TEST_F(HttpServerTest, AnswerOptionsListsHeadAndOptions) {
  ASSERT_NO_FATAL_FAILURE(CreateServer(TestOptions(/*answer_options=*/true)));
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto res = client_->Delete("/get");
  JsonBody(res, 405);
  EXPECT_EQ(res->get_header_value("Allow"), "GET, HEAD, OPTIONS");
  res = client_->Options("/echo");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 204);
  EXPECT_EQ(res->get_header_value("Allow"), "POST, OPTIONS");
}

TEST_F(HttpServerTest, ABodyOverTheLimitIs413WithoutCallingTheHandler) {
  ASSERT_NO_FATAL_FAILURE(CreateServer(TestOptions()));
  std::atomic<int> calls{0};
  server_->Post("/count",
                [&calls](const httplib::Request&, httplib::Response& res, const std::string&) {
                  ++calls;
                  SetJson(res, 200, Json::object());
                });
  ASSERT_NO_FATAL_FAILURE(StartServer());
  Json body = JsonBody(client_->Post("/count", std::string(kMaxBody + 1, 'x'), "text/plain"), 413);
  EXPECT_THAT(body["error"].get<std::string>(), HasSubstr("too large"));
  EXPECT_EQ(body["code"], static_cast<int>(StatusCode::kInvalidArgument));
  EXPECT_EQ(calls.load(), 0);
  // A chunked body over the limit too.
  std::string big(kMaxBody + 1, 'y');
  auto res = client_->Post(
      "/count",
      [&big](size_t offset, httplib::DataSink& sink) {
        sink.write(big.data() + offset, big.size() - offset);
        sink.done();
        return true;
      },
      "text/plain");
  JsonBody(res, 413);
  EXPECT_EQ(calls.load(), 0);
  JsonBody(client_->Post("/count", std::string(kMaxBody, 'x'), "text/plain"), 200);
  EXPECT_EQ(calls.load(), 1);
}

TEST_F(HttpServerTest, AThrowingHandlerIs500JsonAndTheServerKeepsServing) {
  ASSERT_NO_FATAL_FAILURE(CreateServer(TestOptions()));
  server_->Get("/throw", [](const httplib::Request&, httplib::Response&) {
    throw std::runtime_error("boom");
  });
  server_->Post("/throw-any",
                [](const httplib::Request&, httplib::Response&, const std::string&) { throw 42; });
  ASSERT_NO_FATAL_FAILURE(StartServer());
  Json body = JsonBody(client_->Get("/throw"), 500);
  EXPECT_EQ(body["code"], static_cast<int>(StatusCode::kInternal));
  EXPECT_THAT(body["error"].get<std::string>(), HasSubstr("the /throw handler threw: boom"));
  body = JsonBody(client_->Post("/throw-any", "", "text/plain"), 500);
  EXPECT_THAT(body["error"].get<std::string>(), HasSubstr("not derived from std::exception"));
  JsonBody(client_->Get("/get"), 200);
}

TEST_F(HttpServerTest, CountsRepliesPerRouteAndStatus) {
  ASSERT_NO_FATAL_FAILURE(CreateServer(TestOptions()));
  ASSERT_NO_FATAL_FAILURE(StartServer());
  JsonBody(client_->Get("/get"), 200);
  JsonBody(client_->Get("/get"), 200);
  JsonBody(client_->Get("/echo"), 405);
  JsonBody(client_->Get("/a"), 404);
  JsonBody(client_->Get("/b"), 404);
  auto counts = server_->RequestCounts();
  ASSERT_EQ(counts.size(), 3u);
  EXPECT_EQ(counts[0].route, "/echo");
  EXPECT_EQ(counts[0].status, 405);
  EXPECT_EQ(counts[0].count, 1u);
  EXPECT_EQ(counts[1].route, "/get");
  EXPECT_EQ(counts[1].count, 2u);
  EXPECT_EQ(counts[2].route, "unmatched");
  EXPECT_EQ(counts[2].status, 404);
  EXPECT_EQ(counts[2].count, 2u);
}

TEST_F(HttpServerTest, ATakenPortAndABadHostAreClearErrors) {
  ASSERT_NO_FATAL_FAILURE(CreateServer(TestOptions()));
  ASSERT_NO_FATAL_FAILURE(StartServer());
  HttpServerOptions options = TestOptions();
  options.port = server_->port();
  auto second = HttpServer::Create(options);
  ASSERT_TRUE(second);
  Status status = (*second)->Start();
  EXPECT_EQ(status.code(), StatusCode::kUnavailable);
  EXPECT_THAT(std::string(status.message()), HasSubstr("test http: cannot listen on 127.0.0.1:"));
  options.port = 0;
  options.host = "example.com";
  auto third = HttpServer::Create(options);
  ASSERT_TRUE(third);
  EXPECT_EQ((*third)->Start().code(), StatusCode::kInvalidArgument);
  options.threads = 0;
  EXPECT_FALSE(HttpServer::Create(options));
  JsonBody(client_->Get("/get"), 200);
}

TEST_F(HttpServerTest, StopWhileIdleIsPromptIdempotentAndFreesThePort) {
  ASSERT_NO_FATAL_FAILURE(CreateServer(TestOptions()));
  ASSERT_NO_FATAL_FAILURE(StartServer());
  const uint16_t port = server_->port();
  auto start = std::chrono::steady_clock::now();
  server_->Stop();
  server_->Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  EXPECT_FALSE(client_->Get("/get"));
  HttpServerOptions options = TestOptions();
  options.port = port;
  auto again = HttpServer::Create(options);
  ASSERT_TRUE(again);
  EXPECT_TRUE((*again)->Start().ok());
}

TEST(HttpServerStartTest, StopBeforeOrRightAfterStartDoesNotHang) {
  auto never = HttpServer::Create(TestOptions());
  ASSERT_TRUE(never);
  (*never)->Stop();
  EXPECT_FALSE((*never)->Start().ok());
  for (int i = 0; i < 20; ++i) {
    auto server = HttpServer::Create(TestOptions());
    ASSERT_TRUE(server);
    ASSERT_TRUE((*server)->Start().ok());
    (*server)->Stop();
  }
}

TEST_F(HttpServerTest, StopLetsARequestInFlightFinish) {
  ASSERT_NO_FATAL_FAILURE(CreateServer(TestOptions()));
  std::promise<void> entered;
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  server_->Get("/slow", [&entered, released](const httplib::Request&, httplib::Response& res) {
    entered.set_value();
    released.wait();
    SetJson(res, 200, {{"slow", true}});
  });
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto reply = std::async(std::launch::async, [this] { return client_->Get("/slow"); });
  entered.get_future().wait();
  auto stopped = std::async(std::launch::async, [this] { server_->Stop(); });
  // Stop() waits for the request in progress.
  EXPECT_EQ(stopped.wait_for(std::chrono::milliseconds(200)), std::future_status::timeout);
  release.set_value();
  stopped.wait();
  EXPECT_EQ(JsonBody(reply.get(), 200), (Json{{"slow", true}}));
}

}  // namespace
}  // namespace kvtier::admin
