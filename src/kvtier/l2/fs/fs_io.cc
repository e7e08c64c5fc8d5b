#include "kvtier/l2/fs/fs_io.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <fcntl.h>
#include <fmt/format.h>
#include <liburing.h>
#include <poll.h>
#include <unistd.h>

#include "kvtier/common/check.h"
#include "kvtier/l2/fs/fs_format.h"

namespace kvtier::l2 {
namespace {

bool IsTransfer(FsIoOpKind kind) {
  return kind == FsIoOpKind::kReadv || kind == FsIoOpKind::kWritev;
}

// Points op->rest at the part of op->iov not transferred yet.
void PrepareRest(FsIoOp* op) {
  uint64_t skip = op->done;
  op->rest_count = 0;
  for (int i = 0; i < op->iov_count; ++i) {
    const iovec& v = op->iov[i];
    if (skip >= v.iov_len) {
      skip -= v.iov_len;
      continue;
    }
    op->rest[op->rest_count++] = iovec{static_cast<char*>(v.iov_base) + skip, v.iov_len - skip};
    skip = 0;
  }
}

// After a transfer of `n` > 0 bytes: whether the op is complete (and its result set).
bool AdvanceTransfer(FsIoOp* op, uint64_t n) {
  op->done += n;
  if (op->done >= op->TotalLength()) {
    op->result = static_cast<int64_t>(op->done);
    return true;
  }
  if (op->direct && (op->offset + op->done) % kFsAlignment != 0) {
    // O_DIRECT cannot go on from here: a read stopped at end of file; a write is stuck.
    op->result = op->kind == FsIoOpKind::kReadv ? static_cast<int64_t>(op->done) : -EIO;
    return true;
  }
  PrepareRest(op);
  return false;
}

// After a transfer returned 0: end of file for a read, an error for a write.
void FinishAtZero(FsIoOp* op) {
  op->result = op->kind == FsIoOpKind::kReadv ? static_cast<int64_t>(op->done) : -EIO;
}

class PreadFsIoEngine final : public FsIoEngine {
 public:
  std::string_view name() const override { return "pread"; }
  void Add(FsIoOp* op) override {
    ExecuteFsIoOpSync(op);
    done_.push_back(op);
  }
  FsIoOp* Next() override {
    if (done_.empty()) return nullptr;
    FsIoOp* op = done_.front();
    done_.pop_front();
    return op;
  }
  size_t outstanding() const override { return done_.size(); }

 private:
  std::deque<FsIoOp*> done_;
};

class UringFsIoEngine final : public FsIoEngine {
 public:
  UringFsIoEngine(unsigned depth, uint64_t async_threshold, UringSubmitHook submit_hook)
      : depth_(depth), async_threshold_(async_threshold), submit_hook_(std::move(submit_hook)) {}
  ~UringFsIoEngine() override {
    // Operations point into caller memory: never leave the kernel working on them.
    while (Next() != nullptr) {
    }
    if (initialized_) io_uring_queue_exit(&ring_);
  }

  Status Init() {
    int rc = io_uring_queue_init(depth_, &ring_, 0);
    if (rc < 0) {
      return Status::IOError(fmt::format("io_uring_queue_init({}): {}", depth_, strerror(-rc)));
    }
    initialized_ = true;
    return Status::OK();
  }

  std::string_view name() const override { return "io_uring"; }
  Status status() const override { return broken_; }

  void Add(FsIoOp* op) override {
    op->done = 0;
    op->result = 0;
    ++outstanding_;
    if (op->kind == FsIoOpKind::kTruncate || !broken_.ok()) {
      // No io_uring opcode for ftruncate in liburing 2.3; a broken ring runs everything here.
      ExecuteFsIoOpSync(op);
      done_.push_back(op);
      return;
    }
    PrepareRest(op);
    if (in_ring() < depth_) {
      Prep(op);
    } else {
      waiting_.push_back(op);
    }
  }

  FsIoOp* Next() override {
    while (done_.empty()) {
      if (in_ring() == 0) {
        KVT_DCHECK(waiting_.empty());
        return nullptr;
      }
      if (broken_.ok()) {
        int rc = Submit(/*wait_nr=*/1);
        if (rc < 0 && !Transient(rc)) Break(rc, "io_uring_submit_and_wait");
      }
      if (!broken_.ok()) WaitForKernel();
      Reap();
      while (broken_.ok() && !waiting_.empty() && in_ring() < depth_) {
        FsIoOp* op = waiting_.front();
        waiting_.pop_front();
        Prep(op);
      }
    }
    FsIoOp* op = done_.front();
    done_.pop_front();
    --outstanding_;
    return op;
  }

  void Flush() override {
    if (!broken_.ok() || unsubmitted_.empty()) return;
    int rc = Submit(/*wait_nr=*/0);
    if (rc < 0 && !Transient(rc)) Break(rc, "io_uring_submit");
  }

  size_t outstanding() const override { return outstanding_; }

 private:
  static bool Transient(int rc) { return rc == -EINTR || rc == -EAGAIN || rc == -EBUSY; }

  // Prepared or submitted, no completion seen yet.
  unsigned in_ring() const { return submitted_ + static_cast<unsigned>(unsubmitted_.size()); }

  // Hands the prepared entries to the kernel (and waits for `wait_nr` completions); returns
  // what io_uring_submit(_and_wait) returns, after moving the entries it took to submitted_.
  int Submit(unsigned wait_nr) {
    int rc = submit_hook_ ? submit_hook_(wait_nr) : 0;
    if (rc >= 0) {
      rc = wait_nr == 0 ? io_uring_submit(&ring_) : io_uring_submit_and_wait(&ring_, wait_nr);
    }
    // Without SQPOLL the kernel takes entries in order, and only in io_uring_enter.
    for (int i = 0; i < rc && !unsubmitted_.empty(); ++i) {
      unsubmitted_.pop_front();
      ++submitted_;
    }
    return rc;
  }

  // The ring cannot take submissions any more. Entries the kernel has not taken stay in the
  // submission queue, never submitted (nothing calls io_uring_enter with entries to submit
  // again): their operations fail with the submission's error, as do those waiting for room.
  void Break(int rc, std::string_view what) {
    broken_ = Status::IOError(fmt::format(
        "{} failed: {}; the io_uring engine runs its operations synchronously from now on", what,
        strerror(-rc)));
    for (std::deque<FsIoOp*>* q : {&unsubmitted_, &waiting_}) {
      for (FsIoOp* op : *q) {
        op->result = rc;
        done_.push_back(op);
      }
      q->clear();
    }
  }

  // Broken: waits for a completion of an operation the kernel took earlier, without submitting.
  void WaitForKernel() {
    if (submitted_ == 0) return;
    io_uring_cqe* cqe = nullptr;
    int rc = io_uring_wait_cqe(&ring_, &cqe);
    if (rc == 0 || Transient(rc)) return;
    // Even waiting through io_uring_enter fails: completions still land in the ring; poll its fd.
    pollfd p{ring_.ring_fd, POLLIN, 0};
    while (::poll(&p, 1, -1) < 0 && errno == EINTR) {
    }
    // The kernel may be writing into these operations' buffers: giving them back is not an
    // option, and without the ring's fd nothing tells when it stops.
    KVT_CHECK_MSG((p.revents & POLLNVAL) == 0,
                  "io_uring ring fd {} was closed under the engine with {} operations in flight",
                  ring_.ring_fd, submitted_);
  }

  void Prep(FsIoOp* op) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {
      // The submission queue is full of prepared entries: hand them to the kernel.
      Flush();
      sqe = broken_.ok() ? io_uring_get_sqe(&ring_) : nullptr;
      if (sqe == nullptr) {
        if (broken_.ok()) {
          waiting_.push_front(op);  // the kernel took none yet (EAGAIN, EBUSY): later
        } else {
          ExecuteFsIoOpSync(op);
          done_.push_back(op);
        }
        return;
      }
    }
    switch (op->kind) {
      case FsIoOpKind::kOpen:
        io_uring_prep_openat(sqe, op->dir_fd, op->path, op->flags, op->mode);
        break;
      case FsIoOpKind::kReadv:
        io_uring_prep_readv(sqe, op->fd, op->rest.data(), op->rest_count, op->offset + op->done);
        break;
      case FsIoOpKind::kWritev:
        io_uring_prep_writev(sqe, op->fd, op->rest.data(), op->rest_count, op->offset + op->done);
        break;
      case FsIoOpKind::kFsync:
        io_uring_prep_fsync(sqe, op->fd, 0);
        break;
      case FsIoOpKind::kClose:
        io_uring_prep_close(sqe, op->fd);
        break;
      case FsIoOpKind::kRename:
        io_uring_prep_renameat(sqe, op->dir_fd, op->path, op->dir_fd, op->new_path, 0);
        break;
      case FsIoOpKind::kUnlink:
        io_uring_prep_unlinkat(sqe, op->dir_fd, op->path, 0);
        break;
      case FsIoOpKind::kTruncate:
        KVT_CHECK(false);
    }
    // O_DIRECT transfers are asynchronous in the kernel already; buffered ones would be copied
    // inline by io_uring_enter when the pages are cached.
    if (IsTransfer(op->kind) && !op->direct && op->TotalLength() - op->done >= async_threshold_) {
      sqe->flags |= IOSQE_ASYNC;
    }
    io_uring_sqe_set_data(sqe, op);
    unsubmitted_.push_back(op);
  }

  // Goes on with an operation that needs another round (interrupted, or a short transfer).
  void Continue(FsIoOp* op) {
    if (broken_.ok()) {
      Prep(op);  // the slot just freed
    } else {
      ExecuteFsIoOpSync(op);  // from the start: transfers are idempotent at their offsets
      done_.push_back(op);
    }
  }

  void Reap() {
    io_uring_cqe* cqe = nullptr;
    while (io_uring_peek_cqe(&ring_, &cqe) == 0) {
      auto* op = static_cast<FsIoOp*>(io_uring_cqe_get_data(cqe));
      int res = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      --submitted_;
      if (res == -EINTR || res == -EAGAIN) {
        Continue(op);
        continue;
      }
      if (!IsTransfer(op->kind) || res < 0) {
        op->result = res;
        done_.push_back(op);
        continue;
      }
      if (res == 0) {
        FinishAtZero(op);
        done_.push_back(op);
      } else if (AdvanceTransfer(op, static_cast<uint64_t>(res))) {
        done_.push_back(op);
      } else {
        Continue(op);
      }
    }
  }

  const unsigned depth_;
  const uint64_t async_threshold_;
  const UringSubmitHook submit_hook_;
  io_uring ring_{};
  bool initialized_ = false;
  Status broken_;                    // OK while submissions work
  unsigned submitted_ = 0;           // taken by the kernel, no completion seen yet
  std::deque<FsIoOp*> unsubmitted_;  // prepared in the submission queue, not taken yet
  size_t outstanding_ = 0;           // added, not yet returned by Next
  std::deque<FsIoOp*> waiting_;      // added while the ring was full
  std::deque<FsIoOp*> done_;
};

}  // namespace

std::string_view FsIoOpKindName(FsIoOpKind kind) {
  switch (kind) {
    case FsIoOpKind::kOpen:
      return "open";
    case FsIoOpKind::kReadv:
      return "read";
    case FsIoOpKind::kWritev:
      return "write";
    case FsIoOpKind::kTruncate:
      return "truncate";
    case FsIoOpKind::kFsync:
      return "fsync";
    case FsIoOpKind::kClose:
      return "close";
    case FsIoOpKind::kRename:
      return "rename";
    case FsIoOpKind::kUnlink:
      return "unlink";
  }
  return "?";
}

uint64_t FsIoOp::TotalLength() const {
  uint64_t n = 0;
  for (int i = 0; i < iov_count; ++i) n += iov[i].iov_len;
  return n;
}

void ExecuteFsIoOpSync(FsIoOp* op) {
  auto sys = [](int64_t rc) -> int64_t { return rc < 0 ? -errno : rc; };
  op->done = 0;
  op->result = 0;
  switch (op->kind) {
    case FsIoOpKind::kOpen:
      op->result = sys(::openat(op->dir_fd, op->path, op->flags, op->mode));
      return;
    case FsIoOpKind::kReadv:
    case FsIoOpKind::kWritev: {
      PrepareRest(op);
      if (op->TotalLength() == 0) return;
      while (true) {
        off_t at = static_cast<off_t>(op->offset + op->done);
        ssize_t n = op->kind == FsIoOpKind::kReadv
                        ? ::preadv(op->fd, op->rest.data(), op->rest_count, at)
                        : ::pwritev(op->fd, op->rest.data(), op->rest_count, at);
        if (n < 0) {
          if (errno == EINTR || errno == EAGAIN) continue;
          op->result = -errno;
          return;
        }
        if (n == 0) {
          FinishAtZero(op);
          return;
        }
        if (AdvanceTransfer(op, static_cast<uint64_t>(n))) return;
      }
    }
    case FsIoOpKind::kTruncate:
      op->result = sys(::ftruncate(op->fd, static_cast<off_t>(op->offset)));
      return;
    case FsIoOpKind::kFsync:
      op->result = sys(::fsync(op->fd));
      return;
    case FsIoOpKind::kClose:
      op->result = sys(::close(op->fd));
      return;
    case FsIoOpKind::kRename:
      op->result = sys(::renameat(op->dir_fd, op->path, op->dir_fd, op->new_path));
      return;
    case FsIoOpKind::kUnlink:
      op->result = sys(::unlinkat(op->dir_fd, op->path, 0));
      return;
  }
}

std::unique_ptr<FsIoEngine> MakePreadFsIoEngine() { return std::make_unique<PreadFsIoEngine>(); }

Result<std::unique_ptr<FsIoEngine>> MakeUringFsIoEngine(unsigned queue_depth,
                                                        uint64_t async_threshold,
                                                        UringSubmitHook submit_hook) {
  if (queue_depth == 0) return MakeError(Status::InvalidArgument("io_uring queue depth 0"));
  auto engine =
      std::make_unique<UringFsIoEngine>(queue_depth, async_threshold, std::move(submit_hook));
  KVT_RETURN_IF_ERROR(engine->Init());
  return std::unique_ptr<FsIoEngine>(std::move(engine));
}

void RunFsIoBatch(FsIoEngine* engine, std::span<FsIoOp> ops) {
  for (FsIoOp& op : ops) engine->Add(&op);
  while (engine->Next() != nullptr) {
  }
}

}  // namespace kvtier::l2
