#include "kvtier/server/transport.h"

#include <latch>
#include <set>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>
#include <zmq.hpp>

#include "kvtier/common/mutex.h"
#include "kvtier/protocol/codec.h"

namespace kvtier::server {
namespace {

using protocol::Opcode;

std::span<const uint8_t> Bytes(const zmq::message_t& m) {
  return {static_cast<const uint8_t*>(m.data()), m.size()};
}

// A raw DEALER client speaking frames by hand (so tests can also send garbage).
class RawClient {
 public:
  RawClient(zmq::context_t& ctx, const std::string& endpoint)
      : socket_(ctx, zmq::socket_type::dealer) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.set(zmq::sockopt::rcvtimeo, 10000);  // a test that gets no reply fails, not hangs
    socket_.connect(endpoint);
  }
  void SendFrames(const std::vector<std::vector<uint8_t>>& frames) {
    for (size_t i = 0; i < frames.size(); ++i) {
      socket_.send(zmq::buffer(frames[i]),
                   i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }
  void Send(uint64_t id, const protocol::Request& r) {
    protocol::Frames f = protocol::EncodeRequest(id, r);
    SendFrames({f.header, f.payload});
  }
  struct Received {
    protocol::Header header;
    protocol::Reply reply;
  };
  Received Receive() {
    zmq::message_t h, p;
    EXPECT_TRUE(socket_.recv(h).has_value()) << "no reply";
    EXPECT_TRUE(h.more());
    EXPECT_TRUE(socket_.recv(p).has_value());
    Received out;
    auto header = protocol::DecodeHeader(Bytes(h));
    EXPECT_TRUE(header.has_value());
    if (!header) return out;
    out.header = *header;
    auto reply = protocol::DecodeReply(*header, Bytes(p));
    EXPECT_TRUE(reply.has_value()) << reply.error().ToString();
    if (reply) out.reply = *reply;
    return out;
  }
  protocol::ErrorReply ReceiveError() {
    Received r = Receive();
    EXPECT_TRUE(r.header.flags & protocol::kFlagError);
    auto* e = std::get_if<protocol::ErrorReply>(&r.reply);
    return e ? *e : protocol::ErrorReply{};
  }
  zmq::socket_t& socket() { return socket_; }

 private:
  zmq::socket_t socket_;
};

class TransportTest : public ::testing::Test {
 protected:
  void Start(Transport::Handler handler, TransportOptions o = {}) {
    o.endpoints = {"tcp://127.0.0.1:0"};
    auto t = Transport::Start(o, std::move(handler));
    ASSERT_TRUE(t.has_value()) << t.error().ToString();
    transport_ = std::move(*t);
    ASSERT_EQ(transport_->endpoints().size(), 1u);
    endpoint_ = transport_->endpoints()[0];
  }
  static void Echo(const protocol::Request& r, Transport::ReplyFn reply) {
    if (auto* c = std::get_if<protocol::ClearRequest>(&r)) {
      reply(protocol::ClearReply{c->force ? 1u : 0u});
    } else {
      reply(protocol::EmptyReply{});
    }
  }

  zmq::context_t ctx_{1};
  std::unique_ptr<Transport> transport_;
  std::string endpoint_;
};

TEST_F(TransportTest, RequestsGetTheirRepliesWithIdAndOpcode) {
  Start(Echo);
  EXPECT_NE(endpoint_.find("tcp://127.0.0.1:"), std::string::npos);
  EXPECT_EQ(endpoint_.find(":0"), std::string::npos) << "port 0 resolved: " << endpoint_;
  RawClient c(ctx_, endpoint_);
  c.Send(42, protocol::NoopRequest{});
  auto r = c.Receive();
  EXPECT_EQ(r.header.request_id, 42u);
  EXPECT_EQ(r.header.opcode, Opcode::kNoop);
  EXPECT_TRUE(r.header.flags & protocol::kFlagReply);
  EXPECT_TRUE(std::holds_alternative<protocol::EmptyReply>(r.reply));
  c.Send(43, protocol::ClearRequest{true});
  r = c.Receive();
  EXPECT_EQ(std::get<protocol::ClearReply>(r.reply).cleared, 1u);
  EXPECT_EQ(transport_->counters().requests.load(), 2u);  // counted before dispatch
}

TEST_F(TransportTest, MalformedMessagesGetErrorRepliesAndTheServerKeepsServing) {
  std::atomic<int> handled{0};
  Start([&](const protocol::Request& r, Transport::ReplyFn reply) {
    ++handled;
    Echo(r, std::move(reply));
  });
  RawClient c(ctx_, endpoint_);
  protocol::Frames good = protocol::EncodeRequest(7, protocol::NoopRequest{});

  c.SendFrames({{1, 2, 3}});  // a short header, no payload
  auto e = c.ReceiveError();
  EXPECT_EQ(e.code, StatusCode::kProtocolError);

  c.SendFrames({std::vector<uint8_t>(16, 0), good.payload});  // bad magic: opcode 0, id 0
  auto r = c.Receive();
  EXPECT_EQ(r.header.opcode, Opcode::kInvalid);
  EXPECT_EQ(r.header.request_id, 0u);
  EXPECT_EQ(std::get<protocol::ErrorReply>(r.reply).code, StatusCode::kProtocolError);

  c.SendFrames({good.header});  // header only: answered with its id
  r = c.Receive();
  EXPECT_EQ(r.header.request_id, 7u);
  EXPECT_EQ(std::get<protocol::ErrorReply>(r.reply).code, StatusCode::kProtocolError);

  c.SendFrames({good.header, good.payload, good.payload});  // one frame too many
  EXPECT_EQ(c.ReceiveError().code, StatusCode::kProtocolError);

  c.SendFrames({good.header, {0xc1}});  // not msgpack
  EXPECT_EQ(c.ReceiveError().code, StatusCode::kProtocolError);

  std::vector<uint8_t> unknown = good.header;
  unknown[4] = 200;  // opcode 200
  c.SendFrames({unknown, good.payload});
  EXPECT_EQ(c.ReceiveError().code, StatusCode::kUnknownOpcode);

  std::vector<uint8_t> v2 = good.header;
  v2[2] = 2;
  c.SendFrames({v2, good.payload});
  EXPECT_EQ(c.ReceiveError().code, StatusCode::kUnsupportedVersion);

  EXPECT_EQ(handled.load(), 0) << "no malformed message reaches a handler";
  c.Send(8, protocol::NoopRequest{});
  r = c.Receive();
  EXPECT_EQ(r.header.request_id, 8u);
  EXPECT_TRUE(std::holds_alternative<protocol::EmptyReply>(r.reply));
  EXPECT_EQ(transport_->counters().malformed.load(), 7u);
}

TEST_F(TransportTest, AHandlerThatThrowsAnswersInternalAndTheNextRequestWorks) {
  Start([](const protocol::Request& r, Transport::ReplyFn reply) {
    if (std::holds_alternative<protocol::PingRequest>(r)) throw std::runtime_error("boom");
    Echo(r, std::move(reply));
  });
  RawClient c(ctx_, endpoint_);
  c.Send(1, protocol::PingRequest{});
  auto e = c.ReceiveError();
  EXPECT_EQ(e.code, StatusCode::kInternal);
  EXPECT_NE(e.message.find("boom"), std::string::npos);
  c.Send(2, protocol::NoopRequest{});
  EXPECT_EQ(c.Receive().header.request_id, 2u);
  EXPECT_EQ(transport_->counters().handler_errors.load(), 1u);
}

TEST_F(TransportTest, AFullPoolAnswersBusyAndRetryable) {
  std::latch release(1);
  std::latch started(1);
  std::atomic<bool> first{true};
  TransportOptions o;
  o.control_threads = 1;
  o.max_queued_requests = 1;
  Start(
      [&](const protocol::Request& r, Transport::ReplyFn reply) {
        if (first.exchange(false)) {
          started.count_down();
          release.wait();
        }
        Echo(r, std::move(reply));
      },
      o);
  RawClient c(ctx_, endpoint_);
  c.Send(1, protocol::NoopRequest{});
  started.wait();                      // 1 runs and blocks
  c.Send(2, protocol::NoopRequest{});  // 2 queues
  c.Send(3, protocol::NoopRequest{});  // 3 is refused
  auto r = c.Receive();
  EXPECT_EQ(r.header.request_id, 3u);
  auto& e = std::get<protocol::ErrorReply>(r.reply);
  EXPECT_EQ(e.code, StatusCode::kResourceExhausted);
  EXPECT_TRUE(e.retryable);
  release.count_down();
  std::set<uint64_t> ids = {c.Receive().header.request_id, c.Receive().header.request_id};
  EXPECT_EQ(ids, (std::set<uint64_t>{1, 2}));
  EXPECT_EQ(transport_->counters().busy.load(), 1u);
}

TEST_F(TransportTest, TransfersOfOneClientRunOnOneThreadInOrder) {
  Mutex mu;
  std::map<std::string, std::set<std::thread::id>> threads;  // instance id -> threads
  std::map<std::string, std::vector<uint32_t>> order;
  TransportOptions o;
  o.transfer_threads = 4;
  Start(
      [&](const protocol::Request& r, Transport::ReplyFn reply) {
        if (auto* s = std::get_if<protocol::StoreRequest>(&r)) {
          MutexLock lock(&mu);
          threads[s->instance_id].insert(std::this_thread::get_id());
          order[s->instance_id].push_back(s->key.start);
          reply(protocol::StoreReply{});
          return;
        }
        Echo(r, std::move(reply));
      },
      o);
  constexpr int kClients = 4, kRequests = 50;
  std::vector<std::unique_ptr<RawClient>> clients;
  for (int c = 0; c < kClients; ++c)
    clients.push_back(std::make_unique<RawClient>(ctx_, endpoint_));
  for (int i = 0; i < kRequests; ++i) {
    for (int c = 0; c < kClients; ++c) {
      protocol::StoreRequest s;
      s.instance_id = "c" + std::to_string(c);
      s.key.model = "m";
      s.key.worker_rank = 0;
      s.key.request_id = "r";
      s.block_ids = {1};
      s.key.start = static_cast<uint32_t>(i) * 256;
      s.key.tokens.assign(256 * (i + 1), 1);
      clients[c]->Send(static_cast<uint64_t>(i), s);
    }
  }
  for (int c = 0; c < kClients; ++c) {
    for (int i = 0; i < kRequests; ++i)
      EXPECT_EQ(clients[c]->Receive().header.request_id, static_cast<uint64_t>(i));
  }
  MutexLock lock(&mu);
  for (int c = 0; c < kClients; ++c) {
    std::string id = "c" + std::to_string(c);
    EXPECT_EQ(threads[id].size(), 1u) << id;
    ASSERT_EQ(order[id].size(), static_cast<size_t>(kRequests));
    for (int i = 0; i < kRequests; ++i) EXPECT_EQ(order[id][i], static_cast<uint32_t>(i) * 256);
  }
}

// A STORE and a RETRIEVE of one client run at once: the STORE waits (with a deadline) until the
// RETRIEVE has started, which can only happen on another thread.
TEST_F(TransportTest, StoreAndRetrieveOfOneClientRunSideBySide) {
  std::latch retrieve_started(1);
  std::atomic<bool> overlapped{false};
  TransportOptions o;
  o.transfer_threads = 2;
  Start(
      [&](const protocol::Request& r, Transport::ReplyFn reply) {
        if (std::holds_alternative<protocol::StoreRequest>(r)) {
          const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
          while (!retrieve_started.try_wait() && std::chrono::steady_clock::now() < deadline) {
            std::this_thread::yield();
          }
          overlapped = retrieve_started.try_wait();
          reply(protocol::StoreReply{});
          return;
        }
        if (std::holds_alternative<protocol::RetrieveRequest>(r)) {
          retrieve_started.count_down();
          reply(protocol::RetrieveReply{});
          return;
        }
        Echo(r, std::move(reply));
      },
      o);
  RawClient c(ctx_, endpoint_);
  protocol::StoreRequest s;
  s.instance_id = "w";
  s.key.model = "m";
  s.key.worker_rank = 0;
  s.key.request_id = "r";
  s.key.tokens.assign(256, 1);
  s.block_ids = {1};
  protocol::RetrieveRequest q;
  q.instance_id = "w";
  q.key = s.key;
  q.block_ids = {1};
  c.Send(1, s);
  c.Send(2, q);
  std::map<uint64_t, bool> errors;
  for (int i = 0; i < 2; ++i) {
    auto r = c.Receive();
    errors[r.header.request_id] = std::holds_alternative<protocol::ErrorReply>(r.reply);
  }
  EXPECT_EQ(errors, (std::map<uint64_t, bool>{{1, false}, {2, false}}));
  EXPECT_TRUE(overlapped.load()) << "the STORE finished before the RETRIEVE started";
}

TEST_F(TransportTest, StopSendsTheRepliesOfQueuedRequestsAndDropsLaterOnes) {
  std::latch release(1), started(1);
  std::atomic<bool> first{true};
  Transport::ReplyFn kept;
  Mutex mu;
  TransportOptions o;
  o.control_threads = 1;
  Start(
      [&](const protocol::Request& r, Transport::ReplyFn reply) {
        if (std::holds_alternative<protocol::WaitPrefetchStatusRequest>(r)) {
          MutexLock lock(&mu);
          kept = std::move(reply);  // answered "later"
          return;
        }
        if (first.exchange(false)) {
          started.count_down();
          release.wait();
        }
        Echo(r, std::move(reply));
      },
      o);
  RawClient c(ctx_, endpoint_);
  c.Send(1, protocol::WaitPrefetchStatusRequest{"r", 10});
  c.Send(2, protocol::NoopRequest{});
  started.wait();
  c.Send(3, protocol::NoopRequest{});  // queued behind 2
  // Both 2 and 3 are in the pool before Stop: wait until the I/O thread has read 3.
  while (transport_->counters().requests.load() < 3) std::this_thread::yield();
  std::thread stopper([&] { transport_->Stop(); });
  release.count_down();
  stopper.join();
  std::set<uint64_t> ids = {c.Receive().header.request_id, c.Receive().header.request_id};
  EXPECT_EQ(ids, (std::set<uint64_t>{2, 3}));
  MutexLock lock(&mu);
  ASSERT_TRUE(kept);
  kept(protocol::PrefetchStatusReply{true, 0});  // after Stop: dropped, no crash
  EXPECT_EQ(transport_->StatusJson()["late_replies_dropped"].get<uint64_t>(), 1u);
}

TEST_F(TransportTest, RepliesMayComeFromAnyThreadLater) {
  std::vector<std::thread> later;
  Mutex mu;
  Start([&](const protocol::Request& r, Transport::ReplyFn reply) {
    MutexLock lock(&mu);
    later.emplace_back([reply = std::move(reply)] { reply(protocol::EmptyReply{}); });
  });
  RawClient c(ctx_, endpoint_);
  for (uint64_t i = 0; i < 10; ++i) c.Send(i, protocol::NoopRequest{});
  std::set<uint64_t> ids;
  for (int i = 0; i < 10; ++i) ids.insert(c.Receive().header.request_id);
  EXPECT_EQ(ids.size(), 10u);
  MutexLock lock(&mu);
  for (auto& t : later) t.join();
}

TEST(TransportStartTest, BadEndpointsAreClearErrors) {
  auto h = [](const protocol::Request&, Transport::ReplyFn reply) {
    reply(protocol::EmptyReply{});
  };
  TransportOptions o;
  o.endpoints = {"nonsense://x"};
  auto t = Transport::Start(o, h);
  ASSERT_FALSE(t.has_value());
  EXPECT_EQ(t.error().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(t.error().message().find("nonsense://x"), std::string::npos);

  o.endpoints = {"tcp://127.0.0.1:0"};
  auto first = Transport::Start(o, h);
  ASSERT_TRUE(first.has_value());
  o.endpoints = {(*first)->endpoints()[0]};  // taken
  auto second = Transport::Start(o, h);
  ASSERT_FALSE(second.has_value());
  EXPECT_EQ(second.error().code(), StatusCode::kInvalidArgument);

  o.endpoints = {};
  EXPECT_FALSE(Transport::Start(o, h).has_value());
}

TEST(TransportStartTest, IpcEndpointsWork) {
  std::string path = "/tmp/kvt-transport-test-" + std::to_string(::getpid()) + ".sock";
  TransportOptions o;
  o.endpoints = {"ipc://" + path};
  auto t = Transport::Start(
      o, [](const protocol::Request&, Transport::ReplyFn reply) { reply(protocol::EmptyReply{}); });
  ASSERT_TRUE(t.has_value()) << t.error().ToString();
  zmq::context_t ctx(1);
  RawClient c(ctx, "ipc://" + path);
  c.Send(5, protocol::NoopRequest{});
  EXPECT_EQ(c.Receive().header.request_id, 5u);
  (*t)->Stop();
  ::unlink(path.c_str());
}

}  // namespace
}  // namespace kvtier::server

namespace kvtier::server {
namespace {

TEST(LatencyHistogramTest, BucketsAreCumulativeAndSumIsInSeconds) {
  LatencyHistogram h;
  h.Record(std::chrono::microseconds(10));   // <= 50
  h.Record(std::chrono::microseconds(50));   // <= 50 (bounds are inclusive)
  h.Record(std::chrono::microseconds(700));  // <= 1000
  h.Record(std::chrono::seconds(100));       // +Inf
  auto s = h.Read();
  EXPECT_EQ(s.count, 4u);
  EXPECT_EQ(s.cumulative[0], 2u);
  EXPECT_EQ(s.cumulative[3], 2u);  // <= 500
  EXPECT_EQ(s.cumulative[4], 3u);  // <= 1000
  EXPECT_EQ(s.cumulative[LatencyHistogram::kBoundsUs.size() - 1], 3u);
  EXPECT_EQ(s.cumulative.back(), 4u);
  EXPECT_NEAR(s.sum_seconds, 100.00076, 1e-9);
}

TEST_F(TransportTest, LatenciesAreRecordedPerOpcode) {
  Start(Echo);
  RawClient c(ctx_, endpoint_);
  for (uint64_t i = 0; i < 5; ++i) c.Send(i, protocol::NoopRequest{});
  c.Send(9, protocol::ClearRequest{});
  for (int i = 0; i < 6; ++i) c.Receive();
  c.SendFrames({{1, 2, 3}});
  c.ReceiveError();
  transport_->Stop();  // every reply function has returned
  EXPECT_EQ(transport_->latency(Opcode::kNoop).Read().count, 5u);
  EXPECT_EQ(transport_->latency(Opcode::kClear).Read().count, 1u);
  EXPECT_EQ(transport_->latency(Opcode::kInvalid).Read().count, 1u);
  EXPECT_EQ(transport_->latency(Opcode::kStore).Read().count, 0u);
}

// READ_OBJECTS: each object found follows the payload as a frame of its own, and the reply's
// holder lives until the frames are gone.
TEST_F(TransportTest, ReadObjectsRepliesCarryObjectFramesAndReleaseTheirHolder) {
  struct Objects {
    std::vector<uint8_t> a = std::vector<uint8_t>(100000, 0xAB);
    std::vector<uint8_t> b = {1, 2, 3};
  };
  std::weak_ptr<Objects> watched;
  Start([&](const protocol::Request& r, Transport::ReplyFn reply) {
    auto objects = std::make_shared<Objects>();
    watched = objects;
    reply(protocol::ReadObjectsReply{{true, false, true}, {objects->a, objects->b}, objects});
  });
  RawClient c(ctx_, endpoint_);
  protocol::ReadObjectsRequest request{{"m@w1r0@g0@" + std::string(64, 'a')}, 1000};
  c.Send(5, request);
  std::vector<zmq::message_t> parts;
  zmq::recv_result_t got;
  do {
    zmq::message_t part;
    got = c.socket().recv(part);
    ASSERT_TRUE(got.has_value()) << "no reply";
    parts.push_back(std::move(part));
  } while (parts.back().more());
  ASSERT_EQ(parts.size(), 4u);
  auto header = protocol::DecodeHeader(Bytes(parts[0]));
  ASSERT_TRUE(header.has_value());
  EXPECT_EQ(header->request_id, 5u);
  auto reply = protocol::DecodeReply(*header, Bytes(parts[1]));
  ASSERT_TRUE(reply.has_value()) << reply.error().ToString();
  EXPECT_EQ(std::get<protocol::ReadObjectsReply>(*reply).found,
            (std::vector<bool>{true, false, true}));
  EXPECT_EQ(std::vector<uint8_t>(Bytes(parts[2]).begin(), Bytes(parts[2]).end()),
            std::vector<uint8_t>(100000, 0xAB));
  EXPECT_EQ(std::vector<uint8_t>(Bytes(parts[3]).begin(), Bytes(parts[3]).end()),
            (std::vector<uint8_t>{1, 2, 3}));
  // Stop returns only once ZMQ released every frame it held.
  transport_->Stop();
  EXPECT_TRUE(watched.expired());
}

}  // namespace
}  // namespace kvtier::server
