#include "kvtier/l2/redis/testing/tcp_fault_proxy.h"

#include <cerrno>
#include <cstring>

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace kvtier::l2::testing {
namespace {

// Writes all of [data, data + n) to a blocking socket; false on failure.
bool WriteAll(int fd, const char* data, size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, data, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    data += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

}  // namespace

Result<std::unique_ptr<TcpFaultProxy>> TcpFaultProxy::Start(std::string upstream_host,
                                                            int upstream_port) {
  std::unique_ptr<TcpFaultProxy> proxy(new TcpFaultProxy(std::move(upstream_host), upstream_port));
  KVT_ASSIGN_OR_RETURN(proxy->stop_, sync::EventFd::Create());
  KVT_RETURN_IF_ERROR(proxy->Listen());
  proxy->thread_ = std::thread([p = proxy.get()] { p->Run(); });
  return proxy;
}

TcpFaultProxy::TcpFaultProxy(std::string host, int upstream_port)
    : upstream_host_(std::move(host)), upstream_port_(upstream_port) {}

TcpFaultProxy::~TcpFaultProxy() {
  if (thread_.joinable()) {
    stop_.Signal();
    thread_.join();
  }
  MutexLock lock(&mu_);
  for (size_t i = pairs_.size(); i > 0; --i) {
    ::close(pairs_[i - 1].client);
    ::close(pairs_[i - 1].server);
  }
  pairs_.clear();
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

Status TcpFaultProxy::Listen() {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) return Status::IOError(fmt::format("socket: {}", std::strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listen_fd_, 64) != 0 ||
      ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return Status::IOError(fmt::format("proxy listen: {}", std::strerror(errno)));
  }
  port_ = ntohs(addr.sin_port);
  return Status::OK();
}

void TcpFaultProxy::CutAfter(uint64_t bytes) {
  MutexLock lock(&mu_);
  cut_after_ = bytes;
  for (Pair& p : pairs_) p.budget = bytes;
}

void TcpFaultProxy::PassAll() {
  MutexLock lock(&mu_);
  cut_after_.reset();
  for (Pair& p : pairs_) p.budget.reset();
}

size_t TcpFaultProxy::accepted() const {
  MutexLock lock(&mu_);
  return accepted_;
}

void TcpFaultProxy::Run() {
  std::vector<pollfd> fds;
  for (;;) {
    fds.clear();
    fds.push_back({stop_.fd(), POLLIN, 0});
    fds.push_back({listen_fd_, POLLIN, 0});
    {
      MutexLock lock(&mu_);
      for (const Pair& p : pairs_) {
        fds.push_back({p.client, POLLIN, 0});
        fds.push_back({p.server, POLLIN, 0});
      }
    }
    if (::poll(fds.data(), fds.size(), -1) < 0) continue;  // EINTR
    if (fds[0].revents != 0) return;
    if (fds[1].revents != 0) Accept();
    // Pairs only change on this thread: indices from the poll set stay valid until a close,
    // after which the next poll round starts afresh.
    for (size_t i = 0; 2 + 2 * i < fds.size(); ++i) {
      const bool client_ready = fds[2 + 2 * i].revents != 0;
      const bool server_ready = fds[3 + 2 * i].revents != 0;
      if ((client_ready && !Forward(i, /*from_server=*/false)) ||
          (server_ready && !Forward(i, /*from_server=*/true))) {
        ClosePair(i);
        break;
      }
    }
  }
}

void TcpFaultProxy::Accept() {
  int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
  if (client < 0) return;
  int server = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(upstream_port_));
  if (server < 0 || ::inet_pton(AF_INET, upstream_host_.c_str(), &addr.sin_addr) != 1 ||
      ::connect(server, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    if (server >= 0) ::close(server);
    ::close(client);
    return;
  }
  MutexLock lock(&mu_);
  pairs_.push_back(Pair{client, server, cut_after_});
  ++accepted_;
}

bool TcpFaultProxy::Forward(size_t index, bool from_server) {
  int from, to;
  size_t allowed = 64 << 10;
  {
    MutexLock lock(&mu_);
    Pair& p = pairs_[index];
    from = from_server ? p.server : p.client;
    to = from_server ? p.client : p.server;
    if (from_server && p.budget.has_value()) {
      if (*p.budget == 0) return false;
      allowed = static_cast<size_t>(std::min<uint64_t>(allowed, *p.budget));
    }
  }
  char buf[64 << 10];
  ssize_t n = ::recv(from, buf, allowed, 0);
  if (n < 0 && errno == EINTR) return true;
  if (n <= 0) return false;
  bool spent = false;
  if (from_server) {
    MutexLock lock(&mu_);
    Pair& p = pairs_[index];
    if (p.budget.has_value()) {
      *p.budget -= std::min<uint64_t>(*p.budget, static_cast<uint64_t>(n));
      spent = *p.budget == 0;
    }
  }
  if (!WriteAll(to, buf, static_cast<size_t>(n))) return false;
  return !spent;
}

void TcpFaultProxy::ClosePair(size_t index) {
  MutexLock lock(&mu_);
  Pair p = pairs_[index];
  pairs_.erase(pairs_.begin() + static_cast<ptrdiff_t>(index));
  // Unread bytes from the client would turn the close into a reset, which may discard what the
  // client has not read yet: take them first, so it reads everything forwarded, then the end.
  char sink[4096];
  while (::recv(p.client, sink, sizeof(sink), MSG_DONTWAIT) > 0) {
  }
  ::shutdown(p.client, SHUT_RDWR);
  ::close(p.client);
  ::close(p.server);
}

}  // namespace kvtier::l2::testing
