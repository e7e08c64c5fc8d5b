#include "kvtier/l2/fs/fs_io.h"

#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "kvtier/l2/fs/fs_test_util.h"

namespace kvtier::l2 {
namespace {

using fs_testing::AlignedBuffer;
using fs_testing::MakePayload;
using fs_testing::TempDir;

enum class Engine { kPread, kUring };

std::unique_ptr<FsIoEngine> MakeEngine(Engine e, unsigned depth) {
  if (e == Engine::kPread) return MakePreadFsIoEngine();
  auto r = MakeUringFsIoEngine(depth);
  KVT_CHECK_MSG(r.has_value(), "{}", r.error().ToString());
  return std::move(*r);
}

class FsIoEngineTest : public ::testing::TestWithParam<Engine> {
 protected:
  void SetUp() override {
    if (GetParam() == Engine::kUring && !MakeUringFsIoEngine(4).has_value()) {
      GTEST_SKIP() << "io_uring unavailable here";
    }
    dir_fd_ = ::open(dir_.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ASSERT_GE(dir_fd_, 0);
  }
  void TearDown() override {
    if (dir_fd_ >= 0) ::close(dir_fd_);
  }
  TempDir dir_;
  int dir_fd_ = -1;
};

// Many files through a small queue: open, two-iovec writes, rename, read back, unlink.
TEST_P(FsIoEngineTest, BatchLifecycleThroughASmallQueue) {
  auto engine = MakeEngine(GetParam(), 2);
  constexpr int kFiles = 40;
  std::vector<std::string> tmp(kFiles), final_name(kFiles);
  std::vector<std::vector<uint8_t>> a(kFiles), b(kFiles);
  std::vector<FsIoOp> ops(kFiles);
  for (int i = 0; i < kFiles; ++i) {
    tmp[i] = fmt::format("t{}", i);
    final_name[i] = fmt::format("f{}", i);
    a[i] = MakePayload(i, 100 + i);
    b[i] = MakePayload(1000 + i, 3000 * i);
    ops[i] = FsIoOp{.kind = FsIoOpKind::kOpen,
                    .dir_fd = dir_fd_,
                    .path = tmp[i].c_str(),
                    .flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
                    .mode = 0644};
  }
  RunFsIoBatch(engine.get(), ops);
  std::vector<int> fds(kFiles);
  for (int i = 0; i < kFiles; ++i) {
    ASSERT_GE(ops[i].result, 0) << strerror(static_cast<int>(-ops[i].result));
    fds[i] = static_cast<int>(ops[i].result);
    ops[i] = FsIoOp{.kind = FsIoOpKind::kWritev, .fd = fds[i], .offset = 10, .iov_count = 2};
    ops[i].iov[0] = {a[i].data(), a[i].size()};
    ops[i].iov[1] = {b[i].data(), b[i].size()};
  }
  RunFsIoBatch(engine.get(), ops);
  for (int i = 0; i < kFiles; ++i) {
    EXPECT_EQ(ops[i].result, static_cast<int64_t>(a[i].size() + b[i].size()));
    ops[i] = FsIoOp{.kind = FsIoOpKind::kClose, .fd = fds[i]};
  }
  RunFsIoBatch(engine.get(), ops);
  for (int i = 0; i < kFiles; ++i) {
    EXPECT_EQ(ops[i].result, 0);
    ops[i] = FsIoOp{.kind = FsIoOpKind::kRename,
                    .dir_fd = dir_fd_,
                    .path = tmp[i].c_str(),
                    .new_path = final_name[i].c_str()};
  }
  RunFsIoBatch(engine.get(), ops);
  for (int i = 0; i < kFiles; ++i) {
    EXPECT_EQ(ops[i].result, 0);
    std::string content = fs_testing::ReadFile(dir_.path() + "/" + final_name[i]);
    ASSERT_EQ(content.size(), 10 + a[i].size() + b[i].size());
    EXPECT_EQ(content.substr(0, 10), std::string(10, '\0'));
    EXPECT_EQ(content.substr(10, a[i].size()), std::string(a[i].begin(), a[i].end()));
    EXPECT_EQ(content.substr(10 + a[i].size()), std::string(b[i].begin(), b[i].end()));
  }
  // Reads ask for more than the file holds: they stop at end of file.
  std::vector<std::vector<uint8_t>> back(kFiles);
  for (int i = 0; i < kFiles; ++i) {
    fds[i] = ::openat(dir_fd_, final_name[i].c_str(), O_RDONLY | O_CLOEXEC);
    back[i].assign(a[i].size() + b[i].size() + 500, 0);
    ops[i] = FsIoOp{.kind = FsIoOpKind::kReadv, .fd = fds[i], .offset = 10, .iov_count = 1};
    ops[i].iov[0] = {back[i].data(), back[i].size()};
  }
  RunFsIoBatch(engine.get(), ops);
  for (int i = 0; i < kFiles; ++i) {
    EXPECT_EQ(ops[i].result, static_cast<int64_t>(a[i].size() + b[i].size()));
    EXPECT_TRUE(std::equal(a[i].begin(), a[i].end(), back[i].begin()));
    EXPECT_TRUE(std::equal(b[i].begin(), b[i].end(), back[i].begin() + a[i].size()));
    ::close(fds[i]);
    ops[i] = FsIoOp{.kind = FsIoOpKind::kUnlink, .dir_fd = dir_fd_, .path = final_name[i].c_str()};
  }
  RunFsIoBatch(engine.get(), ops);
  for (int i = 0; i < kFiles; ++i) EXPECT_EQ(ops[i].result, 0);
  EXPECT_EQ(fs_testing::CountFiles(dir_.path()), 0u);
  EXPECT_EQ(engine->outstanding(), 0u);
}

TEST_P(FsIoEngineTest, ErrorsAreNegativeErrno) {
  auto engine = MakeEngine(GetParam(), 4);
  std::vector<FsIoOp> ops(3);
  ops[0] =
      FsIoOp{.kind = FsIoOpKind::kOpen, .dir_fd = dir_fd_, .path = "missing", .flags = O_RDONLY};
  ops[1] = FsIoOp{.kind = FsIoOpKind::kUnlink, .dir_fd = dir_fd_, .path = "missing"};
  ops[2] =
      FsIoOp{.kind = FsIoOpKind::kRename, .dir_fd = dir_fd_, .path = "missing", .new_path = "x"};
  RunFsIoBatch(engine.get(), ops);
  for (const FsIoOp& op : ops) EXPECT_EQ(op.result, -ENOENT) << FsIoOpKindName(op.kind);
}

TEST_P(FsIoEngineTest, TruncateAndFsync) {
  auto engine = MakeEngine(GetParam(), 4);
  int fd = ::openat(dir_fd_, "f", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  std::vector<FsIoOp> ops(2);
  ops[0] = FsIoOp{.kind = FsIoOpKind::kTruncate, .fd = fd, .offset = 12345};
  ops[1] = FsIoOp{.kind = FsIoOpKind::kFsync, .fd = fd};
  RunFsIoBatch(engine.get(), std::span(ops).first(1));
  RunFsIoBatch(engine.get(), std::span(ops).subspan(1));
  EXPECT_EQ(ops[0].result, 0);
  EXPECT_EQ(ops[1].result, 0);
  struct stat st {};
  ASSERT_EQ(::fstat(fd, &st), 0);
  EXPECT_EQ(st.st_size, 12345);
  ::close(fd);
}

// O_DIRECT: a read that asks for whole blocks past the end of an unaligned file returns what is
// there (the engine must not try to continue from an unaligned offset).
TEST_P(FsIoEngineTest, ODirectReadStopsAtAnUnalignedEnd) {
  std::string parent = fs_testing::ODirectCapableParent();
  if (parent.empty()) GTEST_SKIP() << "no filesystem with O_DIRECT here";
  TempDir dir(parent);
  std::vector<uint8_t> data = MakePayload(3, 3 * 4096 + 100);
  fs_testing::WriteFile(dir.path() + "/f", std::string(data.begin(), data.end()));
  auto engine = MakeEngine(GetParam(), 4);
  int fd = ::open((dir.path() + "/f").c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  AlignedBuffer buf(4 * 4096);
  FsIoOp op{.kind = FsIoOpKind::kReadv, .fd = fd, .offset = 0, .iov_count = 1, .direct = true};
  op.iov[0] = {buf.data(), buf.size()};
  RunFsIoBatch(engine.get(), std::span(&op, 1));
  EXPECT_EQ(op.result, static_cast<int64_t>(data.size()));
  EXPECT_TRUE(std::equal(data.begin(), data.end(), buf.data()));
  ::close(fd);
}

// io_uring submissions that fail with an unexpected error (not EINTR, EAGAIN or EBUSY; injected
// here) must not abort the process: the operations caught in the failed submission fail with its
// error, those the kernel took before complete as usual, and the engine goes on synchronously.
class UringSubmitFailureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!MakeUringFsIoEngine(4).has_value()) GTEST_SKIP() << "io_uring unavailable here";
    dir_fd_ = ::open(dir_.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ASSERT_GE(dir_fd_, 0);
    auto engine = MakeUringFsIoEngine(8, 1 << 20, [this](unsigned wait_nr) {
      ++submissions_[wait_nr == 0 ? 0 : 1];
      return std::exchange(fail_next_, 0);
    });
    ASSERT_TRUE(engine.has_value()) << engine.error().ToString();
    engine_ = std::move(*engine);
  }
  void TearDown() override {
    engine_.reset();
    if (dir_fd_ >= 0) ::close(dir_fd_);
  }
  FsIoOp Create(const char* name) {
    return FsIoOp{.kind = FsIoOpKind::kOpen,
                  .dir_fd = dir_fd_,
                  .path = name,
                  .flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
                  .mode = 0644};
  }
  bool Exists(const char* name) { return ::faccessat(dir_fd_, name, F_OK, 0) == 0; }
  // Every operation still outstanding, in completion order.
  std::vector<FsIoOp*> Drain() {
    std::vector<FsIoOp*> out;
    while (FsIoOp* op = engine_->Next()) out.push_back(op);
    return out;
  }

  TempDir dir_;
  int dir_fd_ = -1;
  int fail_next_ = 0;  // the next submission's injected result (the engine's thread is ours)
  int submissions_[2] = {0, 0};
  std::unique_ptr<FsIoEngine> engine_;
};

TEST_F(UringSubmitFailureTest, FailedSubmitAndWaitFailsOnlyWhatItCaught) {
  FsIoOp taken = Create("taken");
  engine_->Add(&taken);
  engine_->Flush();  // the kernel takes it
  ASSERT_EQ(submissions_[0], 1);
  FsIoOp caught = Create("caught");
  engine_->Add(&caught);
  fail_next_ = -EFAULT;
  std::vector<FsIoOp*> done = Drain();
  ASSERT_EQ(done.size(), 2u);
  EXPECT_GE(taken.result, 0) << strerror(static_cast<int>(-taken.result));
  EXPECT_TRUE(Exists("taken"));
  EXPECT_EQ(caught.result, -EFAULT);
  EXPECT_FALSE(Exists("caught"));  // never submitted
  Status status = engine_->status();
  EXPECT_EQ(status.code(), StatusCode::kIOError);
  EXPECT_NE(status.message().find("io_uring_submit_and_wait failed: Bad address"),
            std::string_view::npos)
      << status.ToString();
  ::close(static_cast<int>(taken.result));

  // It still works, synchronously: a create, a write, a close.
  const int submissions = submissions_[0] + submissions_[1];
  FsIoOp later = Create("later");
  engine_->Add(&later);
  ASSERT_EQ(Drain(), std::vector<FsIoOp*>{&later});
  ASSERT_GE(later.result, 0);
  std::vector<uint8_t> bytes = MakePayload(1, 3000);
  FsIoOp write{.kind = FsIoOpKind::kWritev, .fd = static_cast<int>(later.result), .iov_count = 1};
  write.iov[0] = {bytes.data(), bytes.size()};
  FsIoOp close{.kind = FsIoOpKind::kClose, .fd = static_cast<int>(later.result)};
  engine_->Add(&write);
  engine_->Add(&close);
  engine_->Flush();
  EXPECT_EQ(Drain(), (std::vector<FsIoOp*>{&write, &close}));
  EXPECT_EQ(write.result, 3000);
  EXPECT_EQ(close.result, 0);
  EXPECT_EQ(submissions_[0] + submissions_[1], submissions);  // no more io_uring submissions
  EXPECT_EQ(engine_->outstanding(), 0u);
}

TEST_F(UringSubmitFailureTest, FailedFlushFailsWhatItCaught) {
  FsIoOp a = Create("a"), b = Create("b");
  engine_->Add(&a);
  engine_->Add(&b);
  fail_next_ = -ENXIO;
  engine_->Flush();
  EXPECT_FALSE(engine_->status().ok());
  std::vector<FsIoOp*> done = Drain();
  EXPECT_EQ(done.size(), 2u);
  EXPECT_EQ(a.result, -ENXIO);
  EXPECT_EQ(b.result, -ENXIO);
  EXPECT_FALSE(Exists("a"));
  EXPECT_FALSE(Exists("b"));
  EXPECT_NE(engine_->status().message().find("io_uring_submit failed"), std::string_view::npos);
}

TEST_F(UringSubmitFailureTest, TransientErrorsAreRetried) {
  FsIoOp a = Create("a");
  engine_->Add(&a);
  fail_next_ = -EAGAIN;
  engine_->Flush();
  std::vector<FsIoOp*> done = Drain();
  ASSERT_EQ(done.size(), 1u);
  EXPECT_GE(a.result, 0);
  EXPECT_TRUE(engine_->status().ok());
  ::close(static_cast<int>(a.result));
}

std::string EngineName(const ::testing::TestParamInfo<Engine>& p) {
  return p.param == Engine::kPread ? "pread" : "io_uring";
}

INSTANTIATE_TEST_SUITE_P(Engines, FsIoEngineTest, ::testing::Values(Engine::kPread, Engine::kUring),
                         EngineName);

}  // namespace
}  // namespace kvtier::l2
