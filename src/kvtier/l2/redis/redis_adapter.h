// The Redis / Valkey L2 adapter ("type": "redis").
//
// Objects live in one Redis database, one string value per key:
//   key:   key_prefix + ObjectKey::ToString(),
//          e.g. "kvtier:v1:meta-llama/Llama-3.1-8B@w1r0@g0@3fa4...9c"
//   value: a 24-byte header (magic, version, length, XXH3-64 of the payload) and the object's
//          bytes (redis_value.h). A value that fails its checks is a miss, never garbage, and
//          is removed (UNLINK) so that a later store can replace it.
// Stores are `SET key value NX` (a key already present stays as it is and counts as success,
// not as newly stored bytes), lookups `EXISTS`, loads `GET`, deletes `UNLINK`, listing `SCAN`.
//
// Threads: `connections` I/O threads, each with its own blocking hiredis connection. A task
// goes whole to one connection (the one that is up with the fewest tasks queued or running): its
// N commands are written pipelined, then the N replies read, in order. Submit* never wait for the
// network. A store's bytes go from the caller's buffers straight to the socket, a load's straight
// from the socket into the caller's buffers (a key that then fails its checks may have had its
// buffer written).
//
// Failures: an I/O error or a command timeout fails the task in progress (stores: a retryable
// task error; lookups: every key reported missing; loads: the keys not read yet fail), marks
// the connection down and fails what was queued on it. An idle connection that the server
// closes is noticed at once. A connection that is down reconnects on its own thread with
// exponential backoff (reconnect_backoff_min .. max); failed attempts are logged as warnings
// (rate-limited: ReconnectWarnings). While every connection is down, tasks fail at once instead
// of queueing, and healthy() is false with the last error in StatusJson(). A restarted server
// is picked up without restarting kvtier. Damaged values a load found before its connection
// failed are removed once a connection is up again.
//
// Accounting: a deletion subtracts only bytes this process added. With max_capacity (kvtier owns
// the capacity) the adapter records the payload size of every key it stored and has not seen
// deleted (about 60 bytes per key, as many keys as the capacity holds): a deletion subtracts
// exactly what was added, removing a value this process never stored (an earlier run's, another
// client's) subtracts nothing, and a key that vanished behind our back (FLUSHDB, a restart) is
// reported deleted, with its bytes, when a Delete or a new store of it finds it gone. Without
// max_capacity (Redis owns the capacity and evicts behind our back, so such a record would grow
// without bound) there is no record: usage counts the bytes this process stored, and deletions
// are reported to the listeners and counters but subtract nothing.
//
// Locks from lookup-and-lock are kept here, client-side: Redis knows nothing of them. They stop
// this adapter's Delete(force=false) from removing a key, but Redis may still evict the key
// under its own maxmemory policy (or another client may delete it); such a key then fails to
// load, which callers handle as a miss, and the byte accounts of this adapter (which only see
// its own stores and deletions) overstate what the server holds.
//
// Objects larger than max_value_size (default 512 MiB, Redis's proto-max-bulk-len) minus the
// header are rejected: the store task fails with kInvalidArgument. Objects are not split: a
// split object would need several keys that Redis can evict independently, turning every load
// into a multi-key consistency problem; KV-cache objects are far below the limit.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <nlohmann/json_fwd.hpp>

#include "kvtier/common/mutex.h"
#include "kvtier/l2/adapter.h"
#include "kvtier/l2/redis/redis_connection.h"
#include "kvtier/sync/rw_lock.h"

namespace kvtier::l2 {

// The environment variable read for the password when the config has no "password".
inline constexpr char kRedisPasswordEnv[] = "KVT_REDIS_PASSWORD";

struct RedisAdapterOptions {
  RedisConnectOptions connect;
  int connections = 2;
  Duration reconnect_backoff_min = std::chrono::milliseconds(100);
  Duration reconnect_backoff_max = std::chrono::seconds(5);
  uint64_t max_value_size = 512ULL << 20;  // bytes on the wire: header + object
  std::string key_prefix = "kvtier:v1:";
  uint64_t max_capacity = 0;  // 0: unbounded
  bool checksum = true;       // XXH3-64 of every object, verified on load
  // Tests only (never set from JSON): runs on a connection's I/O thread as each task starts
  // running there, with the connection's index and the task id. It may block to hold the task
  // (the connection then counts as busy with it).
  std::function<void(int connection, TaskId task)> before_task;

  // Reads the adapter's JSON config (section "redis adapter '<name>'"); unknown keys are
  // errors. Keys: host, port, username, password, db, connections, connect_timeout,
  // command_timeout, reconnect_backoff_min, reconnect_backoff_max, max_value_size, key_prefix,
  // max_capacity, checksum. Without "password", the password comes from $KVT_REDIS_PASSWORD
  // (when set and not empty); a "password" in the config wins over the environment.
  static Result<RedisAdapterOptions> FromJson(const nlohmann::json& config,
                                              const std::string& name);
};

// Which failed reconnection attempts are logged as warnings: the first after the adapter was
// last connected, one whose error differs from the last warned about (a password changed while
// the server was down), and otherwise at most one per `interval`. The rest are only counted.
// Not thread-safe.
class ReconnectWarnings {
 public:
  explicit ReconnectWarnings(Duration interval) : interval_(interval) {}
  // A failed attempt with `error` at `now`. True: warn, and *suppressed holds the failures not
  // warned about since the previous warning.
  bool OnFailure(std::string_view error, TimePoint now, uint64_t* suppressed);
  // A connection is up: the next failure warns again.
  void OnConnected();

 private:
  const Duration interval_;
  bool warned_ = false;  // since the last OnConnected
  std::string last_error_;
  TimePoint last_warning_{};
  uint64_t suppressed_ = 0;
};

class RedisAdapter final : public L2Adapter {
 public:
  // Connects the first connection before returning, so wrong credentials or a wrong db fail
  // here (kPermissionDenied / kInvalidArgument). A server that cannot be reached is not an
  // error: the adapter starts unhealthy and keeps reconnecting.
  static Result<std::unique_ptr<RedisAdapter>> Create(RedisAdapterOptions options,
                                                      std::string name);
  ~RedisAdapter() override;

  const RedisAdapterOptions& options() const { return options_; }
  // The Redis key of `key`.
  std::string RedisKey(const ObjectKey& key) const;
  // Connections currently up.
  int connections_up() const;
  // Waits until healthy() == `healthy` or the timeout passes; returns whether it holds.
  bool WaitForHealth(bool healthy, Timeout timeout) const;

 protected:
  void DoSubmitStore(TaskId task, std::span<const ObjectKey> keys,
                     std::span<const std::span<const uint8_t>> objects) override;
  void DoSubmitLookupAndLock(TaskId task, std::span<const ObjectKey> keys) override;
  void DoUnlock(std::span<const ObjectKey> keys) override;
  void DoSubmitLoad(TaskId task, std::span<const ObjectKey> keys,
                    std::span<const std::span<uint8_t>> buffers) override;
  bool DoCancel(TaskId task) override;
  Result<Bitmap> DoDelete(std::span<const ObjectKey> keys, bool force) override;
  Result<KeyPage> DoListKeys(std::string_view model_name, size_t page_size,
                             std::string_view cursor) override;
  void DoClose() override;
  bool DoHealthy() const override;
  void DoStatusJson(nlohmann::json* out) const override;

 private:
  struct Task;
  class Worker;
  friend class Worker;

  RedisAdapter(RedisAdapterOptions options, std::string name);

  // Registers a task and hands it to a connection, or fails it at once when none is up.
  void Submit(std::shared_ptr<Task> task);
  // Hands a task to the connection that is up with the fewest tasks queued or running (round
  // robin among equals); false when none is up.
  bool Dispatch(const std::shared_ptr<Task>& task);
  // Completes a task that never ran (every connection down, or its connection went down).
  void FailUnstarted(Task* task, const Status& why);
  void ForgetTask(TaskId id);
  // Health bookkeeping, called by the workers.
  void OnConnectionUp(int index, bool reconnect);
  void OnConnectionDown(int index, const Status& why, bool closing);
  void OnReconnectFailed(int index, const Status& why, Duration next_wait);
  Status DownError() const;
  // The control connection for Delete / ListKeys, connected on demand.
  Result<RedisConnection*> ControlConnection() KVT_REQUIRES(control_mu_);

  // Records keys this process has just stored (with max_capacity), before their store is
  // reported. A key still recorded from an earlier store is gone from Redis (SET NX succeeded):
  // its old bytes are reported deleted first.
  void TrackStored(std::span<const ObjectKey> keys, std::span<const uint64_t> sizes)
      KVT_REQUIRES_SHARED(order_);
  // Reports keys that are no longer in Redis: `unlinked` were removed by an UNLINK of ours,
  // `absent` were found missing. Subtracts only the bytes recorded for them: an unlinked key
  // without a record is reported with size 0, an absent one not at all.
  void ReportGone(std::span<const ObjectKey> unlinked, std::span<const ObjectKey> absent)
      KVT_REQUIRES(order_);
  // Damaged values a load could not remove (its connection failed): removed by the next
  // connection that is up, before its next task.
  void QueueRemovals(std::span<const ObjectKey> keys);
  std::vector<ObjectKey> TakeRemovals();

  const RedisAdapterOptions options_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::atomic<size_t> next_worker_{0};  // round-robin start among equally loaded connections

  // Lock order: order_ before control_mu_ before the others, which are leaves (taken alone,
  // never across network I/O or a call into the base class).
  //
  // order_ keeps each key's store and deletion reaching the listeners (and the accounts) in the
  // order Redis applied them: a store task holds it shared from its first write until it has
  // reported, a deletion (Delete, or a load dropping a damaged value) exclusively from its
  // UNLINK until it has reported. Writer-preferring, so stores cannot starve Delete.
  sync::RWLock order_;
  // Serialises Delete / ListKeys and owns the connection they use.
  Mutex control_mu_;
  std::unique_ptr<RedisConnection> control_ KVT_GUARDED_BY(control_mu_);

  mutable Mutex tasks_mu_;
  absl::flat_hash_map<TaskId, std::shared_ptr<Task>> tasks_ KVT_GUARDED_BY(tasks_mu_);

  mutable Mutex locks_mu_;
  KeyLockTable locks_ KVT_GUARDED_BY(locks_mu_);

  // With max_capacity: the payload size of each key this process stored and has not reported
  // deleted. Changed holding order_ (shared for stores: one key has one successful SET NX at a
  // time).
  const bool track_sizes_;
  Mutex tracked_mu_;
  absl::flat_hash_map<ObjectKey, uint64_t, keys::ObjectKeyHash> tracked_
      KVT_GUARDED_BY(tracked_mu_);

  Mutex removals_mu_;
  std::vector<ObjectKey> removals_ KVT_GUARDED_BY(removals_mu_);
  std::atomic<bool> has_removals_{false};

  mutable Mutex health_mu_;
  mutable CondVar health_cv_;
  int connections_up_ KVT_GUARDED_BY(health_mu_) = 0;
  std::string last_error_ KVT_GUARDED_BY(health_mu_);
  uint64_t reconnects_ KVT_GUARDED_BY(health_mu_) = 0;
  uint64_t disconnects_ KVT_GUARDED_BY(health_mu_) = 0;
  uint64_t reconnect_failures_ KVT_GUARDED_BY(health_mu_) = 0;
  ReconnectWarnings reconnect_warnings_ KVT_GUARDED_BY(health_mu_);

  std::atomic<uint64_t> corrupt_values_{0};
  std::atomic<uint64_t> rejected_oversize_{0};
};

// The factory entry for "type": "redis".
Result<std::unique_ptr<L2Adapter>> MakeRedisAdapter(const nlohmann::json& config,
                                                    const std::string& name);

// A SCAN MATCH pattern that matches exactly the keys starting with `literal_prefix`.
std::string RedisGlobEscape(std::string_view literal);

}  // namespace kvtier::l2
