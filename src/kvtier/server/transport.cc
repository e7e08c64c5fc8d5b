#include "kvtier/server/transport.h"

#include <array>
#include <deque>
#include <exception>
#include <span>

#include <absl/hash/hash.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <zmq.hpp>

#include "kvtier/common/logging.h"
#include "kvtier/common/mutex.h"
#include "kvtier/protocol/codec.h"
#include "kvtier/server/worker_pool.h"
#include "kvtier/sync/event_fd.h"

namespace kvtier::server {
namespace {

using protocol::Opcode;

// Frames a DEALER message arrives with, after the ROUTER's identity frame.
constexpr size_t kFramesPerMessage = 3;
// How long closing the socket may wait for queued replies to go out.
constexpr int kLingerMs = 1000;

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// What a zero-copy frame (READ_OBJECTS) keeps alive until ZMQ frees it, on its own I/O thread.
// libzmq hands the frame over through lock-free pipes that ThreadSanitizer cannot see (it is not
// instrumented), so the handover is also made through a lock, which costs nothing measurable
// next to sending an object.
struct FrameHold {
  std::shared_ptr<const void> hold;

  static Mutex& HandoverMutex() {
    static Mutex mu;
    return mu;
  }
  static std::unique_ptr<FrameHold> Make(std::shared_ptr<const void> hold) {
    MutexLock lock(&HandoverMutex());
    return std::unique_ptr<FrameHold>(new FrameHold{std::move(hold)});
  }
  // ZMQ's free function (any thread). The holder is dropped outside the lock: it may release
  // L1 read locks.
  static void Free(void* /*data*/, void* hint) {
    std::shared_ptr<const void> hold;
    {
      MutexLock lock(&HandoverMutex());
      auto* frame = static_cast<FrameHold*>(hint);
      hold = std::move(frame->hold);
      delete frame;
    }
  }
};

}  // namespace

// What reply functions share with the I/O thread; outlives the Transport while a reply function
// (say, a WAIT answered by the engine's timer) still exists.
struct Transport::State {
  struct Outgoing {
    std::string identity;
    protocol::Frames frames;
  };

  sync::EventFd wake;
  Mutex mu;
  std::deque<Outgoing> replies KVT_GUARDED_BY(mu);
  bool closed KVT_GUARDED_BY(mu) = false;
  std::atomic<bool> draining{false};  // Stop began: read no more requests
  std::atomic<bool> stop{false};      // pools are done: flush and leave
  std::atomic<uint64_t> dropped_late{0};
  std::array<LatencyHistogram, protocol::kMaxOpcode + 1> latency;

  zmq::context_t context{1};
  std::unique_ptr<WorkerPool> control;
  std::unique_ptr<WorkerPool> transfer;

  void Push(std::string identity, protocol::Frames frames) {
    {
      MutexLock lock(&mu);
      if (closed) {
        dropped_late.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      replies.push_back({std::move(identity), std::move(frames)});
    }
    wake.Signal();
  }

  std::deque<Outgoing> TakeReplies() {
    MutexLock lock(&mu);
    std::deque<Outgoing> out;
    out.swap(replies);
    return out;
  }
};

Result<std::unique_ptr<Transport>> Transport::Start(const TransportOptions& options,
                                                    Handler handler) {
  if (options.endpoints.empty())
    return MakeError(Status::InvalidArgument("transport: no endpoint to bind"));
  if (options.control_threads == 0 || options.transfer_threads == 0) {
    return MakeError(
        Status::InvalidArgument("transport: control and transfer threads must be at least 1"));
  }
  if (!handler) return MakeError(Status::InvalidArgument("transport: no handler"));
  std::unique_ptr<Transport> t(new Transport(options, std::move(handler)));
  KVT_ASSIGN_OR_RETURN(t->state_->wake, sync::EventFd::Create());
  KVT_RETURN_IF_ERROR(t->Bind());
  return t;
}

Transport::Transport(const TransportOptions& options, Handler handler)
    : options_(options), handler_(std::move(handler)), state_(std::make_shared<State>()) {}

// The socket, created and bound on the caller's thread, then handed to the I/O thread (ZMQ
// sockets may move between threads with a memory barrier; the thread start is one).
Status Transport::Bind() {
  auto socket = std::make_unique<zmq::socket_t>(state_->context, zmq::socket_type::router);
  try {
    socket->set(zmq::sockopt::linger, kLingerMs);
    socket->set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(protocol::kMaxPayloadBytes));
    socket->set(zmq::sockopt::sndhwm, 0);  // replies are bounded by requests; never drop one
    for (const std::string& endpoint : options_.endpoints) {
      try {
        socket->bind(endpoint);
      } catch (const zmq::error_t& e) {
        return Status::InvalidArgument(
            fmt::format("transport: cannot bind '{}': {}", endpoint, e.what()));
      }
      bound_.push_back(socket->get(zmq::sockopt::last_endpoint));
    }
  } catch (const zmq::error_t& e) {
    return Status::Internal(fmt::format("transport: socket setup failed: {}", e.what()));
  }
  state_->control = std::make_unique<WorkerPool>("kvt-control", options_.control_threads,
                                                 options_.max_queued_requests);
  state_->transfer = std::make_unique<WorkerPool>("kvt-transfer", options_.transfer_threads,
                                                  options_.max_queued_requests);
  io_ = std::thread([this, s = socket.release()] {
    std::unique_ptr<zmq::socket_t> owned(s);
    Loop(*owned);
  });
  return Status::OK();
}

Transport::~Transport() { Stop(); }

void Transport::Stop() {
  if (!io_.joinable()) return;
  state_->draining.store(true);
  state_->wake.Signal();
  // Requests already handed to the pools run; their replies queue up for the I/O thread.
  state_->control->Stop();
  state_->transfer->Stop();
  state_->stop.store(true);
  state_->wake.Signal();
  io_.join();
  // Waits (up to the linger) until ZMQ released every frame it still held: a READ_OBJECTS
  // frame's holder must not outlive the server's storage.
  state_->context.close();
}

void Transport::Loop(zmq::socket_t& socket) {
  State& st = *state_;
  auto send_replies = [&] {
    for (State::Outgoing& out : st.TakeReplies()) {
      try {
        socket.send(zmq::buffer(out.identity), zmq::send_flags::sndmore);
        socket.send(zmq::buffer(out.frames.header), zmq::send_flags::sndmore);
        const std::vector<std::span<const uint8_t>>& extra = out.frames.extra;
        socket.send(zmq::buffer(out.frames.payload),
                    extra.empty() ? zmq::send_flags::none : zmq::send_flags::sndmore);
        // READ_OBJECTS: one frame per object, sent from where it lies (no copy); each frame
        // keeps the bytes' holder (L1 read locks) until ZMQ is done with it.
        for (size_t i = 0; i < extra.size(); ++i) {
          std::unique_ptr<FrameHold> keep = FrameHold::Make(out.frames.hold);
          zmq::message_t part(const_cast<uint8_t*>(extra[i].data()), extra[i].size(),
                              &FrameHold::Free, keep.get());
          keep.release();  // the message owns it now
          socket.send(part,
                      i + 1 < extra.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
        }
        counters_.replies.fetch_add(1, std::memory_order_relaxed);
      } catch (const zmq::error_t& e) {
        counters_.send_failures.fetch_add(1, std::memory_order_relaxed);
        KVT_LOG_WARN("transport: reply not sent: {}", e.what());
      }
    }
  };
  while (!st.stop.load()) {
    const bool reading = !st.draining.load();
    zmq::pollitem_t items[2] = {
        {nullptr, st.wake.fd(), ZMQ_POLLIN, 0},
        {socket.handle(), 0, static_cast<short>(reading ? ZMQ_POLLIN : 0), 0}};
    try {
      zmq::poll(items, 2, std::chrono::milliseconds(-1));
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      KVT_LOG_ERROR("transport: poll failed: {}", e.what());
      break;
    }
    if (items[0].revents & ZMQ_POLLIN) st.wake.Drain();
    send_replies();
    // Read what is there now, a bounded batch at a time, so replies are not starved.
    for (int batch = 0; reading && batch < 256; ++batch) {
      std::vector<std::string> frames;
      bool more = true;
      try {
        zmq::message_t part;
        if (!socket.recv(part, zmq::recv_flags::dontwait)) break;
        frames.emplace_back(part.to_string());
        more = part.more();
        while (more) {
          (void)socket.recv(part, zmq::recv_flags::none);  // the rest of a message is here
          more = part.more();
          // Keep one frame past the expected count: enough to know the count is wrong.
          if (frames.size() <= kFramesPerMessage) frames.emplace_back(part.to_string());
        }
      } catch (const zmq::error_t& e) {
        KVT_LOG_WARN("transport: receive failed: {}", e.what());
        break;
      }
      OnMessage(std::move(frames));
    }
  }
  send_replies();
  {
    MutexLock lock(&st.mu);
    st.closed = true;  // later replies are dropped
  }
  socket.close();
}

const LatencyHistogram& Transport::latency(protocol::Opcode op) const {
  const auto i = static_cast<size_t>(op);
  return state_->latency[i < state_->latency.size() ? i : 0];
}

void Transport::OnMessage(std::vector<std::string> frames) {
  counters_.requests.fetch_add(1, std::memory_order_relaxed);
  const auto arrived = std::chrono::steady_clock::now();
  std::shared_ptr<State> st = state_;
  std::string identity = std::move(frames[0]);
  auto reject = [&](Opcode op, uint64_t id, const Status& s) {
    counters_.malformed.fetch_add(1, std::memory_order_relaxed);
    KVT_LOG_DEBUG("transport: malformed request: {}", s.ToString());
    st->Push(identity, protocol::EncodeReply(op, id, protocol::ToErrorReply(s)));
    st->latency[0].Record(std::chrono::steady_clock::now() - arrived);
  };
  if (frames.size() < 2) {
    reject(Opcode::kInvalid, 0,
           Status(StatusCode::kProtocolError, "a message needs a header and a payload frame"));
    return;
  }
  Result<protocol::Header> header = protocol::DecodeHeader(Bytes(frames[1]));
  if (!header) {
    reject(Opcode::kInvalid, 0, header.error());
    return;
  }
  const Opcode op = header->opcode;
  const uint64_t id = header->request_id;
  if (frames.size() != kFramesPerMessage) {
    reject(op, id,
           Status(StatusCode::kProtocolError,
                  fmt::format("a message has {} frames (header, payload); got {}",
                              kFramesPerMessage - 1, frames.size() - 1)));
    return;
  }
  Result<protocol::Request> request = protocol::DecodeRequest(*header, Bytes(frames[2]));
  if (!request) {
    reject(op, id, request.error());
    return;
  }

  // The reply function: exactly once, from any thread; encodes on the caller's thread.
  auto answered = std::make_shared<std::atomic<bool>>(false);
  ReplyFn reply = [st, identity, op, id, answered, arrived](protocol::Reply r) {
    if (answered->exchange(true)) return;
    st->Push(identity, protocol::EncodeReply(op, id, r));
    st->latency[static_cast<size_t>(op)].Record(std::chrono::steady_clock::now() - arrived);
  };
  auto task = [this, st, request = std::move(*request), reply]() mutable {
    try {
      handler_(request, reply);
    } catch (const std::exception& e) {
      counters_.handler_errors.fetch_add(1, std::memory_order_relaxed);
      KVT_LOG_ERROR("transport: handler for {} threw: {}",
                    protocol::OpcodeName(protocol::OpcodeOf(request)), e.what());
      reply(protocol::ToErrorReply(Status::Internal(fmt::format("request failed: {}", e.what()))));
    }
  };
  // One lane per (client, transfer opcode): a client's STOREs stay in order among themselves,
  // and so do its RETRIEVEs, but a STORE and a RETRIEVE of one engine worker run side by side
  // (on consecutive threads, so on different ones with two or more transfer threads): device
  // backends have a stream per direction, and PCIe is full duplex.
  bool queued = protocol::IsTransfer(op)
                    ? st->transfer->SubmitTo(absl::HashOf(identity) + static_cast<uint64_t>(op),
                                             std::move(task))
                    : st->control->SubmitAny(std::move(task));
  if (!queued) {
    counters_.busy.fetch_add(1, std::memory_order_relaxed);
    reply(protocol::ErrorReply{StatusCode::kResourceExhausted,
                               fmt::format("server busy: the {} queue is full; retry later",
                                           protocol::IsTransfer(op) ? "transfer" : "control"),
                               /*retryable=*/true});
  }
}

nlohmann::json Transport::StatusJson() const {
  nlohmann::json j;
  j["endpoints"] = bound_;
  j["requests"] = counters_.requests.load();
  j["replies"] = counters_.replies.load();
  j["malformed"] = counters_.malformed.load();
  j["busy"] = counters_.busy.load();
  j["handler_errors"] = counters_.handler_errors.load();
  j["send_failures"] = counters_.send_failures.load();
  j["late_replies_dropped"] = state_->dropped_late.load();
  j["control_queued"] = state_->control->queued();
  j["transfer_queued"] = state_->transfer->queued();
  return j;
}

}  // namespace kvtier::server
