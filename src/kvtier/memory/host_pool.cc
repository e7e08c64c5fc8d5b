#include "kvtier/memory/host_pool.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "kvtier/common/logging.h"
#include "kvtier/common/units.h"

#ifdef KVT_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << MAP_HUGE_SHIFT)
#endif

namespace kvtier::memory {
namespace {

constexpr uint64_t kHugePageSize = 2 * kMiB;
constexpr const char* kHugePageSysfs = "/sys/kernel/mm/hugepages/hugepages-2048kB/";

std::string ErrnoText(int err) { return fmt::format("{} ({})", std::strerror(err), err); }

// A sysfs counter, or -1 when unreadable.
int64_t ReadCounter(const std::string& path) {
  std::ifstream in(path);
  int64_t value = -1;
  if (!(in >> value)) return -1;
  return value;
}

Status HugePagesUnavailable(uint64_t size, int err) {
  const int64_t pages = static_cast<int64_t>(size / kHugePageSize);
  const int64_t total = ReadCounter(std::string(kHugePageSysfs) + "nr_hugepages");
  const int64_t free_pages = ReadCounter(std::string(kHugePageSysfs) + "free_hugepages");
  const int64_t reserved = ReadCounter(std::string(kHugePageSysfs) + "resv_hugepages");
  std::string have;
  int64_t suggest = pages;
  if (total < 0) {
    have = "the kernel reports no 2 MiB hugepage pool";
  } else {
    have = fmt::format("{} configured, {} free, {} reserved", total, free_pages, reserved);
    const int64_t available = std::max<int64_t>(0, free_pages - std::max<int64_t>(0, reserved));
    suggest = total + std::max<int64_t>(0, pages - available);
  }
  return Status(StatusCode::kPoolCreateFailed,
                fmt::format("no free 2 MiB hugepages for a {} pool (needs {} pages; {}; mmap: {}). "
                            "Reserve them with `echo {} | sudo tee /proc/sys/vm/nr_hugepages`, "
                            "or run without hugepages",
                            FormatSize(size), pages, have, ErrnoText(err), suggest));
}

Status PoolError(std::string message, int err) {
  return Status(StatusCode::kPoolCreateFailed, fmt::format("{}: {}", message, ErrnoText(err)));
}

// Accepts "name" or "/name"; returns the bare name, or an error.
Result<std::string> ValidateShmName(const std::string& requested) {
  std::string name = requested;
  if (!name.empty() && name.front() == '/') name.erase(0, 1);
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == ".." ||
      name.size() + 1 > NAME_MAX) {
    return MakeError(Status::InvalidArgument(fmt::format(
        "shm name '{}' must be a non-empty file name without '/' (at most {} characters)",
        requested, NAME_MAX - 1)));
  }
  return name;
}

}  // namespace

Result<std::unique_ptr<HostPool>> HostPool::Create(const HostPoolOptions& options) {
  if (options.size_bytes == 0) {
    return MakeError(Status::InvalidArgument("host pool size must be > 0"));
  }
  const bool use_shm = !options.shm_name.empty();
  if (use_shm && options.use_hugepages) {
    return MakeError(
        Status::InvalidArgument("host pool: hugepages and a shm name are mutually exclusive"));
  }
  std::string shm_name;
  if (use_shm) {
    KVT_ASSIGN_OR_RETURN(shm_name, ValidateShmName(options.shm_name));
  }
  const uint64_t page =
      options.use_hugepages ? kHugePageSize : static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  if (options.size_bytes > UINT64_MAX - page) {
    return MakeError(
        Status::InvalidArgument(fmt::format("host pool size {} is too large", options.size_bytes)));
  }
  const uint64_t size = (options.size_bytes + page - 1) / page * page;

  int flags = options.populate ? MAP_POPULATE : 0;
  void* ptr = MAP_FAILED;
  std::string backing;
  if (use_shm) {
    const std::string path = "/" + shm_name;
    if (shm_unlink(path.c_str()) != 0 && errno != ENOENT) {
      return MakeError(PoolError(fmt::format("shm_unlink of stale '{}'", path), errno));
    }
    const int fd = shm_open(path.c_str(), O_CREAT | O_RDWR | O_TRUNC, 0660);
    if (fd < 0) return MakeError(PoolError(fmt::format("shm_open('{}')", path), errno));
    // tmpfs reserves nothing at ftruncate: a pool larger than the free space would SIGBUS on
    // first touch, so refuse it now.
    struct statvfs fs;
    if (fstatvfs(fd, &fs) == 0) {
      const uint64_t avail = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
      if (avail < size) {
        close(fd);
        shm_unlink(path.c_str());
        return MakeError(Status(
            StatusCode::kPoolCreateFailed,
            fmt::format("shm '{}': the shared-memory filesystem has {} free, the pool needs {} "
                        "(enlarge /dev/shm, e.g. docker --shm-size)",
                        path, FormatSize(avail), FormatSize(size))));
      }
    }
    if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
      const int err = errno;
      close(fd);
      shm_unlink(path.c_str());
      return MakeError(PoolError(fmt::format("ftruncate('{}', {})", path, size), err));
    }
    ptr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | flags, fd, 0);
    const int err = errno;
    close(fd);  // the mapping keeps the object alive
    if (ptr == MAP_FAILED) {
      shm_unlink(path.c_str());
      return MakeError(PoolError(fmt::format("mmap of shm '{}' ({} bytes)", path, size), err));
    }
    backing = fmt::format("shm {}", path);
  } else if (options.use_hugepages) {
    // No MAP_NORESERVE here: the hugepages must be reserved at mmap time, so a shortage fails
    // now rather than as SIGBUS on first touch.
    flags |= MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB;
    ptr = mmap(nullptr, size, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (ptr == MAP_FAILED) {
      const int err = errno;
      if (err == ENOMEM || err == EINVAL) return MakeError(HugePagesUnavailable(size, err));
      return MakeError(PoolError(fmt::format("mmap of {} bytes of hugepages", size), err));
    }
    backing = "anonymous, 2 MiB hugepages";
  } else {
    flags |= MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
    ptr = mmap(nullptr, size, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (ptr == MAP_FAILED) {
      return MakeError(PoolError(fmt::format("mmap of {} bytes", size), errno));
    }
    backing = "anonymous";
  }

  std::unique_ptr<HostPool> pool(new HostPool());
  pool->data_ = static_cast<uint8_t*>(ptr);
  pool->size_ = size;
  pool->hugepages_ = options.use_hugepages;
  pool->shm_name_ = std::move(shm_name);

#ifdef KVT_WITH_CUDA
  if (options.register_with_cuda) {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess) {
      cudaGetLastError();  // clear it: no device is not an error for us
      devices = 0;
    }
    if (devices > 0) {
      const cudaError_t err =
          cudaHostRegister(ptr, size, cudaHostRegisterPortable | cudaHostRegisterMapped);
      if (err == cudaSuccess) {
        pool->cuda_registered_ = true;
      } else {
        cudaGetLastError();
        KVT_LOG_WARN("host pool: cudaHostRegister of {} failed ({}); using unpinned memory",
                     FormatSize(size), cudaGetErrorString(err));
      }
    }
  }
#endif

  KVT_LOG_INFO("host pool: {} at {}, {}{}, cuda {}", FormatSize(size), fmt::ptr(ptr), backing,
               options.populate ? ", populated" : "",
               pool->cuda_registered_ ? "registered" : "not registered");
  return pool;
}

HostPool::~HostPool() {
  if (data_ == nullptr) return;
#ifdef KVT_WITH_CUDA
  if (cuda_registered_) {
    const cudaError_t err = cudaHostUnregister(data_);
    if (err != cudaSuccess) {
      cudaGetLastError();
      KVT_LOG_WARN("host pool: cudaHostUnregister failed ({})", cudaGetErrorString(err));
    }
  }
#endif
  if (munmap(data_, size_) != 0) {
    KVT_LOG_WARN("host pool: munmap failed: {}", ErrnoText(errno));
  }
  if (!shm_name_.empty()) {
    const std::string path = "/" + shm_name_;
    if (shm_unlink(path.c_str()) != 0 && errno != ENOENT) {
      KVT_LOG_WARN("host pool: shm_unlink('{}') failed: {}", path, ErrnoText(errno));
    }
  }
}

}  // namespace kvtier::memory
