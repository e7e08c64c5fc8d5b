// Engine: the server's request handlers, independent of any transport.
//
// READ_OBJECTS (peer fetch) replies with views into L1 under read locks that the reply's
// `hold` releases when it is dropped (after the transport sent the frames): the StorageManager
// must outlive every such reply.
//
// A decoded request goes in, a reply comes out (WAIT_PREFETCH_STATUS may answer later, through
// a callback). Everything is thread-safe: the transport calls Handle from its control and
// transfer pools concurrently. No handler blocks on I/O except the host copies of STORE and
// RETRIEVE (bounded by the chunk size).
//
// What a crashed or vanished client leaves is released: its sessions expire (and release their
// lookups' locks), its registration is reaped (and the locks held for its rank released), and
// L1's own lock TTLs are the backstop.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include <nlohmann/json_fwd.hpp>

#include "kvtier/common/clock.h"
#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"
#include "kvtier/keys/token_hasher.h"
#include "kvtier/protocol/messages.h"
#include "kvtier/server/registry.h"
#include "kvtier/server/session.h"
#include "kvtier/storage/storage_manager.h"

namespace kvtier::server {

struct EngineOptions {
  uint32_t chunk_size = keys::kDefaultChunkSize;
  // READ_OBJECTS: object bytes in one reply at most, whatever the request's max_bytes.
  uint64_t max_read_objects_bytes = 1ull << 30;
  keys::HashAlgorithm hash = keys::HashAlgorithm::kSha256;
  std::string server_id;
  std::string server_version;
  Duration session_ttl = std::chrono::seconds(600);
  Duration worker_timeout = std::chrono::seconds(120);       // 0: never reap
  Duration registration_grace = std::chrono::seconds(3600);  // for workers that never pinged
  Duration max_wait = std::chrono::seconds(60);              // cap on WAIT_PREFETCH_STATUS
};

struct EngineCounters {
  std::atomic<uint64_t> lookups{0}, lookup_requested_tokens{0}, lookup_hit_tokens{0};
  std::atomic<uint64_t> lookup_hit_tokens_l1{0}, lookup_hit_tokens_l2{0};
  std::atomic<uint64_t> stores{0}, stored_chunks{0}, store_present_chunks{0},
      store_failed_chunks{0};
  std::atomic<uint64_t> retrieves{0}, retrieved_chunks{0}, retrieve_failures{0};
  std::atomic<uint64_t> read_objects{0}, read_objects_keys{0}, read_objects_found{0},
      read_objects_bytes{0};
  std::atomic<uint64_t> sessions_ended{0}, sessions_expired{0}, workers_reaped{0};
  std::atomic<uint64_t> errors{0};
  // Device copies that failed after the engine had its (early) reply: logged as errors.
  std::atomic<uint64_t> device_failures_after_reply{0};
};

class Engine {
 public:
  using ReplyFn = std::function<void(protocol::Reply)>;

  // `storage` must outlive the engine. `backends` builds a registration's data path.
  static Result<std::unique_ptr<Engine>> Create(const EngineOptions& options,
                                                storage::StorageManager* storage, Clock* clock,
                                                BackendFactory backends);
  ~Engine();

  // Every request. WAIT_PREFETCH_STATUS may answer after returning; everything else answers
  // before. `reply` is called exactly once. A STORE or RETRIEVE on a device backend answers as
  // soon as its copies are enqueued (the reply carries the event that completes with them) and
  // returns once they completed, i.e. once its objects are published or released.
  void Handle(const protocol::Request& request, ReplyFn reply);
  // The synchronous form (tests, and every opcode but WAIT): the reply of a device STORE or
  // RETRIEVE comes after its copies completed.
  protocol::Reply HandleSync(const protocol::Request& request) {
    return HandleSync(request, nullptr);
  }

  // Upkeep, called periodically (the server's reaper thread): expires sessions and reaps
  // silent workers, releasing what they held.
  void Tick();
  // Releases everything (sessions and their locks, pending waits answered). For shutdown.
  void Shutdown();

  const keys::TokenHasher& hasher() const { return hasher_; }
  const EngineOptions& options() const { return options_; }
  const EngineCounters& counters() const { return counters_; }
  size_t active_sessions() const { return sessions_.size(); }
  Registry& registry() { return registry_; }
  // {"sessions", "workers", "pending_waits", "counters"}
  nlohmann::json StatusJson() const;

 private:
  Engine(const EngineOptions& options, storage::StorageManager* storage, Clock* clock,
         BackendFactory backends, keys::TokenHasher hasher);

  protocol::Reply Hello(const protocol::HelloRequest& r);
  protocol::Reply RegisterKvCache(const protocol::RegisterKvCacheRequest& r);
  protocol::Reply UnregisterKvCache(const protocol::UnregisterKvCacheRequest& r);
  protocol::Reply Lookup(const protocol::LookupRequest& r);
  protocol::Reply QueryPrefetchStatus(const std::string& request_id);
  void WaitPrefetchStatus(const protocol::WaitPrefetchStatusRequest& r, ReplyFn reply);
  protocol::Reply QueryPrefetchLookupHits(const protocol::QueryPrefetchLookupHitsRequest& r);
  // `early` (may be null): STORE and RETRIEVE on a device backend answer through it once the
  // copies are enqueued; the reply they return then is only counted, not sent.
  protocol::Reply HandleSync(const protocol::Request& request, const ReplyFn* early);
  protocol::Reply Store(const protocol::StoreRequest& r, const ReplyFn* early);
  protocol::Reply Retrieve(const protocol::RetrieveRequest& r, const ReplyFn* early);
  protocol::Reply FreeLookupLocks(const protocol::FreeLookupLocksRequest& r);
  protocol::Reply EndSession(const protocol::EndSessionRequest& r);
  protocol::Reply ReadObjects(const protocol::ReadObjectsRequest& r);

  // The validated chunk range [first, end) of a key.
  struct Range {
    uint32_t first_chunk = 0;
    uint32_t end_chunk = 0;
    uint32_t num_chunks() const { return end_chunk - first_chunk; }
  };
  Result<Range> ChunkRange(const protocol::Key& key) const;
  Result<KeySpace> SpaceOf(const protocol::Key& key) const;
  // Chunk hashes of the range, from the request's session when it has one (extending it),
  // else computed directly.
  Result<std::vector<ChunkHash>> RangeHashes(const protocol::Key& key, const Range& range,
                                             const std::shared_ptr<Session>& session);
  // Consumes a finished prefetch into the lookup: hit chunks, pending reads, releases of
  // partial chunks. Requires the lookup's result to be available.
  void Conclude(server::Lookup& lookup, const keys::Bitmap& found);
  // Releases everything a lookup holds (now, or when its prefetch finishes).
  void ReleaseLookup(std::optional<server::Lookup> lookup);
  // Releases the locks held for `rank` of (model, world size) in every session.
  void ReleaseRank(const protocol::RegisterKvCacheRequest& worker);
  void FailPendingWaits(bool all);

  const EngineOptions options_;
  storage::StorageManager* const storage_;
  const keys::TokenHasher hasher_;
  SessionManager sessions_;
  Registry registry_;
  EngineCounters counters_;

  // WAIT_PREFETCH_STATUS requests waiting for their lookup; a timer thread answers them at
  // their deadline.
  struct Wait;
  void WaitTimerLoop();
  mutable Mutex waits_mu_;
  CondVar waits_cv_;
  std::vector<std::shared_ptr<Wait>> waits_ KVT_GUARDED_BY(waits_mu_);
  bool stopping_ KVT_GUARDED_BY(waits_mu_) = false;
  std::thread wait_timer_;
};

}  // namespace kvtier::server
