#include "kvtier/sync/messaging_future.h"

#include <atomic>
#include <chrono>
#include <latch>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace kvtier::sync {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using SteadyClock = std::chrono::steady_clock;

TEST(MessagingFutureTest, SetThenResult) {
  Promise<int> promise;
  MessagingFuture<int> future = promise.GetFuture();
  EXPECT_TRUE(future.valid());
  EXPECT_FALSE(future.Query());
  EXPECT_FALSE(promise.is_ready());
  ASSERT_TRUE(promise.SetValue(42));
  EXPECT_TRUE(promise.is_ready());
  EXPECT_TRUE(future.Query());
  EXPECT_TRUE(future.Wait(Duration::zero()));
  auto result = future.Result();
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ(*result, 42);
}

TEST(MessagingFutureTest, DefaultConstructedIsInvalid) {
  MessagingFuture<int> future;
  EXPECT_FALSE(future.valid());
}

TEST(MessagingFutureTest, SetFromAnotherThreadWakesWaiter) {
  Promise<std::string> promise;
  MessagingFuture<std::string> future = promise.GetFuture();
  std::latch consumer_started(1);
  std::thread producer([&] {
    consumer_started.wait();
    EXPECT_TRUE(promise.SetValue("reply"));
  });
  consumer_started.count_down();
  auto result = future.Result(kWaitForever);
  producer.join();
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ(*result, "reply");
}

TEST(MessagingFutureTest, WaitWithTimeout) {
  Promise<int> promise;
  MessagingFuture<int> future = promise.GetFuture();
  EXPECT_FALSE(future.Wait(Duration::zero()));
  auto start = SteadyClock::now();
  EXPECT_FALSE(future.Wait(milliseconds(30)));
  EXPECT_GE(SteadyClock::now() - start, milliseconds(30));

  std::thread producer([&] { promise.SetValue(7); });
  EXPECT_TRUE(future.Wait(seconds(30)));
  producer.join();
  EXPECT_TRUE(future.Wait(Duration::zero()));
  EXPECT_TRUE(future.Wait());
}

TEST(MessagingFutureTest, ResultTimeoutIsATimeoutError) {
  Promise<int> promise;
  MessagingFuture<int> future = promise.GetFuture();
  auto result = future.Result(milliseconds(10));
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().code(), StatusCode::kTimeout);
  EXPECT_NE(result.error().message().find("not available within the timeout"),
            std::string_view::npos);
  result = future.Result(Duration::zero());
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().code(), StatusCode::kTimeout);
  // A timeout does not complete the future.
  EXPECT_FALSE(future.Query());
  ASSERT_TRUE(promise.SetValue(1));
  EXPECT_EQ(future.Result(Duration::zero()).value(), 1);
}

TEST(MessagingFutureTest, ResultCanBeReadManyTimesAndFromCopies) {
  Promise<std::vector<std::string>> promise;
  auto future = promise.GetFuture();
  auto copy = future;
  auto second = promise.GetFuture();
  std::vector<std::string> expected = {"a", "bb", "ccc"};
  ASSERT_TRUE(promise.SetValue(expected));
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(future.Result().value(), expected);
    EXPECT_EQ(copy.Result().value(), expected);
    EXPECT_EQ(second.Result().value(), expected);
  }
}

TEST(MessagingFutureTest, ErrorIsReturnedAsSet) {
  Promise<int> promise;
  auto future = promise.GetFuture();
  ASSERT_TRUE(promise.SetError(Status::NotFound("no such key")));
  EXPECT_TRUE(future.Query());
  EXPECT_TRUE(future.Wait(Duration::zero()));
  for (int i = 0; i < 2; ++i) {
    auto result = future.Result();
    ASSERT_FALSE(result.has_value());
    EXPECT_EQ(result.error(), Status::NotFound("no such key"));
  }
}

TEST(MessagingFutureTest, SetsOnlyOnce) {
  Promise<int> promise;
  auto future = promise.GetFuture();
  EXPECT_TRUE(promise.SetValue(1));
  EXPECT_FALSE(promise.SetValue(2));
  EXPECT_FALSE(promise.SetError(Status::Internal("late")));
  EXPECT_EQ(future.Result().value(), 1);

  Promise<int> failed;
  auto failed_future = failed.GetFuture();
  EXPECT_TRUE(failed.SetError(Status::Internal("first")));
  EXPECT_FALSE(failed.SetValue(3));
  EXPECT_EQ(failed_future.Result().error(), Status::Internal("first"));
}

TEST(MessagingFutureTest, BrokenPromiseCompletesTheFuture) {
  std::optional<Promise<int>> promise(std::in_place);
  auto future = promise->GetFuture();
  std::latch waiting(1);
  std::thread waiter([&] {
    waiting.count_down();
    auto result = future.Result(kWaitForever);
    ASSERT_FALSE(result.has_value());
    EXPECT_EQ(result.error().code(), StatusCode::kFutureBroken);
  });
  waiting.wait();
  promise.reset();
  waiter.join();
  EXPECT_TRUE(future.Query());
}

TEST(MessagingFutureTest, CompletedPromiseIsNotBrokenByDestruction) {
  MessagingFuture<int> future;
  {
    Promise<int> promise;
    future = promise.GetFuture();
    ASSERT_TRUE(promise.SetValue(5));
  }
  EXPECT_EQ(future.Result().value(), 5);
}

TEST(MessagingFutureTest, MoveAssigningOverAPromiseBreaksItsFuture) {
  Promise<int> first;
  auto first_future = first.GetFuture();
  Promise<int> second;
  auto second_future = second.GetFuture();
  first = std::move(second);
  EXPECT_EQ(first_future.Result(Duration::zero()).error().code(), StatusCode::kFutureBroken);
  EXPECT_FALSE(second_future.Query());
  ASSERT_TRUE(first.SetValue(9));
  EXPECT_EQ(second_future.Result().value(), 9);

  Promise<int> moved_into(std::move(first));
  EXPECT_TRUE(moved_into.is_ready());
}

TEST(MessagingFutureTest, RetainReferenceLivesAsLongAsTheLastCopy) {
  auto object = std::make_shared<std::string>("ipc event");
  std::weak_ptr<std::string> weak = object;
  std::optional<MessagingFuture<int>> first;
  std::optional<MessagingFuture<int>> second;
  {
    Promise<int> promise;
    first = promise.GetFuture();
    second = *first;
    first->RetainReference(std::move(object));
    ASSERT_TRUE(promise.SetValue(1));
  }
  EXPECT_FALSE(weak.expired());
  first.reset();
  EXPECT_FALSE(weak.expired());
  EXPECT_EQ(second->Result().value(), 1);
  second.reset();
  EXPECT_TRUE(weak.expired());
}

TEST(MessagingFutureTest, RetainReferenceHeldByTheProducerToo) {
  auto object = std::make_shared<int>(3);
  std::weak_ptr<int> weak = object;
  Promise<int> promise;
  promise.GetFuture().RetainReference(std::move(object));
  EXPECT_FALSE(weak.expired());  // no future copy left, but the promise keeps the state
}

TEST(MessagingFutureTest, VoidFuture) {
  Promise<void> promise;
  MessagingFuture<void> future = promise.GetFuture();
  EXPECT_FALSE(future.Query());
  EXPECT_EQ(future.Result(Duration::zero()).error().code(), StatusCode::kTimeout);
  std::thread producer([&] { EXPECT_TRUE(promise.SetValue()); });
  Result<void> result = future.Result();
  producer.join();
  EXPECT_TRUE(result.has_value());
  EXPECT_FALSE(promise.SetValue());

  Promise<void> failing;
  auto failing_future = failing.GetFuture();
  ASSERT_TRUE(failing.SetError(Status::Unavailable("worker gone")));
  EXPECT_EQ(failing_future.Result().error().code(), StatusCode::kUnavailable);
}

TEST(MessagingFutureTest, OnReadyRunsOnceOnCompletion) {
  Promise<int> promise;
  auto future = promise.GetFuture();
  int calls = 0;
  std::thread::id ran_on;
  future.OnReady([&] {
    ++calls;
    ran_on = std::this_thread::get_id();
    EXPECT_TRUE(future.Query());
    EXPECT_EQ(future.Result(Duration::zero()).value(), 4);
  });
  EXPECT_EQ(calls, 0);
  std::thread producer([&] { promise.SetValue(4); });
  std::thread::id producer_id = producer.get_id();
  producer.join();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(ran_on, producer_id);

  // Already complete: runs right away, on the caller.
  future.OnReady([&] {
    ++calls;
    ran_on = std::this_thread::get_id();
  });
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(ran_on, std::this_thread::get_id());
}

TEST(MessagingFutureTest, OnReadyRunsForABrokenPromise) {
  auto promise = std::make_unique<Promise<int>>();
  auto future = promise->GetFuture();
  bool ran = false;
  future.OnReady([&] { ran = true; });
  promise.reset();
  EXPECT_TRUE(ran);
  EXPECT_EQ(future.Result().error().code(), StatusCode::kFutureBroken);
}

}  // namespace
}  // namespace kvtier::sync
