// Pieces the round-trip suites share: a bare ZMQ ROUTER echo (the baseline a request/reply
// server is measured against) and percentiles of latency samples.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <zmq.hpp>

namespace kvtier::bench {

// The p-quantile (0..1) of `v`, nearest rank; 0 for no samples.
inline double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i =
      std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5));
  return v[i];
}

// A ROUTER thread sending every multipart message straight back (identity first), as fast as it
// can: what a server's round trip costs with no work done.
struct EchoServer {
  explicit EchoServer(const std::string& endpoint) : socket(ctx, zmq::socket_type::router) {
    socket.set(zmq::sockopt::linger, 0);
    socket.bind(endpoint);
    bound = socket.get(zmq::sockopt::last_endpoint);
    thread = std::thread([this] {
      zmq::pollitem_t item{socket.handle(), 0, ZMQ_POLLIN, 0};
      std::vector<zmq::message_t> parts;
      while (!stop.load()) {
        zmq::poll(&item, 1, std::chrono::milliseconds(20));
        if (!(item.revents & ZMQ_POLLIN)) continue;
        parts.clear();
        do {
          parts.emplace_back();
          (void)socket.recv(parts.back());
        } while (parts.back().more());
        for (size_t i = 0; i < parts.size(); ++i) {
          socket.send(parts[i],
                      i + 1 < parts.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
        }
      }
    });
  }
  ~EchoServer() {
    stop.store(true);
    thread.join();
  }
  zmq::context_t ctx{1};
  zmq::socket_t socket;
  std::string bound;
  std::atomic<bool> stop{false};
  std::thread thread;
};

}  // namespace kvtier::bench
