// Many clients, many requests, replies from pool threads and from outside threads at once:
// every request gets exactly its own reply. Run under TSan by scripts/test.sh.
#include <thread>

#include <gtest/gtest.h>
#include <zmq.hpp>

#include "kvtier/protocol/codec.h"
#include "kvtier/server/transport.h"

namespace kvtier::server {
namespace {

TEST(TransportStressTest, EveryRequestGetsItsOwnReply) {
  TransportOptions o;
  o.endpoints = {"tcp://127.0.0.1:0"};
  o.control_threads = 3;
  o.transfer_threads = 3;
  o.max_queued_requests = 1u << 20;
  auto t = Transport::Start(o, [](const protocol::Request& r, Transport::ReplyFn reply) {
    // The reply encodes the request: CLEAR's force bit and the block id of a STORE.
    if (auto* c = std::get_if<protocol::ClearRequest>(&r))
      return reply(protocol::ClearReply{c->force ? 1u : 2u});
    if (auto* s = std::get_if<protocol::StoreRequest>(&r))
      return reply(protocol::StoreReply{s->block_ids.at(0), 0, 0, std::nullopt});
    reply(protocol::EmptyReply{});
  });
  ASSERT_TRUE(t.has_value());
  const std::string endpoint = (*t)->endpoints()[0];
  constexpr int kClients = 6, kRequests = 1500;
  std::atomic<int> bad{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      zmq::context_t ctx(1);
      zmq::socket_t s(ctx, zmq::socket_type::dealer);
      s.set(zmq::sockopt::linger, 0);
      s.set(zmq::sockopt::rcvtimeo, 20000);
      s.connect(endpoint);
      auto send = [&](uint64_t id, const protocol::Request& r) {
        auto f = protocol::EncodeRequest(id, r);
        s.send(zmq::buffer(f.header), zmq::send_flags::sndmore);
        s.send(zmq::buffer(f.payload), zmq::send_flags::none);
      };
      for (int i = 0; i < kRequests; ++i) {
        const uint64_t id = static_cast<uint64_t>(c) * kRequests + i;
        if (i % 2 == 0) {
          send(id, protocol::ClearRequest{i % 4 == 0});
        } else {
          protocol::StoreRequest st;
          st.instance_id = "w";
          st.key.model = "m";
          st.key.worker_rank = 0;
          st.key.request_id = "r";
          st.key.tokens.assign(256, 1);
          st.block_ids = {static_cast<uint32_t>(id)};
          send(id, st);
        }
      }
      for (int i = 0; i < kRequests; ++i) {
        zmq::message_t h, p;
        if (!s.recv(h) || !s.recv(p)) {
          ++bad;
          return;
        }
        auto header = protocol::DecodeHeader({static_cast<const uint8_t*>(h.data()), h.size()});
        if (!header) {
          ++bad;
          continue;
        }
        auto reply =
            protocol::DecodeReply(*header, {static_cast<const uint8_t*>(p.data()), p.size()});
        const uint64_t id = header->request_id;
        const int index = static_cast<int>(id % kRequests);
        if (!reply || id / kRequests != static_cast<uint64_t>(c)) {
          ++bad;
          continue;
        }
        if (index % 2 == 0) {
          auto* r = std::get_if<protocol::ClearReply>(&*reply);
          if (r == nullptr || r->cleared != (index % 4 == 0 ? 1u : 2u)) ++bad;
        } else {
          auto* r = std::get_if<protocol::StoreReply>(&*reply);
          if (r == nullptr || r->stored_chunks != static_cast<uint32_t>(id)) ++bad;
        }
      }
    });
  }
  for (auto& th : clients) th.join();
  EXPECT_EQ(bad.load(), 0);
  (*t)->Stop();  // joins the I/O thread: its counters are final
  EXPECT_EQ((*t)->counters().replies.load(), static_cast<uint64_t>(kClients) * kRequests);
}

}  // namespace
}  // namespace kvtier::server
