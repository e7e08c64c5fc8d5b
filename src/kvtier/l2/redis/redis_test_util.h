// Helpers for the redis adapter tests: keys, deterministic objects, waiting for completions.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <poll.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include "kvtier/common/mutex.h"
#include "kvtier/keys/object_key.h"
#include "kvtier/l2/adapter.h"
#include "kvtier/l2/redis/redis_adapter.h"
#include "kvtier/l2/redis/testing/redis_server.h"

namespace kvtier::l2::redis_test {

using namespace std::chrono_literals;

// Distinct keys: the chunk hash spells `first + i`.
inline std::vector<ObjectKey> MakeKeys(size_t n, size_t first = 0,
                                       std::string_view model = "test-model",
                                       std::string_view salt = "") {
  std::vector<ObjectKey> keys;
  keys.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    keys::ChunkHash h;
    uint64_t v = first + i;
    for (int b = 0; b < 8; ++b) h.bytes[b] = static_cast<uint8_t>(v >> (8 * b));
    h.bytes[31] = 0xa5;
    keys.push_back(ObjectKey::Create(h, model, keys::KvRank{1, 0}, 0, salt).value());
  }
  return keys;
}

// Deterministic bytes for object `seed`.
inline std::vector<uint8_t> MakeObject(size_t size, uint64_t seed) {
  std::vector<uint8_t> out(size);
  uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 1;
  for (size_t i = 0; i < size; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    out[i] = static_cast<uint8_t>(x);
  }
  return out;
}

// Spans over objects[offset, offset + count).
template <typename T>
std::vector<std::span<const uint8_t>> ConstSpans(const std::vector<std::vector<T>>& objects,
                                                 size_t offset = 0, size_t count = SIZE_MAX) {
  std::vector<std::span<const uint8_t>> spans;
  for (size_t i = offset; i < objects.size() && i - offset < count; ++i) {
    spans.emplace_back(objects[i].data(), objects[i].size());
  }
  return spans;
}

template <typename T>
std::vector<std::span<uint8_t>> Spans(std::vector<std::vector<T>>& buffers) {
  std::vector<std::span<uint8_t>> spans;
  spans.reserve(buffers.size());
  for (auto& b : buffers) spans.emplace_back(b.data(), b.size());
  return spans;
}

// Waits until `fd` (a completion eventfd) is readable or the timeout passes. The helpers below
// drain the fd before re-checking their result, so they suit one consuming thread per adapter
// (several threads: CompletionHub in the stress test).
inline void WaitReadable(int fd, Duration timeout) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count() + 1;
  pollfd p{fd, POLLIN, 0};
  ::poll(&p, 1, static_cast<int>(std::min<int64_t>(ms, 60'000)));
}

inline void DrainEventFd(int fd) {
  uint64_t v;
  [[maybe_unused]] ssize_t n = ::read(fd, &v, sizeof(v));
}

// Collects store results across calls (PopCompletedStores drains all of them).
class StoreWaiter {
 public:
  explicit StoreWaiter(L2Adapter* adapter) : adapter_(adapter) {}

  // The result of `task`, or nullopt when it did not finish within `timeout`.
  std::optional<StoreResult> Wait(TaskId task, Duration timeout = 30s) {
    TimePoint deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      for (StoreResult& r : adapter_->PopCompletedStores()) results_.push_back(std::move(r));
      for (size_t i = 0; i < results_.size(); ++i) {
        if (results_[i].task == task) {
          StoreResult r = std::move(results_[i]);
          results_.erase(results_.begin() + static_cast<ptrdiff_t>(i));
          return r;
        }
      }
      auto left = deadline - std::chrono::steady_clock::now();
      if (left <= Duration::zero()) return std::nullopt;
      WaitReadable(adapter_->store_event_fd(), left);
    }
  }

 private:
  L2Adapter* adapter_;
  std::vector<StoreResult> results_;
};

inline std::optional<Bitmap> WaitLookup(L2Adapter* adapter, TaskId task, Duration timeout = 30s) {
  TimePoint deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    DrainEventFd(adapter->lookup_event_fd());
    if (auto r = adapter->QueryLookupAndLockResult(task)) return r;
    auto left = deadline - std::chrono::steady_clock::now();
    if (left <= Duration::zero()) return std::nullopt;
    WaitReadable(adapter->lookup_event_fd(), left);
  }
}

inline std::optional<Bitmap> WaitLoad(L2Adapter* adapter, TaskId task, Duration timeout = 30s) {
  TimePoint deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    DrainEventFd(adapter->load_event_fd());
    if (auto r = adapter->QueryLoadResult(task)) return r;
    auto left = deadline - std::chrono::steady_clock::now();
    if (left <= Duration::zero()) return std::nullopt;
    WaitReadable(adapter->load_event_fd(), left);
  }
}

// Records the keys an adapter reports stored, accessed and deleted. Thread-safe; Wait* block
// (with a deadline) until enough keys arrived.
class KeyListener : public L2Listener {
 public:
  void OnL2KeysStored(std::span<const ObjectKey> keys, std::span<const uint64_t>) override {
    MutexLock lock(&mu_);
    stored_.insert(stored_.end(), keys.begin(), keys.end());
    cv_.NotifyAll();
  }
  void OnL2KeysDeleted(std::span<const ObjectKey> keys) override {
    MutexLock lock(&mu_);
    deleted_.insert(deleted_.end(), keys.begin(), keys.end());
    cv_.NotifyAll();
  }
  std::vector<ObjectKey> stored() const {
    MutexLock lock(&mu_);
    return stored_;
  }
  std::vector<ObjectKey> deleted() const {
    MutexLock lock(&mu_);
    return deleted_;
  }
  bool WaitDeleted(size_t n, Duration timeout = 30s) const {
    TimePoint deadline = std::chrono::steady_clock::now() + timeout;
    MutexLock lock(&mu_);
    while (deleted_.size() < n) {
      if (!cv_.WaitUntil(&mu_, deadline) && std::chrono::steady_clock::now() >= deadline) break;
    }
    return deleted_.size() >= n;
  }

 private:
  mutable Mutex mu_;
  mutable CondVar cv_;
  std::vector<ObjectKey> stored_ KVT_GUARDED_BY(mu_);
  std::vector<ObjectKey> deleted_ KVT_GUARDED_BY(mu_);
};

// A gate the test opens: I/O threads wait in a hook until then.
class Gate {
 public:
  void Open() {
    MutexLock lock(&mu_);
    open_ = true;
    cv_.NotifyAll();
  }
  // Called by the hook: records arrival, then waits for Open().
  void Pass() {
    MutexLock lock(&mu_);
    ++arrived_;
    cv_.NotifyAll();
    while (!open_) cv_.Wait(&mu_);
  }
  // The test waits until `n` threads arrived; false after `timeout`.
  bool AwaitArrivals(int n, Duration timeout = 30s) {
    TimePoint deadline = std::chrono::steady_clock::now() + timeout;
    MutexLock lock(&mu_);
    while (arrived_ < n) {
      if (!cv_.WaitUntil(&mu_, deadline) && std::chrono::steady_clock::now() >= deadline) break;
    }
    return arrived_ >= n;
  }

 private:
  Mutex mu_;
  CondVar cv_;
  bool open_ KVT_GUARDED_BY(mu_) = false;
  int arrived_ KVT_GUARDED_BY(mu_) = 0;
};

// Captures what the process logs (the default spdlog logger, at debug level and above) while it
// lives. Install it before the adapters whose messages it should see, and let it go after they
// are closed: swapping the default logger is not safe while other threads log.
class LogCapture {
 public:
  struct Line {
    spdlog::level::level_enum level;
    std::string text;
  };

  LogCapture() : sink_(std::make_shared<Sink>()), previous_(spdlog::default_logger()) {
    auto logger = std::make_shared<spdlog::logger>("capture", sink_);
    logger->set_level(spdlog::level::debug);
    spdlog::set_default_logger(std::move(logger));
  }
  ~LogCapture() { spdlog::set_default_logger(previous_); }
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;

  // Lines at `level` that contain every one of `parts`.
  size_t Count(spdlog::level::level_enum level, std::initializer_list<std::string_view> parts) {
    MutexLock lock(&sink_->mu);
    return CountLocked(level, parts);
  }
  // Waits until Count(level, parts) >= n; false after `timeout`.
  bool WaitFor(spdlog::level::level_enum level, std::initializer_list<std::string_view> parts,
               size_t n = 1, Duration timeout = 30s) {
    TimePoint deadline = std::chrono::steady_clock::now() + timeout;
    MutexLock lock(&sink_->mu);
    while (CountLocked(level, parts) < n) {
      if (!sink_->cv.WaitUntil(&sink_->mu, deadline) &&
          std::chrono::steady_clock::now() >= deadline) {
        break;
      }
    }
    return CountLocked(level, parts) >= n;
  }
  std::string Dump() {
    MutexLock lock(&sink_->mu);
    std::string out;
    for (const Line& l : sink_->lines) out += l.text + "\n";
    return out;
  }

 private:
  struct Sink final : spdlog::sinks::base_sink<spdlog::details::null_mutex> {
    Mutex mu;
    CondVar cv;
    std::vector<Line> lines KVT_GUARDED_BY(mu);

   protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
      MutexLock lock(&mu);
      lines.push_back(Line{msg.level, std::string(msg.payload.data(), msg.payload.size())});
      cv.NotifyAll();
    }
    void flush_() override {}
  };

  size_t CountLocked(spdlog::level::level_enum level, std::initializer_list<std::string_view> parts)
      KVT_REQUIRES(sink_->mu) {
    size_t n = 0;
    for (const Line& l : sink_->lines) {
      if (l.level != level) continue;
      bool all = true;
      for (std::string_view p : parts) all = all && l.text.find(p) != std::string::npos;
      n += all;
    }
    return n;
  }

  std::shared_ptr<Sink> sink_;
  std::shared_ptr<spdlog::logger> previous_;
};

// Starts a redis-server for each test (skipping when none is installed).
class RedisServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::RedisServer::Available()) GTEST_SKIP() << "redis-server is not installed";
    auto server = testing::RedisServer::Start(ServerOptions());
    ASSERT_TRUE(server) << server.error().ToString();
    server_ = std::move(*server);
  }

  virtual testing::RedisServerOptions ServerOptions() { return {}; }

  // The server's config merged with `extra`.
  nlohmann::json Config(const nlohmann::json& extra = nlohmann::json::object()) const {
    nlohmann::json j = server_->AdapterConfig();
    j.update(extra);
    return j;
  }

  std::unique_ptr<RedisAdapter> MakeAdapter(const nlohmann::json& extra = {}) {
    auto options = RedisAdapterOptions::FromJson(
        Config(extra.is_null() ? nlohmann::json::object() : extra), "redis0");
    EXPECT_TRUE(options) << options.error().ToString();
    if (!options) return nullptr;
    auto adapter = RedisAdapter::Create(*options, "redis0");
    EXPECT_TRUE(adapter) << adapter.error().ToString();
    return adapter ? std::move(*adapter) : nullptr;
  }

  std::unique_ptr<testing::RedisServer> server_;
};

}  // namespace kvtier::l2::redis_test
