// Reporter: the worker side of the cluster controller's protocol (docs/controller.md; what it
// sends when: "Server side (reporter)"). One per kvtier server (worker 0 of the instance named by
// the server id): it mirrors the server's L1 keys from L1 listener events and keeps the
// controller's index of them current.
//
//   auto r = Reporter::Create(options, identity, &l1);  // attaches the L1 listener: call before
//                                                       // the L1Manager is shared
//   r->Start();                                         // the reporter thread
//   ...
//   r->Stop();                                          // DEREGISTER (bounded), then join
//
// The reporter thread registers (retrying with backoff, forever), full-syncs every location,
// then sends ADMIT / EVICT batches (by size or every batch_interval), heartbeats at the interval
// the controller gives and obeys the commands in their replies (reregister, full_sync). A new
// controller epoch, or error 2 (unknown registration), makes it register and full-sync again.
// Nothing it does blocks the server: listener callbacks only update the mirror and append to a
// bounded list; events are sent without blocking and dropped (counted, their sequence number
// used) when the send queue is full.
//
// Lifetime: the L1Manager calls the reporter's listener until it is destroyed, so destroy the
// L1Manager first, or remove l1_listener() from it while no L1 call runs.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"
#include "kvtier/controller/messages.h"
#include "kvtier/l1/l1_manager.h"
#include "kvtier/reporter/controller_link.h"
#include "kvtier/reporter/key_mirror.h"
#include "kvtier/reporter/options.h"
#include "kvtier/sync/event_fd.h"

namespace kvtier::reporter {

// Who reports: sent in REGISTER.
struct ReporterIdentity {
  std::string instance_id;  // the server id: printable ASCII without spaces, 1-256 bytes
  uint32_t worker_id = 0;
  std::string address;  // peer-fetch endpoint; "" = serves no peer fetches
  std::string software_version;
  std::string hash_algorithm = "sha256";  // the server's chunk hash
  uint32_t chunk_size = 256;
};

// The name of the L1 location.
inline constexpr const char* kL1Location = "L1";

struct LocationStats {
  std::string location;
  uint64_t keys = 0;          // in the mirror now
  uint64_t last_seq = 0;      // of the location's last ADMIT / EVICT (or its sync's base_seq)
  uint64_t pending_keys = 0;  // transitions waiting to be sent
  uint64_t keys_dropped = 0;  // transitions the full pending list refused
  std::string sync;           // "idle", "queued", "sending", "polling"
};

struct ReporterStats {
  std::string state = "stopped";  // "registering", "registered", "stopping", "stopped"
  uint64_t registration_id = 0;   // 0 while not registered
  uint64_t controller_epoch = 0;
  uint64_t registrations = 0;  // successful REGISTERs
  uint64_t registration_failures = 0;
  uint64_t reregistrations = 0;  // registrations dropped for a command, epoch change or error 2
  uint64_t heartbeats = 0;       // answered
  uint64_t heartbeat_failures = 0;
  uint64_t commands = 0;        // heartbeat commands received (unknown ones included)
  uint64_t batches_sent = 0;    // ADMIT / EVICT messages queued for sending
  uint64_t keys_reported = 0;   // keys in them
  uint64_t events_dropped = 0;  // ADMIT / EVICT messages the full send queue refused
  uint64_t keys_dropped = 0;    // keys in those, plus transitions the pending lists refused
  uint64_t full_syncs_started = 0;
  uint64_t full_syncs_completed = 0;
  uint64_t full_syncs_failed = 0;  // answered unknown / failed, or superseded by a new one
  uint64_t sync_batches_sent = 0;
  uint64_t sync_batches_resent = 0;  // missing batches sent again
  uint64_t deregistrations = 0;
  uint64_t stale_replies = 0;  // replies no request waited for (late ones)
  std::string last_error;      // the latest failure, "" when none yet
  std::vector<LocationStats> locations;
};

class Reporter {
 public:
  // Checks the options and identity, connects the sockets (ZeroMQ connects in the background)
  // and attaches the listener to `l1` (which must outlive the reporter's use, see above).
  static Result<std::unique_ptr<Reporter>> Create(const ReporterOptions& options,
                                                  ReporterIdentity identity, l1::L1Manager* l1);
  ~Reporter();  // Stop()
  Reporter(const Reporter&) = delete;
  Reporter& operator=(const Reporter&) = delete;

  // The peer-fetch address to register with; only before Start (a service learns its bound
  // ports after the listener must be attached). kInvalidArgument for a bad identifier.
  Status SetAddress(std::string address);
  // Starts the reporter thread. Once.
  Status Start();
  // Deregisters when registered (waiting up to request_timeout), stops and joins the thread.
  // Idempotent. The listener stays attached and keeps the mirror (nothing is sent any more).
  void Stop();

  ReporterStats stats() const;
  // Waits until `done` holds for the counters the reporter thread keeps (the per-location keys,
  // pending_keys and keys_dropped are read live by stats() only) or `timeout` passes; returns
  // the last answer. For tests and tools; `done` runs under the stats lock and must not call
  // back into the reporter.
  bool WaitForStats(const std::function<bool(const ReporterStats&)>& done, Duration timeout) const;
  // {"enabled", "endpoint", ..., "state", counters, "last_error", "locations": [...]}.
  nlohmann::json StatusJson() const;

  const ControllerEndpoints& endpoints() const { return endpoints_; }
  const ReporterIdentity& identity() const { return identity_; }
  l1::L1Listener* l1_listener() { return l1_listener_.get(); }

 private:
  // One location's reporting state (reporter thread only, but the mirror).
  struct Location {
    std::unique_ptr<KeyMirror> mirror;
    uint64_t last_seq = 0;      // the last seq assigned (sent or dropped)
    uint64_t key_count = 0;     // the mirror's keys once events up to last_seq are applied
    uint64_t seen_dropped = 0;  // mirror->dropped_total() at the last Flush
  };
  struct Registration {
    uint64_t id = 0;
    uint64_t epoch = 0;
    Duration heartbeat_interval{};
    size_t max_keys = 1;
  };
  // One full sync of one location: the snapshot, cut into batches, and what is left to send.
  struct FullSync {
    size_t location = 0;
    uint64_t sync_id = 0;
    uint64_t base_seq = 0;
    std::vector<keys::ObjectKey> keys;  // sorted by key space
    std::vector<size_t> batch_start;    // batch i is keys[batch_start[i], batch_start[i + 1])
    std::deque<uint32_t> to_send;       // batch indices
    bool end_pending = true;            // END goes once to_send is empty
    bool resending = false;             // batches in to_send are resends
    TimePoint next_send{};              // the send queue was full: not before this
    TimePoint next_poll{};
    int receiving_polls = 0;

    uint32_t total_batches() const { return static_cast<uint32_t>(batch_start.size() - 1); }
    std::span<const keys::ObjectKey> batch(uint32_t i) const {
      return std::span<const keys::ObjectKey>(keys).subspan(batch_start[i],
                                                            batch_start[i + 1] - batch_start[i]);
    }
  };

  Reporter(const ReporterOptions& options, ReporterIdentity identity,
           ControllerEndpoints endpoints);

  // ---- reporter thread ----
  void Run();
  bool Stopping() const { return stopping_.load(std::memory_order_acquire); }
  controller::Origin MakeOrigin() const;
  Status Register();
  void Reregister(const std::string& why);
  void Heartbeat();
  void RunCommand(const controller::Command& command);
  void Flush();
  void SendKeys(Location& location, controller::KvOp op, std::span<const keys::ObjectKey> keys);
  void QueueFullSync(size_t location, const std::string& reason);
  void SyncStep(TimePoint now);
  void StartSync(size_t location, TimePoint now);
  void SendSyncMessages(TimePoint now);
  void PollSync(TimePoint now);
  void Deregister();
  TimePoint NextDeadline(TimePoint next_register) const;
  bool PendingBatchFull() const;
  // A failed call: remembered as last_error; NotFound (error 2) re-registers.
  void Failed(const Status& status, uint64_t ReporterStats::*counter);

  void Update(const std::function<void(ReporterStats&)>& change);
  void PublishLocations();

  const ReporterOptions options_;
  ReporterIdentity identity_;
  const ControllerEndpoints endpoints_;
  std::vector<Location> locations_;
  std::unique_ptr<L1MirrorListener> l1_listener_;
  sync::EventFd wake_;  // hot path / Stop -> reporter thread
  std::unique_ptr<ControllerLink> link_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  bool started_ = false;  // Start/Stop callers only
  bool stopped_ = false;

  // Reporter thread only.
  std::optional<Registration> registration_;
  std::unique_ptr<FullSync> sync_;
  std::deque<size_t> sync_queue_;
  TimePoint sync_not_before_{};
  TimePoint next_heartbeat_{};
  TimePoint next_flush_{};
  uint64_t next_sync_id_ = 1;
  std::mt19937_64 rng_;

  mutable Mutex stats_mu_;
  mutable CondVar stats_cv_;
  ReporterStats stats_ KVT_GUARDED_BY(stats_mu_);
};

}  // namespace kvtier::reporter
