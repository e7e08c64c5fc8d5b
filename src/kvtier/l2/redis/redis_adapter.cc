// The Redis adapter itself: options from JSON, creation, health and reconnect bookkeeping,
// task dispatch and cancellation, byte accounting and status. Its I/O threads are in
// redis_adapter_worker.cc, Delete and ListKeys in redis_adapter_control.cc.
#include "kvtier/l2/redis/redis_adapter.h"

#include <algorithm>
#include <cstdlib>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kvtier/common/check.h"
#include "kvtier/common/json_config.h"
#include "kvtier/common/logging.h"
#include "kvtier/common/units.h"
#include "kvtier/l2/redis/redis_adapter_internal.h"
#include "kvtier/l2/redis/redis_value.h"

namespace kvtier::l2 {
using internal::TaskKind;
using internal::TaskState;

namespace {

// A failing reconnection is logged as a warning at most this often (unless its error changes).
constexpr Duration kReconnectWarningInterval = std::chrono::seconds(30);

}  // namespace

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

}  // namespace kvtier::l2
