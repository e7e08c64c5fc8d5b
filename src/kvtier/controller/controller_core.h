// ControllerCore: the cluster controller's logic without sockets. It answers decoded requests,
// applies decoded events to the registry (cluster::RegistryTree, which owns the index, the
// sequence checks, the full-sync state machine and the liveness data) and runs the periodic
// reaping and sync expiry. ControllerService wraps it in ZeroMQ sockets and an HTTP server;
// benchmarks and tests may drive it directly.
//
// Thread-safety: every method may be called from any thread. The events of one worker must be
// handed over in the order they arrived, from one thread at a time (the service's I/O thread),
// because sequence numbers are checked in arrival order.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <nlohmann/json.hpp>

#include "kvtier/cluster/registry_tree.h"
#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"
#include "kvtier/controller/controller_options.h"
#include "kvtier/controller/messages.h"
#include "kvtier/keys/token_hasher.h"
#include "kvtier/server/latency_histogram.h"  // header-only

namespace kvtier::controller {

// Why an event (or one part of a multipart event message) was not applied.
enum class DropReason : uint8_t {
  kDecodeError = 0,          // the frame did not decode
  kUnknownRegistration = 1,  // unknown worker, or a replaced / reaped / old registration
  kRejected = 2,             // the registry refused it (no such sync, bad location, ...)
  kCount = 3,
};
const char* DropReasonName(DropReason reason);  // "decode_error", ...

// Monotonic counters of the controller's own work (the registry counts the index's). Lock-free.
struct ControllerCounters {
  static constexpr size_t kTypeSlots = 64;  // by message type number; 0: undecodable frames

  std::array<std::atomic<uint64_t>, kTypeSlots> messages{};  // received, by type
  std::array<std::atomic<uint64_t>, static_cast<size_t>(DropReason::kCount)> events_dropped{};
  std::atomic<uint64_t> request_errors{0};   // requests answered with an error reply
  std::atomic<uint64_t> wrong_socket{0};     // requests on the heartbeat socket, etc.
  std::atomic<uint64_t> registrations{0};    // REGISTER accepted (re-registrations included)
  std::atomic<uint64_t> reregistrations{0};  // of an (instance, worker) already registered
  std::atomic<uint64_t> registrations_refused{0};
  std::atomic<uint64_t> deregistrations{0};
  std::atomic<uint64_t> reregister_commands{0};  // heartbeats of unknown registrations
  std::atomic<uint64_t> full_sync_commands{0};
  std::atomic<uint64_t> workers_reaped{0};
  std::atomic<uint64_t> syncs_expired{0};
  std::atomic<uint64_t> seq_gaps{0};  // events applied after a gap
  std::atomic<uint64_t> ticks{0};

  // Time from a message's arrival to its reply (requests) or its application (events), by
  // type number; slot 0: frames answered with a decode error.
  std::array<server::LatencyHistogram, kTypeSlots> latency{};
};

// A bounded ring of notable events (registrations, reaps, syncs, gaps) for the dashboard.
class EventLog {
 public:
  explicit EventLog(size_t capacity) : capacity_(capacity == 0 ? 1 : capacity) {}
  void Add(std::string kind, std::string message) KVT_EXCLUDES(mu_);
  // [{"time_ms": unix ms, "kind": str, "message": str}], newest first.
  nlohmann::json Json() const KVT_EXCLUDES(mu_);
  uint64_t total() const KVT_EXCLUDES(mu_);

 private:
  struct Entry {
    int64_t time_ms;
    std::string kind;
    std::string message;
  };
  const size_t capacity_;
  mutable Mutex mu_;
  std::deque<Entry> entries_ KVT_GUARDED_BY(mu_);
  uint64_t total_ KVT_GUARDED_BY(mu_) = 0;
};

class ControllerCore {
 public:
  static Result<std::unique_ptr<ControllerCore>> Create(const ControllerOptions& options);
  ControllerCore(const ControllerCore&) = delete;
  ControllerCore& operator=(const ControllerCore&) = delete;

  // The reply to `request`: its success reply or an ErrorReply (never throws).
  Reply HandleRequest(const Request& request);
  // Applies one event; what cannot be applied is dropped and counted.
  void HandleEvent(const Event& event);
  // Reaps silent workers and fails stalled syncs (each logged, counted and put in the event
  // log). The service calls it every EffectiveTickInterval().
  void Tick();

  // LOOKUP: per instance, the chunks held contiguously from chunk 0 (also behind POST /lookup).
  Result<LookupReply> Lookup(const LookupRequest& request) const;
  // FIND_KV.
  Result<FindKvReply> FindKv(const FindKvRequest& request) const;
  // CLEAR: keys forgotten.
  Result<uint64_t> Clear(const ClearRequest& request);

  // Counts an event the service could not decode, or one part it dropped before HandleEvent.
  void CountDropped(DropReason reason);

  // Unix milliseconds of a registry time point (the registry runs on options().clock).
  int64_t ToUnixMs(TimePoint t) const;

  uint64_t epoch() const { return epoch_; }
  const ControllerOptions& options() const { return options_; }
  const keys::TokenHasher& hasher() const { return hasher_; }
  cluster::RegistryTree& registry() { return *registry_; }
  const cluster::RegistryTree& registry() const { return *registry_; }
  ControllerCounters& counters() { return counters_; }
  const ControllerCounters& counters() const { return counters_; }
  EventLog& event_log() { return event_log_; }
  const EventLog& event_log() const { return event_log_; }
  // Steady-clock time of Create (uptime).
  TimePoint started() const { return started_; }

 private:
  ControllerCore(const ControllerOptions& options, std::unique_ptr<cluster::RegistryTree> registry,
                 keys::TokenHasher hasher, uint64_t epoch);

  Reply OnRegister(const RegisterRequest& r);
  Reply OnDeregister(const DeregisterRequest& r);
  Reply OnHeartbeat(const HeartbeatRequest& r);
  Reply OnFullSyncStatus(const FullSyncStatusRequest& r);
  Reply OnWorkers(const WorkersRequest& r) const;

  void OnKvEvent(const KvEvent& e);
  void OnSyncStart(const FullSyncStart& e);
  void OnSyncBatch(const FullSyncBatch& e);
  void OnSyncEnd(const FullSyncEnd& e);

  // Whether `origin` is a current registration. Checked before an event's keys are interned:
  // interned namespaces live for the process, so only registered workers' keys are interned.
  bool IsRegistered(const Origin& origin) const KVT_EXCLUDES(reg_mu_);
  void SetRegistered(std::string_view instance_id, uint32_t worker_id, uint64_t registration_id)
      KVT_REQUIRES(reg_mu_);
  void ForgetRegistered(std::string_view instance_id, uint32_t worker_id) KVT_REQUIRES(reg_mu_);

  // The ObjectKeys of an event's groups (interning their namespaces, which it remembers).
  Result<std::vector<keys::ObjectKey>> KeysOf(std::span<const KeyGroup> groups)
      KVT_EXCLUDES(ns_mu_);
  // The namespace id of (model, salt) if a registered worker ever reported a key of it;
  // lookups of any other namespace find nothing, without interning it.
  std::optional<keys::NamespaceId> KnownNamespace(std::string_view model,
                                                  std::string_view salt) const KVT_EXCLUDES(ns_mu_);

  // Drops an event that the registry refused: counted, logged at debug.
  void Drop(const Origin& origin, std::string_view what, const Status& status);

  const ControllerOptions options_;
  const std::unique_ptr<cluster::RegistryTree> registry_;
  const keys::TokenHasher hasher_;
  const uint64_t epoch_;
  const TimePoint started_;

  ControllerCounters counters_;
  EventLog event_log_;

  // Lock order: reg_mu_ -> registry locks. reg_mu_ is held across the registry calls that change
  // registrations (register, deregister, reap), so that registered_ follows the registry's
  // order of them. ns_mu_ is a leaf.
  mutable Mutex reg_mu_;
  // "<instance id>\0<worker id>" -> registration id of every current registration.
  absl::flat_hash_map<std::string, uint64_t> registered_ KVT_GUARDED_BY(reg_mu_);
  mutable Mutex ns_mu_;
  // "<model>\0<cache salt>" -> namespace id.
  absl::flat_hash_map<std::string, keys::NamespaceId> namespaces_ KVT_GUARDED_BY(ns_mu_);
};

}  // namespace kvtier::controller
