// ControllerLink: a reporter's three ZeroMQ sockets to the controller (docs/controller.md,
// "Sockets"): events over PUSH (never blocking: a full queue drops the event), requests and
// heartbeats each over their own DEALER, one request at a time, with a deadline.
//
// Not thread-safe: after Create, only the reporter thread uses it (ZeroMQ sockets belong to one
// thread).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <zmq.hpp>

#include "kvtier/common/clock.h"
#include "kvtier/common/result.h"
#include "kvtier/controller/messages.h"
#include "kvtier/sync/event_fd.h"

namespace kvtier::reporter {

struct ControllerEndpoints {
  std::string requests;    // ROUTER
  std::string events;      // PULL
  std::string heartbeats;  // ROUTER (heartbeats only)
};

class ControllerLink {
 public:
  enum class Channel { kRequests, kHeartbeats };

  // Connects all three sockets (ZeroMQ connects in the background and keeps reconnecting).
  // `wake` (outliving the link) interrupts Call's waits; see Call.
  static Result<std::unique_ptr<ControllerLink>> Create(const ControllerEndpoints& endpoints,
                                                        int send_queue_messages,
                                                        const sync::EventFd* wake);
  ~ControllerLink();
  ControllerLink(const ControllerLink&) = delete;
  ControllerLink& operator=(const ControllerLink&) = delete;

  // Queues one event frame without blocking. False: not queued (the queue is at its high-water
  // mark, or the socket failed); the caller counts the drop.
  bool SendEvent(const controller::Event& event);

  // Sends `request` and waits up to `timeout` for its reply; replies to earlier, abandoned
  // requests and undecodable ones are skipped (stale_replies). Returns the success reply, or: the
  // error reply's Status (its code and retryable flag; kProtocolError for a reply of another
  // type), kUnavailable when no connection came up in time to send it (ZMQ_IMMEDIATE), kTimeout
  // when no reply came. `interrupted` (when given) is asked before each wait and whenever `wake`
  // is signalled (the signal is drained): true abandons the call (kCancelled).
  Result<controller::Reply> Call(Channel channel, const controller::Request& request,
                                 Duration timeout, const std::function<bool()>& interrupted);

  // Points the heartbeat socket at `endpoint` (a REGISTER reply may name one); nothing when it
  // is the current one.
  Status ConnectHeartbeats(const std::string& endpoint);

  const ControllerEndpoints& endpoints() const { return endpoints_; }
  // Replies skipped because no call waited for them (late, or undecodable).
  uint64_t stale_replies() const { return stale_replies_; }

 private:
  ControllerLink(const ControllerEndpoints& endpoints, const sync::EventFd* wake)
      : endpoints_(endpoints), wake_(wake) {}
  Status Connect(zmq::socket_t* socket, const std::string& endpoint);

  ControllerEndpoints endpoints_;
  const sync::EventFd* wake_;
  zmq::context_t context_{1};
  zmq::socket_t events_;
  zmq::socket_t requests_;
  zmq::socket_t heartbeats_;
  uint64_t next_request_id_ = 1;
  uint64_t stale_replies_ = 0;
};

// The endpoints `options` name, with events and heartbeats derived from a tcp request endpoint
// when not given (port + 1, port + 2). kInvalidArgument naming the option when one is missing
// and cannot be derived.
struct ReporterOptions;
Result<ControllerEndpoints> ResolveEndpoints(const ReporterOptions& options);

}  // namespace kvtier::reporter
