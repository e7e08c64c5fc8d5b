// Value types of the cluster registry (RegistryTree): options, registration, results and the
// snapshots handed to callers. Every result is a copy; nothing here refers into live state.
// The semantics follow the controller wire protocol (docs/controller.md); the registry itself
// knows no transport.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvtier/common/clock.h"
#include "kvtier/keys/object_key.h"

namespace kvtier::cluster {

using keys::ObjectKey;

// One reporting unit inside an instance (a kv rank, or the whole server).
using WorkerId = uint32_t;

inline constexpr size_t kMaxInstanceIdLength = 256;
inline constexpr size_t kMaxLocationLength = 64;
inline constexpr size_t kMaxAddressLength = 512;
inline constexpr size_t kMaxLocationsPerWorker = 16;

struct RegistryOptions {
  // Reverse-index shards (power of two, 1..1024). Each has its own writer lock and holds at
  // most 4M keys.
  uint32_t num_shards = 64;
  // Registered workers at once (1..2^24 - 1). A slot table of this many entries (16 bytes
  // each) is allocated up front.
  uint32_t max_workers = 4096;
  // How long a registry, instance or worker lock is waited for before the call gives up with
  // kLockTimeout (retryable). Critical sections are short and hold no I/O, so this only fires
  // on a bug or an overloaded process.
  Duration lock_timeout = std::chrono::seconds(10);
  // A full sync with no start, batch, end or status poll for this long fails (ExpireSyncs).
  Duration full_sync_timeout = std::chrono::seconds(300);
  // Upper bound on a full sync's declared batch count (guards against garbage input).
  uint32_t max_sync_batches = 1u << 20;
  // Keys evicted by events during one sync that its batches must skip (remembered until the
  // sync ends). Past this many the sync fails (reason "sync_evictions_overflow").
  uint64_t max_sync_evictions = 1u << 20;
  // Time source for registration, heartbeats, reaping and sync deadlines.
  Clock* clock = Clock::Real();
};

struct WorkerRegistration {
  std::string instance_id;  // 1..kMaxInstanceIdLength bytes
  WorkerId worker_id = 0;
  // Where peers fetch this worker's chunks, e.g. "tcp://10.0.0.1:5600". May be empty (no P2P).
  std::string address;
  // The worker's tiers (at most kMaxLocationsPerWorker), listed by WorkerInfo from the start.
  // Batches may name other locations too.
  std::vector<std::string> locations;
  std::string software_version;  // diagnostics only
  // False: the worker never sends heartbeats and ReapDead never removes it (LMCache PR #4808:
  // reaping workers that were never asked to heartbeat empties the index).
  bool expects_heartbeats = true;
};

struct RegisterResult {
  // Nonzero; unique within the registry, random across processes. The worker's messages carry
  // it (Origin), so that those of a replaced registration are recognised and dropped.
  uint64_t registration_id = 0;
  bool re_registered = false;       // (instance, worker) was registered already
  uint64_t stale_keys_removed = 0;  // holders of the previous registration that were dropped
};

// Who a worker's message is about.
struct Origin {
  std::string_view instance_id;
  WorkerId worker_id = 0;
  // The registration it belongs to; 0 matches the current one (admin calls, tests).
  uint64_t registration_id = 0;
};

// One holder of a key: a worker of an instance, at one storage location. The strings are
// views of interned, immutable names that live as long as the registry (so lookups copy and
// allocate nothing); copy them to keep them longer.
struct KvHolder {
  std::string_view instance_id;
  WorkerId worker_id = 0;
  std::string_view location;
  std::string_view address;  // the worker's peer-fetch endpoint ("" when it serves none)

  friend bool operator==(const KvHolder&, const KvHolder&) = default;
};

// FindKvWithWorkerInfo: the peer to fetch a prefix from.
struct PeerMatch {
  KvHolder holder;
  // Leading chunks of the request held by that worker at that location (>= 1).
  uint32_t num_hit_chunks = 0;
};

// PrefixLookup: an instance and the number of contiguous chunks it holds from chunk 0.
// instance_id is a view as in KvHolder.
struct PrefixMatch {
  std::string_view instance_id;
  uint32_t num_chunks = 0;

  friend bool operator==(const PrefixMatch&, const PrefixMatch&) = default;
};

enum class KvOpType : uint8_t { kAdmit = 0, kEvict = 1 };

struct KvOp {
  KvOpType type = KvOpType::kAdmit;
  ObjectKey key;
};

// What the sequence check made of an incremental batch.
enum class BatchOutcome : uint8_t {
  kApplied = 0,          // in sequence (or the first batch of its location: the baseline)
  kAppliedAfterGap = 1,  // applied, but events were lost: the location needs a full sync
  kIgnoredStale = 2,     // sequence number already seen: not applied (duplicate or reordered)
};
std::string_view BatchOutcomeName(BatchOutcome outcome);

struct BatchResult {
  BatchOutcome outcome = BatchOutcome::kApplied;
  // The sequence number the registry expected (absent for a baseline batch).
  std::optional<uint64_t> expected_seq;
  // Holders this batch added (admits of keys the worker did not hold at that location) and
  // removed (evicts of keys it held). Repeats of the current state are not counted.
  uint32_t keys_added = 0;
  uint32_t keys_removed = 0;
  // The batch failed the location's running full sync (a gap, or too many evictions to
  // remember).
  bool failed_sync = false;
};

enum class FullSyncState : uint8_t {
  kIdle = 0,  // no such sync (never started, or superseded)
  kSyncing = 1,
  kCompleted = 2,
  kFailed = 3,  // see failure_reason; the location gets a full-sync request
};
std::string_view FullSyncStateName(FullSyncState state);

// The latest full sync of one location of a worker.
struct WorkerSyncInfo {
  uint64_t sync_id = 0;  // 0: none
  std::string location;
  FullSyncState state = FullSyncState::kIdle;
  bool end_received = false;   // SYNCING with the end seen: batches are missing
  std::string failure_reason;  // kFailed: "timeout", "seq_gap", "key_count_mismatch", ...
  std::optional<uint64_t> base_seq;
  TimePoint start_time{};
  TimePoint last_activity{};
  TimePoint deadline{};  // last_activity + full_sync_timeout
  uint64_t expected_total_keys = 0;
  uint32_t expected_batch_count = 0;
  uint32_t received_batch_count = 0;      // distinct batch indices
  uint64_t received_keys = 0;             // keys of distinct batches
  uint32_t duplicate_batches = 0;         // resent batches that were ignored
  uint64_t evicted_during_sync = 0;       // keys the batches skip (evicted by events since start)
  std::vector<uint32_t> missing_batches;  // ascending; only while SYNCING
};

struct SyncBatchResult {
  bool duplicate = false;  // this batch index had arrived already: ignored
  uint32_t keys_added = 0;
  uint32_t keys_skipped = 0;  // evicted by an event since the start
};

struct SyncEndResult {
  // kCompleted; kSyncing with missing batches; kFailed (failure_reason).
  FullSyncState state = FullSyncState::kSyncing;
  std::vector<uint32_t> missing_batches;  // ascending; resend these, then end again
  uint64_t received_keys = 0;
  std::string failure_reason;
};

// A sync that ExpireSyncs failed (reason "timeout").
struct ExpiredSync {
  std::string instance_id;
  WorkerId worker_id = 0;
  std::string location;
  uint64_t sync_id = 0;
  uint32_t missing_batches = 0;
};

// A worker's own account of one location, sent with its heartbeat.
struct LocationReport {
  std::string_view location;
  uint64_t last_seq = 0;   // the last event seq it sent (base_seq when none since a sync)
  uint64_t key_count = 0;  // its keys at the location after that event
};

// A location the worker should fully sync. Reasons: "seq_gap", "lost_events",
// "key_count_mismatch", "sync_failed", "cleared".
struct FullSyncRequest {
  std::string location;
  std::string reason;

  friend bool operator==(const FullSyncRequest&, const FullSyncRequest&) = default;
};

struct ReapedWorker {
  std::string instance_id;
  WorkerId worker_id = 0;
  std::string address;
  TimePoint last_heartbeat{};
  uint64_t keys_removed = 0;
};

struct LocationInfo {
  std::string location;
  uint64_t keys = 0;
  std::optional<uint64_t> last_seq;  // absent: the next event sets the baseline
  // Why the location needs a full sync ("" when it does not), and whether a heartbeat already
  // asked for it (at most once until the location's next sync start).
  std::string full_sync_reason;
  bool full_sync_requested = false;
  uint64_t seq_gaps = 0;
  uint64_t stale_batches = 0;
  WorkerSyncInfo sync;  // state kIdle when never synced
};

// Admin view of one worker.
struct WorkerInfo {
  std::string instance_id;
  WorkerId worker_id = 0;
  uint64_t registration_id = 0;
  std::string address;
  std::string software_version;
  bool expects_heartbeats = true;
  TimePoint registration_time{};
  TimePoint last_heartbeat{};
  std::vector<LocationInfo> locations;  // by location name
  uint64_t total_keys = 0;              // holders over all locations
  uint64_t seq_gaps = 0;                // over all locations
  bool needs_full_sync = false;         // any location
};

struct RegistryStats {
  uint64_t instances = 0;
  uint64_t workers = 0;
  uint64_t keys = 0;     // distinct keys in the reverse index
  uint64_t holders = 0;  // (key, worker, location) memberships
  uint64_t batches_applied = 0;
  uint64_t keys_admitted = 0;           // holders added by incremental and sync batches
  uint64_t keys_evicted = 0;            // holders removed by incremental evicts
  uint64_t seq_gaps = 0;                // batches that arrived after a gap
  uint64_t stale_batches = 0;           // duplicates / old sequence numbers, ignored
  uint64_t unknown_worker_batches = 0;  // of unknown workers or replaced registrations
  uint64_t lost_events = 0;             // heartbeats revealing events that never arrived
  uint64_t key_count_mismatches = 0;    // heartbeats whose key count disagreed with the index
  uint64_t full_syncs_started = 0;
  uint64_t full_syncs_completed = 0;
  uint64_t full_syncs_failed = 0;
  uint64_t full_syncs_superseded = 0;  // abandoned by a new start of the same location
  uint64_t full_sync_requests = 0;     // handed out by heartbeats
  uint64_t sync_batches_duplicate = 0;
  uint64_t sync_batches_rejected = 0;  // no such sync running
  uint64_t workers_reaped = 0;
  uint64_t lock_timeouts = 0;
};

// Approximate bytes of the index structures (allocated capacity, not counting allocator
// overhead).
struct RegistryMemory {
  uint64_t index_table_bytes = 0;  // reverse-index hash tables (live and retired)
  uint64_t entry_bytes = 0;        // reverse-index entries (key + holders)
  uint64_t overflow_bytes = 0;     // holders beyond two per key
  uint64_t worker_set_bytes = 0;   // per-worker, per-location key sets
  uint64_t total() const {
    return index_table_bytes + entry_bytes + overflow_bytes + worker_set_bytes;
  }
};

}  // namespace kvtier::cluster
