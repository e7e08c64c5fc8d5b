#include "kvtier/reporter/testing/fake_controller.h"

#include <span>
#include <variant>

#include <gtest/gtest.h>

#include "kvtier/common/check.h"
#include "kvtier/controller/codec.h"

namespace kvtier::reporter::testing {
namespace {

std::span<const uint8_t> Bytes(const zmq::message_t& m) {
  return {static_cast<const uint8_t*>(m.data()), m.size()};
}

std::vector<std::string> KeyStrings(const std::vector<controller::KeyGroup>& groups) {
  auto keys = controller::ToObjectKeys(groups);
  KVT_CHECK_MSG(keys.has_value(), "fake controller: bad keys: {}", keys.error().ToString());
  std::vector<std::string> out;
  for (const keys::ObjectKey& k : *keys) out.push_back(k.ToString());
  return out;
}

// Reads one whole multipart message; empty when none is waiting.
std::vector<zmq::message_t> ReceiveAll(zmq::socket_t& socket) {
  std::vector<zmq::message_t> parts;
  zmq::message_t part;
  if (!socket.recv(part, zmq::recv_flags::dontwait)) return parts;
  bool more = part.more();
  parts.push_back(std::move(part));
  while (more) {
    zmq::message_t next;
    (void)socket.recv(next, zmq::recv_flags::none);
    more = next.more();
    parts.push_back(std::move(next));
  }
  return parts;
}

}  // namespace

std::unique_ptr<FakeController> FakeController::Start(const ControllerEndpoints& endpoints) {
  std::unique_ptr<FakeController> f(new FakeController());
  f->stop_ = *sync::EventFd::Create();
  f->requests_ = zmq::socket_t(f->context_, zmq::socket_type::router);
  f->events_ = zmq::socket_t(f->context_, zmq::socket_type::pull);
  f->heartbeats_ = zmq::socket_t(f->context_, zmq::socket_type::router);
  for (zmq::socket_t* s : {&f->requests_, &f->events_, &f->heartbeats_}) {
    s->set(zmq::sockopt::linger, 0);
    s->set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(controller::kMaxFrameBytes));
  }
  f->requests_.bind(endpoints.requests);
  f->events_.bind(endpoints.events);
  f->heartbeats_.bind(endpoints.heartbeats);
  f->thread_ = std::thread([p = f.get()] { p->Loop(); });
  return f;
}

FakeController::~FakeController() {
  stop_.Signal();
  if (thread_.joinable()) thread_.join();
}

void FakeController::Loop() {
  for (;;) {
    zmq::pollitem_t items[4] = {{requests_.handle(), 0, ZMQ_POLLIN, 0},
                                {events_.handle(), 0, ZMQ_POLLIN, 0},
                                {heartbeats_.handle(), 0, ZMQ_POLLIN, 0},
                                {nullptr, stop_.fd(), ZMQ_POLLIN, 0}};
    zmq::poll(items, 4, std::chrono::milliseconds(-1));
    if (items[3].revents & ZMQ_POLLIN) break;
    if (items[1].revents & ZMQ_POLLIN) {
      for (;;) {
        std::vector<zmq::message_t> parts = ReceiveAll(events_);
        if (parts.empty()) break;
        MutexLock lock(&mu_);
        for (const zmq::message_t& part : parts) {
          auto event = controller::DecodeEvent(Bytes(part));
          if (!event) {
            ADD_FAILURE() << "fake controller: " << event.error().ToString();
            continue;
          }
          OnEvent(event->body);
        }
        changed_.NotifyAll();
      }
    }
    if (items[0].revents & ZMQ_POLLIN) ServeRouter(requests_, false);
    if (items[2].revents & ZMQ_POLLIN) ServeRouter(heartbeats_, true);
  }
  requests_.close();
  events_.close();
  heartbeats_.close();
}

void FakeController::ServeRouter(zmq::socket_t& socket, bool heartbeat_socket) {
  for (;;) {
    std::vector<zmq::message_t> parts = ReceiveAll(socket);
    if (parts.empty()) return;
    if (parts.size() < 2) {
      ADD_FAILURE() << "fake controller: a request of " << parts.size() << " part(s)";
      continue;
    }
    const std::span<const uint8_t> frame = Bytes(parts.back());
    auto request = controller::DecodeRequest(frame);
    std::vector<uint8_t> reply;
    if (!request) {
      ADD_FAILURE() << "fake controller: " << request.error().ToString();
      reply = controller::EncodeErrorReply(controller::ReplyTargetOf(frame), request.error());
    } else {
      MutexLock lock(&mu_);
      const controller::Reply r = OnRequest(request->body, heartbeat_socket);
      reply = controller::EncodeReply(request->header.type, request->header.request_id, r);
      changed_.NotifyAll();
    }
    socket.send(parts.front(), zmq::send_flags::sndmore);
    socket.send(zmq::buffer(reply), zmq::send_flags::none);
  }
}

bool FakeController::Known(const controller::Origin& origin) const {
  return state_.registration_id != 0 && origin.registration_id == state_.registration_id;
}

void FakeController::OnEvent(const controller::Event& event) {
  state_.events.push_back(event);
  // No std::visit: the lock analysis does not follow into lambdas.
  if (const auto* e = std::get_if<controller::KvEvent>(&event)) {
    if (!Known(e->origin)) {
      ++state_.stale_events;
      return;
    }
    uint64_t& last = state_.last_seq[e->location];
    if (e->seq != last + 1) ++state_.seq_gaps;
    if (e->seq > last) last = e->seq;
    auto& index = state_.index[e->location];
    for (std::string& k : KeyStrings(e->groups)) {
      if (e->op == controller::KvOp::kAdmit) {
        index.insert(std::move(k));
      } else {
        index.erase(k);
      }
    }
  } else if (const auto* start = std::get_if<controller::FullSyncStart>(&event)) {
    if (!Known(start->origin)) {
      ++state_.stale_events;
      return;
    }
    Sync& s = state_.syncs[start->sync_id];
    s = Sync{};
    s.sync_id = start->sync_id;
    s.location = start->location;
    s.start = *start;
    state_.index[start->location].clear();
    state_.last_seq[start->location] = start->base_seq;
  } else if (const auto* batch = std::get_if<controller::FullSyncBatch>(&event)) {
    auto it = state_.syncs.find(batch->sync_id);
    if (!Known(batch->origin) || it == state_.syncs.end()) {
      ++state_.stale_events;
      return;
    }
    if (lose_once_.erase(batch->batch_index) > 0) return;  // "lost"
    if (!it->second.received.insert(batch->batch_index).second) return;
    for (std::string& k : KeyStrings(batch->groups)) {
      it->second.keys.insert(k);
      state_.index[batch->location].insert(std::move(k));
    }
  } else if (const auto* end = std::get_if<controller::FullSyncEnd>(&event)) {
    auto it = state_.syncs.find(end->sync_id);
    if (!Known(end->origin) || it == state_.syncs.end()) {
      ++state_.stale_events;
      return;
    }
    it->second.end_seen = true;
  }
}

controller::Reply FakeController::OnRequest(const controller::Request& request,
                                            bool heartbeat_socket) {
  auto unknown = [] {
    return controller::ToErrorReply(Status::NotFound("fake controller: unknown registration"));
  };
  if (auto* r = std::get_if<controller::RegisterRequest>(&request)) {
    state_.registers.push_back(*r);
    state_.registration_id = next_registration_id_++;
    state_.registration_ids.push_back(state_.registration_id);
    state_.last_seq.clear();
    state_.index.clear();
    controller::RegisterReply reply;
    reply.registration_id = state_.registration_id;
    reply.controller_epoch = epoch_;
    reply.heartbeat_interval_ms = heartbeat_interval_ms_;
    reply.worker_timeout_ms = 10 * heartbeat_interval_ms_;
    reply.max_keys_per_message = max_keys_per_message_;
    return reply;
  }
  if (auto* r = std::get_if<controller::HeartbeatRequest>(&request)) {
    state_.heartbeats.push_back(*r);
    controller::HeartbeatReply reply;
    reply.controller_epoch = epoch_;
    reply.heartbeat_interval_ms = heartbeat_interval_ms_;
    if (!Known(r->origin)) {
      if (unknown_as_error_) return unknown();
      reply.commands.push_back(
          {controller::CommandKind::kReregister, "", "", "unknown_registration"});
      return reply;
    }
    reply.commands.swap(commands_);
    return reply;
  }
  if (heartbeat_socket) {
    return controller::ToErrorReply(
        Status(StatusCode::kProtocolError, "fake controller: heartbeats only"));
  }
  if (auto* r = std::get_if<controller::FullSyncStatusRequest>(&request)) {
    if (!Known(r->origin)) return unknown();
    controller::FullSyncStatusReply reply;
    auto it = state_.syncs.find(r->sync_id);
    if (it == state_.syncs.end() || it->second.location != r->location) {
      reply.state = controller::SyncState::kUnknown;
    } else {
      const Sync& s = it->second;
      reply.total_batches = s.start.total_batches;
      reply.received_batches = static_cast<uint32_t>(s.received.size());
      if (!s.end_seen) {
        reply.state = controller::SyncState::kReceiving;
      } else if (s.received.size() < s.start.total_batches) {
        reply.state = controller::SyncState::kMissing;
        for (uint32_t i = 0; i < s.start.total_batches; ++i) {
          if (!s.received.contains(i)) reply.missing_batches.push_back(i);
        }
      } else {
        reply.state = controller::SyncState::kComplete;
        ++state_.completed_syncs;
      }
    }
    state_.status_answers.push_back(reply.state);
    return reply;
  }
  if (auto* r = std::get_if<controller::DeregisterRequest>(&request)) {
    state_.deregisters.push_back(*r);
    const bool removed = Known(r->origin);
    if (removed) state_.registration_id = 0;
    return controller::DeregisterReply{removed};
  }
  if (std::holds_alternative<controller::PingRequest>(request)) {
    return controller::PingReply{epoch_};
  }
  return controller::ToErrorReply(Status::NotSupported("fake controller: not implemented"));
}

void FakeController::QueueCommand(controller::Command command) {
  MutexLock lock(&mu_);
  commands_.push_back(std::move(command));
}

void FakeController::Restart(uint64_t new_epoch) {
  MutexLock lock(&mu_);
  epoch_ = new_epoch;
  state_.registration_id = 0;
  state_.index.clear();
  state_.last_seq.clear();
}

void FakeController::AnswerUnknownWithError(bool on) {
  MutexLock lock(&mu_);
  unknown_as_error_ = on;
}

void FakeController::LoseBatchesOnce(std::set<uint32_t> indices) {
  MutexLock lock(&mu_);
  lose_once_ = std::move(indices);
}

void FakeController::set_heartbeat_interval_ms(uint32_t ms) {
  MutexLock lock(&mu_);
  heartbeat_interval_ms_ = ms;
}

void FakeController::set_max_keys_per_message(uint32_t n) {
  MutexLock lock(&mu_);
  max_keys_per_message_ = n;
}

FakeController::State FakeController::Observe() const {
  MutexLock lock(&mu_);
  return state_;
}

bool FakeController::WaitFor(const std::function<bool(const State&)>& done,
                             Duration timeout) const {
  const TimePoint deadline = std::chrono::steady_clock::now() + timeout;
  MutexLock lock(&mu_);
  while (!done(state_)) {
    if (!changed_.WaitUntil(&mu_, deadline)) return done(state_);
  }
  return true;
}

}  // namespace kvtier::reporter::testing
