// The Redis adapter's I/O threads (RedisAdapter::Worker): one blocking connection each, the
// pipelined store / lookup / load tasks run on it, the checked read of a GET reply, removal of
// damaged values, and going down and reconnecting with backoff.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <thread>
#include <variant>

#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>
#include <xxhash.h>

#include "kvtier/common/check.h"
#include "kvtier/common/logging.h"
#include "kvtier/l2/redis/redis_adapter.h"
#include "kvtier/l2/redis/redis_adapter_internal.h"
#include "kvtier/l2/redis/redis_value.h"
#include "kvtier/sync/event_fd.h"

namespace kvtier::l2 {
using internal::ReplyText;
using internal::TaskKind;
using internal::TaskState;
using internal::UnexpectedReply;

namespace {

// A pipeline keeps at most this many value bytes, and this many commands, outstanding on a
// connection: it bounds what one long task pins in the server's output buffer and ours.
constexpr uint64_t kPipelineWindowBytes = 64ULL << 20;
constexpr size_t kPipelineWindowCommands = 1024;

int MillisUntil(TimePoint deadline) {
  auto left = deadline - std::chrono::steady_clock::now();
  if (left <= Duration::zero()) return 0;
  auto ms = (std::chrono::duration_cast<std::chrono::microseconds>(left).count() + 999) / 1000;
  return static_cast<int>(std::min<int64_t>(ms, INT32_MAX));
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

Status RedisAdapter::Worker::Init() {
  KVT_ASSIGN_OR_RETURN(wake_, sync::EventFd::Create());
  return Status::OK();
}

void RedisAdapter::Worker::Start(std::unique_ptr<RedisConnection> conn, TimePoint first_attempt) {
  next_attempt_ = first_attempt;
  if (conn != nullptr) {
    MutexLock lock(&mu_);
    live_fd_ = conn->fd();
    up_.store(true, std::memory_order_release);
    conn_ = std::move(conn);
  }
  thread_ = std::thread([this] { Run(); });
}

bool RedisAdapter::Worker::Enqueue(std::shared_ptr<Task> task) {
  {
    MutexLock lock(&mu_);
    if (stop_ || !up_.load(std::memory_order_relaxed)) return false;
    queue_.push_back(std::move(task));
    load_.fetch_add(1, std::memory_order_relaxed);
  }
  wake_.Signal();
  return true;
}

void RedisAdapter::Worker::RequestStop() {
  {
    MutexLock lock(&mu_);
    stop_ = true;
    if (live_fd_ >= 0) ::shutdown(live_fd_, SHUT_RDWR);
  }
  if (wake_.valid()) wake_.Signal();
}

void RedisAdapter::Worker::Join() {
  if (thread_.joinable()) thread_.join();
}

void RedisAdapter::Worker::Run() {
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

bool RedisAdapter::Worker::stopping() {
  MutexLock lock(&mu_);
  return stop_;
}

Status RedisAdapter::Worker::TaskFailure(const Status& io) {
  if (!stopping()) return io;
  return Status::Unavailable(
      fmt::format("redis adapter {} closed while the task was in flight", owner_->name()));
}

void RedisAdapter::Worker::Release(Task* task) {
  if (task->released) return;
  task->released = true;
  load_.fetch_sub(1, std::memory_order_relaxed);
}

void RedisAdapter::Worker::Execute(Task* task) {
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

void RedisAdapter::Worker::RunStore(Task* task) {
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

void RedisAdapter::Worker::RunLookup(Task* task) {
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

void RedisAdapter::Worker::RunLoad(Task* task) {
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

Status RedisAdapter::Worker::Unlink(std::span<const ObjectKey> keys) {
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

void RedisAdapter::Worker::RemoveDamaged() {
  std::vector<ObjectKey> keys = owner_->TakeRemovals();
  if (keys.empty()) return;
  Status io = Unlink(keys);
  if (!io.ok()) GoDown(io);
}

void RedisAdapter::Worker::WaitIdle() {
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
      GoDown(
          Status::Unavailable(fmt::format("redis {}: the server closed the connection", endpoint)));
    } else if (err != EAGAIN && err != EWOULDBLOCK && err != EINTR) {
      GoDown(Status::Unavailable(
          fmt::format("redis {}: connection lost: {}", endpoint, std::strerror(err))));
    }
  }
}

void RedisAdapter::Worker::WaitToReconnect() {
  int ms = MillisUntil(next_attempt_);
  if (ms > 0) {
    pollfd p{wake_.fd(), POLLIN, 0};
    if (::poll(&p, 1, ms) > 0) wake_.Drain();
    return;  // the loop checks the stop flag, then comes back
  }
  Reconnect();
}

void RedisAdapter::Worker::Reconnect() {
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

void RedisAdapter::Worker::GoDown(const Status& why) {
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
}  // namespace kvtier::l2
