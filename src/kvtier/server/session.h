// Sessions: per engine request (request_id), the tokens seen so far, their chunk hashes
// (computed incrementally), the lookup in progress and what its locks still hold.
//
// Only LOOKUP creates a session; STORE and RETRIEVE use an existing one or work statelessly, so
// a STORE after END_SESSION never leaves a session nobody will end. A session expires when
// unused for the session TTL (measured from its last use).
//
// Thread-safety: the TP workers of one request use its session concurrently; every method
// takes the session's mutex. SessionManager's map has its own mutex; lock order: manager, then
// session (the manager never calls into a session while holding its lock, except to stamp it).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <absl/container/flat_hash_map.h>

#include "kvtier/common/clock.h"
#include "kvtier/common/mutex.h"
#include "kvtier/common/result.h"
#include "kvtier/keys/bitmap.h"
#include "kvtier/keys/object_key.h"
#include "kvtier/keys/token_hasher.h"
#include "kvtier/storage/storage_manager.h"

namespace kvtier::server {

using keys::ChunkHash;
using keys::ObjectKey;

// Which objects a request's chunks map to: (model, salt) namespace, world size, object group.
struct KeySpace {
  keys::NamespaceId ns = 0;
  uint16_t world_size = 1;
  uint32_t object_group = 0;
  friend bool operator==(const KeySpace&, const KeySpace&) = default;
};

// Keys of chunks [first_chunk, first_chunk + hashes.size()), chunk-major: chunk c, rank r at
// index (c - first_chunk) * world_size + r. With `rank`, only that rank's keys, one per chunk.
std::vector<ObjectKey> ChunkKeys(const KeySpace& space, std::span<const ChunkHash> hashes,
                                 std::optional<uint16_t> rank);

// A lookup of chunks [first_chunk, first_chunk + num_chunks) for every rank.
struct Lookup {
  KeySpace space;
  uint32_t first_chunk = 0;
  uint32_t num_chunks = 0;
  uint32_t read_locks = 1;
  std::vector<ObjectKey> keys;  // chunk-major
  storage::PrefetchHandle handle;
  bool done = false;  // the result was consumed (QUERY / WAIT answered)
  uint32_t hit_chunks = 0;
  // Per key: read locks still held for retrieves (set once done; each RETRIEVE takes one).
  std::vector<uint8_t> pending_reads;
};

class Session {
 public:
  Session(std::string request_id, const keys::TokenHasher* hasher, TimePoint now);

  const std::string& request_id() const { return request_id_; }

  // Makes `tokens` the request's tokens. A list extending the known one keeps the hashes
  // computed so far; any other change starts over.
  void SetTokens(std::span<const uint32_t> tokens) KVT_EXCLUDES(mu_);
  // Hashes of chunks [first, end) of the current tokens (computing what is missing).
  // kInvalidArgument when the tokens do not cover them.
  Result<std::vector<ChunkHash>> Hashes(size_t first, size_t end) KVT_EXCLUDES(mu_);
  size_t num_full_chunks() const KVT_EXCLUDES(mu_);

  // Records a key space the request used (END_SESSION touches every chunk in each).
  void AddKeySpace(const KeySpace& space) KVT_EXCLUDES(mu_);
  std::vector<KeySpace> key_spaces() const KVT_EXCLUDES(mu_);

  // The lookup in progress or finished (nullopt: none). A new lookup replaces the old one,
  // which is returned so the caller can release what it holds.
  std::optional<Lookup> ReplaceLookup(std::optional<Lookup> lookup) KVT_EXCLUDES(mu_);
  // Runs `fn` on the lookup under the session's lock (a no-op returning false without one).
  template <typename Fn>
  bool WithLookup(Fn&& fn) KVT_EXCLUDES(mu_) {
    MutexLock lock(&mu_);
    if (!lookup_) return false;
    fn(*lookup_);
    return true;
  }

  void Touch(TimePoint now) KVT_EXCLUDES(mu_);
  TimePoint last_used() const KVT_EXCLUDES(mu_);

 private:
  const std::string request_id_;
  const keys::TokenHasher* const hasher_;
  mutable Mutex mu_;
  std::vector<uint32_t> tokens_ KVT_GUARDED_BY(mu_);
  std::vector<ChunkHash> hashes_ KVT_GUARDED_BY(mu_);  // of the first hashes_.size() chunks
  std::vector<KeySpace> spaces_ KVT_GUARDED_BY(mu_);
  std::optional<Lookup> lookup_ KVT_GUARDED_BY(mu_);
  TimePoint last_used_ KVT_GUARDED_BY(mu_);
};

class SessionManager {
 public:
  SessionManager(const keys::TokenHasher* hasher, Clock* clock, Duration ttl);

  // The request's session, created if new, stamped as used now.
  std::shared_ptr<Session> GetOrCreate(const std::string& request_id) KVT_EXCLUDES(mu_);
  // The request's session if it exists (stamped as used), else null.
  std::shared_ptr<Session> Get(const std::string& request_id) KVT_EXCLUDES(mu_);
  // Removes and returns it (null when unknown).
  std::shared_ptr<Session> Remove(const std::string& request_id) KVT_EXCLUDES(mu_);
  // Removes sessions unused for longer than the TTL and returns them.
  std::vector<std::shared_ptr<Session>> RemoveExpired() KVT_EXCLUDES(mu_);
  // Every session (a snapshot).
  std::vector<std::shared_ptr<Session>> All() const KVT_EXCLUDES(mu_);
  // Removes every session (shutdown).
  std::vector<std::shared_ptr<Session>> RemoveAll() KVT_EXCLUDES(mu_);
  size_t size() const KVT_EXCLUDES(mu_);
  Duration ttl() const { return ttl_; }

 private:
  const keys::TokenHasher* const hasher_;
  Clock* const clock_;
  const Duration ttl_;
  mutable Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Session>> sessions_ KVT_GUARDED_BY(mu_);
};

}  // namespace kvtier::server
