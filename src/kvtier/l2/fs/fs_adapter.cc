#include "kvtier/l2/fs/fs_adapter.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <queue>
#include <system_error>

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "kvtier/common/check.h"
#include "kvtier/common/json_config.h"
#include "kvtier/common/logging.h"
#include "kvtier/l2/fs/fs_format.h"

namespace kvtier::l2 {
namespace {

constexpr size_t kNotifyBatch = 1024;
// Loads: read size per operation and operations in flight per object.
constexpr uint64_t kLoadChunk = 1 << 20;
constexpr size_t kLoadWindow = 4;

uint64_t AlignDown(uint64_t n) { return n & ~(uint64_t{kFsAlignment} - 1); }
uint64_t AlignUp(uint64_t n) { return AlignDown(n + kFsAlignment - 1); }
bool IsAligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % kFsAlignment == 0; }

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};
using AlignedBytes = std::unique_ptr<uint8_t[], FreeDeleter>;

// Zero-filled, 4096-aligned, at least `n` bytes (rounded up to the alignment); null on failure.
AlignedBytes AllocAligned(uint64_t n) {
  uint64_t size = std::max<uint64_t>(AlignUp(n), kFsAlignment);
  auto* p = static_cast<uint8_t*>(std::aligned_alloc(kFsAlignment, size));
  if (p != nullptr) std::memset(p, 0, size);
  return AlignedBytes(p);
}

bool RetryableErrno(int err) {
  return err == ENOSPC || err == EDQUOT || err == EMFILE || err == ENFILE || err == ENOMEM ||
         err == EAGAIN || err == EINTR || err == EBUSY;
}

std::string FsTypeName(const std::string& path) {
  struct statfs st {};
  if (::statfs(path.c_str(), &st) != 0) return "unknown";
  switch (static_cast<uint64_t>(st.f_type)) {
    case 0x01021994:
      return "tmpfs";
    case 0xEF53:
      return "ext2/3/4";
    case 0x58465342:
      return "xfs";
    case 0x9123683E:
      return "btrfs";
    case 0x6969:
      return "nfs";
    case 0x794c7630:
      return "overlayfs";
    case 0x65735546:
      return "fuse";
    default:
      return fmt::format("0x{:x}", static_cast<uint64_t>(st.f_type));
  }
}

// Runs `fn(name, d_type)` for every entry of the directory `dir_fd`/`path` except . and ..
template <typename Fn>
Status ForEachEntry(int dir_fd, const char* path, Fn&& fn) {
  int fd = ::openat(dir_fd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::IOError(fmt::format("open dir {}: {}", path, strerror(errno)));
  DIR* dir = ::fdopendir(fd);
  if (dir == nullptr) {
    int err = errno;
    ::close(fd);
    return Status::IOError(fmt::format("fdopendir {}: {}", path, strerror(err)));
  }
  while (true) {
    errno = 0;
    dirent* e = ::readdir(dir);
    if (e == nullptr) break;
    std::string_view name = e->d_name;
    if (name == "." || name == "..") continue;
    unsigned char type = e->d_type;
    if (type == DT_UNKNOWN) {
      struct stat st {};
      if (::fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        type = S_ISDIR(st.st_mode) ? DT_DIR : S_ISREG(st.st_mode) ? DT_REG : DT_UNKNOWN;
      }
    }
    fn(dirfd(dir), std::string(name), type);
  }
  int err = errno;
  ::closedir(dir);
  if (err != 0) return Status::IOError(fmt::format("readdir {}: {}", path, strerror(err)));
  return Status::OK();
}

// Order of ListKeys within one model: chunk hash, rank, group, cache salt.
bool ListOrderLess(const ObjectKey& a, const ObjectKey& b) {
  if (a.chunk_hash() != b.chunk_hash()) return a.chunk_hash() < b.chunk_hash();
  if (a.kv_rank().Packed() != b.kv_rank().Packed()) {
    return a.kv_rank().Packed() < b.kv_rank().Packed();
  }
  if (a.object_group() != b.object_group()) return a.object_group() < b.object_group();
  return a.cache_salt() < b.cache_salt();
}

std::atomic<uint64_t> g_next_instance{1};

}  // namespace

// ---- Tasks ----------------------------------------------------------------------------------

struct FsAdapter::Task {
  enum class Kind : uint8_t { kStore, kLoad };
  Kind kind = Kind::kStore;
  TaskId id = 0;
  std::vector<ObjectKey> keys;
  std::vector<std::span<const uint8_t>> sources;  // store
  std::vector<std::span<uint8_t>> targets;        // load
};

struct FsAdapter::StoreItem {
  size_t key_index = 0;
  std::span<const uint8_t> source;
  std::string tmp_path, final_path;
  AlignedBytes header, bounce;
  bool padded = false;  // O_DIRECT wrote past the end: truncate to the exact size
  int fd = -1;
  int pending_writes = 0;
  bool published = false;
  Status error;
  FsIoOp open, payload, header_write, step, unlink;  // step: truncate, fsync, close, rename
};

// A load reads its record in chunks, at most kLoadWindow in flight, and checksums each chunk as
// soon as it and those before it have landed, while the bytes are still in cache.
struct FsAdapter::LoadItem {
  size_t key_index = 0;
  uint64_t size = 0, generation = 0;
  std::span<uint8_t> target;
  std::string path;
  std::string key_text;
  AlignedBytes header;
  // O_DIRECT only: the whole payload (target not aligned), or its unaligned tail block.
  AlignedBytes bounce;
  bool full_bounce = false;
  uint64_t direct_bytes = 0;  // tail bounce: payload bytes [0, direct_bytes) land in the target
  int fd = -1;
  std::vector<FsIoOp> reads;  // chunk c: payload [c * kLoadChunk, ...); reads[0] has the header
  std::vector<uint8_t> landed;
  size_t next_to_add = 0, next_to_hash = 0, in_flight = 0;
  std::unique_ptr<FsChecksummer> checksum;
  std::optional<FsRecordHeader> parsed;
  bool stop = false;  // no more reads (an error, or a bad header)
  bool ok = false;
  bool bad_record = false;  // corrupt, truncated or missing: remove it
  FsIoOp open, close;

  uint64_t ChunkBegin(size_t c) const { return std::min<uint64_t>(c * kLoadChunk, size); }
  uint64_t ChunkEnd(size_t c) const { return std::min<uint64_t>((c + 1) * kLoadChunk, size); }
};

// ---- Config and creation ---------------------------------------------------------------------

Result<FsAdapterOptions> ParseFsAdapterConfig(const nlohmann::json& config,
                                              const std::string& name) {
  JsonConfig c(config, fmt::format("fs adapter '{}'", name));
  FsAdapterOptions o;
  KVT_ASSIGN_OR_RETURN(o.base_path, c.String("base_path"));
  KVT_ASSIGN_OR_RETURN(o.max_capacity, c.Size("max_capacity", uint64_t{0}));
  KVT_ASSIGN_OR_RETURN(o.use_odirect, c.Bool("use_odirect", false));
  KVT_ASSIGN_OR_RETURN(std::string engine, c.String("io_engine", std::string("io_uring")));
  KVT_ASSIGN_OR_RETURN(int64_t threads, c.Int("io_threads", 2, 1, 64));
  KVT_ASSIGN_OR_RETURN(int64_t depth, c.Int("queue_depth", 32, 1, 4096));
  KVT_ASSIGN_OR_RETURN(o.recover_on_start, c.Bool("recover_on_start", true));
  KVT_ASSIGN_OR_RETURN(o.fsync, c.Bool("fsync", false));
  KVT_RETURN_IF_ERROR(c.Finish());
  if (o.base_path.empty()) {
    return MakeError(
        Status::InvalidArgument(fmt::format("{}: 'base_path': must not be empty", c.section())));
  }
  if (engine == "io_uring") {
    o.io_engine = FsIoEngineKind::kIoUring;
  } else if (engine == "pread") {
    o.io_engine = FsIoEngineKind::kPread;
  } else {
    return MakeError(Status::InvalidArgument(
        fmt::format("{}: 'io_engine': '{}' is not one of io_uring, pread", c.section(), engine)));
  }
  o.io_threads = static_cast<int>(threads);
  o.queue_depth = static_cast<int>(depth);
  return o;
}

Result<std::unique_ptr<L2Adapter>> MakeFsAdapter(const nlohmann::json& config,
                                                 const std::string& name) {
  KVT_ASSIGN_OR_RETURN(FsAdapterOptions options, ParseFsAdapterConfig(config, name));
  KVT_ASSIGN_OR_RETURN(std::unique_ptr<FsAdapter> adapter,
                       FsAdapter::Create(std::move(options), name));
  return std::unique_ptr<L2Adapter>(std::move(adapter));
}

FsAdapter::FsAdapter(FsAdapterOptions options, std::string name)
    : L2Adapter("fs", std::move(name), options.max_capacity),
      options_(std::move(options)),
      instance_(g_next_instance.fetch_add(1, std::memory_order_relaxed)) {}

Result<std::unique_ptr<FsAdapter>> FsAdapter::Create(FsAdapterOptions options, std::string name) {
  if (options.io_threads < 1 || options.queue_depth < 1) {
    return MakeError(
        Status::InvalidArgument("fs adapter: io_threads and queue_depth must be >= 1"));
  }
  std::unique_ptr<FsAdapter> adapter(new FsAdapter(std::move(options), std::move(name)));
  Status status = adapter->Init();
  if (!status.ok()) {
    adapter->Close();
    return MakeError(status.WithContext(fmt::format("fs adapter '{}'", adapter->name())));
  }
  return adapter;
}

FsAdapter::~FsAdapter() {
  Close();
  if (dir_fd_ >= 0) ::close(dir_fd_);
}

Status FsAdapter::Init() {
  const std::string& base = options_.base_path;
  std::error_code ec;
  std::filesystem::create_directories(base, ec);
  if (ec) return Status::IOError(fmt::format("create {}: {}", base, ec.message()));
  dir_fd_ = ::open(base.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd_ < 0) return Status::IOError(fmt::format("open {}: {}", base, strerror(errno)));

  lock_fd_ =
      ::openat(dir_fd_, std::string(kFsLockFile).c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) return Status::IOError(fmt::format("open {}/LOCK: {}", base, strerror(errno)));
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    return Status::FailedPrecondition(
        fmt::format("{} is in use by another fs adapter (LOCK is held)", base));
  }

  if (::mkdirat(dir_fd_, std::string(kFsTempDir).c_str(), 0755) != 0 && errno != EEXIST) {
    return Status::IOError(fmt::format("mkdir {}/{}: {}", base, kFsTempDir, strerror(errno)));
  }

  if (options_.use_odirect) {
    // Probe once, so a filesystem that refuses O_DIRECT fails creation with a clear reason.
    std::string probe = NextTempPath();
    int fd = ::openat(dir_fd_, probe.c_str(), OpenFlags(/*write=*/true), 0644);
    int err = fd < 0 ? errno : 0;
    if (fd >= 0) {
      AlignedBytes block = AllocAligned(kFsAlignment);
      if (::pwrite(fd, block.get(), kFsAlignment, 0) != static_cast<ssize_t>(kFsAlignment)) {
        err = errno != 0 ? errno : EIO;
      }
      ::close(fd);
      ::unlinkat(dir_fd_, probe.c_str(), 0);
    }
    if (err != 0) {
      return Status::InvalidArgument(fmt::format(
          "use_odirect: {} (filesystem {}) refuses O_DIRECT: {}; set use_odirect to false or use "
          "another directory",
          base, FsTypeName(base), strerror(err)));
    }
  }

  for (int t = 0; t < options_.io_threads; ++t) {
    std::unique_ptr<FsIoEngine> engine;
    if (options_.io_engine == FsIoEngineKind::kIoUring && engine_fallback_reason_.empty()) {
      auto uring = MakeUringFsIoEngine(static_cast<unsigned>(options_.queue_depth));
      if (uring) {
        engine = std::move(*uring);
      } else {
        engine_fallback_reason_ = uring.error().ToString();
        KVT_LOG_WARN("fs adapter '{}': io_uring unavailable ({}); using the pread engine", name(),
                     engine_fallback_reason_);
        engines_.clear();  // every thread uses the same kind
        t = -1;
        continue;
      }
    } else {
      engine = MakePreadFsIoEngine();
    }
    if (options_.wrap_engine) engine = options_.wrap_engine(std::move(engine));
    engines_.push_back(std::move(engine));
  }
  engine_name_ = std::string(engines_.front()->name());

  // We hold LOCK, so nobody else is writing: every temp file is a crash's leftover.
  uint64_t temp_files = 0;
  KVT_RETURN_IF_ERROR(ForEachEntry(dir_fd_, std::string(kFsTempDir).c_str(),
                                   [&](int fd, const std::string& file, unsigned char type) {
                                     if (type == DT_REG && ::unlinkat(fd, file.c_str(), 0) == 0) {
                                       ++temp_files;
                                     }
                                   }));
  {
    MutexLock lock(&status_mu_);
    recovery_.removed_temp_files = temp_files;
  }
  KVT_RETURN_IF_ERROR(InitEvents());
  StartThreads();
  KVT_LOG_INFO(
      "fs adapter '{}': {} ({}), engine {}, {} threads, O_DIRECT {}, fsync {}; removed {} temp "
      "files",
      name(), base, FsTypeName(base), engine_name_, options_.io_threads, options_.use_odirect,
      options_.fsync, temp_files);
  return Status::OK();
}

// The recovery scan: every fan-out directory, every record's header (not its payload).
Status FsAdapter::DoStart() {
  if (!options_.recover_on_start) return Status::OK();
  FsRecoveryStats stats;
  std::vector<ObjectKey> keys;
  std::vector<uint64_t> sizes;
  std::vector<std::string> fanout_dirs;
  KVT_RETURN_IF_ERROR(
      ForEachEntry(dir_fd_, ".", [&](int, const std::string& file, unsigned char type) {
        if (type == DT_DIR && IsFsFanoutDir(file)) {
          fanout_dirs.push_back(file);
          fanout_ready_[std::stoi(file, nullptr, 16)].store(true, std::memory_order_release);
        } else if (file != kFsTempDir && file != kFsLockFile) {
          ++stats.ignored_files;
        }
      }));
  AlignedBytes header = AllocAligned(kFsRecordHeaderSize);
  if (!header) return Status::OutOfMemory("fs recovery: cannot allocate a header buffer");
  for (const std::string& dir : fanout_dirs) {
    KVT_RETURN_IF_ERROR(ForEachEntry(
        dir_fd_, dir.c_str(), [&](int fd, const std::string& file, unsigned char type) {
          Result<ObjectKey> name_key = ParseFsRecordFileName(file);
          if (type != DT_REG || (!name_key && !IsFsHashedFileName(file))) {
            ++stats.ignored_files;  // not ours: leave it alone
            return;
          }
          // Magic, version, header checksum, the key against the name, the size against the
          // file's. The payload checksum is checked by the first load.
          Status bad;
          uint64_t size = 0;
          std::optional<ObjectKey> key;
          int rec = ::openat(fd, file.c_str(), O_RDONLY | O_CLOEXEC);
          struct stat st {};
          ssize_t n = -1;
          if (rec >= 0) {
            n = ::pread(rec, header.get(), kFsRecordHeaderSize, 0);
            if (n >= 0 && ::fstat(rec, &st) != 0) n = -1;
          }
          if (n < 0) {
            // Unreadable is not corrupt: leave it, unindexed.
            KVT_LOG_WARN("fs adapter '{}': cannot read {}/{}: {}; ignoring it", name(), dir, file,
                         strerror(errno));
            if (rec >= 0) ::close(rec);
            ++stats.ignored_files;
            return;
          }
          ::close(rec);
          auto parsed =
              ParseFsRecordHeader(std::span<const uint8_t>(header.get(), static_cast<size_t>(n)));
          if (!parsed) {
            bad = parsed.error();
          } else if (auto k = ObjectKey::Parse(parsed->key); !k) {
            bad = Status::Corruption("header key does not parse");
          } else if ((name_key && !(*name_key == *k)) || FsRecordFileName(*k) != file ||
                     FsFanoutDir(*k) != dir) {
            bad = Status::Corruption("header key does not match the file name");
          } else if (static_cast<uint64_t>(st.st_size) !=
                     kFsRecordHeaderSize + parsed->payload_size) {
            bad = Status::Corruption(
                fmt::format("file size {} != header + {}", st.st_size, parsed->payload_size));
          } else {
            key = *k;
            size = parsed->payload_size;
          }
          if (!key) {
            KVT_LOG_WARN("fs adapter '{}': removing {}/{}: {}", name(), dir, file, bad.ToString());
            if (::unlinkat(fd, file.c_str(), 0) == 0) ++stats.removed_corrupt_files;
            return;
          }
          keys.push_back(*key);
          sizes.push_back(size);
        }));
  }
  // Keys a store wrote before Start are in the index already (and accounted): skip them.
  std::vector<ObjectKey> fresh;
  std::vector<uint64_t> fresh_sizes;
  {
    MutexLock lock(&index_mu_);
    for (size_t i = 0; i < keys.size(); ++i) {
      auto [it, inserted] = index_.try_emplace(keys[i]);
      if (!inserted) continue;
      it->second = Entry{sizes[i], next_generation_.fetch_add(1), EntryState::kPresent,
                         /*accounted=*/false};
      fresh.push_back(keys[i]);
      fresh_sizes.push_back(sizes[i]);
      stats.bytes += sizes[i];
    }
  }
  stats.keys = fresh.size();
  for (size_t i = 0; i < fresh.size(); i += kNotifyBatch) {
    size_t m = std::min(kNotifyBatch, fresh.size() - i);
    NotifyStored(std::span(fresh).subspan(i, m), std::span(fresh_sizes).subspan(i, m));
  }
  MarkAccounted(fresh);
  {
    MutexLock lock(&status_mu_);
    stats.removed_temp_files = recovery_.removed_temp_files;
    recovery_ = stats;
  }
  KVT_LOG_INFO(
      "fs adapter '{}': recovered {} keys ({} bytes), removed {} corrupt files, ignored {} "
      "files",
      name(), stats.keys, stats.bytes, stats.removed_corrupt_files, stats.ignored_files);
  return Status::OK();
}

void FsAdapter::MarkAccounted(std::span<const ObjectKey> keys) {
  if (keys.empty()) return;
  {
    MutexLock lock(&index_mu_);
    for (const ObjectKey& key : keys) {
      auto e = index_.find(key);
      KVT_DCHECK(e != index_.end());  // nobody removes an unaccounted entry
      e->second.accounted = true;
    }
  }
  index_cv_.NotifyAll();
}

FsRecoveryStats FsAdapter::recovery_stats() const {
  MutexLock lock(&status_mu_);
  return recovery_;
}

void FsAdapter::StartThreads() {
  for (auto& engine : engines_) {
    threads_.emplace_back([this, e = engine.get()] { IoThread(e); });
  }
}

std::string FsAdapter::NextTempPath() {
  return fmt::format("{}/{}-{}-{}{}", kFsTempDir, ::getpid(), instance_,
                     next_temp_.fetch_add(1, std::memory_order_relaxed), kFsTempSuffix);
}

int FsAdapter::OpenFlags(bool write) const {
  int flags = O_CLOEXEC | (write ? O_WRONLY | O_CREAT | O_EXCL : O_RDONLY);
  if (options_.use_odirect) flags |= O_DIRECT;
  return flags;
}

std::string FsAdapter::RelativePath(const ObjectKey& key) { return FsRecordPath(key); }

Status FsAdapter::EnsureFanoutDir(const ObjectKey& key) {
  uint8_t b = key.chunk_hash().bytes[0];
  if (fanout_ready_[b].load(std::memory_order_acquire)) return Status::OK();
  std::string dir = FsFanoutDir(key);
  if (::mkdirat(dir_fd_, dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return Status::IOError(fmt::format("mkdir {}/{}: {}", options_.base_path, dir, strerror(errno)),
                           RetryableErrno(errno));
  }
  fanout_ready_[b].store(true, std::memory_order_release);
  return Status::OK();
}

// ---- Close, status ---------------------------------------------------------------------------

void FsAdapter::DoClose() {
  {
    MutexLock lock(&queue_mu_);
    stop_ = true;
  }
  queue_cv_.NotifyAll();
  // A thread finishes the task it is running (its I/O touches caller buffers), then exits.
  for (std::thread& t : threads_) t.join();
  threads_.clear();
  {
    MutexLock lock(&queue_mu_);
    queue_.clear();  // the base fails what is left
  }
  engines_.clear();
  if (lock_fd_ >= 0) {
    ::close(lock_fd_);  // releases the flock: another adapter may take the directory
    lock_fd_ = -1;
  }
}

bool FsAdapter::DoHealthy() const {
  return !odirect_failed_.load(std::memory_order_relaxed) &&
         !engine_failed_.load(std::memory_order_relaxed);
}

void FsAdapter::DoStatusJson(nlohmann::json* out) const {
  size_t files = 0, locked = 0;
  {
    MutexLock lock(&index_mu_);
    for (const auto& [key, entry] : index_) files += entry.state == EntryState::kPresent;
    locked = locks_.size();
  }
  (*out)["counters"]["corrupt_records"] = corrupt_records_.load(std::memory_order_relaxed);
  nlohmann::json fs = {
      {"base_path", options_.base_path},
      {"filesystem", FsTypeName(options_.base_path)},
      {"io_engine", engine_name_},
      {"io_engine_fallback", engine_fallback_reason_},
      {"io_threads", options_.io_threads},
      {"queue_depth", options_.queue_depth},
      {"use_odirect", options_.use_odirect},
      {"fsync", options_.fsync},
      {"files", files},
      {"locked_keys", locked},
      {"corrupt_records", corrupt_records_.load(std::memory_order_relaxed)},
      {"missing_records", missing_records_.load(std::memory_order_relaxed)},
      {"io_errors", io_errors_.load(std::memory_order_relaxed)},
      {"bounced_objects", bounced_objects_.load(std::memory_order_relaxed)},
  };
  MutexLock lock(&status_mu_);
  fs["recovery"] = {{"keys", recovery_.keys},
                    {"bytes", recovery_.bytes},
                    {"removed_temp_files", recovery_.removed_temp_files},
                    {"removed_corrupt_files", recovery_.removed_corrupt_files},
                    {"ignored_files", recovery_.ignored_files}};
  fs["last_error"] = last_error_;
  fs["odirect_error"] = odirect_error_;
  fs["io_engine_error"] = engine_error_;
  (*out)["fs"] = std::move(fs);
}

void FsAdapter::NoteError(const Status& status, bool odirect_refused) {
  io_errors_.fetch_add(1, std::memory_order_relaxed);
  MutexLock lock(&status_mu_);
  last_error_ = status.ToString();
  if (odirect_refused && odirect_error_.empty()) {
    odirect_error_ = last_error_;
    odirect_failed_.store(true, std::memory_order_relaxed);
    KVT_LOG_ERROR(
        "fs adapter '{}': the filesystem under {} refused O_DIRECT ({}); the adapter reports "
        "itself unhealthy from now on. It never falls back to buffered I/O: its stores and loads "
        "go on being tried with O_DIRECT and fail while it is refused. Set use_odirect to false, "
        "or move base_path to a filesystem that supports O_DIRECT, and restart",
        name(), options_.base_path, last_error_);
  }
}

void FsAdapter::CheckEngine(const FsIoEngine* engine) {
  Status status = engine->status();
  if (status.ok()) return;
  size_t thread = 0;
  while (thread < engines_.size() && engines_[thread].get() != engine) ++thread;
  std::string error = fmt::format("I/O thread {}: {}", thread, status.ToString());
  {
    MutexLock lock(&status_mu_);
    if (!failed_engines_.insert(engine).second) return;  // noted already
    last_error_ = error;
    if (engine_error_.empty()) engine_error_ = error;
  }
  engine_failed_.store(true, std::memory_order_relaxed);
  KVT_LOG_ERROR(
      "fs adapter '{}': {}. The operations caught in the failure failed their tasks; that thread "
      "goes on with blocking I/O, and the adapter reports itself unhealthy from now on",
      name(), error);
}

bool FsAdapter::ODirectRefused(const FsIoOp& op, int err) const {
  return options_.use_odirect && err == EINVAL &&
         (op.kind == FsIoOpKind::kOpen || op.kind == FsIoOpKind::kReadv ||
          op.kind == FsIoOpKind::kWritev);
}

// ---- Queue -----------------------------------------------------------------------------------

void FsAdapter::DoSubmitStore(TaskId task, std::span<const ObjectKey> keys,
                              std::span<const std::span<const uint8_t>> objects) {
  auto t = std::make_unique<Task>();
  t->kind = Task::Kind::kStore;
  t->id = task;
  t->keys.assign(keys.begin(), keys.end());
  t->sources.assign(objects.begin(), objects.end());
  {
    MutexLock lock(&queue_mu_);
    queue_.push_back(std::move(t));
  }
  queue_cv_.NotifyOne();
}

void FsAdapter::DoSubmitLoad(TaskId task, std::span<const ObjectKey> keys,
                             std::span<const std::span<uint8_t>> buffers) {
  auto t = std::make_unique<Task>();
  t->kind = Task::Kind::kLoad;
  t->id = task;
  t->keys.assign(keys.begin(), keys.end());
  t->targets.assign(buffers.begin(), buffers.end());
  {
    MutexLock lock(&queue_mu_);
    queue_.push_back(std::move(t));
  }
  queue_cv_.NotifyOne();
}

bool FsAdapter::DoCancel(TaskId task) {
  MutexLock lock(&queue_mu_);
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if ((*it)->id == task) {
      queue_.erase(it);
      return true;
    }
  }
  // Running: its I/O may be using the buffers. Otherwise finished (or a lookup): true.
  return !running_.contains(task);
}

void FsAdapter::IoThread(FsIoEngine* engine) {
  while (true) {
    std::unique_ptr<Task> task;
    {
      MutexLock lock(&queue_mu_);
      while (!stop_ && queue_.empty()) queue_cv_.Wait(&queue_mu_);
      if (stop_) return;
      task = std::move(queue_.front());
      queue_.pop_front();
      running_.insert(task->id);
    }
    if (task->kind == Task::Kind::kStore) {
      RunStore(engine, task.get());
    } else {
      RunLoad(engine, task.get());
    }
    MutexLock lock(&queue_mu_);
    running_.erase(task->id);
  }
}

// ---- Lookup, unlock, delete, list --------------------------------------------------------------

void FsAdapter::DoSubmitLookupAndLock(TaskId task, std::span<const ObjectKey> keys) {
  Bitmap found(keys.size());
  {
    MutexLock lock(&index_mu_);
    for (size_t i = 0; i < keys.size(); ++i) {
      auto it = index_.find(keys[i]);
      if (it == index_.end() || it->second.state != EntryState::kPresent) continue;
      locks_.Lock(keys[i]);
      found.Set(i);
    }
  }
  CompleteLookup(task, std::move(found));
}

void FsAdapter::DoUnlock(std::span<const ObjectKey> keys) {
  MutexLock lock(&index_mu_);
  for (const ObjectKey& key : keys) locks_.Unlock(key);
}

Result<Bitmap> FsAdapter::DoDelete(std::span<const ObjectKey> keys, bool force) {
  Bitmap deleted(keys.size());  // bit: not stored after the call
  std::vector<size_t> doomed_at, repeats;
  std::vector<ObjectKey> doomed;
  std::vector<uint64_t> sizes;
  {
    MutexLock lock(&index_mu_);
    WaitForSettled(keys);
    for (size_t i = 0; i < keys.size(); ++i) {
      auto it = index_.find(keys[i]);
      if (it == index_.end()) {
        deleted.Set(i);  // absent already
        continue;
      }
      switch (it->second.state) {
        case EntryState::kWriting:  // a store is writing it: it stays
          break;
        case EntryState::kRemoving:  // marked below for an earlier copy of the key in `keys`
          repeats.push_back(i);
          break;
        case EntryState::kPresent:
          KVT_DCHECK(it->second.accounted);  // settled
          if (!force && locks_.IsLocked(keys[i])) break;
          it->second.state = EntryState::kRemoving;
          doomed_at.push_back(i);
          doomed.push_back(keys[i]);
          sizes.push_back(it->second.size);
          break;
      }
    }
  }
  Status first_error;
  std::vector<bool> removed = Unpublish(doomed, sizes, &first_error);
  for (size_t j = 0; j < doomed.size(); ++j) {
    if (removed[j]) deleted.Set(doomed_at[j]);
  }
  for (size_t i : repeats) {
    for (size_t j = 0; j < doomed.size(); ++j) {
      if (doomed[j] == keys[i] && removed[j]) deleted.Set(i);
    }
  }
  if (!first_error.ok()) {
    KVT_LOG_WARN("fs adapter '{}': delete kept keys: {}", name(), first_error.ToString());
  }
  return deleted;
}

std::vector<bool> FsAdapter::Unpublish(std::span<const ObjectKey> keys,
                                       std::span<const uint64_t> sizes, Status* first_error) {
  std::vector<bool> removed(keys.size());
  std::vector<ObjectKey> gone;
  std::vector<uint64_t> gone_sizes;
  for (size_t j = 0; j < keys.size(); ++j) {
    std::string path = FsRecordPath(keys[j]);
    if (::unlinkat(dir_fd_, path.c_str(), 0) == 0 || errno == ENOENT) {
      removed[j] = true;
      gone.push_back(keys[j]);
      gone_sizes.push_back(sizes[j]);
    } else {
      Status s = Status::IOError(fmt::format("unlink {}: {}", path, strerror(errno)),
                                 RetryableErrno(errno));
      NoteError(s, false);
      if (first_error != nullptr && first_error->ok()) *first_error = s;
    }
  }
  // Listeners hear of the deletion while the entries still block a new store of the keys, so
  // a re-store's OnL2KeysStored always follows this OnL2KeysDeleted.
  NotifyDeleted(gone, gone_sizes);
  if (!keys.empty()) {
    {
      MutexLock lock(&index_mu_);
      for (size_t j = 0; j < keys.size(); ++j) {
        auto it = index_.find(keys[j]);
        KVT_DCHECK(it != index_.end() && it->second.state == EntryState::kRemoving);
        if (removed[j]) {
          index_.erase(it);
        } else {
          it->second.state = EntryState::kPresent;
        }
      }
    }
    index_cv_.NotifyAll();
  }
  return removed;
}

void FsAdapter::WaitForSettled(std::span<const ObjectKey> keys) {
  while (true) {
    bool wait = false;
    for (const ObjectKey& key : keys) {
      auto e = index_.find(key);
      if (e != index_.end() &&
          (e->second.state == EntryState::kRemoving ||
           (e->second.state == EntryState::kPresent && !e->second.accounted))) {
        wait = true;
        break;
      }
    }
    if (!wait) return;
    index_cv_.Wait(&index_mu_);
  }
}

Result<KeyPage> FsAdapter::DoListKeys(std::string_view model_name, size_t page_size,
                                      std::string_view cursor) {
  std::optional<ObjectKey> after;
  if (!cursor.empty()) {
    Result<ObjectKey> k = ObjectKey::Parse(cursor);
    if (!k || k->model_name() != model_name) {
      return MakeError(Status::InvalidArgument("ListKeys: invalid cursor"));
    }
    after = *k;
  }
  // One pass over the index keeping the page_size + 1 smallest keys after the cursor: O(n log p)
  // per page, no ordered index to maintain on the hot path.
  auto less = [](const std::pair<ObjectKey, uint64_t>& a, const std::pair<ObjectKey, uint64_t>& b) {
    return ListOrderLess(a.first, b.first);
  };
  std::priority_queue<std::pair<ObjectKey, uint64_t>, std::vector<std::pair<ObjectKey, uint64_t>>,
                      decltype(less)>
      heap(less);
  absl::flat_hash_map<keys::NamespaceId, bool> model_match;
  {
    MutexLock lock(&index_mu_);
    for (const auto& [key, entry] : index_) {
      if (entry.state != EntryState::kPresent) continue;
      auto [m, inserted] = model_match.try_emplace(key.namespace_id(), false);
      if (inserted) m->second = key.model_name() == model_name;
      if (!m->second || (after && !ListOrderLess(*after, key))) continue;
      if (heap.size() <= page_size) {
        heap.emplace(key, entry.size);
      } else if (ListOrderLess(key, heap.top().first)) {
        heap.pop();
        heap.emplace(key, entry.size);
      }
    }
  }
  KeyPage page;
  while (!heap.empty()) {
    page.keys.push_back(heap.top());
    heap.pop();
  }
  std::reverse(page.keys.begin(), page.keys.end());
  if (page.keys.size() > page_size) {
    page.keys.resize(page_size);
    page.next_cursor = page.keys.back().first.ToString();
  }
  return page;
}

std::vector<std::pair<ObjectKey, uint64_t>> FsAdapter::StoredKeys() const {
  std::vector<std::pair<ObjectKey, uint64_t>> out;
  MutexLock lock(&index_mu_);
  for (const auto& [key, entry] : index_) {
    if (entry.state == EntryState::kPresent) out.emplace_back(key, entry.size);
  }
  return out;
}

size_t FsAdapter::LockedKeyCount() const {
  MutexLock lock(&index_mu_);
  return locks_.size();
}

// ---- Store -----------------------------------------------------------------------------------

void FsAdapter::RunStore(FsIoEngine* engine, Task* task) {
  const size_t n = task->keys.size();
  // Claim the keys: absent ones become kWriting; present or writing ones are skipped.
  std::vector<size_t> todo;
  {
    MutexLock lock(&index_mu_);
    for (size_t i = 0; i < n; ++i) {
      // A key being removed: wait until the listeners heard of it, then store it anew.
      while (true) {
        auto e = index_.find(task->keys[i]);
        if (e == index_.end() || e->second.state != EntryState::kRemoving) break;
        index_cv_.Wait(&index_mu_);
      }
      auto [it, inserted] = index_.try_emplace(task->keys[i]);
      if (!inserted) continue;
      it->second = Entry{task->sources[i].size(), next_generation_.fetch_add(1),
                         EntryState::kWriting, false};
      todo.push_back(i);
    }
  }

  const bool direct = options_.use_odirect;
  std::vector<StoreItem> items(todo.size());
  for (size_t j = 0; j < todo.size(); ++j) {
    StoreItem& it = items[j];
    it.key_index = todo[j];
    it.source = task->sources[it.key_index];
    it.tmp_path = NextTempPath();
    it.final_path = FsRecordPath(task->keys[it.key_index]);
    // Created on first use (at most 256 mkdirs per directory's life), before the rename needs it.
    it.error = EnsureFanoutDir(task->keys[it.key_index]);
    if (!it.error.ok()) {
      NoteError(it.error, false);
      continue;
    }
    it.open = FsIoOp{.kind = FsIoOpKind::kOpen,
                     .dir_fd = dir_fd_,
                     .path = it.tmp_path.c_str(),
                     .flags = OpenFlags(true),
                     .mode = 0644,
                     .user = j};
    engine->Add(&it.open);
  }

  auto fail = [&](StoreItem& it, const FsIoOp& op, int err) {
    if (!it.error.ok()) return;
    const bool odirect_refused = ODirectRefused(op, err);
    std::string what =
        err > 0 ? strerror(err) : fmt::format("short transfer ({} bytes)", op.result);
    it.error = Status::IOError(
        fmt::format("{} {}{}: {}", FsIoOpKindName(op.kind), op.path ? op.path : it.tmp_path.c_str(),
                    odirect_refused ? " with O_DIRECT (the filesystem refuses O_DIRECT)" : "",
                    what),
        err > 0 && RetryableErrno(err));
    NoteError(it.error, odirect_refused);
  };
  auto add_step = [&](StoreItem& it, FsIoOpKind kind, size_t j) {
    it.step = FsIoOp{.kind = kind, .dir_fd = dir_fd_, .fd = it.fd, .user = j};
    if (kind == FsIoOpKind::kTruncate) it.step.offset = kFsRecordHeaderSize + it.source.size();
    if (kind == FsIoOpKind::kRename) {
      it.step.path = it.tmp_path.c_str();
      it.step.new_path = it.final_path.c_str();
    }
    engine->Add(&it.step);
  };
  auto add_unlink = [&](StoreItem& it, size_t j) {
    it.unlink = FsIoOp{
        .kind = FsIoOpKind::kUnlink, .dir_fd = dir_fd_, .path = it.tmp_path.c_str(), .user = j};
    engine->Add(&it.unlink);
  };
  // After the writes (or a failed one): truncate, fsync, close, then rename or unlink.
  auto after_writes = [&](StoreItem& it, size_t j, FsIoOpKind done) {
    if (!it.error.ok()) {
      if (it.fd >= 0) {
        add_step(it, FsIoOpKind::kClose, j);
      } else {
        add_unlink(it, j);
      }
      return;
    }
    if (done == FsIoOpKind::kWritev && it.padded) {
      add_step(it, FsIoOpKind::kTruncate, j);
    } else if ((done == FsIoOpKind::kWritev || done == FsIoOpKind::kTruncate) && options_.fsync) {
      add_step(it, FsIoOpKind::kFsync, j);
    } else {
      add_step(it, FsIoOpKind::kClose, j);
    }
  };

  while (FsIoOp* op = engine->Next()) {
    const size_t j = op->user;
    StoreItem& it = items[j];
    const int err = op->result < 0 ? static_cast<int>(-op->result) : 0;
    switch (op->kind) {
      case FsIoOpKind::kOpen: {
        if (err != 0) {
          fail(it, *op, err);
          break;  // no file was created (O_EXCL)
        }
        it.fd = static_cast<int>(op->result);
        const uint64_t size = it.source.size();
        if (size > 0) {
          it.payload = FsIoOp{.kind = FsIoOpKind::kWritev,
                              .fd = it.fd,
                              .offset = kFsRecordHeaderSize,
                              .user = j,
                              .direct = direct};
          if (!direct) {
            it.payload.iov[0] = {const_cast<uint8_t*>(it.source.data()), size};
            it.payload.iov_count = 1;
          } else if (IsAligned(it.source.data())) {
            uint64_t prefix = AlignDown(size);
            if (prefix > 0)
              it.payload.iov[it.payload.iov_count++] = {const_cast<uint8_t*>(it.source.data()),
                                                        prefix};
            if (prefix < size) {
              it.bounce = AllocAligned(kFsAlignment);
              if (it.bounce) {
                std::memcpy(it.bounce.get(), it.source.data() + prefix, size - prefix);
                it.payload.iov[it.payload.iov_count++] = {it.bounce.get(), kFsAlignment};
                it.padded = true;
              }
            }
          } else {
            it.bounce = AllocAligned(size);
            if (it.bounce) {
              std::memcpy(it.bounce.get(), it.source.data(), size);
              it.payload.iov[it.payload.iov_count++] = {it.bounce.get(), AlignUp(size)};
              it.padded = AlignUp(size) != size;
              bounced_objects_.fetch_add(1, std::memory_order_relaxed);
            }
          }
          if (direct && (it.padded || !IsAligned(it.source.data())) && !it.bounce) {
            it.error = Status::OutOfMemory("fs store: cannot allocate an O_DIRECT bounce buffer");
            after_writes(it, j, FsIoOpKind::kWritev);
            break;
          }
          engine->Add(&it.payload);
          ++it.pending_writes;
          engine->Flush();  // the kernel copies while we checksum
        }
        it.header = AllocAligned(kFsRecordHeaderSize);
        Status s = it.header ? EncodeFsRecordHeader(
                                   FsRecordHeader{task->keys[it.key_index].ToString(), size,
                                                  FsChecksum(it.source)},
                                   std::span<uint8_t>(it.header.get(), kFsRecordHeaderSize))
                             : Status::OutOfMemory("fs store: cannot allocate a header");
        if (!s.ok()) {
          if (it.error.ok()) it.error = s;
          if (it.pending_writes == 0) after_writes(it, j, FsIoOpKind::kWritev);
          break;
        }
        it.header_write = FsIoOp{.kind = FsIoOpKind::kWritev,
                                 .fd = it.fd,
                                 .offset = 0,
                                 .iov_count = 1,
                                 .user = j,
                                 .direct = direct};
        it.header_write.iov[0] = {it.header.get(), kFsRecordHeaderSize};
        engine->Add(&it.header_write);
        ++it.pending_writes;
        break;
      }
      case FsIoOpKind::kWritev:
        if (op->result != static_cast<int64_t>(op->TotalLength())) fail(it, *op, err);
        if (--it.pending_writes == 0) after_writes(it, j, FsIoOpKind::kWritev);
        break;
      case FsIoOpKind::kTruncate:
      case FsIoOpKind::kFsync:
        if (err != 0) fail(it, *op, err);
        after_writes(it, j, op->kind);
        break;
      case FsIoOpKind::kClose:
        it.fd = -1;
        if (err != 0) fail(it, *op, err);
        if (it.error.ok()) {
          add_step(it, FsIoOpKind::kRename, j);
        } else {
          add_unlink(it, j);
        }
        break;
      case FsIoOpKind::kRename:
        if (err != 0) {
          fail(it, *op, err);
          add_unlink(it, j);
        } else {
          it.published = true;
        }
        break;
      case FsIoOpKind::kUnlink:
      case FsIoOpKind::kReadv:
        break;
    }
  }

  std::vector<ObjectKey> stored;
  std::vector<uint64_t> sizes;
  Status first_error;
  size_t failed = 0;
  {
    MutexLock lock(&index_mu_);
    for (StoreItem& it : items) {
      const ObjectKey& key = task->keys[it.key_index];
      auto e = index_.find(key);
      KVT_DCHECK(e != index_.end() && e->second.state == EntryState::kWriting);
      if (it.published) {
        e->second.state = EntryState::kPresent;
        stored.push_back(key);
        sizes.push_back(it.source.size());
      } else {
        index_.erase(e);
        if (failed++ == 0) first_error = it.error.WithContext(key.ToString());
      }
    }
  }
  // A failed task still reports (and so accounts) the keys it did publish.
  Status status;
  if (failed > 0) {
    status = Status(
        first_error.code(),
        fmt::format("fs store: {} of {} keys failed; first: {}", failed, n, first_error.message()),
        first_error.retryable());
  }
  CheckEngine(engine);  // before the completion: whoever sees it sees the adapter's health
  CompleteStore(task->id, std::move(status), stored, sizes);
  MarkAccounted(stored);
}

// ---- Load ------------------------------------------------------------------------------------

void FsAdapter::RunLoad(FsIoEngine* engine, Task* task) {
  const size_t n = task->keys.size();
  const bool direct = options_.use_odirect;
  std::vector<LoadItem> items;
  items.reserve(n);
  {
    MutexLock lock(&index_mu_);
    for (size_t i = 0; i < n; ++i) {
      auto e = index_.find(task->keys[i]);
      if (e == index_.end() || e->second.state != EntryState::kPresent) continue;
      if (task->targets[i].size() != e->second.size) {  // the wrong object, for the caller
        KVT_LOG_DEBUG("fs adapter '{}': load buffer of {} bytes for a {}-byte object", name(),
                      task->targets[i].size(), e->second.size);
        continue;
      }
      LoadItem& it = items.emplace_back();
      it.key_index = i;
      it.size = e->second.size;
      it.generation = e->second.generation;
    }
  }

  for (size_t j = 0; j < items.size(); ++j) {
    LoadItem& it = items[j];
    it.target = task->targets[it.key_index];
    it.path = FsRecordPath(task->keys[it.key_index]);
    it.open = FsIoOp{.kind = FsIoOpKind::kOpen,
                     .dir_fd = dir_fd_,
                     .path = it.path.c_str(),
                     .flags = OpenFlags(false),
                     .user = j};
    engine->Add(&it.open);
  }

  auto io_fail = [&](LoadItem& it, const FsIoOp& op, int err) {
    it.stop = true;
    const bool odirect_refused = ODirectRefused(op, err);
    NoteError(
        Status::IOError(fmt::format("{} {}{}: {}", FsIoOpKindName(op.kind), it.path,
                                    odirect_refused ? " with O_DIRECT (the filesystem refuses "
                                                      "O_DIRECT)"
                                                    : "",
                                    strerror(err)),
                        RetryableErrno(err)),
        odirect_refused);
  };
  auto corrupt = [&](LoadItem& it, std::string_view why) {
    it.stop = true;
    it.bad_record = true;
    corrupt_records_.fetch_add(1, std::memory_order_relaxed);
    KVT_LOG_WARN("fs adapter '{}': corrupt record {}: {}; removing it", name(), it.path, why);
  };
  // Builds the chunk reads once the file is open.
  auto plan = [&](LoadItem& it, size_t j) -> bool {
    it.header = AllocAligned(kFsRecordHeaderSize);
    uint8_t* dst = it.target.data();
    if (direct && !IsAligned(dst) && it.size > 0) {
      it.full_bounce = true;
      it.bounce = AllocAligned(it.size);
      bounced_objects_.fetch_add(1, std::memory_order_relaxed);
    } else if (direct && it.size % kFsAlignment != 0) {
      it.direct_bytes = AlignDown(it.size);
      it.bounce = AllocAligned(kFsAlignment);
    } else {
      it.direct_bytes = it.size;
    }
    if (!it.header || (direct && it.direct_bytes < it.size && !it.bounce)) return false;
    const size_t chunks = std::max<size_t>(1, (it.size + kLoadChunk - 1) / kLoadChunk);
    it.reads.resize(chunks);
    it.landed.assign(chunks, 0);
    for (size_t c = 0; c < chunks; ++c) {
      FsIoOp& op = it.reads[c];
      uint64_t begin = it.ChunkBegin(c), end = it.ChunkEnd(c);
      op = FsIoOp{.kind = FsIoOpKind::kReadv,
                  .fd = it.fd,
                  .offset = c == 0 ? 0 : kFsRecordHeaderSize + begin,
                  .user = j,
                  .direct = direct};
      if (c == 0) op.iov[op.iov_count++] = {it.header.get(), kFsRecordHeaderSize};
      if (it.full_bounce) {
        op.iov[op.iov_count++] = {it.bounce.get() + begin, AlignUp(end - begin)};
      } else {
        uint64_t direct_end = std::min(end, it.direct_bytes);
        if (direct_end > begin) op.iov[op.iov_count++] = {dst + begin, direct_end - begin};
        if (end > it.direct_bytes) op.iov[op.iov_count++] = {it.bounce.get(), kFsAlignment};
      }
    }
    it.checksum = std::make_unique<FsChecksummer>();
    return true;
  };
  auto add_reads = [&](LoadItem& it) {
    while (!it.stop && it.next_to_add < it.reads.size() && it.in_flight < kLoadWindow) {
      engine->Add(&it.reads[it.next_to_add++]);
      ++it.in_flight;
    }
  };
  // Checksums the chunks that landed, in order, moving bounced bytes to the target first.
  auto hash_landed = [&](LoadItem& it) {
    while (it.next_to_hash < it.reads.size() && it.landed[it.next_to_hash]) {
      size_t c = it.next_to_hash++;
      uint64_t begin = it.ChunkBegin(c), end = it.ChunkEnd(c);
      if (it.full_bounce) {
        std::memcpy(it.target.data() + begin, it.bounce.get() + begin, end - begin);
      } else if (end > it.direct_bytes) {
        std::memcpy(it.target.data() + it.direct_bytes, it.bounce.get(), end - it.direct_bytes);
      }
      it.checksum->Update(it.target.subspan(begin, end - begin));
    }
  };

  uint64_t bytes = 0;
  while (FsIoOp* op = engine->Next()) {
    const size_t j = op->user;
    LoadItem& it = items[j];
    const int err = op->result < 0 ? static_cast<int>(-op->result) : 0;
    if (op == &it.open) {
      if (err == ENOENT) {
        it.bad_record = true;  // gone from under us: forget it
        missing_records_.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      if (err != 0) {
        io_fail(it, *op, err);
        continue;
      }
      it.fd = static_cast<int>(op->result);
      if (!plan(it, j)) {
        it.stop = true;
        NoteError(Status::OutOfMemory("fs load: cannot allocate buffers"), false);
      }
      add_reads(it);
    } else if (op == &it.close) {
      continue;
    } else {
      KVT_DCHECK(op->kind == FsIoOpKind::kReadv);
      const size_t c = static_cast<size_t>(op - it.reads.data());
      --it.in_flight;
      const uint64_t want = (c == 0 ? kFsRecordHeaderSize : 0) + it.ChunkEnd(c) - it.ChunkBegin(c);
      if (it.stop) {
        // Stopped already: only drain.
      } else if (err != 0) {
        io_fail(it, *op, err);
      } else if (static_cast<uint64_t>(op->result) < want) {
        corrupt(it, fmt::format("short read at {}: {} bytes of {}", op->offset, op->result, want));
      } else {
        if (c == 0) {
          // The header first: a wrong record stops the reads early.
          auto header =
              ParseFsRecordHeader(std::span<const uint8_t>(it.header.get(), kFsRecordHeaderSize));
          if (!header) {
            corrupt(it, header.error().message());
          } else if (header->key != task->keys[it.key_index].ToString()) {
            corrupt(it, "key mismatch");
          } else if (header->payload_size != it.size) {
            corrupt(it,
                    fmt::format("payload size {} != {} expected", header->payload_size, it.size));
          } else {
            it.parsed = std::move(*header);
          }
        }
        if (!it.stop) {
          it.landed[c] = 1;
          add_reads(it);
          engine->Flush();  // the next reads go on while this chunk is checksummed
          hash_landed(it);
        }
      }
    }
    if (it.fd >= 0 && it.in_flight == 0 && (it.stop || it.next_to_hash == it.reads.size())) {
      if (!it.stop) {
        KVT_DCHECK(it.parsed.has_value());
        if (it.checksum->Digest() == it.parsed->payload_checksum) {
          it.ok = true;
        } else {
          corrupt(it, "payload checksum mismatch");
        }
      }
      it.close = FsIoOp{.kind = FsIoOpKind::kClose, .fd = it.fd, .user = j};
      it.fd = -1;
      engine->Add(&it.close);
    }
  }

  Bitmap loaded(n);
  std::vector<ObjectKey> bad;
  std::vector<uint64_t> generations;
  for (const LoadItem& it : items) {
    if (it.ok) {
      loaded.Set(it.key_index);
      bytes += it.size;
    } else if (it.bad_record) {
      bad.push_back(task->keys[it.key_index]);
      generations.push_back(it.generation);
    }
  }
  // Before the completion: once the caller hears of the miss, the key is gone.
  if (!bad.empty()) RemoveBadRecords(bad, generations);
  CheckEngine(engine);
  CompleteLoad(task->id, std::move(loaded), bytes);
}

void FsAdapter::RemoveBadRecords(std::span<const ObjectKey> keys,
                                 std::span<const uint64_t> generations) {
  std::vector<ObjectKey> doomed;
  std::vector<uint64_t> sizes;
  {
    MutexLock lock(&index_mu_);
    WaitForSettled(keys);
    for (size_t i = 0; i < keys.size(); ++i) {
      auto e = index_.find(keys[i]);
      // Locked keys go too: their bytes are useless. A key re-created since (another
      // generation) is left alone.
      if (e == index_.end() || e->second.generation != generations[i] ||
          e->second.state != EntryState::kPresent) {
        continue;
      }
      e->second.state = EntryState::kRemoving;
      doomed.push_back(keys[i]);
      sizes.push_back(e->second.size);
    }
  }
  Unpublish(doomed, sizes, nullptr);
}

}  // namespace kvtier::l2
