#include "kvtier/l2/redis/redis_adapter.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <optional>
#include <thread>
#include <variant>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <poll.h>
#include <sys/socket.h>
#include <xxhash.h>

#include "kvtier/common/check.h"
#include "kvtier/common/json_config.h"
#include "kvtier/common/logging.h"
#include "kvtier/common/units.h"
#include "kvtier/l2/redis/redis_value.h"
#include "kvtier/sync/event_fd.h"

namespace kvtier::l2 {
namespace {

// A pipeline keeps at most this many value bytes, and this many commands, outstanding on a
// connection: it bounds what one long task pins in the server's output buffer and ours.
constexpr uint64_t kPipelineWindowBytes = 64ULL << 20;
constexpr size_t kPipelineWindowCommands = 1024;
// One ListKeys call scans for at most this long, then returns what it has (maybe nothing) and a
// cursor to go on from.
constexpr Duration kListKeysBudget = std::chrono::seconds(1);
// A failing reconnection is logged as a warning at most this often (unless its error changes).
constexpr Duration kReconnectWarningInterval = std::chrono::seconds(30);

enum class TaskKind : uint8_t { kStore, kLookup, kLoad };
// kQueued -> kRunning -> (stores: kWritten ->) kDone; kCancelled from kQueued, from kRunning
// (lookups only: they touch no caller buffer) and from kWritten (stores: every byte was sent).
enum class TaskState : uint8_t { kQueued, kRunning, kWritten, kDone, kCancelled };

int MillisUntil(TimePoint deadline) {
  auto left = deadline - std::chrono::steady_clock::now();
  if (left <= Duration::zero()) return 0;
  auto ms = (std::chrono::duration_cast<std::chrono::microseconds>(left).count() + 999) / 1000;
  return static_cast<int>(std::min<int64_t>(ms, INT32_MAX));
}

// The object bytes of a stored value of `stored_length` bytes (header included).
uint64_t PayloadSize(int64_t stored_length) {
  return stored_length > static_cast<int64_t>(kRedisValueHeaderSize)
             ? static_cast<uint64_t>(stored_length) - kRedisValueHeaderSize
             : 0;
}

std::string_view ReplyText(const redisReply& r) { return std::string_view(r.str, r.len); }

Status UnexpectedReply(const std::string& endpoint, std::string_view what, const redisReply& r) {
  return Status::IOError(
      fmt::format("redis {}: {}: unexpected reply of type {}", endpoint, what, r.type));
}

// Runs n commands pipelined: append(i) queues command i, read(i) reads its reply. At most
// kPipelineWindowBytes (by size_of) and kPipelineWindowCommands are outstanding, and always at
// least one. on_written() runs once every command has been written. Returns the first I/O error.
template <typename SizeOf, typename Append, typename Read, typename OnWritten>
Status RunPipeline(RedisConnection* c, size_t n, SizeOf size_of, Append append, Read read,
                   OnWritten on_written) {
  size_t next_write = 0;
  size_t next_read = 0;
  uint64_t in_flight = 0;
  while (next_read < n) {
    while (next_write < n &&
           (next_write == next_read || (in_flight + size_of(next_write) <= kPipelineWindowBytes &&
                                        next_write - next_read < kPipelineWindowCommands))) {
      append(next_write);
      in_flight += size_of(next_write);
      ++next_write;
    }
    if (c->pending_bytes() > 0) {
      KVT_RETURN_IF_ERROR(c->Flush());
      if (next_write == n) on_written();
    }
    KVT_RETURN_IF_ERROR(read(next_read));
    in_flight -= size_of(next_read);
    ++next_read;
  }
  return Status::OK();
}

// Payload bytes read (and hashed) at a time: small enough to hash while still in cache.
constexpr size_t kLoadChunk = size_t{256} << 10;

struct GetOutcome {
  enum class Kind : uint8_t { kLoaded, kMissing, kDamaged, kWrongSize, kErrorReply };
  Kind kind = Kind::kMissing;
  uint64_t stored_size = 0;  // of the whole value, header included
  std::string detail;
};

// Reads one GET reply, its payload straight from the socket into `target` (which must be
// exactly the stored size), checking header, length and checksum. Whatever the value holds, the
// stream stays in sync; an error is a failed connection. A failed key's buffer may have been
// written.
Result<GetOutcome> ReadGetReply(RedisConnection* c, std::span<uint8_t> target, XXH3_state_t* hash) {
  using Kind = GetOutcome::Kind;
  KVT_ASSIGN_OR_RETURN(auto start, c->ReadBulkStart());
  if (auto* reply = std::get_if<RedisReply>(&start)) {
    if ((*reply)->type == REDIS_REPLY_NIL) return GetOutcome{Kind::kMissing, 0, ""};
    if ((*reply)->type == REDIS_REPLY_ERROR) {
      return GetOutcome{Kind::kErrorReply, 0, std::string(ReplyText(**reply))};
    }
    return GetOutcome{Kind::kErrorReply, 0, fmt::format("reply of type {}", (*reply)->type)};
  }
  GetOutcome out;
  out.stored_size = std::get<uint64_t>(start);
  auto give_up = [&](Kind kind, std::string detail, uint64_t left) -> Result<GetOutcome> {
    KVT_RETURN_IF_ERROR(c->SkipBulkBody(left));
    KVT_RETURN_IF_ERROR(c->FinishBulk());
    out.kind = kind;
    out.detail = std::move(detail);
    return out;
  };
  if (out.stored_size < kRedisValueHeaderSize) {
    return give_up(Kind::kDamaged,
                   fmt::format("{} bytes, shorter than the value header", out.stored_size),
                   out.stored_size);
  }
  RedisValueHeader header;
  KVT_RETURN_IF_ERROR(c->ReadBulkBody(header));
  const uint64_t payload_size = out.stored_size - kRedisValueHeaderSize;
  Result<RedisValueInfo> info = ParseRedisValueHeader(header, out.stored_size);
  if (!info) return give_up(Kind::kDamaged, std::string(info.error().message()), payload_size);
  if (payload_size != target.size()) {
    return give_up(Kind::kWrongSize,
                   fmt::format("{} bytes stored, the buffer has {}", payload_size, target.size()),
                   payload_size);
  }
  if (info->has_checksum) XXH3_64bits_reset(hash);
  for (size_t off = 0; off < target.size(); off += kLoadChunk) {
    std::span<uint8_t> chunk = target.subspan(off, std::min(kLoadChunk, target.size() - off));
    KVT_RETURN_IF_ERROR(c->ReadBulkBody(chunk));
    if (info->has_checksum) XXH3_64bits_update(hash, chunk.data(), chunk.size());
  }
  KVT_RETURN_IF_ERROR(c->FinishBulk());
  if (info->has_checksum) {
    uint64_t sum = XXH3_64bits_digest(hash);
    if (sum != info->checksum) {
      out.kind = Kind::kDamaged;
      out.detail = fmt::format("payload checksum mismatch (stored {:016x}, computed {:016x})",
                               info->checksum, sum);
      return out;
    }
  }
  out.kind = Kind::kLoaded;
  return out;
}

struct Xxh3StateDeleter {
  void operator()(XXH3_state_t* s) const { XXH3_freeState(s); }
};

}  // namespace

struct RedisAdapter::Task {
  TaskId id = 0;
  TaskKind kind = TaskKind::kStore;
  std::vector<ObjectKey> keys;
  std::vector<std::span<const uint8_t>> sources;  // stores
  std::vector<std::span<uint8_t>> targets;        // loads
  std::atomic<TaskState> state{TaskState::kQueued};
  bool released = false;  // the I/O thread's: no longer counted in its connection's load

  // Ends the task on the adapter's side. False when it was cancelled: then nothing may be
  // reported for it (and a lookup must take no locks).
  bool Finish() { return state.exchange(TaskState::kDone) != TaskState::kCancelled; }
};

// One I/O thread and its connection. The connection, backoff and reconnect times belong to the
// thread; the queue and the stop flag are shared under mu_.
class RedisAdapter::Worker {
 public:
  Worker(RedisAdapter* owner, int index)
      : owner_(owner), index_(index), backoff_(owner->options_.reconnect_backoff_min) {}

  Status Init() {
    KVT_ASSIGN_OR_RETURN(wake_, sync::EventFd::Create());
    return Status::OK();
  }

  // Starts the thread, up with `conn` or down (first attempt at `first_attempt`).
  void Start(std::unique_ptr<RedisConnection> conn, TimePoint first_attempt) {
    next_attempt_ = first_attempt;
    if (conn != nullptr) {
      MutexLock lock(&mu_);
      live_fd_ = conn->fd();
      up_.store(true, std::memory_order_release);
      conn_ = std::move(conn);
    }
    thread_ = std::thread([this] { Run(); });
  }

  bool up() const { return up_.load(std::memory_order_acquire); }
  // Tasks queued on this connection or running on it: what a new task would wait behind.
  size_t load() const { return load_.load(std::memory_order_relaxed); }

  // Queues a task; false when the connection is down (or stopping): the caller fails it.
  bool Enqueue(std::shared_ptr<Task> task) {
    {
      MutexLock lock(&mu_);
      if (stop_ || !up_.load(std::memory_order_relaxed)) return false;
      queue_.push_back(std::move(task));
      load_.fetch_add(1, std::memory_order_relaxed);
    }
    wake_.Signal();
    return true;
  }

  // Stops the thread soon: aborts a blocked socket call by shutting the socket down.
  void RequestStop() {
    {
      MutexLock lock(&mu_);
      stop_ = true;
      if (live_fd_ >= 0) ::shutdown(live_fd_, SHUT_RDWR);
    }
    if (wake_.valid()) wake_.Signal();
  }

  void Join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Run() {
    for (;;) {
      if (conn_ != nullptr && owner_->has_removals_.load(std::memory_order_acquire)) {
        RemoveDamaged();
        continue;  // the connection may have gone down meanwhile
      }
      std::shared_ptr<Task> task;
      {
        MutexLock lock(&mu_);
        if (stop_) break;
        if (!queue_.empty()) {
          task = std::move(queue_.front());
          queue_.pop_front();
        }
      }
      if (task != nullptr) {
        Execute(task.get());
        Release(task.get());  // a task that did not run (cancelled) is released here
        owner_->ForgetTask(task->id);
      } else if (conn_ != nullptr) {
        WaitIdle();
      } else {
        WaitToReconnect();
      }
    }
    {
      MutexLock lock(&mu_);
      live_fd_ = -1;
    }
    conn_.reset();
  }

  bool stopping() {
    MutexLock lock(&mu_);
    return stop_;
  }

  // The status a task gets for an I/O failure: the failure, or "closed" when Close caused it.
  Status TaskFailure(const Status& io) {
    if (!stopping()) return io;
    return Status::Unavailable(
        fmt::format("redis adapter {} closed while the task was in flight", owner_->name()));
  }

  // The task no longer occupies the connection. Called before its completion is reported, so
  // that a caller who saw the completion sees this connection's load without it.
  void Release(Task* task) {
    if (task->released) return;
    task->released = true;
    load_.fetch_sub(1, std::memory_order_relaxed);
  }

  void Execute(Task* task) {
    TaskState expected = TaskState::kQueued;
    if (!task->state.compare_exchange_strong(expected, TaskState::kRunning)) return;  // cancelled
    KVT_DCHECK(conn_ != nullptr);
    if (owner_->options_.before_task) owner_->options_.before_task(index_, task->id);
    switch (task->kind) {
      case TaskKind::kStore:
        RunStore(task);
        break;
      case TaskKind::kLookup:
        RunLookup(task);
        break;
      case TaskKind::kLoad:
        RunLoad(task);
        break;
    }
  }

  void RunStore(Task* task) {
    sync::ReaderLock order(&owner_->order_);  // until the task has reported
    RedisConnection* c = conn_.get();
    const std::string endpoint = owner_->options_.connect.Endpoint();
    const bool checksum = owner_->options_.checksum;
    const size_t n = task->keys.size();
    std::vector<std::string> names(n);
    for (size_t i = 0; i < n; ++i) names[i] = owner_->RedisKey(task->keys[i]);
    std::vector<ObjectKey> stored_keys;
    std::vector<uint64_t> stored_sizes;
    Status refused;  // the first error reply
    Status io = RunPipeline(
        c, n, [&](size_t i) { return task->sources[i].size(); },
        [&](size_t i) {
          RedisValueHeader header = EncodeRedisValueHeader(task->sources[i], checksum);
          c->AppendSetNx(names[i], header, task->sources[i]);
        },
        [&](size_t i) -> Status {
          KVT_ASSIGN_OR_RETURN(RedisReply reply, c->ReadReply());
          if (reply->type == REDIS_REPLY_STATUS) {
            stored_keys.push_back(task->keys[i]);
            stored_sizes.push_back(task->sources[i].size());
          } else if (reply->type == REDIS_REPLY_NIL) {
            // Present already (SET NX did nothing): success, no new bytes.
          } else if (refused.ok()) {
            refused = reply->type == REDIS_REPLY_ERROR
                          ? RedisErrorReplyStatus(endpoint, "SET " + names[i], ReplyText(*reply))
                          : UnexpectedReply(endpoint, "SET", *reply);
          }
          return Status::OK();
        },
        [&] {
          // Every byte is in the socket: the caller's buffers are free from here on.
          TaskState running = TaskState::kRunning;
          task->state.compare_exchange_strong(running, TaskState::kWritten);
        });
    Status status = io.ok() ? std::move(refused) : TaskFailure(io);
    if (!io.ok()) GoDown(io);
    Release(task);
    owner_->TrackStored(stored_keys, stored_sizes);
    const bool report = task->Finish();
    if (report && status.ok()) {
      owner_->CompleteStore(task->id, Status::OK(), stored_keys, stored_sizes);
      return;
    }
    if (report) {
      // Failed part-way: the keys that did land are reported (and accounted) all the same.
      owner_->CompleteStore(task->id, std::move(status), stored_keys, stored_sizes);
    } else {
      // Cancelled once its bytes were sent: nobody hears of the task, the keys still count.
      owner_->NotifyStored(stored_keys, stored_sizes);
    }
  }

  void RunLookup(Task* task) {
    RedisConnection* c = conn_.get();
    const size_t n = task->keys.size();
    std::vector<std::string> names(n);
    for (size_t i = 0; i < n; ++i) names[i] = owner_->RedisKey(task->keys[i]);
    Bitmap found(n);
    Status io = RunPipeline(
        c, n, [](size_t) { return uint64_t{0}; },
        [&](size_t i) {
          c->Append({"EXISTS", names[i]});
        },
        [&](size_t i) -> Status {
          KVT_ASSIGN_OR_RETURN(RedisReply reply, c->ReadReply());
          if (reply->type == REDIS_REPLY_INTEGER && reply->integer > 0) found.Set(i);
          return Status::OK();
        },
        [] {});
    if (!io.ok()) {
      GoDown(io);
      found = Bitmap(n);  // the server is going away: report every key missing
    }
    Release(task);
    if (!task->Finish()) return;  // cancelled: take no locks
    if (found.Any()) {
      MutexLock lock(&owner_->locks_mu_);
      for (size_t i : found.SetIndices()) owner_->locks_.Lock(task->keys[i]);
    }
    owner_->CompleteLookup(task->id, std::move(found));
  }

  void RunLoad(Task* task) {
    RedisConnection* c = conn_.get();
    const size_t n = task->keys.size();
    std::vector<std::string> names(n);
    for (size_t i = 0; i < n; ++i) names[i] = owner_->RedisKey(task->keys[i]);
    std::unique_ptr<XXH3_state_t, Xxh3StateDeleter> hash(XXH3_createState());
    KVT_CHECK(hash != nullptr);
    Bitmap loaded(n);
    uint64_t bytes = 0;
    std::vector<size_t> corrupt;
    Status io = RunPipeline(
        c, n, [&](size_t i) { return uint64_t{task->targets[i].size()}; },
        [&](size_t i) {
          c->Append({"GET", names[i]});
        },
        [&](size_t i) -> Status {
          KVT_ASSIGN_OR_RETURN(GetOutcome got, ReadGetReply(c, task->targets[i], hash.get()));
          switch (got.kind) {
            case GetOutcome::Kind::kLoaded:
              loaded.Set(i);
              bytes += task->targets[i].size();
              break;
            case GetOutcome::Kind::kMissing:
              break;
            case GetOutcome::Kind::kDamaged:
              KVT_LOG_WARN("redis adapter {}: value of '{}' is damaged ({}); dropping it",
                           owner_->name(), names[i], got.detail);
              corrupt.push_back(i);
              break;
            case GetOutcome::Kind::kWrongSize:
              KVT_LOG_WARN("redis adapter {}: '{}': {}", owner_->name(), names[i], got.detail);
              break;
            case GetOutcome::Kind::kErrorReply:
              KVT_LOG_WARN("redis adapter {}: GET '{}': {}", owner_->name(), names[i], got.detail);
              break;
          }
          return Status::OK();
        },
        [] {});
    if (!corrupt.empty()) {
      // Counted whatever happens next: they were found.
      owner_->corrupt_values_.fetch_add(corrupt.size(), std::memory_order_relaxed);
      std::vector<ObjectKey> damaged;
      for (size_t i : corrupt) damaged.push_back(task->keys[i]);
      if (io.ok()) {
        // Removed so that a later store (SET NX) can replace them; what this connection cannot
        // remove (it failed meanwhile) is left to the next connection up.
        io = Unlink(damaged);
      } else {
        owner_->QueueRemovals(damaged);
      }
    }
    if (!io.ok()) GoDown(io);
    Release(task);
    if (!task->Finish()) return;
    owner_->CompleteLoad(task->id, std::move(loaded), bytes);
  }

  // UNLINKs `keys` (values found damaged) and reports the ones gone. Keys whose reply was not
  // read (the connection failed) are queued for the next connection up; returns that failure.
  Status Unlink(std::span<const ObjectKey> keys) {
    RedisConnection* c = conn_.get();
    std::vector<ObjectKey> unlinked, absent;
    size_t confirmed = 0;
    Status io;
    {
      sync::WriterLock order(&owner_->order_);  // a deletion: ordered against stores
      for (const ObjectKey& key : keys) c->Append({"UNLINK", owner_->RedisKey(key)});
      io = c->Flush();
      for (; io.ok() && confirmed < keys.size(); ++confirmed) {
        Result<RedisReply> reply = c->ReadReply();
        if (!reply) {
          io = reply.error();
          break;
        }
        if ((*reply)->type != REDIS_REPLY_INTEGER) {
          KVT_LOG_WARN("redis adapter {}: UNLINK of damaged '{}': {}", owner_->name(),
                       owner_->RedisKey(keys[confirmed]),
                       (*reply)->type == REDIS_REPLY_ERROR ? std::string(ReplyText(**reply))
                                                           : "unexpected reply");
          continue;  // it stays; a later load finds it damaged again
        }
        ((*reply)->integer == 1 ? unlinked : absent).push_back(keys[confirmed]);
      }
      owner_->ReportGone(unlinked, absent);
    }
    if (confirmed < keys.size()) owner_->QueueRemovals(keys.subspan(confirmed));
    return io;
  }

  // Removes the damaged values other connections could not (see QueueRemovals).
  void RemoveDamaged() {
    std::vector<ObjectKey> keys = owner_->TakeRemovals();
    if (keys.empty()) return;
    Status io = Unlink(keys);
    if (!io.ok()) GoDown(io);
  }

  // Waits for work or for the server to close the idle connection.
  void WaitIdle() {
    pollfd fds[2] = {{wake_.fd(), POLLIN, 0}, {conn_->fd(), POLLIN | POLLRDHUP, 0}};
    int rc = ::poll(fds, 2, -1);
    if (rc <= 0) return;  // EINTR
    if (fds[0].revents != 0) wake_.Drain();
    if (fds[1].revents != 0) {
      char byte;
      ssize_t r = ::recv(conn_->fd(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
      int err = errno;
      const std::string endpoint = owner_->options_.connect.Endpoint();
      if (r > 0) {
        GoDown(Status::IOError(
            fmt::format("redis {}: unexpected data on an idle connection", endpoint), true));
      } else if (r == 0) {
        GoDown(Status::Unavailable(
            fmt::format("redis {}: the server closed the connection", endpoint)));
      } else if (err != EAGAIN && err != EWOULDBLOCK && err != EINTR) {
        GoDown(Status::Unavailable(
            fmt::format("redis {}: connection lost: {}", endpoint, std::strerror(err))));
      }
    }
  }

  void WaitToReconnect() {
    int ms = MillisUntil(next_attempt_);
    if (ms > 0) {
      pollfd p{wake_.fd(), POLLIN, 0};
      if (::poll(&p, 1, ms) > 0) wake_.Drain();
      return;  // the loop checks the stop flag, then comes back
    }
    Reconnect();
  }

  void Reconnect() {
    const RedisConnectOptions& options = owner_->options_.connect;
    Status error;
    Result<std::unique_ptr<RedisConnection>> conn = RedisConnection::Open(options);
    if (conn) {
      {
        MutexLock lock(&mu_);
        if (stop_) return;
        live_fd_ = (*conn)->fd();  // Stop can abort the handshake
      }
      error = (*conn)->Handshake();
      if (error.ok()) {
        {
          MutexLock lock(&mu_);
          up_.store(true, std::memory_order_release);
        }
        conn_ = std::move(*conn);
        backoff_ = owner_->options_.reconnect_backoff_min;
        owner_->OnConnectionUp(index_, /*reconnect=*/true);
        return;
      }
      MutexLock lock(&mu_);
      live_fd_ = -1;
    } else {
      error = conn.error();
    }
    backoff_ = std::min(backoff_ * 2, owner_->options_.reconnect_backoff_max);
    next_attempt_ = std::chrono::steady_clock::now() + backoff_;
    owner_->OnReconnectFailed(index_, error, backoff_);
  }

  // Drops the connection, fails what was queued on it, schedules a reconnect.
  void GoDown(const Status& why) {
    std::deque<std::shared_ptr<Task>> orphans;
    bool stop;
    {
      MutexLock lock(&mu_);
      up_.store(false, std::memory_order_release);
      live_fd_ = -1;
      orphans.swap(queue_);
      load_.fetch_sub(orphans.size(), std::memory_order_relaxed);
      stop = stop_;
    }
    conn_.reset();
    backoff_ = owner_->options_.reconnect_backoff_min;
    next_attempt_ = std::chrono::steady_clock::now() + backoff_;
    owner_->OnConnectionDown(index_, why, stop);
    Status failure = TaskFailure(why);
    for (const auto& task : orphans) {
      owner_->FailUnstarted(task.get(), failure);
      owner_->ForgetTask(task->id);
    }
  }

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

// ---- configuration ----

Result<RedisAdapterOptions> RedisAdapterOptions::FromJson(const nlohmann::json& config,
                                                          const std::string& name) {
  JsonConfig c(config, fmt::format("redis adapter '{}'", name));
  auto invalid = [&](std::string_view key, std::string_view what) {
    return Status::InvalidArgument(fmt::format("{}: '{}': {}", c.section(), key, what));
  };
  RedisAdapterOptions o;
  KVT_ASSIGN_OR_RETURN(o.connect.host, c.String("host", o.connect.host));
  if (o.connect.host.empty()) return MakeError(invalid("host", "must not be empty"));
  KVT_ASSIGN_OR_RETURN(int64_t port, c.Int("port", o.connect.port, 1, 65535));
  o.connect.port = static_cast<int>(port);
  KVT_ASSIGN_OR_RETURN(o.connect.username, c.String("username", ""));
  const bool config_password = c.Has("password");
  KVT_ASSIGN_OR_RETURN(o.connect.password, c.String("password", ""));
  const char* env_password = std::getenv(kRedisPasswordEnv);
  if (env_password != nullptr && *env_password != '\0') {
    if (config_password) {
      KVT_LOG_INFO("{}: 'password' is set in the config; ignoring ${}", c.section(),
                   kRedisPasswordEnv);
    } else {
      o.connect.password = env_password;
    }
  }
  if (!o.connect.username.empty() && o.connect.password.empty()) {
    return MakeError(invalid(
        "username", fmt::format("needs a password ('password' or ${})", kRedisPasswordEnv)));
  }
  KVT_ASSIGN_OR_RETURN(int64_t db, c.Int("db", 0, 0, INT32_MAX));
  o.connect.db = static_cast<int>(db);
  KVT_ASSIGN_OR_RETURN(int64_t connections, c.Int("connections", o.connections, 1, 64));
  o.connections = static_cast<int>(connections);
  KVT_ASSIGN_OR_RETURN(o.connect.connect_timeout,
                       c.Seconds("connect_timeout", o.connect.connect_timeout));
  if (o.connect.connect_timeout <= Duration::zero()) {
    return MakeError(invalid("connect_timeout", "must be positive"));
  }
  KVT_ASSIGN_OR_RETURN(o.connect.command_timeout,
                       c.Seconds("command_timeout", o.connect.command_timeout));
  if (o.connect.command_timeout <= Duration::zero()) {
    return MakeError(invalid("command_timeout", "must be positive"));
  }
  KVT_ASSIGN_OR_RETURN(o.reconnect_backoff_min,
                       c.Seconds("reconnect_backoff_min", o.reconnect_backoff_min));
  if (o.reconnect_backoff_min <= Duration::zero()) {
    return MakeError(invalid("reconnect_backoff_min", "must be positive"));
  }
  KVT_ASSIGN_OR_RETURN(o.reconnect_backoff_max,
                       c.Seconds("reconnect_backoff_max", o.reconnect_backoff_max));
  if (o.reconnect_backoff_max < o.reconnect_backoff_min) {
    return MakeError(invalid("reconnect_backoff_max", "must be at least reconnect_backoff_min"));
  }
  KVT_ASSIGN_OR_RETURN(o.max_value_size, c.Size("max_value_size", o.max_value_size));
  if (o.max_value_size <= kRedisValueHeaderSize) {
    return MakeError(invalid("max_value_size", fmt::format("must exceed the {}-byte value header",
                                                           kRedisValueHeaderSize)));
  }
  KVT_ASSIGN_OR_RETURN(o.key_prefix, c.String("key_prefix", o.key_prefix));
  KVT_ASSIGN_OR_RETURN(o.max_capacity, c.Size("max_capacity", 0));
  KVT_ASSIGN_OR_RETURN(o.checksum, c.Bool("checksum", true));
  KVT_RETURN_IF_ERROR(c.Finish());
  return o;
}

// ---- the adapter ----

RedisAdapter::RedisAdapter(RedisAdapterOptions options, std::string name)
    : L2Adapter("redis", std::move(name), options.max_capacity),
      options_(std::move(options)),
      track_sizes_(options_.max_capacity > 0),
      reconnect_warnings_(kReconnectWarningInterval) {}

RedisAdapter::~RedisAdapter() { Close(); }

Result<std::unique_ptr<RedisAdapter>> RedisAdapter::Create(RedisAdapterOptions options,
                                                           std::string name) {
  KVT_CHECK(options.connections >= 1);
  std::unique_ptr<RedisAdapter> adapter(new RedisAdapter(std::move(options), std::move(name)));
  KVT_RETURN_IF_ERROR(adapter->InitEvents());
  const RedisAdapterOptions& o = adapter->options_;
  for (int i = 0; i < o.connections; ++i) {
    adapter->workers_.push_back(std::make_unique<Worker>(adapter.get(), i));
    KVT_RETURN_IF_ERROR(adapter->workers_.back()->Init());
  }
  std::vector<std::unique_ptr<RedisConnection>> conns(o.connections);
  Result<std::unique_ptr<RedisConnection>> first = RedisConnection::Connect(o.connect);
  TimePoint now = std::chrono::steady_clock::now();
  TimePoint first_attempt = now;
  if (first) {
    conns[0] = std::move(*first);
    for (int i = 1; i < o.connections; ++i) {
      Result<std::unique_ptr<RedisConnection>> conn = RedisConnection::Connect(o.connect);
      if (conn) conns[i] = std::move(*conn);  // else its thread retries at once
    }
  } else if (first.error().code() == StatusCode::kPermissionDenied ||
             first.error().code() == StatusCode::kInvalidArgument) {
    // Wrong credentials or db: retrying will not help.
    return MakeError(first.error().WithContext(fmt::format("redis adapter '{}'", adapter->name())));
  } else {
    KVT_LOG_WARN("redis adapter {}: {}; starting unhealthy and reconnecting in the background",
                 adapter->name(), first.error().ToString());
    MutexLock lock(&adapter->health_mu_);
    adapter->last_error_ = first.error().ToString();
    first_attempt = now + o.reconnect_backoff_min;
  }
  for (int i = 0; i < o.connections; ++i) {
    // Counted up before its thread starts: the thread may find it down at once.
    if (conns[i] != nullptr) adapter->OnConnectionUp(i, /*reconnect=*/false);
    adapter->workers_[i]->Start(std::move(conns[i]), first_attempt);
  }
  return adapter;
}

std::string RedisAdapter::RedisKey(const ObjectKey& key) const {
  return options_.key_prefix + key.ToString();
}

int RedisAdapter::connections_up() const {
  MutexLock lock(&health_mu_);
  return connections_up_;
}

bool RedisAdapter::DoHealthy() const { return connections_up() > 0; }

bool RedisAdapter::WaitForHealth(bool healthy, Timeout timeout) const {
  TimePoint deadline = DeadlineFrom(timeout);
  MutexLock lock(&health_mu_);
  while ((connections_up_ > 0) != healthy) {
    if (deadline == TimePoint::max()) {
      health_cv_.Wait(&health_mu_);
    } else if (!health_cv_.WaitUntil(&health_mu_, deadline)) {
      break;
    }
  }
  return (connections_up_ > 0) == healthy;
}

void RedisAdapter::OnConnectionUp(int index, bool reconnect) {
  {
    MutexLock lock(&health_mu_);
    ++connections_up_;
    if (reconnect) ++reconnects_;
    reconnect_warnings_.OnConnected();
  }
  health_cv_.NotifyAll();
  if (reconnect) {
    KVT_LOG_INFO("redis adapter {}: connection {} to {} is back", name(), index,
                 options_.connect.Endpoint());
  }
}

void RedisAdapter::OnConnectionDown(int index, const Status& why, bool closing) {
  int up;
  {
    MutexLock lock(&health_mu_);
    up = --connections_up_;
    ++disconnects_;
    if (!closing) last_error_ = why.ToString();
  }
  health_cv_.NotifyAll();
  if (!closing) {
    KVT_LOG_WARN("redis adapter {}: connection {} down ({} of {} up): {}; reconnecting", name(),
                 index, up, options_.connections, why.ToString());
  }
}

void RedisAdapter::OnReconnectFailed(int index, const Status& why, Duration next_wait) {
  const std::string error = why.ToString();
  bool warn;
  uint64_t suppressed = 0;
  int up;
  {
    MutexLock lock(&health_mu_);
    last_error_ = error;
    ++reconnect_failures_;
    up = connections_up_;
    warn = reconnect_warnings_.OnFailure(error, std::chrono::steady_clock::now(), &suppressed);
  }
  if (!warn) {
    KVT_LOG_DEBUG("redis adapter {}: connection {}: reconnect failed: {}; next try in {}", name(),
                  index, error, FormatDuration(next_wait));
    return;
  }
  KVT_LOG_WARN(
      "redis adapter {}: connection {} to {} cannot reconnect ({} of {} up): {}; retrying with "
      "backoff up to {}{}",
      name(), index, options_.connect.Endpoint(), up, options_.connections, error,
      FormatDuration(options_.reconnect_backoff_max),
      suppressed == 0
          ? std::string()
          : fmt::format(" ({} more failed attempts since the last warning)", suppressed));
}

bool ReconnectWarnings::OnFailure(std::string_view error, TimePoint now, uint64_t* suppressed) {
  const bool warn = !warned_ || error != last_error_ || now - last_warning_ >= interval_;
  if (!warn) {
    ++suppressed_;
    return false;
  }
  *suppressed = std::exchange(suppressed_, 0);
  warned_ = true;
  last_error_ = std::string(error);
  last_warning_ = now;
  return true;
}

void ReconnectWarnings::OnConnected() {
  warned_ = false;
  suppressed_ = 0;
}

Status RedisAdapter::DownError() const {
  MutexLock lock(&health_mu_);
  return Status::Unavailable(
      fmt::format("redis adapter {} ({}): not connected ({} of {} "
                  "connections up); last error: {}",
                  name(), options_.connect.Endpoint(), connections_up_, options_.connections,
                  last_error_.empty() ? "none" : last_error_));
}

bool RedisAdapter::Dispatch(const std::shared_ptr<Task>& task) {
  const size_t n = workers_.size();
  const size_t start = next_worker_.fetch_add(1, std::memory_order_relaxed);
  std::vector<bool> tried(n, false);
  for (size_t attempt = 0; attempt < n; ++attempt) {
    size_t best = n;
    size_t best_load = SIZE_MAX;
    for (size_t j = 0; j < n; ++j) {
      size_t i = (start + j) % n;
      if (tried[i] || !workers_[i]->up()) continue;
      size_t load = workers_[i]->load();
      if (load < best_load) {
        best = i;
        best_load = load;
      }
    }
    if (best == n) return false;
    if (workers_[best]->Enqueue(task)) return true;
    tried[best] = true;  // went down meanwhile
  }
  return false;
}

void RedisAdapter::Submit(std::shared_ptr<Task> task) {
  if (task->keys.empty()) {
    FailUnstarted(task.get(), Status::OK());
    return;
  }
  {
    MutexLock lock(&tasks_mu_);
    tasks_.emplace(task->id, task);
  }
  if (!Dispatch(task)) {
    FailUnstarted(task.get(), DownError());
    ForgetTask(task->id);
  }
}

void RedisAdapter::FailUnstarted(Task* task, const Status& why) {
  if (!task->Finish()) return;
  switch (task->kind) {
    case TaskKind::kStore:
      CompleteStore(task->id, why, {}, {});
      break;
    case TaskKind::kLookup:
      CompleteLookup(task->id, Bitmap(task->keys.size()));
      break;
    case TaskKind::kLoad:
      CompleteLoad(task->id, Bitmap(task->keys.size()), 0);
      break;
  }
}

void RedisAdapter::ForgetTask(TaskId id) {
  MutexLock lock(&tasks_mu_);
  tasks_.erase(id);
}

void RedisAdapter::DoSubmitStore(TaskId task, std::span<const ObjectKey> keys,
                                 std::span<const std::span<const uint8_t>> objects) {
  const uint64_t limit = options_.max_value_size - kRedisValueHeaderSize;
  for (size_t i = 0; i < objects.size(); ++i) {
    if (objects[i].size() > limit) {
      rejected_oversize_.fetch_add(1, std::memory_order_relaxed);
      CompleteStore(
          task,
          Status::InvalidArgument(fmt::format(
              "redis adapter {}: object '{}' is {} bytes; with the {}-byte value header it "
              "exceeds max_value_size {} ({} bytes). Objects are not split across keys: raise "
              "max_value_size (and the server's proto-max-bulk-len) or use smaller chunks",
              name(), keys[i].ToString(), objects[i].size(), kRedisValueHeaderSize,
              FormatSize(options_.max_value_size), options_.max_value_size)),
          {}, {});
      return;
    }
  }
  auto t = std::make_shared<Task>();
  t->id = task;
  t->kind = TaskKind::kStore;
  t->keys.assign(keys.begin(), keys.end());
  t->sources.assign(objects.begin(), objects.end());
  Submit(std::move(t));
}

void RedisAdapter::DoSubmitLookupAndLock(TaskId task, std::span<const ObjectKey> keys) {
  auto t = std::make_shared<Task>();
  t->id = task;
  t->kind = TaskKind::kLookup;
  t->keys.assign(keys.begin(), keys.end());
  Submit(std::move(t));
}

void RedisAdapter::DoUnlock(std::span<const ObjectKey> keys) {
  MutexLock lock(&locks_mu_);
  for (const ObjectKey& key : keys) locks_.Unlock(key);
}

void RedisAdapter::DoSubmitLoad(TaskId task, std::span<const ObjectKey> keys,
                                std::span<const std::span<uint8_t>> buffers) {
  auto t = std::make_shared<Task>();
  t->id = task;
  t->kind = TaskKind::kLoad;
  t->keys.assign(keys.begin(), keys.end());
  t->targets.assign(buffers.begin(), buffers.end());
  Submit(std::move(t));
}

bool RedisAdapter::DoCancel(TaskId task) {
  std::shared_ptr<Task> t;
  {
    MutexLock lock(&tasks_mu_);
    auto it = tasks_.find(task);
    if (it == tasks_.end()) return true;  // never queued, or finished and reported
    t = it->second;
  }
  TaskState state = t->state.load();
  for (;;) {
    switch (state) {
      case TaskState::kQueued:
      case TaskState::kWritten:
        if (t->state.compare_exchange_weak(state, TaskState::kCancelled)) return true;
        break;  // state reloaded: look again
      case TaskState::kRunning:
        // A store may still read its buffers, a load writes into them; a lookup has none.
        if (t->kind != TaskKind::kLookup) return false;
        if (t->state.compare_exchange_weak(state, TaskState::kCancelled)) return true;
        break;
      case TaskState::kDone:
        return false;  // its completion is being reported
      case TaskState::kCancelled:
        return true;
    }
  }
}

Result<RedisConnection*> RedisAdapter::ControlConnection() {
  if (control_ != nullptr && !control_->broken()) return control_.get();
  control_.reset();
  KVT_ASSIGN_OR_RETURN(control_, RedisConnection::Connect(options_.connect));
  return control_.get();
}

Result<Bitmap> RedisAdapter::DoDelete(std::span<const ObjectKey> keys, bool force) {
  Bitmap deleted(keys.size());
  std::vector<size_t> candidates;
  {
    MutexLock lock(&locks_mu_);
    for (size_t i = 0; i < keys.size(); ++i) {
      if (force || !locks_.IsLocked(keys[i])) candidates.push_back(i);
    }
  }
  if (candidates.empty()) return deleted;
  if (!DoHealthy()) return MakeError(DownError());
  const std::string endpoint = options_.connect.Endpoint();
  std::vector<ObjectKey> unlinked, absent;
  Status refused;  // the first error reply; every reply is read all the same
  Status io;       // a failed connection: the keys whose reply was not read stay counted
  size_t confirmed = 0;
  sync::WriterLock order(&order_);  // until the deletion has reported
  {
    MutexLock lock(&control_mu_);
    KVT_ASSIGN_OR_RETURN(RedisConnection * c, ControlConnection());
    for (size_t i : candidates) c->Append({"UNLINK", RedisKey(keys[i])});
    io = c->Flush();
    for (; io.ok() && confirmed < candidates.size(); ++confirmed) {
      const size_t i = candidates[confirmed];
      Result<RedisReply> reply = c->ReadReply();
      if (!reply) {
        io = reply.error();
        break;
      }
      if ((*reply)->type != REDIS_REPLY_INTEGER) {
        if (refused.ok()) {
          refused = (*reply)->type == REDIS_REPLY_ERROR
                        ? RedisErrorReplyStatus(endpoint, "UNLINK", ReplyText(**reply))
                        : UnexpectedReply(endpoint, "UNLINK", **reply);
        }
        continue;
      }
      deleted.Set(i);  // not stored any more: deleted now (1) or absent already (0)
      ((*reply)->integer == 1 ? unlinked : absent).push_back(keys[i]);
    }
  }
  // What is known gone leaves the accounts and the listeners' tracking, whatever failed after.
  ReportGone(unlinked, absent);
  if (!io.ok()) {
    {
      MutexLock lock(&health_mu_);
      last_error_ = io.ToString();
    }
    if (confirmed == 0)
      return MakeError(io.WithContext(fmt::format("redis adapter {}: Delete", name())));
    // The UNLINKs whose replies were not read may or may not have run: those keys keep a clear
    // bit and stay counted (a later Delete finds them absent and reports them then).
    KVT_LOG_WARN(
        "redis adapter {}: Delete: the connection failed after {} of {} replies: {}; the other "
        "keys are reported as still stored",
        name(), confirmed, candidates.size(), io.ToString());
    return deleted;
  }
  if (!refused.ok()) return MakeError(std::move(refused));
  return deleted;
}

void RedisAdapter::TrackStored(std::span<const ObjectKey> keys, std::span<const uint64_t> sizes) {
  if (!track_sizes_) return;
  std::vector<ObjectKey> vanished;
  std::vector<uint64_t> vanished_sizes;
  {
    MutexLock lock(&tracked_mu_);
    for (size_t i = 0; i < keys.size(); ++i) {
      auto [it, inserted] = tracked_.try_emplace(keys[i], sizes[i]);
      if (inserted) continue;
      vanished.push_back(keys[i]);
      vanished_sizes.push_back(std::exchange(it->second, sizes[i]));
    }
  }
  NotifyDeleted(vanished, vanished_sizes);
}

void RedisAdapter::ReportGone(std::span<const ObjectKey> unlinked,
                              std::span<const ObjectKey> absent) {
  std::vector<ObjectKey> gone;
  std::vector<uint64_t> sizes;
  {
    MutexLock lock(&tracked_mu_);
    for (const ObjectKey& key : unlinked) {
      auto it = tracked_.find(key);
      gone.push_back(key);
      sizes.push_back(it == tracked_.end() ? 0 : it->second);  // never stored here: nothing added
      if (it != tracked_.end()) tracked_.erase(it);
    }
    for (const ObjectKey& key : absent) {
      auto it = tracked_.find(key);
      if (it == tracked_.end()) continue;  // neither counted nor tracked
      gone.push_back(key);
      sizes.push_back(it->second);
      tracked_.erase(it);
    }
  }
  NotifyDeleted(gone, sizes);
}

void RedisAdapter::QueueRemovals(std::span<const ObjectKey> keys) {
  if (keys.empty()) return;
  {
    MutexLock lock(&removals_mu_);
    removals_.insert(removals_.end(), keys.begin(), keys.end());
  }
  has_removals_.store(true, std::memory_order_release);
  KVT_LOG_WARN(
      "redis adapter {}: {} damaged values could not be removed yet; removing them once "
      "a connection is up",
      name(), keys.size());
}

std::vector<ObjectKey> RedisAdapter::TakeRemovals() {
  MutexLock lock(&removals_mu_);
  has_removals_.store(false, std::memory_order_release);
  return std::exchange(removals_, {});
}

// Cursor: "<scan cursor>" or, when one SCAN batch held more matches than a page,
// "<scan cursor>:<matches of that batch already returned>".
Result<KeyPage> RedisAdapter::DoListKeys(std::string_view model_name, size_t page_size,
                                         std::string_view cursor) {
  std::string scan_cursor = "0";
  size_t skip = 0;
  if (!cursor.empty()) {
    std::string_view c = cursor;
    size_t colon = c.find(':');
    std::string_view scan = c.substr(0, colon);
    std::string_view skip_text = colon == std::string_view::npos ? "" : c.substr(colon + 1);
    auto digits = [](std::string_view t) {
      return !t.empty() && t.size() <= 20 &&
             std::all_of(t.begin(), t.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
    };
    if (!digits(scan) || (colon != std::string_view::npos && !digits(skip_text))) {
      return MakeError(Status::InvalidArgument(
          fmt::format("redis adapter {}: invalid ListKeys cursor '{}'", name(), cursor)));
    }
    scan_cursor = std::string(scan);
    if (!skip_text.empty()) skip = std::stoull(std::string(skip_text));
  }
  if (!DoHealthy()) return MakeError(DownError());
  const std::string endpoint = options_.connect.Endpoint();
  const std::string pattern =
      RedisGlobEscape(options_.key_prefix + std::string(model_name) + "@") + "*";
  // SCAN's COUNT is a hint of keys examined before MATCH: half a page keeps most batches whole.
  const std::string count = std::to_string(std::max<size_t>(1, page_size / 2));
  const TimePoint budget_end = std::chrono::steady_clock::now() + kListKeysBudget;

  MutexLock lock(&control_mu_);
  KVT_ASSIGN_OR_RETURN(RedisConnection * c, ControlConnection());
  std::vector<std::string> names;
  std::string next_cursor;
  for (;;) {
    KVT_ASSIGN_OR_RETURN(RedisReply reply,
                         c->Command({"SCAN", scan_cursor, "MATCH", pattern, "COUNT", count}));
    if (reply->type == REDIS_REPLY_ERROR) {
      return MakeError(RedisErrorReplyStatus(endpoint, "SCAN", ReplyText(*reply)));
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_ARRAY) {
      return MakeError(UnexpectedReply(endpoint, "SCAN", *reply));
    }
    std::string after(reply->element[0]->str, reply->element[0]->len);
    std::vector<std::string> batch;
    const redisReply* found = reply->element[1];
    for (size_t i = 0; i < found->elements; ++i) {
      if (found->element[i]->type == REDIS_REPLY_STRING) {
        batch.emplace_back(found->element[i]->str, found->element[i]->len);
      }
    }
    // A stable order, so that a batch split across pages resumes where it stopped.
    std::sort(batch.begin(), batch.end());
    batch.erase(std::unique(batch.begin(), batch.end()), batch.end());
    if (skip > 0) batch.erase(batch.begin(), batch.begin() + std::min(skip, batch.size()));
    if (names.size() + batch.size() > page_size) {
      if (names.empty()) {
        // One batch alone overflows the page: return part of it and resume inside it.
        size_t taken = page_size;
        names.assign(batch.begin(), batch.begin() + taken);
        next_cursor = fmt::format("{}:{}", scan_cursor, skip + taken);
      } else {
        next_cursor = scan_cursor;  // this batch goes whole onto the next page
      }
      break;
    }
    names.insert(names.end(), batch.begin(), batch.end());
    skip = 0;
    scan_cursor = std::move(after);
    if (scan_cursor == "0") break;  // the whole keyspace has been seen
    if (names.size() == page_size || std::chrono::steady_clock::now() >= budget_end) {
      next_cursor = scan_cursor;
      break;
    }
  }

  KeyPage page;
  page.next_cursor = std::move(next_cursor);
  for (const std::string& n : names) c->Append({"STRLEN", n});
  KVT_RETURN_IF_ERROR(c->Flush());
  for (const std::string& n : names) {
    KVT_ASSIGN_OR_RETURN(RedisReply reply, c->ReadReply());
    if (reply->type != REDIS_REPLY_INTEGER || reply->integer == 0) continue;  // gone meanwhile
    const std::string_view text = n;
    Result<ObjectKey> key = ObjectKey::Parse(text.substr(options_.key_prefix.size()));
    if (!key) continue;  // not a kvtier key: leave it alone
    page.keys.emplace_back(*key, PayloadSize(reply->integer));
  }
  return page;
}

void RedisAdapter::DoClose() {
  for (auto& w : workers_) w->RequestStop();
  for (auto& w : workers_) w->Join();
  MutexLock lock(&control_mu_);
  control_.reset();
}

void RedisAdapter::DoStatusJson(nlohmann::json* out) const {
  nlohmann::json r;
  r["endpoint"] = options_.connect.Endpoint();
  r["db"] = options_.connect.db;
  r["username"] = options_.connect.username;
  r["auth"] = !options_.connect.password.empty();
  r["key_prefix"] = options_.key_prefix;
  r["max_value_size"] = options_.max_value_size;
  r["checksum"] = options_.checksum;
  r["connections"] = options_.connections;
  {
    MutexLock lock(&health_mu_);
    r["connections_up"] = connections_up_;
    r["last_error"] = last_error_;
    r["reconnects"] = reconnects_;
    r["disconnects"] = disconnects_;
    r["reconnect_failures"] = reconnect_failures_;
  }
  {
    MutexLock lock(&locks_mu_);
    r["locked_keys"] = locks_.size();
  }
  r["corrupt_values"] = corrupt_values_.load(std::memory_order_relaxed);
  r["rejected_oversize"] = rejected_oversize_.load(std::memory_order_relaxed);
  (*out)["redis"] = std::move(r);
}

Result<std::unique_ptr<L2Adapter>> MakeRedisAdapter(const nlohmann::json& config,
                                                    const std::string& name) {
  KVT_ASSIGN_OR_RETURN(RedisAdapterOptions options, RedisAdapterOptions::FromJson(config, name));
  KVT_ASSIGN_OR_RETURN(std::unique_ptr<RedisAdapter> adapter,
                       RedisAdapter::Create(std::move(options), name));
  return std::unique_ptr<L2Adapter>(std::move(adapter));
}

std::string RedisGlobEscape(std::string_view literal) {
  std::string out;
  out.reserve(literal.size());
  for (char ch : literal) {
    if (ch == '*' || ch == '?' || ch == '[' || ch == ']' || ch == '\\') out.push_back('\\');
    out.push_back(ch);
  }
  return out;
}

}  // namespace kvtier::l2
