#include "kvtier/client/testing/fake_server.h"

#include <deque>
#include <span>
#include <utility>

#include <fmt/format.h>
#include <zmq.hpp>

#include "kvtier/common/check.h"
#include "kvtier/common/logging.h"
#include "kvtier/sync/event_fd.h"

namespace kvtier::client_testing {
namespace {

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string ToString(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }

template <size_t... I>
protocol::Reply DefaultReplyAt(size_t index, std::index_sequence<I...>) {
  protocol::Reply reply;
  auto emplace_if = [&]<size_t J>(std::integral_constant<size_t, J>) {
    if (J == index) reply.emplace<J>();
  };
  (emplace_if(std::integral_constant<size_t, I>()), ...);
  return reply;
}

}  // namespace

struct FakeServer::State {
  struct Outgoing {
    std::string identity;
    std::vector<std::string> frames;
  };

  zmq::context_t context{1};
  zmq::socket_t socket{context, zmq::socket_type::router};
  sync::EventFd wake;
  std::atomic<bool> stop{false};
  Mutex mu;
  std::deque<Outgoing> outgoing KVT_GUARDED_BY(mu);

  void Push(Outgoing out) {
    {
      MutexLock lock(&mu);
      outgoing.push_back(std::move(out));
    }
    wake.Signal();
  }
  std::deque<Outgoing> Take() {
    MutexLock lock(&mu);
    std::deque<Outgoing> out;
    out.swap(outgoing);
    return out;
  }
};

FakeServer::FakeServer(Handler handler, Options options)
    : handler_(std::move(handler)),
      options_(std::move(options)),
      state_(std::make_shared<State>()) {
  Result<sync::EventFd> wake = sync::EventFd::Create();
  KVT_CHECK_MSG(wake.has_value(), "eventfd: {}", wake.error().ToString());
  state_->wake = std::move(*wake);
  try {
    state_->socket.set(zmq::sockopt::linger, 0);
    state_->socket.set(zmq::sockopt::sndhwm, 0);
    state_->socket.set(zmq::sockopt::rcvhwm, 0);
    state_->socket.bind(options_.endpoint);
    endpoint_ = state_->socket.get(zmq::sockopt::last_endpoint);
  } catch (const zmq::error_t& e) {
    KVT_CHECK_MSG(false, "fake server cannot bind {}: {}", options_.endpoint, e.what());
  }
  thread_ = std::thread([this] { Loop(); });
}

FakeServer::~FakeServer() {
  state_->stop.store(true);
  state_->wake.Signal();
  thread_.join();
}

void FakeServer::Reply(const Received& to, const protocol::Reply& reply) {
  ReplyAs(to, to.opcode(), reply);
}

void FakeServer::ReplyAs(const Received& to, protocol::Opcode opcode,
                         const protocol::Reply& reply) {
  protocol::Frames frames = protocol::EncodeReply(opcode, to.id(), reply);
  state_->Push({to.identity, {ToString(frames.header), ToString(frames.payload)}});
}

void FakeServer::SendRaw(const std::string& identity, std::vector<std::string> frames) {
  KVT_CHECK_MSG(!frames.empty(), "a message has at least one frame");
  state_->Push({identity, std::move(frames)});
}

bool FakeServer::WaitForRequests(size_t n, Duration timeout) {
  const TimePoint deadline = DeadlineFrom(timeout);
  MutexLock lock(&mu_);
  while (requests_.size() < n) {
    if (!cv_.WaitUntil(&mu_, deadline)) break;
  }
  return requests_.size() >= n;
}

std::vector<FakeServer::Received> FakeServer::requests() const {
  MutexLock lock(&mu_);
  return requests_;
}

protocol::Reply FakeServer::DefaultReply(protocol::Opcode opcode) {
  const size_t index = protocol::ReplyIndexFor(opcode);
  KVT_CHECK_MSG(index != std::variant_npos, "no reply type for opcode {}",
                static_cast<int>(opcode));
  return DefaultReplyAt(index, std::make_index_sequence<std::variant_size_v<protocol::Reply>>());
}

void FakeServer::Loop() {
  State& st = *state_;
  auto send = [&](const State::Outgoing& out) {
    try {
      st.socket.send(zmq::buffer(out.identity), zmq::send_flags::sndmore);
      for (size_t i = 0; i < out.frames.size(); ++i) {
        st.socket.send(zmq::buffer(out.frames[i]), i + 1 < out.frames.size()
                                                       ? zmq::send_flags::sndmore
                                                       : zmq::send_flags::none);
      }
    } catch (const zmq::error_t& e) {
      KVT_LOG_WARN("fake server: send failed: {}", e.what());
    }
  };
  while (!st.stop.load()) {
    zmq::pollitem_t items[2] = {{nullptr, st.wake.fd(), ZMQ_POLLIN, 0},
                                {st.socket.handle(), 0, ZMQ_POLLIN, 0}};
    try {
      zmq::poll(items, 2, std::chrono::milliseconds(-1));
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      KVT_LOG_ERROR("fake server: poll failed: {}", e.what());
      return;
    }
    if (items[0].revents & ZMQ_POLLIN) st.wake.Drain();
    for (const State::Outgoing& out : st.Take()) send(out);
    if ((items[1].revents & ZMQ_POLLIN) == 0) continue;
    for (int batch = 0; batch < 256; ++batch) {
      std::vector<std::string> frames;
      try {
        zmq::message_t part;
        if (!st.socket.recv(part, zmq::recv_flags::dontwait)) break;
        frames.push_back(part.to_string());
        while (part.more()) {
          (void)st.socket.recv(part, zmq::recv_flags::none);
          frames.push_back(part.to_string());
        }
      } catch (const zmq::error_t& e) {
        KVT_LOG_WARN("fake server: receive failed: {}", e.what());
        break;
      }
      if (frames.size() != 3) {
        malformed_.fetch_add(1);
        continue;
      }
      Result<protocol::Header> header = protocol::DecodeHeader(Bytes(frames[1]));
      if (!header) {
        malformed_.fetch_add(1);
        continue;
      }
      Result<protocol::Request> request = protocol::DecodeRequest(*header, Bytes(frames[2]));
      if (!request) {
        malformed_.fetch_add(1);
        protocol::Frames err = protocol::EncodeReply(header->opcode, header->request_id,
                                                     protocol::ToErrorReply(request.error()));
        send({frames[0], {ToString(err.header), ToString(err.payload)}});
        continue;
      }
      Received received{std::move(frames[0]), *header, std::move(*request)};
      std::optional<protocol::Reply> reply;
      if (received.opcode() == protocol::Opcode::kHello && options_.answer_hello) {
        reply = options_.hello;
      } else {
        if (options_.record) {
          MutexLock lock(&mu_);
          requests_.push_back(received);
          cv_.NotifyAll();
        }
        reply = handler_(received);
      }
      if (reply) {
        protocol::Frames out = protocol::EncodeReply(received.opcode(), received.id(), *reply);
        send({received.identity, {ToString(out.header), ToString(out.payload)}});
      }
    }
  }
}

}  // namespace kvtier::client_testing
