#include "kvtier/common/status.h"

#include <gtest/gtest.h>

#include "kvtier/common/result.h"

namespace kvtier {
namespace {

TEST(StatusTest, OkHasNoMessage) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kOk);
  EXPECT_EQ(s.message(), "");
  EXPECT_EQ(s.ToString(), "OK");
  EXPECT_FALSE(s.retryable());
}

TEST(StatusTest, ErrorCarriesCodeMessageAndRetryable) {
  Status s = Status::Timeout("lock busy");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kTimeout);
  EXPECT_EQ(s.message(), "lock busy");
  EXPECT_TRUE(s.retryable());
  EXPECT_EQ(s.ToString(), "Timeout: lock busy");
  EXPECT_FALSE(Status::InvalidArgument("x").retryable());
  EXPECT_TRUE(Status::IOError("disk", /*retryable=*/true).retryable());
}

TEST(StatusTest, CopyIsDeepAndMoveLeavesOk) {
  Status a = Status::NotFound("k");
  Status b = a;
  EXPECT_EQ(a, b);
  Status c = std::move(a);
  EXPECT_EQ(c.code(), StatusCode::kNotFound);
  b = Status::OK();
  EXPECT_TRUE(b.ok());
  EXPECT_EQ(c.message(), "k");
}

TEST(StatusTest, OkCodeWithMessageIsOk) {
  Status s(StatusCode::kOk, "ignored");
  EXPECT_TRUE(s.ok());
}

TEST(StatusTest, WithContextPrefixes) {
  EXPECT_EQ(Status::IOError("eof").WithContext("read a.bin").message(), "read a.bin: eof");
  EXPECT_TRUE(Status::OK().WithContext("x").ok());
}

TEST(StatusTest, CodeNamesAreStable) {
  EXPECT_EQ(StatusCodeName(StatusCode::kLockTimeout), "LockTimeout");
  EXPECT_EQ(StatusCodeName(static_cast<StatusCode>(99999)), "Unknown(99999)");
  // Wire numbers must never change.
  EXPECT_EQ(static_cast<int>(StatusCode::kTimeout), 5);
  EXPECT_EQ(static_cast<int>(StatusCode::kLockTimeout), 100);
  EXPECT_EQ(static_cast<int>(StatusCode::kL1KeyNotExist), 400);
}

Result<int> Half(int x) {
  if (x % 2 != 0) return MakeError(Status::InvalidArgument("odd"));
  return x / 2;
}

Result<int> Quarter(int x) {
  KVT_ASSIGN_OR_RETURN(int h, Half(x));
  KVT_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

Status CheckEven(int x) {
  KVT_RETURN_STATUS_IF_ERROR(ToStatus(Half(x).map([](int) {})));
  return Status::OK();
}

TEST(ResultTest, AssignOrReturnPropagates) {
  EXPECT_EQ(Quarter(8).value(), 2);
  auto r = Quarter(6);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(CheckEven(4).ok());
  EXPECT_EQ(CheckEven(3).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtier
