#include "kvtier/common/clock.h"

#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace kvtier {
namespace {

using namespace std::chrono_literals;

TEST(FakeClockTest, MovesOnlyWhenAdvanced) {
  FakeClock clock;
  TimePoint t0 = clock.Now();
  EXPECT_EQ(clock.Now(), t0);
  clock.Advance(5s);
  EXPECT_EQ(clock.Now() - t0, 5s);
  EXPECT_EQ(clock.NowNanos(), (t0 + 5s).time_since_epoch().count());
  clock.Set(t0);
  EXPECT_EQ(clock.Now(), t0);
}

TEST(FakeClockTest, ConcurrentAdvancesAllCount) {
  FakeClock clock;
  TimePoint t0 = clock.Now();
  std::vector<std::thread> threads;
  threads.reserve(4);
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      for (int j = 0; j < 1000; ++j) clock.Advance(1ns);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(clock.Now() - t0, 4000ns);
}

TEST(RealClockTest, IsMonotonic) {
  Clock* c = Clock::Real();
  TimePoint a = c->Now();
  TimePoint b = c->Now();
  EXPECT_LE(a, b);
}

TEST(DeadlineTest, ForeverTryAndRelative) {
  EXPECT_EQ(DeadlineFrom(kWaitForever), TimePoint::max());
  TimePoint before = std::chrono::steady_clock::now();
  TimePoint d = DeadlineFrom(Duration(0));
  EXPECT_GE(d, before);
  EXPECT_LE(d, std::chrono::steady_clock::now());
  EXPECT_GE(DeadlineFrom(10s) - before, 10s);
  // Saturates instead of overflowing.
  EXPECT_EQ(DeadlineFrom(Duration::max()), TimePoint::max());
}

}  // namespace
}  // namespace kvtier
