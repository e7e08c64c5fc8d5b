// The reporter's options: the `controller:` section of the server's config (docs/configuration.md)
// plus a few settings only code sets. Header-only, so the config module can hold them without
// linking the reporter.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>

#include "kvtier/common/clock.h"

namespace kvtier::reporter {

struct ReporterOptions {
  // The controller's request socket (ROUTER), tcp://HOST:PORT or ipc:///PATH. "": reporting off.
  std::string endpoint;
  // The controller's events socket (PULL). "": the request endpoint's port + 1 (tcp only).
  std::string events_endpoint;
  // The controller's heartbeat socket (ROUTER). "": the request endpoint's port + 2 (tcp only).
  // A REGISTER reply that names another one wins.
  std::string heartbeat_endpoint;
  // The peer-fetch address sent in REGISTER. "": the service derives it from its first tcp
  // endpoint (a wildcard host becomes the machine's hostname); none: "".
  std::string advertise_address;
  // Keys per ADMIT / EVICT / FULL_SYNC_BATCH message (the controller's max_keys_per_message
  // caps it); also the pending count that wakes the reporter before batch_interval.
  size_t batch_keys = 1024;
  // The longest a reported key waits before its batch is sent.
  Duration batch_interval = std::chrono::milliseconds(20);
  // Deadline of each request (REGISTER, FULL_SYNC_STATUS, DEREGISTER); heartbeats use the
  // smaller of this and half the heartbeat interval.
  Duration request_timeout = std::chrono::seconds(5);
  // Transitions waiting to be sent, per location, at most; beyond it they are dropped (counted,
  // and the controller sees a sequence gap and asks for a full sync).
  size_t max_pending_keys = 1 << 20;

  // ---- not in the config file ----
  // How often a finished full sync's FULL_SYNC_STATUS is polled.
  Duration sync_poll_interval = std::chrono::seconds(1);
  // Registration retries back off from min to max, doubling.
  Duration retry_backoff_min = std::chrono::milliseconds(100);
  Duration retry_backoff_max = std::chrono::seconds(10);
  // ZMQ_SNDHWM of the events socket, in messages.
  int send_queue_messages = 4096;

  bool enabled() const { return !endpoint.empty(); }
};

}  // namespace kvtier::reporter
