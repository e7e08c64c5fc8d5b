// The fs adapter's I/O engine: batches of file operations, started together and completed in
// any order.
//
// Two implementations behind one interface: io_uring (liburing; every operation of a batch
// goes to the kernel in one io_uring_enter, transfers run concurrently) and a synchronous
// pread/pwrite fallback (each operation is one system call, run at Add). Tests wrap an engine to
// inject faults (LevelDB Env style). An engine belongs to one thread: it is not thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <string_view>

#include <sys/types.h>
#include <sys/uio.h>

#include "kvtier/common/result.h"

namespace kvtier::l2 {

enum class FsIoOpKind : uint8_t {
  kOpen,      // openat(dir_fd, path, flags, mode) -> fd
  kReadv,     // preadv(fd, iov, offset) until full or end of file -> bytes read
  kWritev,    // pwritev(fd, iov, offset) until everything is written -> bytes written
  kTruncate,  // ftruncate(fd, offset) -> 0 (always synchronous)
  kFsync,     // fsync(fd) -> 0
  kClose,     // close(fd) -> 0
  kRename,    // renameat(dir_fd, path, dir_fd, new_path) -> 0
  kUnlink,    // unlinkat(dir_fd, path, 0) -> 0
};

std::string_view FsIoOpKindName(FsIoOpKind kind);

// One operation. The caller owns it, and the paths and buffers it points to, until the engine
// hands it back from Next().
struct FsIoOp {
  FsIoOpKind kind = FsIoOpKind::kOpen;
  int dir_fd = -1;
  const char* path = nullptr;
  const char* new_path = nullptr;
  int flags = 0;
  mode_t mode = 0;
  int fd = -1;
  uint64_t offset = 0;
  std::array<iovec, 3> iov{};
  int iov_count = 0;
  uint64_t user = 0;  // the caller's tag
  // The fd was opened with O_DIRECT: a transfer cannot continue from an unaligned position, so a
  // short read that ends there is end of file.
  bool direct = false;

  // Set by the engine: >= 0 on success (the fd for kOpen, bytes for transfers), -errno on
  // failure. A read that reaches end of file returns the bytes it got.
  int64_t result = 0;

  // Engine state.
  uint64_t done = 0;
  std::array<iovec, 3> rest{};
  int rest_count = 0;

  uint64_t TotalLength() const;
};

class FsIoEngine {
 public:
  virtual ~FsIoEngine() = default;
  // "io_uring" or "pread" (wrappers report the engine they wrap).
  virtual std::string_view name() const = 0;
  // Queues `op`; the engine may start it at once. Reads and writes are continued after short
  // transfers until they complete (reads stop at end of file).
  virtual void Add(FsIoOp* op) = 0;
  // Starts everything queued by Add without waiting (so the caller can work meanwhile).
  virtual void Flush() {}
  // The next finished operation, waiting for one if needed; nullptr when none is outstanding.
  // Starts everything queued by Add first.
  virtual FsIoOp* Next() = 0;
  // Operations added and not yet returned by Next.
  virtual size_t outstanding() const = 0;
  // OK, or why the engine can no longer do asynchronous I/O (an io_uring submission failed for
  // good). It then still works: the operations caught in the failure completed with its error,
  // and later ones run synchronously, as in the pread engine. Wrappers report their inner's.
  virtual Status status() const { return Status::OK(); }
};

// Runs each operation in Add with one blocking system call (loops for transfers).
std::unique_ptr<FsIoEngine> MakePreadFsIoEngine();

// Tests: runs before each io_uring submission (`wait_nr` 0 for a plain submit, 1 when it also
// waits for a completion). A negative errno it returns is taken as the submission's result and
// the submission is not made; 0 lets it go ahead.
using UringSubmitHook = std::function<int(unsigned wait_nr)>;

// io_uring with `queue_depth` submission entries (at most that many operations in flight).
// Transfers of at least `async_threshold` bytes are forced onto the kernel's async workers
// (IOSQE_ASYNC), so the calling thread can checksum one object while others are being copied.
// Fails when the kernel refuses io_uring (old kernel, seccomp, io_uring_disabled).
//
// A submission that fails with anything but EINTR, EAGAIN or EBUSY (which are retried) breaks the
// engine for good (status()): the operations the kernel had not taken complete with that error;
// those it had taken are waited for as usual (their buffers are the kernel's until then); every
// later operation runs synchronously.
Result<std::unique_ptr<FsIoEngine>> MakeUringFsIoEngine(unsigned queue_depth,
                                                        uint64_t async_threshold = 1 << 20,
                                                        UringSubmitHook submit_hook = nullptr);

// Runs every op of `ops` to completion on `engine` (a convenience for batches with no
// dependencies between them).
void RunFsIoBatch(FsIoEngine* engine, std::span<FsIoOp> ops);

// Executes one operation synchronously (the pread engine's Add; io_uring's kTruncate).
void ExecuteFsIoOpSync(FsIoOp* op);

}  // namespace kvtier::l2
