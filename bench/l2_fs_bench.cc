// `kvtier bench l2` (fs part). See l2_fs_bench.h.
#include "l2_fs_bench.h"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <unistd.h>

#include "kvtier/common/check.h"
#include "kvtier/keys/object_key.h"
#include "kvtier/l2/fs/fs_adapter.h"

namespace kvtier::bench {
namespace {

using keys::ObjectKey;
using l2::FsAdapter;
using l2::FsAdapterOptions;
using l2::FsIoEngineKind;
using l2::L2Adapter;
using l2::TaskId;
using Clock = std::chrono::steady_clock;

constexpr size_t kAlign = 4096;
constexpr size_t kKeysPerTask = 4;  // a store/prefetch controller batch

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};

struct Shape {
  size_t objects;
  size_t object_bytes;
  uint64_t total() const { return static_cast<uint64_t>(objects) * object_bytes; }
};

// Objects in 4 KiB-aligned buffers with incompressible bytes.
class Objects {
 public:
  explicit Objects(const Shape& shape) : shape_(shape) {
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i < shape.objects; ++i) {
      auto* p = static_cast<uint8_t*>(std::aligned_alloc(kAlign, shape.object_bytes));
      KVT_CHECK(p != nullptr);
      auto* w = reinterpret_cast<uint64_t*>(p);
      for (size_t j = 0; j < shape.object_bytes / 8; ++j) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        w[j] = x;
      }
      bufs_.emplace_back(p);
    }
  }
  uint8_t* data(size_t i) { return bufs_[i].get(); }
  std::span<const uint8_t> cspan(size_t i) { return {bufs_[i].get(), shape_.object_bytes}; }
  std::span<uint8_t> span(size_t i) { return {bufs_[i].get(), shape_.object_bytes}; }

 private:
  Shape shape_;
  std::vector<std::unique_ptr<uint8_t, FreeDeleter>> bufs_;
};

std::vector<ObjectKey> Keys(size_t n, uint64_t generation) {
  auto ns = keys::InternNamespace("bench/l2-fs", "").value();
  std::vector<ObjectKey> out;
  for (size_t i = 0; i < n; ++i) {
    keys::ChunkHash h;
    uint64_t x = (generation << 32 | i) * 0x9e3779b97f4a7c15ULL + 1;
    for (size_t b = 0; b < keys::kChunkHashBytes; ++b) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      h.bytes[b] = static_cast<uint8_t>(x);
    }
    out.push_back(ObjectKey::Create(h, ns, keys::KvRank{1, 0}, 0).value());
  }
  return out;
}

// Waits up to `ms` for `fd` (an adapter eventfd) to become readable, and drains it.
void WaitEvent(int fd, int ms) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, ms) == 1 && (p.revents & POLLIN)) {
    uint64_t v;
    [[maybe_unused]] ssize_t n = ::read(fd, &v, sizeof(v));
  }
}

// Waits (on the adapter's eventfds, with a generous deadline) until every task finished.
Status WaitStores(L2Adapter* a, size_t tasks) {
  auto deadline = DeadlineFrom(std::chrono::minutes(5));
  size_t left = tasks;
  while (left > 0) {
    for (const l2::StoreResult& r : a->PopCompletedStores()) {
      if (!r.status.ok()) return r.status.WithContext("bench store");
      --left;
    }
    if (left == 0) break;
    if (Clock::now() > deadline) return Status::Timeout("bench store");
    WaitEvent(a->store_event_fd(), 100);
  }
  return Status::OK();
}

Status WaitLoads(L2Adapter* a, const std::vector<TaskId>& tasks) {
  auto deadline = DeadlineFrom(std::chrono::minutes(5));
  for (TaskId t : tasks) {
    while (true) {
      if (auto r = a->QueryLoadResult(t)) {
        if (!r->All()) return Status::IOError(fmt::format("bench load: {}", r->ToString()));
        break;
      }
      if (Clock::now() > deadline) return Status::Timeout("bench load");
      WaitEvent(a->load_event_fd(), 100);
    }
  }
  return Status::OK();
}

class Stopwatch {
 public:
  void Add(Clock::duration d, uint64_t bytes) {
    elapsed_ += d;
    bytes_ += bytes;
    ++reps_;
  }
  double seconds() const { return std::chrono::duration<double>(elapsed_).count(); }
  double gbps() const { return seconds() > 0 ? bytes_ / seconds() / 1e9 : 0; }
  int reps() const { return reps_; }

 private:
  Clock::duration elapsed_{};
  uint64_t bytes_ = 0;
  int reps_ = 0;
};

// Raw baseline: one file, sequential pwrite/pread of every object, O_DIRECT when asked.
Status RawWrite(const std::string& path, Objects* objs, const Shape& shape, bool direct) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | (direct ? O_DIRECT : 0),
                  0644);
  if (fd < 0) return Status::IOError(fmt::format("open {}: {}", path, strerror(errno)));
  for (size_t i = 0; i < shape.objects; ++i) {
    size_t done = 0;
    while (done < shape.object_bytes) {
      ssize_t n = ::pwrite(fd, objs->data(i) + done, shape.object_bytes - done,
                           static_cast<off_t>(i * shape.object_bytes + done));
      if (n <= 0) {
        ::close(fd);
        return Status::IOError(fmt::format("pwrite {}: {}", path, strerror(errno)));
      }
      done += static_cast<size_t>(n);
    }
  }
  ::close(fd);
  return Status::OK();
}

Status RawRead(const std::string& path, Objects* objs, const Shape& shape, bool direct) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));
  if (fd < 0) return Status::IOError(fmt::format("open {}: {}", path, strerror(errno)));
  for (size_t i = 0; i < shape.objects; ++i) {
    size_t done = 0;
    while (done < shape.object_bytes) {
      ssize_t n = ::pread(fd, objs->data(i) + done, shape.object_bytes - done,
                          static_cast<off_t>(i * shape.object_bytes + done));
      if (n <= 0) {
        ::close(fd);
        return Status::IOError(fmt::format("pread {}: {}", path, strerror(errno)));
      }
      done += static_cast<size_t>(n);
    }
  }
  ::close(fd);
  return Status::OK();
}

Status StoreAll(FsAdapter* a, const std::vector<ObjectKey>& keys, Objects* objs) {
  std::vector<std::span<const uint8_t>> spans;
  for (size_t i = 0; i < keys.size(); ++i) spans.push_back(objs->cspan(i));
  std::vector<TaskId> tasks;
  for (size_t i = 0; i < keys.size(); i += kKeysPerTask) {
    size_t n = std::min(kKeysPerTask, keys.size() - i);
    tasks.push_back(a->SubmitStore(std::span(keys).subspan(i, n), std::span(spans).subspan(i, n)));
  }
  return WaitStores(a, tasks.size());
}

Status LoadAll(FsAdapter* a, const std::vector<ObjectKey>& keys, Objects* objs) {
  std::vector<std::span<uint8_t>> spans;
  for (size_t i = 0; i < keys.size(); ++i) spans.push_back(objs->span(i));
  std::vector<TaskId> tasks;
  for (size_t i = 0; i < keys.size(); i += kKeysPerTask) {
    size_t n = std::min(kKeysPerTask, keys.size() - i);
    tasks.push_back(a->SubmitLoad(std::span(keys).subspan(i, n), std::span(spans).subspan(i, n)));
  }
  return WaitLoads(a, tasks);
}

// One mode (buffered or O_DIRECT, one engine): store and load, each interleaved with its raw
// baseline rep by rep so background writeback and other load hit both sides alike.
Status RunMode(const SuiteOptions& opt, Reporter* reporter, const std::string& work, bool direct,
               FsIoEngineKind engine, Progress* progress) {
  const Shape shape = opt.quick ? Shape{8, 4 << 20} : Shape{32, 32 << 20};
  const double min_seconds = opt.quick ? 0.05 : opt.min_seconds;
  const int min_reps = opt.quick ? 1 : 3;
  std::string label = fmt::format("{}, {} x {} MiB, {}", direct ? "O_DIRECT" : "buffered",
                                  shape.objects, shape.object_bytes >> 20,
                                  engine == FsIoEngineKind::kIoUring ? "io_uring" : "pread");
  std::string base = fmt::format("{}/{}-{}", work, direct ? "odirect" : "buffered",
                                 engine == FsIoEngineKind::kIoUring ? "io_uring" : "pread");
  std::string raw_path = work + "/raw.bin";
  // Steady state: every fan-out directory exists (the adapter makes each on first use, which
  // would otherwise land in the first timed reps).
  for (int d = 0; d < 256; ++d) {
    std::error_code ec;
    std::filesystem::create_directories(fmt::format("{}/{:02x}", base, d), ec);
  }
  FsAdapterOptions o;
  o.base_path = base;
  o.use_odirect = direct;
  o.io_engine = engine;
  KVT_ASSIGN_OR_RETURN(auto adapter, FsAdapter::Create(o, "bench"));
  KVT_RETURN_IF_ERROR(adapter->Start());
  Objects objs(shape);

  // Store: fresh keys each rep (deleted, untimed, after it); raw: rewrite the file.
  Stopwatch store, raw_write;
  uint64_t generation = 1;
  for (int rep = -1;
       rep < min_reps || store.seconds() < min_seconds || raw_write.seconds() < min_seconds;
       ++rep) {
    auto keys = Keys(shape.objects, generation++);
    auto t0 = Clock::now();
    KVT_RETURN_IF_ERROR(StoreAll(adapter.get(), keys, &objs));
    auto t1 = Clock::now();
    KVT_RETURN_IF_ERROR(RawWrite(raw_path, &objs, shape, direct));
    auto t2 = Clock::now();
    if (rep >= 0) {  // rep -1 warms up
      store.Add(t1 - t0, shape.total());
      raw_write.Add(t2 - t1, shape.total());
    }
    KVT_ASSIGN_OR_RETURN(auto deleted, adapter->Delete(keys, true));
    if (!deleted.All()) return Status::Internal("bench: delete left keys behind");
    ::unlink(raw_path.c_str());
  }
  progress->Step();
  reporter->Add(
      {"fs store " + label, store.gbps(), "GB/s", "raw pwrite, one file", raw_write.gbps()});

  // Load: the same objects every rep; raw: read the one file back the same way.
  auto keys = Keys(shape.objects, 0);
  KVT_RETURN_IF_ERROR(StoreAll(adapter.get(), keys, &objs));
  KVT_RETURN_IF_ERROR(RawWrite(raw_path, &objs, shape, direct));
  Stopwatch load, raw_read;
  for (int rep = -1;
       rep < min_reps || load.seconds() < min_seconds || raw_read.seconds() < min_seconds; ++rep) {
    auto t0 = Clock::now();
    KVT_RETURN_IF_ERROR(LoadAll(adapter.get(), keys, &objs));
    auto t1 = Clock::now();
    KVT_RETURN_IF_ERROR(RawRead(raw_path, &objs, shape, direct));
    auto t2 = Clock::now();
    if (rep >= 0) {
      load.Add(t1 - t0, shape.total());
      raw_read.Add(t2 - t1, shape.total());
    }
  }
  progress->Step();
  reporter->Add({"fs load " + label, load.gbps(), "GB/s", "raw pread, one file", raw_read.gbps()});
  ::unlink(raw_path.c_str());
  KVT_ASSIGN_OR_RETURN(auto deleted, adapter->Delete(keys, true));
  adapter->Close();
  return deleted.All() ? Status::OK() : Status::Internal("bench: delete left keys behind");
}

bool SupportsODirect(const std::string& dir) {
  std::string probe = dir + "/odirect-probe";
  int fd = ::open(probe.c_str(), O_CREAT | O_WRONLY | O_DIRECT | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  void* block = std::aligned_alloc(kAlign, kAlign);
  std::memset(block, 0, kAlign);
  bool ok = ::pwrite(fd, block, kAlign, 0) == static_cast<ssize_t>(kAlign);
  std::free(block);
  ::close(fd);
  ::unlink(probe.c_str());
  return ok;
}

}  // namespace

Status RunL2FsBench(const SuiteOptions& options, Reporter* reporter, const std::string& dir) {
  std::string tmpl = dir + "/kvtier-bench-l2-fs-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    return Status::IOError(fmt::format("mkdtemp in {}: {}", dir, strerror(errno)));
  }
  const std::string work = tmpl;
  const bool direct = SupportsODirect(work);
  Progress progress("bench l2 fs", direct ? 6 : 4, !options.json);
  Status status = RunMode(options, reporter, work, false, FsIoEngineKind::kIoUring, &progress);
  if (status.ok()) {
    status = RunMode(options, reporter, work, false, FsIoEngineKind::kPread, &progress);
  }
  if (status.ok() && direct) {
    status = RunMode(options, reporter, work, true, FsIoEngineKind::kIoUring, &progress);
  }
  std::error_code ec;
  std::filesystem::remove_all(work, ec);
  return status;
}

}  // namespace kvtier::bench
