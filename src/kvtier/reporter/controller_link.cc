#include "kvtier/reporter/controller_link.h"

#include <algorithm>
#include <charconv>
#include <climits>
#include <span>
#include <vector>

#include <fmt/format.h>

#include "kvtier/common/units.h"
#include "kvtier/controller/codec.h"
#include "kvtier/reporter/options.h"

namespace kvtier::reporter {
namespace {

// ZeroMQ's reconnect and connect settings: a moved or restarted controller is found again within
// seconds, and a connect to a black-holed address gives up instead of stalling in SYN retries.
constexpr int kReconnectIvlMs = 100;
constexpr int kReconnectIvlMaxMs = 5000;
constexpr int kConnectTimeoutMs = 5000;
// Requests go one at a time; a handful queued is plenty.
constexpr int kRequestHwm = 16;

std::span<const uint8_t> Bytes(const zmq::message_t& m) {
  return {static_cast<const uint8_t*>(m.data()), m.size()};
}

int ClampMs(Duration d) {
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(d).count();
  return static_cast<int>(std::clamp<int64_t>(ms, 0, INT_MAX));
}

// tcp://HOST:PORT -> tcp://HOST:(PORT + delta).
Result<std::string> ShiftPort(const std::string& endpoint, int delta, std::string_view option) {
  auto bad = [&](std::string_view why) {
    return MakeError(Status::InvalidArgument(
        fmt::format("controller.{}: cannot be derived from controller.endpoint '{}' ({}); set it",
                    option, endpoint, why)));
  };
  if (!endpoint.starts_with("tcp://")) return bad("not a tcp:// endpoint");
  const size_t colon = endpoint.rfind(':');
  if (colon == std::string::npos || colon < 6) return bad("no port");
  const std::string_view digits = std::string_view{endpoint}.substr(colon + 1);
  int port = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
  if (ec != std::errc() || end != digits.data() + digits.size() || port < 1 ||
      port + delta > 65535) {
    return bad(fmt::format("port '{}' is not in [1, {}]", digits, 65535 - delta));
  }
  return fmt::format("{}:{}", endpoint.substr(0, colon), port + delta);
}

}  // namespace

Result<ControllerEndpoints> ResolveEndpoints(const ReporterOptions& options) {
  if (options.endpoint.empty()) {
    return MakeError(Status::InvalidArgument("controller.endpoint is empty: reporting is off"));
  }
  ControllerEndpoints e;
  e.requests = options.endpoint;
  if (!options.events_endpoint.empty()) {
    e.events = options.events_endpoint;
  } else {
    KVT_ASSIGN_OR_RETURN(e.events, ShiftPort(options.endpoint, 1, "events_endpoint"));
  }
  if (!options.heartbeat_endpoint.empty()) {
    e.heartbeats = options.heartbeat_endpoint;
  } else {
    KVT_ASSIGN_OR_RETURN(e.heartbeats, ShiftPort(options.endpoint, 2, "heartbeat_endpoint"));
  }
  return e;
}

Result<std::unique_ptr<ControllerLink>> ControllerLink::Create(const ControllerEndpoints& endpoints,
                                                               int send_queue_messages,
                                                               const sync::EventFd* wake) {
  std::unique_ptr<ControllerLink> link(new ControllerLink(endpoints, wake));
  try {
    link->events_ = zmq::socket_t(link->context_, zmq::socket_type::push);
    link->requests_ = zmq::socket_t(link->context_, zmq::socket_type::dealer);
    link->heartbeats_ = zmq::socket_t(link->context_, zmq::socket_type::dealer);
    for (zmq::socket_t* s : {&link->events_, &link->requests_, &link->heartbeats_}) {
      s->set(zmq::sockopt::linger, 0);  // on shutdown the worker has deregistered: drop the rest
      s->set(zmq::sockopt::reconnect_ivl, kReconnectIvlMs);
      s->set(zmq::sockopt::reconnect_ivl_max, kReconnectIvlMaxMs);
      s->set(zmq::sockopt::connect_timeout, kConnectTimeoutMs);
    }
    link->events_.set(zmq::sockopt::sndhwm, std::max(send_queue_messages, 1));
    for (zmq::socket_t* s : {&link->requests_, &link->heartbeats_}) {
      // A request is sent only over a live connection (else the call fails at once and the
      // reporter retries later), so requests never pile up for a controller that is down.
      s->set(zmq::sockopt::immediate, true);
      s->set(zmq::sockopt::sndhwm, kRequestHwm);
      s->set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(controller::kMaxFrameBytes));
    }
  } catch (const zmq::error_t& e) {
    return MakeError(
        Status::Internal(fmt::format("reporter: cannot create a ZMQ socket: {}", e.what())));
  }
  KVT_RETURN_IF_ERROR(link->Connect(&link->events_, endpoints.events));
  KVT_RETURN_IF_ERROR(link->Connect(&link->requests_, endpoints.requests));
  KVT_RETURN_IF_ERROR(link->Connect(&link->heartbeats_, endpoints.heartbeats));
  return link;
}

ControllerLink::~ControllerLink() {
  try {
    events_.close();
    requests_.close();
    heartbeats_.close();
    context_.close();
  } catch (...) {
  }
}

Status ControllerLink::Connect(zmq::socket_t* socket, const std::string& endpoint) {
  try {
    socket->connect(endpoint);
  } catch (const zmq::error_t& e) {
    return Status::InvalidArgument(fmt::format(
        "reporter: cannot connect to controller endpoint '{}': {}", endpoint, e.what()));
  }
  return Status::OK();
}

Status ControllerLink::ConnectHeartbeats(const std::string& endpoint) {
  if (endpoint == endpoints_.heartbeats) return Status::OK();
  try {
    heartbeats_.disconnect(endpoints_.heartbeats);
  } catch (const zmq::error_t&) {
    // Not connected (a failed earlier connect): nothing to undo.
  }
  KVT_RETURN_IF_ERROR(Connect(&heartbeats_, endpoint));
  endpoints_.heartbeats = endpoint;
  return Status::OK();
}

bool ControllerLink::SendEvent(const controller::Event& event) {
  const std::vector<uint8_t> frame = controller::EncodeEvent(event);
  try {
    return events_.send(zmq::buffer(frame), zmq::send_flags::dontwait).has_value();
  } catch (const zmq::error_t&) {
    return false;
  }
}

Result<controller::Reply> ControllerLink::Call(Channel channel, const controller::Request& request,
                                               Duration timeout,
                                               const std::function<bool()>& interrupted) {
  zmq::socket_t& socket = channel == Channel::kRequests ? requests_ : heartbeats_;
  const std::string& endpoint =
      channel == Channel::kRequests ? endpoints_.requests : endpoints_.heartbeats;
  const controller::MessageType type = controller::TypeOf(request);
  const uint64_t id = next_request_id_++;
  auto describe = [&] {
    return fmt::format("{} to controller {}", controller::MessageTypeName(type), endpoint);
  };
  const std::vector<uint8_t> frame = controller::EncodeRequest(id, request);
  const TimePoint deadline = std::chrono::steady_clock::now() + timeout;
  // Waits for `events` on the socket (or a wake-up) until the deadline: false at the deadline.
  Status wait_status;
  auto wait = [&](int16_t events) {
    if (interrupted && interrupted()) {
      wait_status = Status::Cancelled(fmt::format("{}: abandoned", describe()));
      return false;
    }
    const TimePoint now = std::chrono::steady_clock::now();
    if (now >= deadline) return false;
    zmq::pollitem_t items[2] = {{socket.handle(), 0, events, 0},
                                {nullptr, wake_ ? wake_->fd() : -1, ZMQ_POLLIN, 0}};
    try {
      zmq::poll(items, wake_ ? 2 : 1, std::chrono::milliseconds(ClampMs(deadline - now)));
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) return true;
      wait_status = Status::Unavailable(fmt::format("{}: poll failed: {}", describe(), e.what()));
      return false;
    }
    if (wake_ && (items[1].revents & ZMQ_POLLIN) != 0) {
      wake_->Drain();
      if (interrupted && interrupted()) {
        wait_status = Status::Cancelled(fmt::format("{}: abandoned", describe()));
        return false;
      }
    }
    return true;
  };
  // With ZMQ_IMMEDIATE the socket takes the request only once a connection is up: wait for one
  // until the deadline.
  for (;;) {
    try {
      if (socket.send(zmq::buffer(frame), zmq::send_flags::dontwait)) break;
    } catch (const zmq::error_t& e) {
      return MakeError(Status::Unavailable(fmt::format("{}: not sent: {}", describe(), e.what())));
    }
    if (!wait(ZMQ_POLLOUT)) {
      if (!wait_status.ok()) return MakeError(wait_status);
      return MakeError(Status::Unavailable(
          fmt::format("{}: not connected within {}", describe(), FormatDuration(timeout))));
    }
  }
  for (;;) {
    // Whatever has arrived first: earlier replies may still be queued.
    for (;;) {
      std::vector<zmq::message_t> parts;
      try {
        zmq::message_t part;
        if (!socket.recv(part, zmq::recv_flags::dontwait)) break;
        bool more = part.more();
        parts.push_back(std::move(part));
        while (more) {
          zmq::message_t next;
          (void)socket.recv(next, zmq::recv_flags::none);  // the rest came with the first part
          more = next.more();
          parts.push_back(std::move(next));
        }
      } catch (const zmq::error_t& e) {
        return MakeError(
            Status::Unavailable(fmt::format("{}: receive failed: {}", describe(), e.what())));
      }
      // The reply frame is the last part, whatever the controller echoed before it.
      Result<controller::Framed<controller::Reply>> reply =
          controller::DecodeReply(Bytes(parts.back()));
      if (!reply || reply->header.request_id != id) {
        ++stale_replies_;
        continue;
      }
      if (Status s = controller::ReplyStatus(*reply, type); !s.ok()) return MakeError(s);
      return std::move(reply->body);
    }
    if (!wait(ZMQ_POLLIN)) {
      if (!wait_status.ok()) return MakeError(wait_status);
      return MakeError(Status::Timeout(
          fmt::format("{}: no reply within {}", describe(), FormatDuration(timeout))));
    }
  }
}

}  // namespace kvtier::reporter
