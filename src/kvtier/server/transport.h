// Transport: the server's ZMQ front end.
//
// One I/O thread owns the ROUTER socket (bound to every endpoint) and nothing else touches it.
// It decodes each message, answers malformed ones at once with an error reply, and hands good
// requests to a pool: STORE, RETRIEVE and READ_OBJECTS to the transfer pool, on a thread chosen
// by the client's identity (one client's copies stay in order), everything else to the control
// pool. A READ_OBJECTS reply's objects go out as extra frames without a copy; Stop returns once
// ZMQ released them (and with them the reply's holder: its L1 read locks).
// Handlers reply from any thread, any time later, through a queue that the I/O thread drains
// when an eventfd says it is not empty. Every request gets exactly one reply: a full pool is a
// retryable kResourceExhausted error, a handler that throws is a kInternal error.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "kvtier/common/result.h"
#include "kvtier/protocol/messages.h"
#include "kvtier/server/latency_histogram.h"

namespace zmq {
class socket_t;
}

namespace kvtier::server {

struct TransportOptions {
  // tcp://host:port (port 0 or * picks a free one) or ipc:///path.
  std::vector<std::string> endpoints = {"tcp://127.0.0.1:5555"};
  size_t control_threads = 2;
  size_t transfer_threads = 4;
  // Requests waiting in each pool at most; beyond it a request is answered "busy".
  size_t max_queued_requests = 4096;
};

struct TransportCounters {
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> replies{0};
  std::atomic<uint64_t> malformed{0};       // answered with a protocol error
  std::atomic<uint64_t> busy{0};            // answered kResourceExhausted
  std::atomic<uint64_t> handler_errors{0};  // a handler threw
  std::atomic<uint64_t> send_failures{0};   // the client was gone when its reply was sent
};

class Transport {
 public:
  using ReplyFn = std::function<void(protocol::Reply)>;
  // Must call `reply` exactly once (now or later, from any thread).
  using Handler = std::function<void(const protocol::Request&, ReplyFn reply)>;

  // Binds every endpoint and starts the threads. kInvalidArgument names an endpoint that
  // cannot be bound and why.
  static Result<std::unique_ptr<Transport>> Start(const TransportOptions& options, Handler handler);
  ~Transport();  // Stop()
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  // The endpoints as bound (a tcp port 0 resolved to the real port).
  const std::vector<std::string>& endpoints() const { return bound_; }

  // Stops taking requests, lets the pools finish what they hold, sends their replies, then
  // closes the socket. Replies made later (a pending WAIT) are dropped. Idempotent.
  void Stop();

  const TransportCounters& counters() const { return counters_; }
  // Time from a request's arrival to its reply being queued for sending, per opcode (opcode 0:
  // malformed messages).
  const LatencyHistogram& latency(protocol::Opcode op) const;
  nlohmann::json StatusJson() const;

  struct State;  // shared with the reply functions handed out

 private:
  Transport(const TransportOptions& options, Handler handler);
  Status Bind();
  void Loop(zmq::socket_t& socket);
  // One received message (identity, header, payload frames).
  void OnMessage(std::vector<std::string> frames);

  const TransportOptions options_;
  const Handler handler_;
  std::shared_ptr<State> state_;
  std::vector<std::string> bound_;
  TransportCounters counters_;
  std::thread io_;
};

}  // namespace kvtier::server
