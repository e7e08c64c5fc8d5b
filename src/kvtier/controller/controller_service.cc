#include "kvtier/controller/controller_service.h"

#include <cerrno>
#include <chrono>
#include <span>
#include <vector>

#include <fmt/format.h>
#include <zmq.hpp>

#include "kvtier/common/logging.h"
#include "kvtier/controller/codec.h"
#include "kvtier/controller/controller_http.h"
#include "kvtier/sync/event_fd.h"

namespace kvtier::controller {
namespace {

using Clock = std::chrono::steady_clock;

// How long closing a socket may wait for queued replies to go out.
constexpr int kLingerMs = 1000;
// Messages served per socket per poll round: heartbeats first and more of them, so that
// liveness never waits behind a flood of events or requests.
constexpr int kHeartbeatsPerRound = 256;
constexpr int kRequestsPerRound = 64;
constexpr int kEventMessagesPerRound = 64;
// Requests answered with kUnavailable while stopping, per socket, at most.
constexpr int kDrainOnStop = 4096;
// Parts between the identity and the frame that a reply echoes, at most.
constexpr size_t kMaxEnvelopeParts = 16;

std::span<const uint8_t> Bytes(const zmq::message_t& m) {
  return {static_cast<const uint8_t*>(m.data()), m.size()};
}

// One ROUTER message: [identity, envelope..., frame].
struct RouterMessage {
  zmq::message_t identity;
  std::vector<zmq::message_t> envelope;
  zmq::message_t frame;
  size_t parts = 0;
  bool envelope_overflow = false;
};

// Receives one whole message without waiting; false when none is queued.
bool RecvRouter(zmq::socket_t& socket, RouterMessage* out) {
  zmq::message_t part;
  if (!socket.recv(part, zmq::recv_flags::dontwait)) return false;
  out->parts = 1;
  bool more = part.more();
  out->identity = std::move(part);
  std::vector<zmq::message_t> rest;
  while (more) {
    zmq::message_t next;
    (void)socket.recv(next, zmq::recv_flags::none);  // the rest of a message is here
    more = next.more();
    ++out->parts;
    rest.push_back(std::move(next));
    if (rest.size() > kMaxEnvelopeParts + 1) {
      out->envelope_overflow = true;
      rest.erase(rest.begin());  // keep the tail: the last part is the frame
    }
  }
  if (!rest.empty()) {
    out->frame = std::move(rest.back());
    rest.pop_back();
  }
  out->envelope = std::move(rest);
  if (out->envelope_overflow) out->envelope.clear();
  return true;
}

void SendReply(zmq::socket_t& socket, RouterMessage& in, const std::vector<uint8_t>& frame) {
  try {
    socket.send(in.identity, zmq::send_flags::sndmore);
    for (zmq::message_t& part : in.envelope) socket.send(part, zmq::send_flags::sndmore);
    socket.send(zmq::buffer(frame), zmq::send_flags::none);
  } catch (const zmq::error_t& e) {
    KVT_LOG_WARN("controller: reply not sent: {}", e.what());
  }
}

Status BindError(const std::string& endpoint, const zmq::error_t& e) {
  std::string what = fmt::format("controller: cannot bind '{}': {}", endpoint, e.what());
  if (e.num() == EADDRINUSE || e.num() == EADDRNOTAVAIL) return Status::Unavailable(what);
  return Status::InvalidArgument(what);
}

}  // namespace

struct ControllerService::Sockets {
  zmq::context_t context{1};
  zmq::socket_t requests{context, zmq::socket_type::router};
  zmq::socket_t events{context, zmq::socket_type::pull};
  zmq::socket_t heartbeats{context, zmq::socket_type::router};
  sync::EventFd wake;
  Duration tick{};
};

Result<std::unique_ptr<ControllerService>> ControllerService::Start(
    const ControllerOptions& options) {
  KVT_ASSIGN_OR_RETURN(std::unique_ptr<ControllerCore> core, ControllerCore::Create(options));
  std::unique_ptr<ControllerService> service(new ControllerService(std::move(core)));
  KVT_RETURN_IF_ERROR(service->Bind(options));
  if (options.admin_enabled) {
    KVT_ASSIGN_OR_RETURN(service->http_, ControllerHttpServer::Start(options, service->core_.get(),
                                                                     service->endpoints_));
  }
  service->io_ = std::thread([s = service.get()] { s->Loop(); });
  KVT_LOG_INFO("controller: serving requests on {}, events on {}, heartbeats on {} (epoch {:#x})",
               service->endpoints_.requests, service->endpoints_.events,
               service->endpoints_.heartbeats, service->core_->epoch());
  return service;
}

ControllerService::ControllerService(std::unique_ptr<ControllerCore> core)
    : core_(std::move(core)), sockets_(std::make_unique<Sockets>()) {}

ControllerService::~ControllerService() { Stop(); }

uint16_t ControllerService::admin_port() const { return http_ ? http_->port() : 0; }

// Created and bound on the caller's thread, then used by the I/O thread only (ZMQ sockets may
// move between threads with a memory barrier; the thread start is one).
Status ControllerService::Bind(const ControllerOptions& options) {
  Sockets& s = *sockets_;
  KVT_ASSIGN_OR_RETURN(s.wake, sync::EventFd::Create());
  s.tick = options.EffectiveTickInterval();
  struct Target {
    zmq::socket_t* socket;
    const std::string* endpoint;
    std::string* bound;
  };
  const Target targets[] = {{&s.requests, &options.request_endpoint, &endpoints_.requests},
                            {&s.events, &options.events_endpoint, &endpoints_.events},
                            {&s.heartbeats, &options.heartbeat_endpoint, &endpoints_.heartbeats}};
  for (const Target& t : targets) {
    try {
      t.socket->set(zmq::sockopt::linger, kLingerMs);
      t.socket->set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(kMaxFrameBytes));
      if (t.socket != &s.events) t.socket->set(zmq::sockopt::sndhwm, 0);  // replies: never drop
    } catch (const zmq::error_t& e) {
      return Status::Internal(fmt::format("controller: socket setup failed: {}", e.what()));
    }
    try {
      t.socket->bind(*t.endpoint);
    } catch (const zmq::error_t& e) {
      return BindError(*t.endpoint, e);
    }
    *t.bound = t.socket->get(zmq::sockopt::last_endpoint);
  }
  return Status::OK();
}

void ControllerService::Stop() {
  if (http_) http_->Stop();
  if (!io_.joinable()) return;
  stop_.store(true);
  sockets_->wake.Signal();
  io_.join();
}

void ControllerService::Loop() {
  Sockets& s = *sockets_;
  ControllerCore& core = *core_;
  ControllerCounters& counters = core.counters();

  // One request from a ROUTER socket: decode, dispatch, reply. `only_heartbeats`: the heartbeat
  // socket, which refuses other requests with error 800.
  auto serve = [&](zmq::socket_t& socket, bool only_heartbeats, bool stopping) -> bool {
    RouterMessage m;
    if (!RecvRouter(socket, &m)) return false;
    const auto arrived = Clock::now();
    if (m.parts < 2) {  // an identity and nothing else: there is no frame to answer
      counters.messages[0].fetch_add(1, std::memory_order_relaxed);
      return true;
    }
    const std::span<const uint8_t> frame = Bytes(m.frame);
    size_t slot = 0;
    std::vector<uint8_t> out;
    auto request = DecodeRequest(frame);
    if (m.envelope_overflow) {
      out = EncodeErrorReply(ReplyTargetOf(frame),
                             Status(StatusCode::kProtocolError,
                                    fmt::format("a request has at most {} parts between the "
                                                "identity and the frame; got {}",
                                                kMaxEnvelopeParts, m.parts - 2)));
    } else if (!request) {
      out = EncodeErrorReply(ReplyTargetOf(frame), request.error());
    } else {
      const MessageType type = request->header.type;
      const uint64_t id = request->header.request_id;
      slot = static_cast<size_t>(type) < ControllerCounters::kTypeSlots ? static_cast<size_t>(type)
                                                                        : 0;
      if (only_heartbeats && type != MessageType::kHeartbeat) {
        counters.wrong_socket.fetch_add(1, std::memory_order_relaxed);
        out = EncodeErrorReply(
            ReplyTarget{type, id},
            Status(StatusCode::kProtocolError,
                   fmt::format("the heartbeat socket takes HEARTBEAT only; send {} to the request "
                               "socket",
                               MessageTypeName(type))));
      } else if (stopping) {
        out = EncodeErrorReply(ReplyTarget{type, id},
                               Status::Unavailable("the controller is stopping; retry"));
      } else {
        out = EncodeReply(type, id, core.HandleRequest(request->body));
      }
    }
    if (slot == 0) counters.request_errors.fetch_add(1, std::memory_order_relaxed);
    counters.messages[slot].fetch_add(1, std::memory_order_relaxed);
    SendReply(socket, m, out);
    counters.latency[slot].Record(Clock::now() - arrived);
    return true;
  };

  // One events message: every part decoded and applied on its own.
  auto ingest = [&]() -> bool {
    zmq::message_t part;
    if (!s.events.recv(part, zmq::recv_flags::dontwait)) return false;
    while (true) {
      const auto arrived = Clock::now();
      auto event = DecodeEvent(Bytes(part));
      if (!event) {
        counters.messages[0].fetch_add(1, std::memory_order_relaxed);
        core.CountDropped(DropReason::kDecodeError);
        KVT_LOG_DEBUG("controller: undecodable event dropped: {}", event.error().ToString());
      } else {
        const auto slot = static_cast<size_t>(event->header.type);
        counters.messages[slot].fetch_add(1, std::memory_order_relaxed);
        core.HandleEvent(event->body);
        counters.latency[slot].Record(Clock::now() - arrived);
      }
      if (!part.more()) break;
      (void)s.events.recv(part, zmq::recv_flags::none);
    }
    return true;
  };

  auto next_tick = Clock::now() + s.tick;
  while (!stop_.load()) {
    const auto wait =
        std::chrono::duration_cast<std::chrono::milliseconds>(next_tick - Clock::now());
    zmq::pollitem_t items[4] = {{nullptr, s.wake.fd(), ZMQ_POLLIN, 0},
                                {s.heartbeats.handle(), 0, ZMQ_POLLIN, 0},
                                {s.requests.handle(), 0, ZMQ_POLLIN, 0},
                                {s.events.handle(), 0, ZMQ_POLLIN, 0}};
    try {
      zmq::poll(items, 4, std::max(wait, std::chrono::milliseconds(0)));
      if (items[0].revents & ZMQ_POLLIN) s.wake.Drain();
      if (stop_.load()) break;
      for (int i = 0; i < kHeartbeatsPerRound && serve(s.heartbeats, true, false); ++i) {
      }
      for (int i = 0; i < kRequestsPerRound && serve(s.requests, false, false); ++i) {
      }
      for (int i = 0; i < kEventMessagesPerRound && ingest(); ++i) {
      }
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) KVT_LOG_ERROR("controller: socket error: {}", e.what());
    }
    if (Clock::now() >= next_tick) {
      core.Tick();
      next_tick = Clock::now() + s.tick;
    }
  }
  // Stopping: what was already received is answered, retryably.
  try {
    for (int i = 0; i < kDrainOnStop && serve(s.requests, false, true); ++i) {
    }
    for (int i = 0; i < kDrainOnStop && serve(s.heartbeats, true, true); ++i) {
    }
  } catch (const zmq::error_t& e) {
    KVT_LOG_WARN("controller: socket error while stopping: {}", e.what());
  }
  s.requests.close();
  s.heartbeats.close();
  s.events.close();
  KVT_LOG_INFO("controller: sockets closed");
}

}  // namespace kvtier::controller
