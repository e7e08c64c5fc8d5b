// TcpFaultProxy: a loopback TCP proxy in front of a server (a RedisServer), for tests that need a
// connection to fail at an exact point of a reply stream.
//
// Clients connect to port(); each connection gets its own connection to the upstream server.
// Bytes from a client reach the server unchanged. Bytes from the server reach the client until
// that connection's budget (CutAfter) is spent; the proxy then closes both sides, so the client
// reads exactly the budgeted bytes, then end of stream, whatever the server sent after them.
//
// One thread serves every connection. Thread-safe; the destructor stops it and closes everything.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"
#include "kvtier/sync/event_fd.h"

namespace kvtier::l2::testing {

class TcpFaultProxy {
 public:
  // Listens on a free loopback port; connects each client to upstream_host:upstream_port.
  static Result<std::unique_ptr<TcpFaultProxy>> Start(std::string upstream_host, int upstream_port);
  ~TcpFaultProxy();
  TcpFaultProxy(const TcpFaultProxy&) = delete;
  TcpFaultProxy& operator=(const TcpFaultProxy&) = delete;

  int port() const { return port_; }
  // From now on every connection, open or opened later, passes at most `bytes` more bytes from
  // the server to the client (counted from this call, or from its accept), then is closed.
  void CutAfter(uint64_t bytes);
  // No more budgets: every connection passes everything.
  void PassAll();
  // Connections accepted so far.
  size_t accepted() const;

 private:
  struct Pair {
    int client = -1;
    int server = -1;
    std::optional<uint64_t> budget;  // server -> client bytes left; nullopt: unlimited
  };

  TcpFaultProxy(std::string host, int upstream_port);
  Status Listen();
  void Run();
  void Accept();
  // Forwards what `from` has; false when the pair must close.
  bool Forward(size_t index, bool from_server);
  void ClosePair(size_t index);

  const std::string upstream_host_;
  const int upstream_port_;
  int listen_fd_ = -1;
  int port_ = 0;
  sync::EventFd stop_;
  std::thread thread_;

  mutable Mutex mu_;
  std::vector<Pair> pairs_ KVT_GUARDED_BY(mu_);
  std::optional<uint64_t> cut_after_ KVT_GUARDED_BY(mu_);
  size_t accepted_ KVT_GUARDED_BY(mu_) = 0;
};

}  // namespace kvtier::l2::testing
