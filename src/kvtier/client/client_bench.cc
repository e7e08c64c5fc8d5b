// NOOP round trips through the client against an in-process fake ROUTER server over tcp
// loopback: one request at a time (latency-bound) and with 64 outstanding (throughput).
// items_per_second is round trips per second.
#include <deque>
#include <memory>

#include <benchmark/benchmark.h>
#include <zmq.hpp>

#include "kvtier/client.h"
#include "kvtier/client/testing/fake_server.h"
#include "kvtier/common/check.h"

namespace kvtier {
namespace {

using client_testing::FakeServer;

struct Setup {
  FakeServer server{[](const FakeServer::Received& r) -> std::optional<protocol::Reply> {
                      return FakeServer::DefaultReply(r.opcode());
                    },
                    FakeServer::Options{.record = false}};
  std::unique_ptr<Client> client;

  Setup() {
    Result<std::unique_ptr<Client>> c = Client::Connect({.endpoint = server.endpoint()});
    KVT_CHECK_MSG(c.has_value(), "connect: {}", c.error().ToString());
    client = std::move(*c);
  }
};

void BM_NoopOneAtATime(benchmark::State& state) {
  Setup setup;
  for (auto _ : state) {
    Result<protocol::EmptyReply> r = setup.client->Noop().Result();
    KVT_CHECK(r.has_value());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_NoopOneAtATime)->UseRealTime();

void BM_NoopOutstanding(benchmark::State& state) {
  const size_t window = static_cast<size_t>(state.range(0));
  Setup setup;
  std::deque<MessagingFuture<protocol::EmptyReply>> in_flight;
  for (auto _ : state) {
    if (in_flight.size() >= window) {
      KVT_CHECK(in_flight.front().Result().has_value());
      in_flight.pop_front();
    }
    in_flight.push_back(setup.client->Noop());
  }
  while (!in_flight.empty()) {
    KVT_CHECK(in_flight.front().Result().has_value());
    in_flight.pop_front();
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_NoopOutstanding)->Arg(64)->UseRealTime();

// The floor: the same NOOP round trip on a bare DEALER socket (no client, no I/O thread).
void BM_NoopRawSocket(benchmark::State& state) {
  FakeServer server(
      [](const FakeServer::Received& r) -> std::optional<protocol::Reply> {
        return FakeServer::DefaultReply(r.opcode());
      },
      FakeServer::Options{.record = false});
  zmq::context_t context(1);
  zmq::socket_t socket(context, zmq::socket_type::dealer);
  socket.set(zmq::sockopt::linger, 0);
  socket.connect(server.endpoint());
  uint64_t id = 1;
  for (auto _ : state) {
    protocol::Frames frames = protocol::EncodeRequest(id++, protocol::NoopRequest{});
    socket.send(zmq::buffer(frames.header), zmq::send_flags::sndmore);
    socket.send(zmq::buffer(frames.payload), zmq::send_flags::none);
    zmq::message_t header;
    zmq::message_t payload;
    KVT_CHECK(socket.recv(header).has_value() && socket.recv(payload).has_value());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_NoopRawSocket)->UseRealTime();

}  // namespace
}  // namespace kvtier
