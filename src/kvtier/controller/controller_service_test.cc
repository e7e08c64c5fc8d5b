// ControllerService in-process with real ZeroMQ sockets and HTTP, driven by protocol-encoded
// frames from a test worker (DEALER for requests and heartbeats, PUSH for events).
#include "kvtier/controller/controller_service.h"

#include <chrono>
#include <functional>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <zmq.hpp>

#include "kvtier/controller/codec.h"
#include "kvtier/controller/controller_test_util.h"

namespace kvtier::controller {
namespace {

using namespace std::chrono_literals;
using testing::Admit;
using testing::As;
using testing::AsError;
using ::testing::ElementsAre;
using testing::FullSyncs;
using ::testing::HasSubstr;
using testing::Heartbeat;
using ::testing::IsEmpty;
using testing::Keys;
using testing::Lookup;
using testing::MakeHash;
using testing::Registration;

// Polls `condition` until it holds or 10 s pass.
bool WaitFor(const std::function<bool()>& condition) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

std::vector<uint8_t> ToBytes(const zmq::message_t& m) {
  const auto* p = static_cast<const uint8_t*>(m.data());
  return {p, p + m.size()};
}

// A worker speaking the protocol: requests and heartbeats on DEALERs, events on a PUSH.
class TestWorker {
 public:
  TestWorker(zmq::context_t& context, const BoundEndpoints& e)
      : requests_(context, zmq::socket_type::dealer),
        heartbeats_(context, zmq::socket_type::dealer),
        events_(context, zmq::socket_type::push) {
    for (zmq::socket_t* s : {&requests_, &heartbeats_, &events_}) {
      s->set(zmq::sockopt::linger, 0);
      s->set(zmq::sockopt::rcvtimeo, 10000);
    }
    requests_.connect(e.requests);
    heartbeats_.connect(e.heartbeats);
    events_.connect(e.events);
  }

  Reply Call(const Request& r) { return Exchange(requests_, r); }
  Reply Beat(const HeartbeatRequest& r) { return Exchange(heartbeats_, r); }
  void Send(const Event& e) { events_.send(zmq::buffer(EncodeEvent(e)), zmq::send_flags::none); }
  // Sends raw parts to the request (or heartbeat) socket; returns the parts of the reply.
  std::vector<std::vector<uint8_t>> Raw(std::vector<std::vector<uint8_t>> parts,
                                        bool heartbeat_socket = false) {
    zmq::socket_t& s = heartbeat_socket ? heartbeats_ : requests_;
    for (size_t i = 0; i < parts.size(); ++i) {
      s.send(zmq::buffer(parts[i]),
             i + 1 < parts.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
    std::vector<std::vector<uint8_t>> out;
    zmq::message_t m;
    do {
      if (!s.recv(m)) {
        ADD_FAILURE() << "no reply";
        return out;
      }
      out.push_back(ToBytes(m));
    } while (m.more());
    return out;
  }
  void SendEventParts(const std::vector<std::vector<uint8_t>>& parts) {
    for (size_t i = 0; i < parts.size(); ++i) {
      events_.send(zmq::buffer(parts[i]),
                   i + 1 < parts.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }

 private:
  Reply Exchange(zmq::socket_t& s, const Request& r) {
    const uint64_t id = ++next_id_;
    s.send(zmq::buffer(EncodeRequest(id, r)), zmq::send_flags::none);
    zmq::message_t m;
    if (!s.recv(m)) {
      ADD_FAILURE() << "no reply to request " << id;
      return ErrorReply{StatusCode::kTimeout, "no reply", true};
    }
    auto reply = DecodeReply(ToBytes(m));
    if (!reply) {
      ADD_FAILURE() << reply.error().ToString();
      return ErrorReply{};
    }
    EXPECT_EQ(reply->header.request_id, id);
    EXPECT_EQ(reply->header.type, TypeOf(r));
    return reply->body;
  }

  zmq::socket_t requests_, heartbeats_, events_;
  uint64_t next_id_ = 0;
};

class ControllerServiceTest : public ::testing::Test {
 protected:
  void Start(Duration heartbeat = 1s, Duration timeout = 30s) {
    ControllerOptions o;
    o.request_endpoint = "tcp://127.0.0.1:0";
    o.events_endpoint = "tcp://127.0.0.1:0";
    o.heartbeat_endpoint = "tcp://127.0.0.1:0";
    o.admin_port = 0;
    o.heartbeat_interval = heartbeat;
    o.worker_timeout = timeout;
    auto service = ControllerService::Start(o);
    ASSERT_TRUE(service.has_value()) << service.error().ToString();
    service_ = std::move(*service);
    worker_ = std::make_unique<TestWorker>(context_, service_->endpoints());
  }

  Origin Register(const std::string& instance, const std::string& address = "") {
    auto reply = As<RegisterReply>(worker_->Call(Registration(instance, 0, address)));
    return Origin{instance, 0, reply.registration_id};
  }

  std::vector<LookupMatch> Matches(const LookupRequest& r) {
    return As<LookupReply>(worker_->Call(r)).matches;
  }

  void TearDown() override {
    worker_.reset();
    if (service_) service_->Stop();
  }

  zmq::context_t context_{1};
  std::unique_ptr<ControllerService> service_;
  std::unique_ptr<TestWorker> worker_;
};

TEST_F(ControllerServiceTest, RegisteredWorkersAdmitsAreVisibleToLookupAndFindKv) {
  Start();
  const Origin a = Register("node-a", "tcp://a:5600");
  worker_->Send(Admit(a, 1, Keys(0, 3)));
  worker_->Send(Admit(a, 2, Keys(3, 1)));
  ASSERT_TRUE(WaitFor([&] {
    return !Matches(Lookup(0, 4)).empty() && Matches(Lookup(0, 4))[0].matched_chunks == 4;
  }));
  EXPECT_THAT(Matches(Lookup(0, 8)), ElementsAre(LookupMatch{"node-a", "tcp://a:5600", 4}));
  auto holders = As<FindKvReply>(
      worker_->Call(FindKvRequest{KeySpace{testing::kModel, "", 1, 0, 0}, MakeHash(2), ""}));
  EXPECT_THAT(holders.holders, ElementsAre(Holder{"node-a", 0, "L1", "tcp://a:5600"}));
  EXPECT_EQ(As<PingReply>(worker_->Call(PingRequest{})).controller_epoch, service_->epoch());
}

TEST_F(ControllerServiceTest, SequenceGapEarnsAFullSyncCommandOnTheHeartbeatSocket) {
  Start();
  const Origin a = Register("node-a");
  worker_->Send(Admit(a, 1, Keys(0, 1)));
  worker_->Send(Admit(a, 4, Keys(1, 1)));
  ASSERT_TRUE(WaitFor([&] { return service_->core().counters().seq_gaps.load() == 1; }));
  auto reply = As<HeartbeatReply>(worker_->Beat(Heartbeat(a, {{"L1", 4, 2}})));
  EXPECT_EQ(reply.controller_epoch, service_->epoch());
  EXPECT_THAT(FullSyncs(reply), ElementsAre("L1:seq_gap"));
  EXPECT_THAT(FullSyncs(As<HeartbeatReply>(worker_->Beat(Heartbeat(a, {{"L1", 4, 2}})))),
              IsEmpty());
}

TEST_F(ControllerServiceTest, FullSyncWithAMissingBatchReportsItAndCompletesOnResend) {
  Start();
  const Origin a = Register("node-a");
  worker_->Send(FullSyncStart{a, "L1", 77, 0, 3, 3});
  worker_->Send(FullSyncBatch{a, "L1", 77, 0, Keys(0, 1)});
  worker_->Send(FullSyncBatch{a, "L1", 77, 2, Keys(2, 1)});
  worker_->Send(FullSyncEnd{a, "L1", 77, 3});
  FullSyncStatusReply status;
  ASSERT_TRUE(WaitFor([&] {
    status = As<FullSyncStatusReply>(worker_->Call(FullSyncStatusRequest{a, "L1", 77}));
    return status.state == SyncState::kMissing;
  }));
  EXPECT_THAT(status.missing_batches, ElementsAre(1u));
  EXPECT_EQ(status.received_batches, 2u);
  worker_->Send(FullSyncBatch{a, "L1", 77, 1, Keys(1, 1)});
  worker_->Send(FullSyncEnd{a, "L1", 77, 3});
  ASSERT_TRUE(WaitFor([&] {
    return As<FullSyncStatusReply>(worker_->Call(FullSyncStatusRequest{a, "L1", 77})).state ==
           SyncState::kComplete;
  }));
  EXPECT_THAT(Matches(Lookup(0, 3)), ElementsAre(LookupMatch{"node-a", "", 3}));
}

TEST_F(ControllerServiceTest, SilentWorkerIsReapedAfterMissedHeartbeats) {
  Start(/*heartbeat=*/20ms, /*timeout=*/100ms);
  const Origin a = Register("node-a");
  worker_->Send(Admit(a, 1, Keys(0, 2)));
  ASSERT_TRUE(WaitFor([&] { return service_->core().counters().workers_reaped.load() == 1; }));
  EXPECT_THAT(As<WorkersReply>(worker_->Call(WorkersRequest{})).workers, IsEmpty());
  EXPECT_THAT(Matches(Lookup(0, 2)), IsEmpty());
  auto reply = As<HeartbeatReply>(worker_->Beat(Heartbeat(a)));
  ASSERT_EQ(reply.commands.size(), 1u);
  EXPECT_EQ(reply.commands[0].kind, CommandKind::kReregister);
}

TEST_F(ControllerServiceTest, HeartbeatingWorkerIsNotReaped) {
  Start(/*heartbeat=*/20ms, /*timeout=*/200ms);
  const Origin a = Register("node-a");
  const Origin b = Register("node-b");
  // b stays silent; a heartbeats until b is reaped, then must still be registered.
  ASSERT_TRUE(WaitFor([&] {
    EXPECT_THAT(As<HeartbeatReply>(worker_->Beat(Heartbeat(a))).commands, IsEmpty());
    return service_->core().counters().workers_reaped.load() == 1;
  }));
  auto workers = As<WorkersReply>(worker_->Call(WorkersRequest{})).workers;
  ASSERT_EQ(workers.size(), 1u);
  EXPECT_EQ(workers[0].instance_id, "node-a");
  (void)b;
}

TEST_F(ControllerServiceTest, HostileFramesAreAnsweredWithErrorsAndServiceGoesOn) {
  Start();
  auto error_of = [](const std::vector<std::vector<uint8_t>>& parts) {
    EXPECT_FALSE(parts.empty());
    auto reply = DecodeReply(parts.back());
    EXPECT_TRUE(reply.has_value()) << (reply ? "" : reply.error().ToString());
    if (!reply) return std::make_pair(Header{}, ErrorReply{});
    return std::make_pair(reply->header, AsError(reply->body));
  };
  // Random bytes and an HTTP request line: error 800 to request 0.
  auto [h1, e1] = error_of(worker_->Raw({{1, 2, 3}}));
  EXPECT_EQ(e1.code, StatusCode::kProtocolError);
  EXPECT_EQ(h1.type, MessageType::kInvalid);
  const std::string http = "GET / HTTP/1.1\r\n\r\n";
  EXPECT_EQ(error_of(worker_->Raw({{http.begin(), http.end()}})).second.code,
            StatusCode::kProtocolError);
  // A future version: error 801 addressed to the request.
  std::vector<uint8_t> ping = EncodeRequest(99, PingRequest{});
  ping[2] = 2;
  auto [h3, e3] = error_of(worker_->Raw({ping}));
  EXPECT_EQ(e3.code, StatusCode::kUnsupportedVersion);
  EXPECT_EQ(h3.request_id, 99u);
  // An unknown type: 802. An event on the request socket: 800.
  std::vector<uint8_t> unknown = EncodeRequest(5, PingRequest{});
  unknown[4] = 60;
  EXPECT_EQ(error_of(worker_->Raw({unknown})).second.code, StatusCode::kUnknownOpcode);
  EXPECT_EQ(
      error_of(worker_->Raw({EncodeEvent(Admit(Origin{"x", 0, 1}, 1, Keys(0, 1)))})).second.code,
      StatusCode::kProtocolError);
  // PING on the heartbeat socket: 800, naming the socket.
  auto [h6, e6] = error_of(worker_->Raw({EncodeRequest(6, PingRequest{})}, true));
  EXPECT_EQ(e6.code, StatusCode::kProtocolError);
  EXPECT_THAT(e6.message, HasSubstr("heartbeat socket"));
  EXPECT_EQ(h6.request_id, 6u);
  // An envelope (an empty delimiter) is echoed before the reply frame.
  auto parts = worker_->Raw({{}, EncodeRequest(7, PingRequest{})});
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_TRUE(parts[0].empty());

  // Events: garbage parts in a multipart message are dropped one by one; the good part applies.
  const Origin a = Register("node-a");
  worker_->SendEventParts({{9, 9, 9}, EncodeEvent(Admit(a, 1, Keys(0, 2))), {}});
  ASSERT_TRUE(WaitFor([&] { return !Matches(Lookup(0, 2)).empty(); }));
  EXPECT_EQ(service_->core()
                .counters()
                .events_dropped[static_cast<size_t>(DropReason::kDecodeError)]
                .load(),
            2u);
  EXPECT_EQ(As<PingReply>(worker_->Call(PingRequest{})).controller_epoch, service_->epoch());
}

TEST_F(ControllerServiceTest, HttpApiServesLookupsWorkersAndMetrics) {
  Start();
  const Origin a = Register("node-a", "tcp://a:5600");
  const std::vector<uint32_t> tokens(3 * 256 + 10, 7);
  const auto hashes = service_->core().hasher().HashAll(tokens);
  worker_->Send(Admit(a, 1, {KeyGroup{KeySpace{testing::kModel, "", 1, 0, 0}, hashes}}));
  ASSERT_TRUE(WaitFor([&] { return service_->core().registry().Stats().keys == 3; }));

  httplib::Client http("127.0.0.1", service_->admin_port());
  auto res = http.Get("/health");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(nlohmann::json::parse(res->body)["workers"], 1);

  nlohmann::json body = {{"model", testing::kModel}, {"token_ids", tokens}};
  res = http.Post("/lookup", body.dump(), "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  nlohmann::json j = nlohmann::json::parse(res->body);
  EXPECT_EQ(j["num_chunks"], 3);
  ASSERT_EQ(j["matches"].size(), 1u);
  EXPECT_EQ(j["matches"][0]["instance_id"], "node-a");
  EXPECT_EQ(j["matches"][0]["matched_chunks"], 3);
  EXPECT_EQ(j["matches"][0]["matched_tokens"], 768);
  body = {{"model", testing::kModel}, {"chunk_hashes", {hashes[0].ToHex(), MakeHash(1).ToHex()}}};
  res = http.Post("/lookup", body.dump(), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(nlohmann::json::parse(res->body)["matches"][0]["matched_chunks"], 1);

  res = http.Post("/lookup", "{\"model\": ", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_THAT(nlohmann::json::parse(res->body)["error"].get<std::string>(),
              HasSubstr("not valid JSON"));

  res = http.Get("/controller/workers");
  ASSERT_TRUE(res);
  EXPECT_EQ(nlohmann::json::parse(res->body)["workers"][0]["key_count"], 3);
  EXPECT_EQ(http.Get("/controller/workers?instance_id=nope")->status, 404);
  EXPECT_EQ(http.Get("/query_worker_info?instance_id=node-a&worker_id=0")->status, 200);
  EXPECT_EQ(http.Get("/query_worker_info?instance_id=node-a&worker_id=9")->status, 404);
  EXPECT_EQ(http.Get("/query_worker_info?instance_id=node-a&worker_id=x")->status, 400);
  EXPECT_EQ(http.Get("/query_worker_info")->status, 400);
  EXPECT_EQ(http.Get("/nowhere")->status, 404);
  EXPECT_EQ(http.Post("/health", "", "application/json")->status, 405);

  res = http.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_THAT(res->body, HasSubstr("kvtier_controller_keys 3"));
  EXPECT_THAT(res->body, HasSubstr("kvtier_controller_messages_total{type=\"REGISTER\"} 1"));
  EXPECT_THAT(res->body, HasSubstr("kvtier_controller_http_requests_total"));

  res = http.Get("/");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_THAT(res->body, HasSubstr("<title>kvtier controller</title>"));
  EXPECT_THAT(res->body, HasSubstr("\"instance_id\":\"node-a\"")) << "initial data embedded";

  res = http.Post("/clear", "{\"instance_id\": \"node-a\"}", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(nlohmann::json::parse(res->body)["cleared_keys"], 3);
  EXPECT_EQ(http.Post("/clear", "{\"worker_id\": 1}", "application/json")->status, 400);
  EXPECT_THAT(FullSyncs(As<HeartbeatReply>(worker_->Beat(Heartbeat(a)))),
              ElementsAre("L1:cleared"));
}

TEST_F(ControllerServiceTest, ATakenPortIsRefusedAndStopIsIdempotent) {
  Start();
  ControllerOptions o;
  o.request_endpoint = service_->endpoints().requests;
  o.events_endpoint = "tcp://127.0.0.1:0";
  o.heartbeat_endpoint = "tcp://127.0.0.1:0";
  o.admin_enabled = false;
  auto second = ControllerService::Start(o);
  ASSERT_FALSE(second.has_value());
  EXPECT_EQ(second.error().code(), StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.error().message()), HasSubstr(o.request_endpoint));
  service_->Stop();
  service_->Stop();
}

}  // namespace
}  // namespace kvtier::controller
