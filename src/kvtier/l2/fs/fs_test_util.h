// Helpers for the fs adapter tests: temp directories, keys, payloads, waiting for task results
// on the adapter's eventfds (never sleeping), and an engine wrapper that injects faults.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "kvtier/common/check.h"
#include "kvtier/common/mutex.h"
#include "kvtier/l2/adapter.h"
#include "kvtier/l2/fs/fs_adapter.h"
#include "kvtier/l2/fs/fs_format.h"
#include "kvtier/l2/fs/fs_io.h"

namespace kvtier::l2::fs_testing {

// A fresh directory under $TMPDIR (or `parent`), removed with everything in it.
class TempDir {
 public:
  explicit TempDir(std::string parent = "") {
    if (parent.empty()) {
      const char* env = std::getenv("TMPDIR");
      parent = env != nullptr && *env != '\0' ? env : "/tmp";
    }
    std::string tmpl = parent + "/kvtier-fs-test-XXXXXX";
    char* p = ::mkdtemp(tmpl.data());
    KVT_CHECK_MSG(p != nullptr, "mkdtemp {}", tmpl);
    path_ = p;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Deterministic keys: hash bytes from (seed, i).
inline ObjectKey MakeKey(uint64_t i, std::string_view model = "meta-llama/Llama-3.1-8B",
                         std::string_view salt = "", keys::KvRank rank = {1, 0},
                         uint32_t group = 0) {
  keys::ChunkHash h;
  uint64_t x = i * 0x9e3779b97f4a7c15ULL + 0x1234567;
  for (size_t b = 0; b < keys::kChunkHashBytes; ++b) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    h.bytes[b] = static_cast<uint8_t>(x);
  }
  return ObjectKey::Create(h, model, rank, group, salt).value();
}

// Deterministic payload bytes of `size` for `seed`.
inline std::vector<uint8_t> MakePayload(uint64_t seed, size_t size) {
  std::vector<uint8_t> v(size);
  uint64_t x = seed * 0xbf58476d1ce4e5b9ULL + 1;
  for (size_t i = 0; i < size; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    v[i] = static_cast<uint8_t>(x >> 24);
  }
  return v;
}

// A 4096-aligned buffer (optionally starting `misalign` bytes past an aligned address).
class AlignedBuffer {
 public:
  explicit AlignedBuffer(size_t size, size_t misalign = 0) : size_(size) {
    size_t total = ((size + misalign + 4095) / 4096 + 1) * 4096;
    base_ = static_cast<uint8_t*>(std::aligned_alloc(4096, total));
    KVT_CHECK(base_ != nullptr);
    std::memset(base_, 0xEE, total);
    data_ = base_ + misalign;
  }
  ~AlignedBuffer() { std::free(base_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  uint8_t* data() { return data_; }
  size_t size() const { return size_; }
  std::span<uint8_t> span() { return {data_, size_}; }

 private:
  uint8_t* base_;
  uint8_t* data_;
  size_t size_;
};

// Collects task results from an adapter, waiting on its eventfds with a deadline.
class Waiter {
 public:
  explicit Waiter(L2Adapter* adapter) : a_(adapter) {}

  StoreResult Store(TaskId task, Duration timeout = std::chrono::seconds(60)) {
    TimePoint deadline = DeadlineFrom(timeout);
    while (true) {
      for (StoreResult& r : a_->PopCompletedStores()) stores_[r.task] = std::move(r);
      if (auto it = stores_.find(task); it != stores_.end()) {
        StoreResult r = std::move(it->second);
        stores_.erase(it);
        return r;
      }
      KVT_CHECK_MSG(std::chrono::steady_clock::now() < deadline, "store task {} timed out", task);
      WaitFd(a_->store_event_fd(), deadline);
    }
  }
  Bitmap Lookup(TaskId task, Duration timeout = std::chrono::seconds(60)) {
    TimePoint deadline = DeadlineFrom(timeout);
    while (true) {
      if (auto r = a_->QueryLookupAndLockResult(task)) return *r;
      KVT_CHECK_MSG(std::chrono::steady_clock::now() < deadline, "lookup {} timed out", task);
      WaitFd(a_->lookup_event_fd(), deadline);
    }
  }
  Bitmap Load(TaskId task, Duration timeout = std::chrono::seconds(60)) {
    TimePoint deadline = DeadlineFrom(timeout);
    while (true) {
      if (auto r = a_->QueryLoadResult(task)) return *r;
      KVT_CHECK_MSG(std::chrono::steady_clock::now() < deadline, "load {} timed out", task);
      WaitFd(a_->load_event_fd(), deadline);
    }
  }
  // Store results seen so far that were not asked for yet.
  std::map<TaskId, StoreResult>& pending_stores() { return stores_; }

 private:
  static void WaitFd(int fd, TimePoint deadline);
  L2Adapter* a_;
  std::map<TaskId, StoreResult> stores_;
};

inline void Waiter::WaitFd(int fd, TimePoint deadline) {
  // The fd is a level-triggered counter: poll it (the adapter drains it in PopCompleted*; the
  // query calls do not, so a short poll bound keeps lookups and loads from spinning forever).
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
  pollfd p{fd, POLLIN, 0};
  int ms = static_cast<int>(std::clamp<int64_t>(left.count(), 0, 50));
  ::poll(&p, 1, ms);
  if (p.revents & POLLIN) {
    uint64_t v;
    [[maybe_unused]] ssize_t n = ::read(fd, &v, sizeof(v));
  }
}

// Convenience: store synchronously.
inline StoreResult StoreSync(L2Adapter* a, std::span<const ObjectKey> keys,
                             std::span<const std::span<const uint8_t>> objects) {
  Waiter w(a);
  return w.Store(a->SubmitStore(keys, objects));
}
inline Bitmap LookupSync(L2Adapter* a, std::span<const ObjectKey> keys) {
  Waiter w(a);
  return w.Lookup(a->SubmitLookupAndLock(keys));
}
inline Bitmap LoadSync(L2Adapter* a, std::span<const ObjectKey> keys,
                       std::span<const std::span<uint8_t>> buffers) {
  Waiter w(a);
  return w.Load(a->SubmitLoad(keys, buffers));
}

// Wraps an engine; `hook(op)` runs on the I/O thread before each operation starts and may
// block, fake a result (return it: the operation is not run), or return nullopt to run it.
class HookEngine final : public FsIoEngine {
 public:
  using Hook = std::function<std::optional<int64_t>(FsIoOp*)>;
  HookEngine(std::unique_ptr<FsIoEngine> inner, Hook hook)
      : inner_(std::move(inner)), hook_(std::move(hook)) {}
  std::string_view name() const override { return inner_->name(); }
  void Add(FsIoOp* op) override {
    if (std::optional<int64_t> r = hook_(op)) {
      op->result = *r;
      faked_.push_back(op);
    } else {
      inner_->Add(op);
    }
  }
  void Flush() override { inner_->Flush(); }
  FsIoOp* Next() override {
    if (!faked_.empty()) {
      FsIoOp* op = faked_.front();
      faked_.pop_front();
      return op;
    }
    return inner_->Next();
  }
  size_t outstanding() const override { return inner_->outstanding() + faked_.size(); }
  Status status() const override { return inner_->status(); }

 private:
  std::unique_ptr<FsIoEngine> inner_;
  Hook hook_;
  std::deque<FsIoOp*> faked_;
};

// Installs `hook` on every engine of the adapter built from `options`.
inline void InstallHook(FsAdapterOptions* options, HookEngine::Hook hook) {
  options->wrap_engine = [hook](std::unique_ptr<FsIoEngine> inner) {
    return std::unique_ptr<FsIoEngine>(new HookEngine(std::move(inner), hook));
  };
}

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
  // The test waits until `n` threads arrived.
  void AwaitArrivals(int n) {
    MutexLock lock(&mu_);
    while (arrived_ < n) cv_.Wait(&mu_);
  }

 private:
  Mutex mu_;
  CondVar cv_;
  bool open_ KVT_GUARDED_BY(mu_) = false;
  int arrived_ KVT_GUARDED_BY(mu_) = 0;
};

// Records listener calls.
class RecordingListener final : public L2Listener {
 public:
  void OnL2KeysStored(std::span<const ObjectKey> keys, std::span<const uint64_t> sizes) override {
    MutexLock lock(&mu_);
    for (size_t i = 0; i < keys.size(); ++i) stored_[keys[i]] += sizes[i];
  }
  void OnL2KeysDeleted(std::span<const ObjectKey> keys) override {
    MutexLock lock(&mu_);
    for (const ObjectKey& k : keys) ++deleted_[k];
  }
  std::map<std::string, uint64_t> Stored() const {
    MutexLock lock(&mu_);
    std::map<std::string, uint64_t> out;
    for (const auto& [k, v] : stored_) out[k.ToString()] = v;
    return out;
  }
  size_t DeletedCount(const ObjectKey& key) const {
    MutexLock lock(&mu_);
    auto it = deleted_.find(key);
    return it == deleted_.end() ? 0 : it->second;
  }

 private:
  mutable Mutex mu_;
  absl::flat_hash_map<ObjectKey, uint64_t, keys::ObjectKeyHash> stored_ KVT_GUARDED_BY(mu_);
  absl::flat_hash_map<ObjectKey, size_t, keys::ObjectKeyHash> deleted_ KVT_GUARDED_BY(mu_);
};

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}
inline void WriteFile(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}
inline size_t CountFiles(const std::string& dir) {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) n += e.is_regular_file();
  return n;
}

// Every record file under base (path relative to base -> payload size from the file size).
inline std::map<std::string, uint64_t> RecordFiles(const std::string& base) {
  std::map<std::string, uint64_t> out;
  for (const auto& d : std::filesystem::directory_iterator(base)) {
    std::string dn = d.path().filename();
    if (!d.is_directory() || !IsFsFanoutDir(dn)) continue;
    for (const auto& f : std::filesystem::directory_iterator(d.path())) {
      out[dn + "/" + f.path().filename().string()] = f.file_size() - kFsRecordHeaderSize;
    }
  }
  return out;
}

inline bool IsTmpfs(const std::string& path) {
  struct statfs st {};
  return ::statfs(path.c_str(), &st) == 0 && static_cast<uint64_t>(st.f_type) == 0x01021994;
}

// Whether files under `dir` can be opened and written with O_DIRECT.
inline bool SupportsODirect(const std::string& dir) {
  std::string probe = dir + "/.kvtier-odirect-probe";
  int fd = ::open(probe.c_str(), O_CREAT | O_WRONLY | O_DIRECT | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  void* block = std::aligned_alloc(4096, 4096);
  std::memset(block, 0, 4096);
  bool ok = ::pwrite(fd, block, 4096, 0) == 4096;
  std::free(block);
  ::close(fd);
  ::unlink(probe.c_str());
  return ok;
}

// A directory on a disk filesystem (not tmpfs) that supports O_DIRECT, or "".
inline std::string ODirectCapableParent() {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("TMPDIR"); env != nullptr && *env != '\0') {
    candidates.push_back(env);
  }
  candidates.push_back("/tmp");
  candidates.push_back("/var/tmp");
  for (const std::string& c : candidates) {
    if (!IsTmpfs(c) && SupportsODirect(c)) return c;
  }
  return "";
}

}  // namespace kvtier::l2::fs_testing
