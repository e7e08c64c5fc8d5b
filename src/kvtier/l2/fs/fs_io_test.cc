#include "kvtier/l2/fs/fs_io.h"

#include <string>
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

std::string EngineName(const ::testing::TestParamInfo<Engine>& p) {
  return p.param == Engine::kPread ? "pread" : "io_uring";
}

INSTANTIATE_TEST_SUITE_P(Engines, FsIoEngineTest, ::testing::Values(Engine::kPread, Engine::kUring),
                         EngineName);

}  // namespace
}  // namespace kvtier::l2
