// Private to the Redis adapter's sources (redis_adapter*.cc), not part of its API: the task
// record, the I/O thread (RedisAdapter::Worker) and the reply helpers they share.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <hiredis/hiredis.h>

#include "kvtier/common/mutex.h"
#include "kvtier/l2/redis/redis_adapter.h"
#include "kvtier/l2/redis/redis_connection.h"
#include "kvtier/sync/event_fd.h"

namespace kvtier::l2 {
namespace internal {

enum class TaskKind : uint8_t { kStore, kLookup, kLoad };
// kQueued -> kRunning -> (stores: kWritten ->) kDone; kCancelled from kQueued, from kRunning
// (lookups only: they touch no caller buffer) and from kWritten (stores: every byte was sent).
enum class TaskState : uint8_t { kQueued, kRunning, kWritten, kDone, kCancelled };

inline std::string_view ReplyText(const redisReply& r) { return std::string_view(r.str, r.len); }

inline Status UnexpectedReply(const std::string& endpoint, std::string_view what,
                              const redisReply& r) {
  return Status::IOError(
      fmt::format("redis {}: {}: unexpected reply of type {}", endpoint, what, r.type));
}

}  // namespace internal

struct RedisAdapter::Task {
  TaskId id = 0;
  internal::TaskKind kind = internal::TaskKind::kStore;
  std::vector<ObjectKey> keys;
  std::vector<std::span<const uint8_t>> sources;  // stores
  std::vector<std::span<uint8_t>> targets;        // loads
  std::atomic<internal::TaskState> state{internal::TaskState::kQueued};
  bool released = false;  // the I/O thread's: no longer counted in its connection's load

  // Ends the task on the adapter's side. False when it was cancelled: then nothing may be
  // reported for it (and a lookup must take no locks).
  bool Finish() {
    return state.exchange(internal::TaskState::kDone) != internal::TaskState::kCancelled;
  }
};

// One I/O thread and its connection. The connection, backoff and reconnect times belong to the
// thread; the queue and the stop flag are shared under mu_.
class RedisAdapter::Worker {
 public:
  Worker(RedisAdapter* owner, int index)
      : owner_(owner), index_(index), backoff_(owner->options_.reconnect_backoff_min) {}

  Status Init();

  // Starts the thread, up with `conn` or down (first attempt at `first_attempt`).
  void Start(std::unique_ptr<RedisConnection> conn, TimePoint first_attempt);

  bool up() const { return up_.load(std::memory_order_acquire); }
  // Tasks queued on this connection or running on it: what a new task would wait behind.
  size_t load() const { return load_.load(std::memory_order_relaxed); }

  // Queues a task; false when the connection is down (or stopping): the caller fails it.
  bool Enqueue(std::shared_ptr<Task> task);

  // Stops the thread soon: aborts a blocked socket call by shutting the socket down.
  void RequestStop();

  void Join();

 private:
  void Run();

  bool stopping();

  // The status a task gets for an I/O failure: the failure, or "closed" when Close caused it.
  Status TaskFailure(const Status& io);

  // The task no longer occupies the connection. Called before its completion is reported, so
  // that a caller who saw the completion sees this connection's load without it.
  void Release(Task* task);

  void Execute(Task* task);

  void RunStore(Task* task);

  void RunLookup(Task* task);

  void RunLoad(Task* task);

  // UNLINKs `keys` (values found damaged) and reports the ones gone. Keys whose reply was not
  // read (the connection failed) are queued for the next connection up; returns that failure.
  Status Unlink(std::span<const ObjectKey> keys);

  // Removes the damaged values other connections could not (see QueueRemovals).
  void RemoveDamaged();

  // Waits for work or for the server to close the idle connection.
  void WaitIdle();

  void WaitToReconnect();

  void Reconnect();

  // Drops the connection, fails what was queued on it, schedules a reconnect.
  void GoDown(const Status& why);

  RedisAdapter* const owner_;
  const int index_;
  sync::EventFd wake_;
  std::thread thread_;
  std::atomic<bool> up_{false};
  std::atomic<size_t> load_{0};  // see load()

  Mutex mu_;
  std::deque<std::shared_ptr<Task>> queue_ KVT_GUARDED_BY(mu_);
  bool stop_ KVT_GUARDED_BY(mu_) = false;
  int live_fd_ KVT_GUARDED_BY(mu_) = -1;  // the socket RequestStop shuts down

  // The worker thread's own.
  std::unique_ptr<RedisConnection> conn_;
  Duration backoff_;
  TimePoint next_attempt_;
};

}  // namespace kvtier::l2
