// Value types of the cluster registry (RegistryTree): options, registration, results and the
// snapshots handed to callers. Every result is a copy; nothing here refers into live state.
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
inline constexpr size_t kMaxLocationLength = 128;
inline constexpr size_t kMaxAddressLength = 1024;

struct RegistryOptions {
  // Reverse-index shards (power of two, 1..1024). Each has its own writer lock and holds at
  // most 4M keys.
  uint32_t num_shards = 64;
  // Registered workers at once (1..2^24 - 1). A slot table of this many pointers is allocated
  // up front (8 bytes each).
  uint32_t max_workers = 4096;
  // How long a registry, instance or worker lock is waited for before the call gives up with
  // kLockTimeout (retryable). Critical sections are short and hold no I/O, so this only fires
  // on a bug or an overloaded process.
  Duration lock_timeout = std::chrono::seconds(10);
  // A full sync with no batch or end message for this long becomes FAILED (ExpireSyncs).
  Duration full_sync_timeout = std::chrono::seconds(300);
  // Upper bound on a full sync's declared batch count (guards against garbage input).
  uint32_t max_sync_batches = 1u << 22;
  // Time source for registration, heartbeats, reaping and sync deadlines.
  Clock* clock = Clock::Real();
};

struct WorkerRegistration {
  std::string instance_id;  // 1..kMaxInstanceIdLength bytes
  WorkerId worker_id = 0;
  // Where peers fetch this worker's chunks, e.g. "tcp://10.0.0.1:5600". May be empty (no P2P).
  std::string address;
  // False: the worker never sends heartbeats and ReapDead never removes it (LMCache PR #4808:
  // reaping workers that were never asked to heartbeat empties the index).
  bool expects_heartbeats = true;
};

struct RegisterResult {
  bool re_registered = false;       // (instance, worker) was registered already
  uint64_t stale_keys_removed = 0;  // holders of the previous registration that were dropped
};

// One holder of a key: a worker of an instance, at one storage location.
struct KvHolder {
  std::string instance_id;
  WorkerId worker_id = 0;
  std::string location;

  friend bool operator==(const KvHolder&, const KvHolder&) = default;
};

// FindKvWithWorkerInfo: the peer to fetch a prefix from.
struct PeerMatch {
  KvHolder holder;
  std::string address;
  // Leading chunks of the request held by that worker at that location (>= 1).
  uint32_t num_hit_chunks = 0;
};

// PrefixLookup: an instance and the number of contiguous chunks it holds from chunk 0.
struct PrefixMatch {
  std::string instance_id;
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
  kApplied = 0,           // in sequence (or the first batch of its source: the baseline)
  kAppliedAfterGap = 1,   // applied, but batches were missing: the location needs a full sync
  kIgnoredStale = 2,      // sequence number already seen: not applied (duplicate or reordered)
  kDiscardedSyncing = 3,  // the location is being fully synced: not applied
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
};

enum class FullSyncState : uint8_t {
  kIdle = 0,  // never synced since registration
  kSyncing = 1,
  kCompleted = 2,
  kFailed = 3,  // timed out; the worker should be asked to sync again
};
std::string_view FullSyncStateName(FullSyncState state);

// The latest full sync of a worker (one location at a time).
struct WorkerSyncInfo {
  std::string sync_id;
  std::string location;
  FullSyncState state = FullSyncState::kIdle;
  TimePoint start_time{};
  TimePoint last_activity{};
  TimePoint deadline{};  // last_activity + full_sync_timeout
  uint64_t expected_total_keys = 0;
  uint32_t expected_batch_count = 0;
  uint32_t received_batch_count = 0;      // distinct batch indices
  uint64_t received_keys = 0;             // keys of distinct batches
  uint32_t duplicate_batches = 0;         // resent batches that were ignored
  std::vector<uint32_t> missing_batches;  // ascending; only while SYNCING
};

struct SyncBatchResult {
  bool duplicate = false;  // this batch index had arrived already: ignored
  uint32_t keys_added = 0;
};

struct SyncEndResult {
  FullSyncState state = FullSyncState::kSyncing;  // kCompleted, or kSyncing with missing batches
  std::vector<uint32_t> missing_batches;          // ascending; resend these, then end again
  uint64_t received_keys = 0;
  // received_keys == the total the worker declared at the end.
  bool key_count_matches = true;
};

// A sync that ExpireSyncs turned into FAILED.
struct ExpiredSync {
  std::string instance_id;
  WorkerId worker_id = 0;
  std::string location;
  std::string sync_id;
  uint32_t missing_batches = 0;
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
  std::optional<uint64_t> next_seq;  // absent: the next batch sets the baseline
  bool needs_full_sync = false;      // a gap, a stale batch or a failed sync since the last sync
  uint64_t seq_gaps = 0;
  uint64_t stale_batches = 0;
  uint64_t discarded_during_sync = 0;
};

// Admin view of one worker.
struct WorkerInfo {
  std::string instance_id;
  WorkerId worker_id = 0;
  std::string address;
  bool expects_heartbeats = true;
  TimePoint registration_time{};
  TimePoint last_heartbeat{};
  std::vector<LocationInfo> locations;  // by location name
  uint64_t total_keys = 0;              // holders over all locations
  uint64_t seq_gaps = 0;                // over all locations
  bool needs_full_sync = false;         // any location
  std::optional<WorkerSyncInfo> sync;   // absent: never synced (IDLE)
};

struct RegistryStats {
  uint64_t instances = 0;
  uint64_t workers = 0;
  uint64_t keys = 0;     // distinct keys in the reverse index
  uint64_t holders = 0;  // (key, worker, location) memberships
  uint64_t batches_applied = 0;
  uint64_t keys_admitted = 0;  // holders added by incremental and sync batches
  uint64_t keys_evicted = 0;   // holders removed by incremental evicts
  uint64_t seq_gaps = 0;       // batches that arrived after a gap
  uint64_t stale_batches = 0;  // duplicates / old sequence numbers, ignored
  uint64_t discarded_during_sync = 0;
  uint64_t unknown_worker_batches = 0;  // batches for workers that are not registered
  uint64_t full_syncs_started = 0;
  uint64_t full_syncs_completed = 0;
  uint64_t full_syncs_failed = 0;
  uint64_t sync_batches_duplicate = 0;
  uint64_t sync_batches_rejected = 0;  // no such sync, or the wrong sync id or location
  uint64_t workers_reaped = 0;
  uint64_t lock_timeouts = 0;
};

// Approximate bytes of the index structures (allocated capacity, not counting allocator
// overhead).
struct RegistryMemory {
  uint64_t index_table_bytes = 0;  // reverse-index hash tables
  uint64_t entry_bytes = 0;        // reverse-index entries (key + holders)
  uint64_t overflow_bytes = 0;     // holders beyond two per key
  uint64_t worker_set_bytes = 0;   // per-worker, per-location key sets
  uint64_t total() const {
    return index_table_bytes + entry_bytes + overflow_bytes + worker_set_bytes;
  }
};

}  // namespace kvtier::cluster
