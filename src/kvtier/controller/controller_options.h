// Options of the cluster controller process (`kvtier controller`, docs/controller.md, "The
// controller process"). Plain data: controller_config.h fills them from YAML and flags, tests
// and benchmarks set them directly.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include "kvtier/common/clock.h"
#include "kvtier/common/status.h"
#include "kvtier/controller/messages.h"

namespace kvtier::controller {

struct ControllerOptions {
  // ---- Sockets: tcp://HOST:PORT (port 0 or * picks a free one) or ipc:///PATH.
  std::string request_endpoint = "tcp://0.0.0.0:9100";    // ROUTER: every request
  std::string events_endpoint = "tcp://0.0.0.0:9101";     // PULL: ADMIT, EVICT, FULL_SYNC_*
  std::string heartbeat_endpoint = "tcp://0.0.0.0:9102";  // ROUTER: HEARTBEAT only
  // Sent in REGISTER replies as the heartbeat endpoint to connect to; "" lets each worker use
  // its own configured one (the reporter's default: the request endpoint's port + 2).
  std::string advertised_heartbeat_endpoint;

  // ---- Liveness and full syncs.
  // Sent to workers in REGISTER and HEARTBEAT replies.
  Duration heartbeat_interval = std::chrono::seconds(5);
  // A worker silent this long is reaped (its keys dropped), loudly. Must exceed the interval.
  Duration worker_timeout = std::chrono::seconds(15);
  // False: nobody is reaped (REGISTER replies then say worker_timeout_ms = 2^32 - 1).
  bool reap_dead_workers = true;
  // A full sync with no START, batch, END or status poll for this long fails; the worker is
  // asked to sync again at its next heartbeat.
  Duration sync_timeout = std::chrono::seconds(60);
  // How often the reaper and the sync expiry run; zero: a quarter of the heartbeat interval,
  // clamped to [10ms, 1s].
  Duration tick_interval = Duration::zero();

  // ---- The cluster's chunk hashing: REGISTER of a worker hashing otherwise is refused (error
  // 10), and POST /lookup hashes token ids with it.
  std::string hash_algorithm = "sha256";  // sha256 or xxh3_128
  uint32_t chunk_size = 256;

  // ---- Limits.
  uint32_t max_workers = 4096;
  // The cap on keys per event that REGISTER replies announce (1..65536). Smaller messages keep
  // the I/O thread responsive to heartbeats between them.
  uint32_t max_keys_per_message = 8192;
  // Entries of the recent-events ring shown by the dashboard.
  size_t recent_events = 256;

  // ---- HTTP admin API and dashboard (docs/controller.md, "HTTP admin API and dashboard").
  bool admin_enabled = true;
  std::string admin_host = "127.0.0.1";  // numeric IPv4/IPv6 address or localhost
  uint16_t admin_port = 9103;            // 0: any free port
  size_t admin_threads = 2;

  // Time source of liveness and sync deadlines (tests may inject a FakeClock).
  Clock* clock = Clock::Real();

  // The tick interval in effect (tick_interval, or the default derived from the heartbeat).
  Duration EffectiveTickInterval() const;
};

// The endpoints as bound: a tcp port 0 or * resolved to the real port.
struct BoundEndpoints {
  std::string requests;
  std::string events;
  std::string heartbeats;
};

// kInvalidArgument naming the first bad option.
Status ValidateControllerOptions(const ControllerOptions& options);

}  // namespace kvtier::controller
