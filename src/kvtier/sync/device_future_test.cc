// DeviceFuture logic that needs no GPU: the reply wait, errors from the producer and from CUDA.
// The end-to-end test with an event exported by a live process is a GPU test of its own.
#include "kvtier/sync/device_future.h"

#include <chrono>
#include <thread>

#include <gtest/gtest.h>

namespace kvtier::sync {
namespace {

using std::chrono::milliseconds;

TEST(DeviceFutureTest, PendingReplyIsNotReadyAndTimesOut) {
  Promise<DeviceReply<int>> promise;
  DeviceFuture<int> future(promise.GetFuture());
  EXPECT_TRUE(future.valid());
  EXPECT_FALSE(future.Query());
  EXPECT_FALSE(future.Wait(Duration::zero()));
  EXPECT_FALSE(future.Wait(milliseconds(10)));
  auto result = future.Result(milliseconds(10));
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().code(), StatusCode::kTimeout);
}

TEST(DeviceFutureTest, ProducerErrorIsReturnedWithoutTouchingCuda) {
  Promise<DeviceReply<int>> promise;
  DeviceFuture<int> future(promise.GetFuture());
  DeviceFuture<int> copy = future;
  std::thread producer([&] { promise.SetError(Status::NotFound("no such blocks")); });
  producer.join();
  EXPECT_TRUE(future.Query());
  EXPECT_TRUE(future.Wait());
  EXPECT_EQ(future.Result().error(), Status::NotFound("no such blocks"));
  EXPECT_EQ(copy.Result().error(), Status::NotFound("no such blocks"));
}

TEST(DeviceFutureTest, InvalidEventHandleIsAnError) {
  Promise<DeviceReply<int>> promise;
  DeviceFuture<int> future(promise.GetFuture());
  DeviceReply<int> reply;
  reply.event_ipc_handle.emplace();
  reply.event_ipc_handle->fill(0xab);  // not an exported event (and maybe no GPU at all)
  reply.value = 7;
  ASSERT_TRUE(promise.SetValue(reply));
  EXPECT_TRUE(future.Query());
  EXPECT_TRUE(future.Wait(Duration::zero()));
  auto result = future.Result();
  ASSERT_FALSE(result.has_value());
  EXPECT_NE(result.error().message().find("cudaIpcOpenEventHandle"), std::string_view::npos)
      << result.error().ToString();
  // The import is attempted once; later calls return the same error.
  EXPECT_EQ(future.Result().error(), result.error());
}

TEST(DeviceFutureTest, ReplyWithoutEventIsFinal) {
  Promise<DeviceReply<int>> promise;
  DeviceFuture<int> future(promise.GetFuture());
  ASSERT_TRUE(promise.SetValue(DeviceReply<int>{std::nullopt, 5}));
  EXPECT_TRUE(future.Query());
  EXPECT_TRUE(future.Wait(Duration::zero()));
  auto result = future.Result();
  ASSERT_TRUE(result.has_value()) << result.error().ToString();
  EXPECT_EQ(*result, 5);
}

TEST(DeviceFutureTest, RetainReferenceForwardsToTheRawFuture) {
  auto object = std::make_shared<int>(1);
  std::weak_ptr<int> weak = object;
  {
    Promise<DeviceReply<int>> promise;
    DeviceFuture<int> future(promise.GetFuture());
    future.RetainReference(std::move(object));
    EXPECT_FALSE(weak.expired());
  }
  EXPECT_TRUE(weak.expired());
}

}  // namespace
}  // namespace kvtier::sync
