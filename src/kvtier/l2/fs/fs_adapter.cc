// The fs adapter's lifecycle: config parsing and creation (the directory, its LOCK, the I/O
// engines, removal of a crash's temp files), close, health and the status JSON, and the task
// queue its I/O threads drain. The index and the recovery scan are in fs_index.cc, the store
// and load tasks in fs_transfer.cc.
#include "kvtier/l2/fs/fs_adapter.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "kvtier/common/json_config.h"
#include "kvtier/common/logging.h"
#include "kvtier/l2/fs/fs_adapter_internal.h"
#include "kvtier/l2/fs/fs_format.h"

namespace kvtier::l2 {
namespace {

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

std::atomic<uint64_t> g_next_instance{1};

}  // namespace

using internal::AlignedBytes;
using internal::AllocAligned;
using internal::ForEachEntry;
using internal::RetryableErrno;

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
}  // namespace kvtier::l2
