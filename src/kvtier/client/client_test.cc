// Client against an in-process fake server (testing/fake_server.h) that decodes requests with
// the real codec and answers as each test says: at once, later, out of order, wrongly, never.
#include "kvtier/client.h"

#include <atomic>
#include <chrono>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "kvtier/client/testing/fake_server.h"
#include "kvtier/protocol/codec.h"

namespace kvtier {
namespace {

using client_testing::FakeServer;
using protocol::Opcode;
using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::HasSubstr;

// Generous bound for "this completes": only hit when the code under test is broken.
constexpr Duration kLong = seconds(20);

using Handler = FakeServer::Handler;

std::optional<protocol::Reply> Hold(const FakeServer::Received&) { return std::nullopt; }

std::optional<protocol::Reply> AnswerDefault(const FakeServer::Received& r) {
  return FakeServer::DefaultReply(r.opcode());
}

std::unique_ptr<Client> MustConnect(const FakeServer& server, ClientOptions options = {}) {
  options.endpoint = server.endpoint();
  Result<std::unique_ptr<Client>> client = Client::Connect(options);
  KVT_CHECK_MSG(client.has_value(), "connect: {}", client.error().ToString());
  return std::move(*client);
}

protocol::Key MakeKey(std::string request_id) {
  protocol::Key key;
  key.model = "llama";
  key.world_size = 2;
  key.worker_rank = 1;
  key.cache_salt = "tenant-a";
  key.request_id = std::move(request_id);
  key.tokens = {1, 2, 3, 4, 5, 6, 7, 8};
  key.start = 0;
  key.end = 8;
  key.object_group = 3;
  return key;
}

std::string UniqueIpcPath(const char* what) {
  static std::atomic<int> n{0};
  return fmt::format("ipc:///tmp/kvtier-client-test-{}-{}-{}", getpid(), what, n.fetch_add(1));
}

// The future's value; a test failure (and T{}) when it holds an error.
template <typename T>
T Must(const MessagingFuture<T>& f) {
  Result<T> r = f.Result(kLong);
  if (!r) {
    ADD_FAILURE() << r.error().ToString();
    return T{};
  }
  return std::move(*r);
}

template <typename T>
Status StatusOf(const MessagingFuture<T>& f, Timeout timeout = kLong) {
  Result<T> r = f.Result(timeout);
  return r ? Status::OK() : r.error();
}

// ---- Connect ----------------------------------------------------------------------------

TEST(ClientConnectTest, HelloCarriesVersionAndNameAndServerInfoIsKept) {
  FakeServer::Options opts;
  opts.answer_hello = false;
  const protocol::HelloReply hello{1, "srv-7", "1.2.3", 512, "xxh3_128"};
  FakeServer server(
      [&](const FakeServer::Received&) -> std::optional<protocol::Reply> { return hello; }, opts);
  auto client = MustConnect(server, {.client_name = "engine-3"});
  EXPECT_EQ(client->server_info(), hello);
  std::vector<FakeServer::Received> got = server.requests();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].opcode(), Opcode::kHello);
  EXPECT_EQ(std::get<protocol::HelloRequest>(got[0].request),
            (protocol::HelloRequest{protocol::kProtocolVersion, "engine-3"}));
  EXPECT_EQ(client->pending(), 0u);
}

TEST(ClientConnectTest, HelloReplyWithAnotherVersionIsUnsupportedVersion) {
  FakeServer::Options opts;
  opts.hello.protocol_version = 2;
  FakeServer server(Hold, opts);
  auto client = Client::Connect({.endpoint = server.endpoint()});
  ASSERT_FALSE(client.has_value());
  EXPECT_EQ(client.error().code(), StatusCode::kUnsupportedVersion);
  EXPECT_THAT(std::string(client.error().message()), HasSubstr("protocol version 2"));
}

TEST(ClientConnectTest, ServerRefusingOurVersionIsUnsupportedVersion) {
  FakeServer::Options opts;
  opts.answer_hello = false;
  FakeServer server(
      [](const FakeServer::Received&) -> std::optional<protocol::Reply> {
        return protocol::ErrorReply{StatusCode::kUnsupportedVersion, "server speaks version 3",
                                    false};
      },
      opts);
  auto client = Client::Connect({.endpoint = server.endpoint()});
  ASSERT_FALSE(client.has_value());
  EXPECT_EQ(client.error().code(), StatusCode::kUnsupportedVersion);
  EXPECT_THAT(std::string(client.error().message()), HasSubstr("server speaks version 3"));
}

TEST(ClientConnectTest, NothingListeningIsUnavailableWithinConnectTimeout) {
  const std::string endpoint = UniqueIpcPath("nothing");
  const Duration timeout = milliseconds(300);
  const auto start = std::chrono::steady_clock::now();
  auto client = Client::Connect({.endpoint = endpoint, .connect_timeout = timeout});
  const Duration elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(client.has_value());
  EXPECT_EQ(client.error().code(), StatusCode::kUnavailable);
  EXPECT_TRUE(client.error().retryable());
  EXPECT_THAT(std::string(client.error().message()), HasSubstr(endpoint));
  EXPECT_GE(elapsed, timeout);
  EXPECT_LT(elapsed, timeout + seconds(5));
}

TEST(ClientConnectTest, SilentServerIsUnavailable) {
  FakeServer::Options opts;
  opts.answer_hello = false;
  FakeServer server(Hold, opts);
  auto client =
      Client::Connect({.endpoint = server.endpoint(), .connect_timeout = milliseconds(200)});
  ASSERT_FALSE(client.has_value());
  EXPECT_EQ(client.error().code(), StatusCode::kUnavailable);
  EXPECT_THAT(std::string(client.error().message()), HasSubstr("no kvtier server answered"));
  EXPECT_EQ(server.requests().size(), 1u);  // the HELLO did arrive
}

TEST(ClientConnectTest, MalformedEndpointIsInvalidArgument) {
  for (const char* endpoint : {"not an endpoint", "foo://bar", "tcp://", "tcp://127.0.0.1"}) {
    auto client = Client::Connect({.endpoint = endpoint, .connect_timeout = milliseconds(100)});
    ASSERT_FALSE(client.has_value()) << endpoint;
    EXPECT_EQ(client.error().code(), StatusCode::kInvalidArgument) << endpoint;
    EXPECT_THAT(std::string(client.error().message()), HasSubstr(endpoint));
  }
}

TEST(ClientConnectTest, BadOptionsAreInvalidArgument) {
  EXPECT_EQ(Client::Connect({.endpoint = ""}).error().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Client::Connect({.max_pending = 0}).error().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Client::Connect({.connect_timeout = Duration::zero()}).error().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(Client::Connect({.request_timeout = milliseconds(-1)}).error().code(),
            StatusCode::kInvalidArgument);
}

// ---- Typed requests and replies -----------------------------------------------------------

// Every typed method sends the request it was given and returns the reply the server chose.
TEST(ClientTest, TypedMethodsSendTheirRequestAndReturnTheirReply) {
  FakeServer server([](const FakeServer::Received& r) -> std::optional<protocol::Reply> {
    switch (r.opcode()) {
      case Opcode::kRegisterKvCache:
        return protocol::RegisterKvCacheReply{123456};
      case Opcode::kGetChunkSize:
        return protocol::ChunkSizeReply{256};
      case Opcode::kQueryPrefetchStatus:
        return protocol::PrefetchStatusReply{true, 7};
      case Opcode::kWaitPrefetchStatus:
        return protocol::PrefetchStatusReply{false, 0};
      case Opcode::kQueryPrefetchLookupHits:
        return protocol::LookupHitsReply{true, 5};
      case Opcode::kStore:
        return protocol::StoreReply{3, 2, 1, std::nullopt};
      case Opcode::kRetrieve:
        return protocol::RetrieveReply{4, std::nullopt};
      case Opcode::kFreeLookupLocks:
        return protocol::FreeLookupLocksReply{6};
      case Opcode::kEndSession:
        return protocol::EndSessionReply{9};
      case Opcode::kPing:
        return protocol::PingReply{true};
      case Opcode::kClear:
        return protocol::ClearReply{77};
      default:
        return FakeServer::DefaultReply(r.opcode());
    }
  });
  auto client = MustConnect(server);

  protocol::RegisterKvCacheRequest reg;
  reg.instance_id = "worker-0";
  reg.model = "llama";
  reg.world_size = 2;
  reg.worker_rank = 1;
  reg.layout = {.num_layers = 2,
                .num_blocks = 16,
                .block_size = 16,
                .num_kv_heads = 8,
                .head_dim = 128,
                .dtype = protocol::DType::kFp16,
                .format = protocol::KvFormat::kKvNhd,
                .layer_offsets = {0, 1 << 20}};
  reg.shm_name = "/kvtier-test";
  reg.shm_size = 2 << 20;
  protocol::LookupRequest lookup{MakeKey("r1"), 2, 500};
  lookup.key.worker_rank.reset();
  protocol::StoreRequest store{"worker-0", MakeKey("r1"), {1, 2, 3}, std::nullopt};
  protocol::RetrieveRequest retrieve{"worker-0", MakeKey("r1"), {4, 5}, 4, std::nullopt};
  protocol::Key free_key = MakeKey("r1");
  free_key.worker_rank.reset();

  EXPECT_EQ(Must(client->RegisterKvCache(reg)), protocol::RegisterKvCacheReply{123456});
  EXPECT_EQ(Must(client->UnregisterKvCache("worker-0")), protocol::EmptyReply{});
  EXPECT_EQ(Must(client->GetChunkSize()), protocol::ChunkSizeReply{256});
  EXPECT_EQ(Must(client->Lookup(lookup)), protocol::EmptyReply{});
  EXPECT_EQ(Must(client->QueryPrefetchStatus("r1")), (protocol::PrefetchStatusReply{true, 7}));
  EXPECT_EQ(Must(client->WaitPrefetchStatus("r1", milliseconds(250))),
            (protocol::PrefetchStatusReply{false, 0}));
  EXPECT_EQ(Must(client->QueryPrefetchLookupHits("r1")), (protocol::LookupHitsReply{true, 5}));
  EXPECT_EQ(Must(client->Store(store)), (protocol::StoreReply{3, 2, 1, std::nullopt}));
  EXPECT_EQ(Must(client->Retrieve(retrieve)), (protocol::RetrieveReply{4, std::nullopt}));
  EXPECT_EQ(Must(client->FreeLookupLocks(free_key)), protocol::FreeLookupLocksReply{6});
  EXPECT_EQ(Must(client->EndSession("r1")), protocol::EndSessionReply{9});
  EXPECT_EQ(Must(client->Ping("worker-0")), protocol::PingReply{true});
  EXPECT_EQ(Must(client->Clear(true)), protocol::ClearReply{77});
  EXPECT_EQ(Must(client->Noop()), protocol::EmptyReply{});

  const std::vector<protocol::Request> expected = {
      reg,
      protocol::UnregisterKvCacheRequest{"worker-0"},
      protocol::GetChunkSizeRequest{},
      lookup,
      protocol::QueryPrefetchStatusRequest{"r1"},
      protocol::WaitPrefetchStatusRequest{"r1", 250},
      protocol::QueryPrefetchLookupHitsRequest{"r1"},
      store,
      retrieve,
      protocol::FreeLookupLocksRequest{free_key},
      protocol::EndSessionRequest{"r1"},
      protocol::PingRequest{"worker-0"},
      protocol::ClearRequest{true},
      protocol::NoopRequest{},
  };
  std::vector<FakeServer::Received> got = server.requests();
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].request, expected[i]) << "request " << i;
    EXPECT_EQ(got[i].opcode(), protocol::OpcodeOf(expected[i]));
  }
  // Fresh request ids, never 0 (the id of answers to unreadable messages).
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NE(got[i].id(), 0u);
    for (size_t j = 0; j < i; ++j) EXPECT_NE(got[i].id(), got[j].id());
  }
  EXPECT_EQ(client->pending(), 0u);
}

TEST(ClientTest, SendReturnsTheReplyVariant) {
  FakeServer server([](const FakeServer::Received& r) -> std::optional<protocol::Reply> {
    if (r.opcode() == Opcode::kClear) return protocol::ClearReply{5};
    return FakeServer::DefaultReply(r.opcode());
  });
  auto client = MustConnect(server);
  Result<protocol::Reply> reply = client->Send(protocol::ClearRequest{false}).Result(kLong);
  ASSERT_TRUE(reply.has_value()) << reply.error().ToString();
  ASSERT_TRUE(std::holds_alternative<protocol::ClearReply>(*reply));
  EXPECT_EQ(std::get<protocol::ClearReply>(*reply).cleared, 5u);
  // HELLO may be sent again through Send.
  reply = client->Send(protocol::HelloRequest{1, "again"}).Result(kLong);
  ASSERT_TRUE(reply.has_value()) << reply.error().ToString();
  EXPECT_EQ(std::get<protocol::HelloReply>(*reply).server_id, "fake-server");
}

// ---- Errors -----------------------------------------------------------------------------

class ClientErrorReplyTest : public ::testing::TestWithParam<std::pair<StatusCode, bool>> {};

TEST_P(ClientErrorReplyTest, ErrorReplyBecomesTheServersStatus) {
  const StatusCode code = GetParam().first;
  const bool retryable = GetParam().second;
  FakeServer server([&](const FakeServer::Received&) -> std::optional<protocol::Reply> {
    return protocol::ErrorReply{code, fmt::format("server says {}", static_cast<int>(code)),
                                retryable};
  });
  auto client = MustConnect(server);
  Status s = StatusOf(client->Store({"w", MakeKey("r"), {1}, std::nullopt}));
  EXPECT_EQ(s.code(), code);
  EXPECT_EQ(s.message(), fmt::format("server says {}", static_cast<int>(code)));
  EXPECT_EQ(s.retryable(), retryable);
}

INSTANTIATE_TEST_SUITE_P(Codes, ClientErrorReplyTest,
                         ::testing::Values(std::pair{StatusCode::kInvalidArgument, false},
                                           std::pair{StatusCode::kNotFound, false},
                                           std::pair{StatusCode::kTimeout, true},
                                           std::pair{StatusCode::kResourceExhausted, true},
                                           std::pair{StatusCode::kProtocolError, false},
                                           std::pair{StatusCode::kUnknownOpcode, false},
                                           // A code this client does not know travels unchanged.
                                           std::pair{static_cast<StatusCode>(555), true}),
                         [](const ::testing::TestParamInfo<std::pair<StatusCode, bool>>& info) {
                           return fmt::format("Code{}", static_cast<int>(info.param.first));
                         });

// Error codes start at 1: an error reply saying 0 is malformed, never success.
TEST(ClientTest, ErrorReplyWithCodeZeroIsProtocolError) {
  FakeServer server(Hold);
  auto client = MustConnect(server);
  auto f = client->Noop();
  ASSERT_TRUE(server.WaitForRequests(1, kLong));
  const FakeServer::Received r = server.requests()[0];
  std::vector<uint8_t> header =
      protocol::EncodeHeader({.flags = protocol::kFlagReply | protocol::kFlagError,
                              .opcode = Opcode::kNoop,
                              .request_id = r.id()});
  // {"code": 0, "message": "confused", "retryable": false}
  const std::string payload = std::string(
      "\x83\xa4"
      "code"
      "\x00\xa7"
      "message\xa8"
      "confused"
      "\xa9"
      "retryable\xc2",
      35);
  server.SendRaw(r.identity, {std::string(header.begin(), header.end()), payload});
  Status s = StatusOf(f);
  EXPECT_EQ(s.code(), StatusCode::kProtocolError);
  EXPECT_THAT(std::string(s.message()), HasSubstr("code"));
}

TEST(ClientTest, ErrorReplyWithOpcodeZeroStillAnswersItsRequest) {
  FakeServer server(Hold);
  auto client = MustConnect(server);
  auto f = client->Store({"w", MakeKey("r"), {1}, std::nullopt});
  ASSERT_TRUE(server.WaitForRequests(1, kLong));
  const FakeServer::Received r = server.requests()[0];
  server.ReplyAs(r, Opcode::kInvalid,
                 protocol::ErrorReply{StatusCode::kProtocolError, "frame count", false});
  Status s = StatusOf(f);
  EXPECT_EQ(s.code(), StatusCode::kProtocolError);
  EXPECT_EQ(s.message(), "frame count");
}

TEST(ClientTest, ReplyOfTheWrongTypeIsProtocolError) {
  FakeServer server(Hold);
  auto client = MustConnect(server);
  auto f = client->Store({"w", MakeKey("r"), {1}, std::nullopt});
  ASSERT_TRUE(server.WaitForRequests(1, kLong));
  server.ReplyAs(server.requests()[0], Opcode::kClear, protocol::ClearReply{1});
  Status s = StatusOf(f);
  EXPECT_EQ(s.code(), StatusCode::kProtocolError);
  EXPECT_THAT(std::string(s.message()), HasSubstr("CLEAR"));
  EXPECT_EQ(client->pending(), 0u);
}

TEST(ClientTest, MalformedReplyPayloadIsProtocolError) {
  FakeServer server(Hold);
  auto client = MustConnect(server);
  auto f = client->Store({"w", MakeKey("r"), {1}, std::nullopt});
  ASSERT_TRUE(server.WaitForRequests(1, kLong));
  const FakeServer::Received r = server.requests()[0];
  std::vector<uint8_t> header = protocol::EncodeHeader(
      {.flags = protocol::kFlagReply, .opcode = Opcode::kStore, .request_id = r.id()});
  server.SendRaw(r.identity, {std::string(header.begin(), header.end()), "\xc1"});
  Status s = StatusOf(f);
  EXPECT_EQ(s.code(), StatusCode::kProtocolError);
  EXPECT_THAT(std::string(s.message()), HasSubstr("malformed reply"));
}

TEST(ClientTest, ReplyWithTheWrongFrameCountIsProtocolError) {
  FakeServer server(Hold);
  auto client = MustConnect(server);
  auto f = client->Noop();
  ASSERT_TRUE(server.WaitForRequests(1, kLong));
  const FakeServer::Received r = server.requests()[0];
  protocol::Frames good = protocol::EncodeReply(Opcode::kNoop, r.id(), protocol::EmptyReply{});
  std::string header(good.header.begin(), good.header.end());
  std::string payload(good.payload.begin(), good.payload.end());
  server.SendRaw(r.identity, {header, payload, payload});
  Status s = StatusOf(f);
  EXPECT_EQ(s.code(), StatusCode::kProtocolError);
  EXPECT_THAT(std::string(s.message()), HasSubstr("frames"));
}

// Messages that cannot be matched to a request are dropped; the request is answered later.
TEST(ClientTest, UnreadableRepliesAreDroppedAndTheRequestIsStillAnswered) {
  FakeServer server(Hold);
  auto client = MustConnect(server);
  auto f = client->Clear();
  ASSERT_TRUE(server.WaitForRequests(1, kLong));
  const FakeServer::Received r = server.requests()[0];
  server.SendRaw(r.identity, {"garbage", "\x80"});
  server.SendRaw(r.identity, {""});  // one empty frame
  protocol::Frames unreadable = protocol::EncodeReply(
      Opcode::kInvalid, 0, protocol::ErrorReply{StatusCode::kProtocolError, "bad header", false});
  server.SendRaw(r.identity, {std::string(unreadable.header.begin(), unreadable.header.end()),
                              std::string(unreadable.payload.begin(), unreadable.payload.end())});
  // A request-shaped message (no reply flag) with our id is not a reply either.
  protocol::Frames request = protocol::EncodeRequest(r.id(), protocol::ClearRequest{});
  server.SendRaw(r.identity, {std::string(request.header.begin(), request.header.end()),
                              std::string(request.payload.begin(), request.payload.end())});
  server.Reply(r, protocol::ClearReply{31});
  Result<protocol::ClearReply> reply = f.Result(kLong);
  ASSERT_TRUE(reply.has_value()) << reply.error().ToString();
  EXPECT_EQ(reply->cleared, 31u);
}

TEST(ClientTest, ReplyInAnotherProtocolVersionFailsItsRequest) {
  FakeServer server(Hold);
  auto client = MustConnect(server);
  auto f = client->Noop();
  ASSERT_TRUE(server.WaitForRequests(1, kLong));
  const FakeServer::Received r = server.requests()[0];
  protocol::Frames good = protocol::EncodeReply(Opcode::kNoop, r.id(), protocol::EmptyReply{});
  good.header[2] = 9;  // version
  server.SendRaw(r.identity, {std::string(good.header.begin(), good.header.end()),
                              std::string(good.payload.begin(), good.payload.end())});
  Status s = StatusOf(f);
  EXPECT_EQ(s.code(), StatusCode::kUnsupportedVersion);
  EXPECT_THAT(std::string(s.message()), HasSubstr("NOOP"));
}

// ---- Ordering, deadlines ----------------------------------------------------------------

TEST(ClientTest, RepliesOutOfOrderReachTheirOwnFutures) {
  constexpr int kRequests = 16;
  FakeServer server(Hold);
  auto client = MustConnect(server);
  std::vector<MessagingFuture<protocol::EndSessionReply>> futures;
  for (int i = 0; i < kRequests; ++i) futures.push_back(client->EndSession(std::to_string(i)));
  ASSERT_TRUE(server.WaitForRequests(kRequests, kLong));
  EXPECT_EQ(client->pending(), static_cast<size_t>(kRequests));
  std::vector<FakeServer::Received> got = server.requests();
  // Answer odd ones backwards, then even ones backwards; each reply echoes its request.
  for (int parity : {1, 0}) {
    for (int i = kRequests - 1; i >= 0; --i) {
      if (i % 2 != parity) continue;
      const auto& req = std::get<protocol::EndSessionRequest>(got[i].request);
      server.Reply(got[i], protocol::EndSessionReply{
                               static_cast<uint32_t>(std::stoul(req.request_id)) + 1000});
    }
  }
  for (int i = 0; i < kRequests; ++i) {
    Result<protocol::EndSessionReply> r = futures[i].Result(kLong);
    ASSERT_TRUE(r.has_value()) << r.error().ToString();
    EXPECT_EQ(r->touched_keys, static_cast<uint32_t>(i + 1000));
  }
  EXPECT_EQ(client->pending(), 0u);
}

TEST(ClientTest, UnansweredRequestTimesOutAndItsLateReplyIsDropped) {
  FakeServer server(Hold);
  auto client = MustConnect(server, {.request_timeout = milliseconds(200)});
  const auto start = std::chrono::steady_clock::now();
  auto first = client->Clear();
  Status s = StatusOf(first);
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(200));
  EXPECT_EQ(s.code(), StatusCode::kTimeout);
  EXPECT_THAT(std::string(s.message()), HasSubstr("no reply within 200ms"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("CLEAR"));
  EXPECT_EQ(client->pending(), 0u);

  // The late reply arrives before the second request's (one connection keeps order): it must
  // not be taken for the second request's answer.
  auto second = client->Clear();
  ASSERT_TRUE(server.WaitForRequests(2, kLong));
  std::vector<FakeServer::Received> got = server.requests();
  server.Reply(got[0], protocol::ClearReply{111});
  server.Reply(got[1], protocol::ClearReply{222});
  Result<protocol::ClearReply> r = second.Result(kLong);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->cleared, 222u);
  EXPECT_EQ(first.Result(Duration::zero()).error().code(), StatusCode::kTimeout);
}

// Each request has its own deadline: a short one expires while a longer one still waits, and a
// zero timeout means none.
TEST(ClientTest, PerRequestDeadlines) {
  FakeServer server(Hold);
  auto client = MustConnect(server);  // default request_timeout: 30 s
  auto no_deadline = client->Send(protocol::NoopRequest{}, Duration::zero());
  auto long_one = client->Send(protocol::PingRequest{}, seconds(30));
  auto short_one = client->Send(protocol::ClearRequest{}, milliseconds(100));
  EXPECT_EQ(StatusOf(short_one).code(), StatusCode::kTimeout);
  EXPECT_FALSE(long_one.Query());
  EXPECT_FALSE(no_deadline.Query());
  ASSERT_TRUE(server.WaitForRequests(3, kLong));
  std::vector<FakeServer::Received> got = server.requests();
  server.Reply(got[0], protocol::EmptyReply{});
  server.Reply(got[1], protocol::PingReply{true});
  EXPECT_TRUE(StatusOf(no_deadline).ok());
  EXPECT_TRUE(StatusOf(long_one).ok());
  EXPECT_EQ(client->Send(protocol::NoopRequest{}, milliseconds(-1)).Result(kLong).error().code(),
            StatusCode::kInvalidArgument);
}

TEST(ClientTest, WaitPrefetchStatusDeadlineIncludesTheWait) {
  FakeServer server(Hold);
  auto client = MustConnect(server, {.request_timeout = milliseconds(100)});
  auto waiting = client->WaitPrefetchStatus("r", seconds(2));
  ASSERT_TRUE(server.WaitForRequests(1, kLong));
  const FakeServer::Received r = server.requests()[0];
  EXPECT_EQ(std::get<protocol::WaitPrefetchStatusRequest>(r.request).timeout_ms, 2000u);
  // A plain request would have expired after 100 ms.
  EXPECT_FALSE(waiting.Wait(milliseconds(400)));
  server.Reply(r, protocol::PrefetchStatusReply{true, 3});
  Result<protocol::PrefetchStatusReply> reply = waiting.Result(kLong);
  ASSERT_TRUE(reply.has_value()) << reply.error().ToString();
  EXPECT_EQ(*reply, (protocol::PrefetchStatusReply{true, 3}));

  // Unanswered, it expires after request_timeout + wait.
  const auto start = std::chrono::steady_clock::now();
  auto expires = client->WaitPrefetchStatus("r", milliseconds(150));
  EXPECT_EQ(StatusOf(expires).code(), StatusCode::kTimeout);
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(250));
}

// ---- Limits and closing -----------------------------------------------------------------

TEST(ClientTest, MaxPendingRefusesBeyondTheLimit) {
  FakeServer server(Hold);
  auto client = MustConnect(server, {.max_pending = 4});
  std::vector<MessagingFuture<protocol::EmptyReply>> held;
  for (int i = 0; i < 4; ++i) held.push_back(client->Noop());
  EXPECT_EQ(client->pending(), 4u);
  auto refused = client->Noop();
  ASSERT_TRUE(refused.Query());  // at once, not queued
  Status s = StatusOf(refused);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(s.retryable());
  EXPECT_THAT(std::string(s.message()), HasSubstr("max_pending"));

  ASSERT_TRUE(server.WaitForRequests(4, kLong));
  server.Reply(server.requests()[0], protocol::EmptyReply{});
  ASSERT_TRUE(StatusOf(held[0]).ok());
  EXPECT_EQ(client->pending(), 3u);
  auto accepted = client->Noop();
  EXPECT_EQ(client->pending(), 4u);
  ASSERT_TRUE(server.WaitForRequests(5, kLong));
  server.Reply(server.requests()[4], protocol::EmptyReply{});
  EXPECT_TRUE(StatusOf(accepted).ok());
}

TEST(ClientTest, CloseCancelsPendingAndLaterCalls) {
  FakeServer server(Hold);
  auto client = MustConnect(server);
  std::vector<MessagingFuture<protocol::EmptyReply>> futures;
  for (int i = 0; i < 3; ++i) futures.push_back(client->Noop());
  ASSERT_TRUE(server.WaitForRequests(3, kLong));
  client->Close();
  for (auto& f : futures) {
    ASSERT_TRUE(f.Query());
    EXPECT_EQ(StatusOf(f, Duration::zero()).code(), StatusCode::kCancelled);
  }
  EXPECT_EQ(client->pending(), 0u);
  client->Close();  // idempotent
  auto after = client->Ping();
  ASSERT_TRUE(after.Query());
  Status s = StatusOf(after, Duration::zero());
  EXPECT_EQ(s.code(), StatusCode::kCancelled);
  EXPECT_THAT(std::string(s.message()), HasSubstr("closed"));
  // A reply to a cancelled request, arriving at a closed client, changes nothing.
  server.Reply(server.requests()[0], protocol::EmptyReply{});
  EXPECT_EQ(StatusOf(futures[0], Duration::zero()).code(), StatusCode::kCancelled);
}

TEST(ClientTest, DestroyingTheClientCancelsWhatIsPending) {
  FakeServer server(Hold);
  auto client = MustConnect(server);
  auto f = client->Store({"w", MakeKey("r"), {1}, std::nullopt});
  ASSERT_TRUE(server.WaitForRequests(1, kLong));
  client.reset();
  ASSERT_TRUE(f.Query());
  EXPECT_EQ(StatusOf(f, Duration::zero()).code(), StatusCode::kCancelled);
}

// A future callback runs on the I/O thread and may issue the next request from there.
TEST(ClientTest, CallbackMayIssueTheNextRequest) {
  FakeServer server(AnswerDefault);
  auto client = MustConnect(server);
  sync::Promise<protocol::EmptyReply> second_done;
  auto first = client->Noop();
  first.OnReady([&] { client->Noop().OnReady([&] { second_done.SetValue({}); }); });
  EXPECT_TRUE(first.Wait(kLong));
  EXPECT_TRUE(StatusOf(second_done.GetFuture()).ok());
}

}  // namespace
}  // namespace kvtier
