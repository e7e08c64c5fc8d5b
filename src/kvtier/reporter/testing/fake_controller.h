// FakeController: a minimal in-process cluster controller for the reporter's tests. It binds the
// real sockets (ROUTER for requests, PULL for events, ROUTER for heartbeats), decodes with
// kvtier::controller_protocol, keeps an index of what the current registration reported, and
// can be scripted: heartbeat commands, a new epoch (a restart), batches lost on first arrival.
//
// A simplification of the real controller: events are applied as they arrive (a sync's batches
// are not reconciled with concurrent evicts), which the tests avoid needing.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <zmq.hpp>

#include "kvtier/common/clock.h"
#include "kvtier/common/mutex.h"
#include "kvtier/controller/messages.h"
#include "kvtier/reporter/controller_link.h"
#include "kvtier/sync/event_fd.h"

namespace kvtier::reporter::testing {

class FakeController {
 public:
  struct Sync {
    uint64_t sync_id = 0;
    std::string location;
    controller::FullSyncStart start;
    std::set<uint32_t> received;
    bool end_seen = false;
    std::set<std::string> keys;  // from its batches
  };
  // What the fake has seen and built; read through Observe / WaitFor.
  struct State {
    std::vector<controller::RegisterRequest> registers;
    std::vector<uint64_t> registration_ids;  // issued, in order
    uint64_t registration_id = 0;            // current; 0: none
    std::vector<controller::HeartbeatRequest> heartbeats;
    std::vector<controller::DeregisterRequest> deregisters;
    std::vector<controller::SyncState> status_answers;
    std::vector<controller::Event> events;  // every decoded event, in arrival order
    uint64_t stale_events = 0;              // of another registration
    uint64_t seq_gaps = 0;
    std::map<std::string, uint64_t> last_seq;            // per location
    std::map<std::string, std::set<std::string>> index;  // location -> ObjectKey strings
    std::map<uint64_t, Sync> syncs;                      // by sync id
    uint64_t completed_syncs = 0;
  };

  // Binds the endpoints and starts serving.
  static std::unique_ptr<FakeController> Start(const ControllerEndpoints& endpoints);
  ~FakeController();

  // ---- script (effective from the next message) ----
  void QueueCommand(controller::Command command);  // sent with the next heartbeat reply
  // A controller restart: a new epoch, every registration forgotten.
  void Restart(uint64_t new_epoch);
  // Answer requests and heartbeats of unknown registrations with error 2 (default: a heartbeat
  // gets a `reregister` command, as the real controller does).
  void AnswerUnknownWithError(bool on);
  // The next sync's batches with these indices are lost the first time they arrive.
  void LoseBatchesOnce(std::set<uint32_t> indices);
  void set_heartbeat_interval_ms(uint32_t ms);
  void set_max_keys_per_message(uint32_t n);

  State Observe() const;
  // Waits until `done(state)` holds; false at the timeout. `done` runs under the fake's lock.
  bool WaitFor(const std::function<bool(const State&)>& done, Duration timeout) const;

 private:
  FakeController() = default;
  void Loop();
  void ServeRouter(zmq::socket_t& socket, bool heartbeat_socket);
  void OnEvent(const controller::Event& event) KVT_REQUIRES(mu_);
  controller::Reply OnRequest(const controller::Request& request, bool heartbeat_socket)
      KVT_REQUIRES(mu_);
  bool Known(const controller::Origin& origin) const KVT_REQUIRES(mu_);

  // The fake's thread only, once started.
  zmq::context_t context_{1};
  zmq::socket_t requests_;
  zmq::socket_t events_;
  zmq::socket_t heartbeats_;
  sync::EventFd stop_;
  std::thread thread_;

  mutable Mutex mu_;
  mutable CondVar changed_;
  State state_ KVT_GUARDED_BY(mu_);
  uint64_t epoch_ KVT_GUARDED_BY(mu_) = 0x1111;
  uint64_t next_registration_id_ KVT_GUARDED_BY(mu_) = 0x100;
  std::vector<controller::Command> commands_ KVT_GUARDED_BY(mu_);
  bool unknown_as_error_ KVT_GUARDED_BY(mu_) = false;
  std::set<uint32_t> lose_once_ KVT_GUARDED_BY(mu_);
  uint32_t heartbeat_interval_ms_ KVT_GUARDED_BY(mu_) = 20;
  uint32_t max_keys_per_message_ KVT_GUARDED_BY(mu_) = controller::kMaxKeysPerMessage;
};

}  // namespace kvtier::reporter::testing
