// Shared by the fs adapter's source files (fs_adapter.cc, fs_index.cc, fs_transfer.cc): a queued
// task, O_DIRECT-aligned buffers, errno classification and a directory walk. Not for use outside
// l2/fs/.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvtier/common/result.h"
#include "kvtier/l2/fs/fs_adapter.h"
#include "kvtier/l2/fs/fs_format.h"

namespace kvtier::l2 {
namespace internal {

inline uint64_t AlignDown(uint64_t n) { return n & ~(uint64_t{kFsAlignment} - 1); }
inline uint64_t AlignUp(uint64_t n) { return AlignDown(n + kFsAlignment - 1); }
inline bool IsAligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % kFsAlignment == 0; }

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};
using AlignedBytes = std::unique_ptr<uint8_t[], FreeDeleter>;

// Zero-filled, 4096-aligned, at least `n` bytes (rounded up to the alignment); null on failure.
inline AlignedBytes AllocAligned(uint64_t n) {
  uint64_t size = std::max<uint64_t>(AlignUp(n), kFsAlignment);
  auto* p = static_cast<uint8_t*>(std::aligned_alloc(kFsAlignment, size));
  if (p != nullptr) std::memset(p, 0, size);
  return AlignedBytes(p);
}

inline bool RetryableErrno(int err) {
  return err == ENOSPC || err == EDQUOT || err == EMFILE || err == ENFILE || err == ENOMEM ||
         err == EAGAIN || err == EINTR || err == EBUSY;
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

}  // namespace internal

// ---- Tasks ----------------------------------------------------------------------------------

struct FsAdapter::Task {
  enum class Kind : uint8_t { kStore, kLoad };
  Kind kind = Kind::kStore;
  TaskId id = 0;
  std::vector<ObjectKey> keys;
  std::vector<std::span<const uint8_t>> sources;  // store
  std::vector<std::span<uint8_t>> targets;        // load
};

}  // namespace kvtier::l2
