// FakeServer: an in-process ZMQ ROUTER that speaks the v1 protocol through the real codec, for
// client tests and benchmarks. One thread owns the socket; a per-test handler decides each
// request's answer: now, later (from any thread, in any order), or never.
//
//   FakeServer server([](const FakeServer::Received& r) -> std::optional<protocol::Reply> {
//     if (r.opcode() == protocol::Opcode::kClear) return protocol::ClearReply{42};
//     return std::nullopt;  // held: answer with server.Reply(r, ...) or not at all
//   });
//   auto client = Client::Connect({.endpoint = server.endpoint()});
//
// HELLO is answered by the server itself (options.hello) unless options.answer_hello is false;
// then it goes to the handler (and into requests()) like any other request.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "kvtier/common/clock.h"
#include "kvtier/common/mutex.h"
#include "kvtier/common/thread_annotations.h"
#include "kvtier/protocol/codec.h"
#include "kvtier/protocol/messages.h"

namespace kvtier::client_testing {

class FakeServer {
 public:
  // One decoded request and who sent it.
  struct Received {
    std::string identity;
    protocol::Header header;
    protocol::Request request;

    protocol::Opcode opcode() const { return header.opcode; }
    uint64_t id() const { return header.request_id; }
  };
  // Runs on the server's thread. A reply to send now, or nullopt to hold the request.
  using Handler = std::function<std::optional<protocol::Reply>(const Received&)>;

  struct Options {
    // tcp port 0 picks a free port; endpoint() gives the real one.
    std::string endpoint = "tcp://127.0.0.1:0";
    bool answer_hello = true;
    // Keep every request for requests() / WaitForRequests (benchmarks turn it off).
    bool record = true;
    protocol::HelloReply hello{.protocol_version = protocol::kProtocolVersion,
                               .server_id = "fake-server",
                               .server_version = "0.0.0-test",
                               .chunk_size = 256,
                               .hash_algorithm = "xxh3_128"};
  };

  // Aborts (KVT_CHECK) when the socket cannot be bound: tests cannot run without it.
  explicit FakeServer(Handler handler) : FakeServer(std::move(handler), Options()) {}
  FakeServer(Handler handler, Options options);
  ~FakeServer();
  FakeServer(const FakeServer&) = delete;
  FakeServer& operator=(const FakeServer&) = delete;

  const std::string& endpoint() const { return endpoint_; }

  // Answers `to` (any thread). ReplyAs sends the reply under another opcode than the request's
  // (for wrong-type tests); the reply must be the typed reply of `opcode` or an ErrorReply.
  void Reply(const Received& to, const protocol::Reply& reply);
  void ReplyAs(const Received& to, protocol::Opcode opcode, const protocol::Reply& reply);
  // Sends these frames (after the identity) as they are.
  void SendRaw(const std::string& identity, std::vector<std::string> frames);

  // Waits until `n` requests (not counting a HELLO the server answered) have arrived; false
  // after `timeout`.
  bool WaitForRequests(size_t n, Duration timeout) KVT_EXCLUDES(mu_);
  // The requests the handler saw so far, in arrival order.
  std::vector<Received> requests() const KVT_EXCLUDES(mu_);
  // Messages that did not decode as requests.
  uint64_t malformed() const { return malformed_.load(); }

  // The typed reply of `opcode` with every field at its default.
  static protocol::Reply DefaultReply(protocol::Opcode opcode);

 private:
  struct State;
  void Loop();

  Handler handler_;
  Options options_;
  std::string endpoint_;
  std::shared_ptr<State> state_;
  std::thread thread_;

  mutable Mutex mu_;
  CondVar cv_;
  std::vector<Received> requests_ KVT_GUARDED_BY(mu_);
  std::atomic<uint64_t> malformed_{0};
};

}  // namespace kvtier::client_testing
