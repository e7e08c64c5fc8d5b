#include "kvtier/server/worker_pool.h"

#include <latch>
#include <map>
#include <set>
#include <thread>

#include <gtest/gtest.h>

namespace kvtier::server {
namespace {

TEST(WorkerPoolTest, RunsEverythingAndStopDrainsTheQueue) {
  std::atomic<int> ran{0};
  {
    WorkerPool pool("test", 3, 1000);
    for (int i = 0; i < 500; ++i) ASSERT_TRUE(pool.SubmitAny([&] { ++ran; }));
    pool.Stop();
    EXPECT_EQ(ran.load(), 500);
    EXPECT_FALSE(pool.SubmitAny([] {}));
  }
}

TEST(WorkerPoolTest, OneKeyRunsOnOneThreadInOrder) {
  WorkerPool pool("test", 4, 10000);
  Mutex mu;
  std::map<uint64_t, std::vector<int>> order;
  std::map<uint64_t, std::set<std::thread::id>> threads;
  for (int i = 0; i < 200; ++i) {
    for (uint64_t key = 0; key < 6; ++key) {
      ASSERT_TRUE(pool.SubmitTo(key, [&, key, i] {
        MutexLock lock(&mu);
        order[key].push_back(i);
        threads[key].insert(std::this_thread::get_id());
      }));
    }
  }
  pool.Stop();
  for (uint64_t key = 0; key < 6; ++key) {
    EXPECT_EQ(threads[key].size(), 1u) << key;
    ASSERT_EQ(order[key].size(), 200u);
    for (int i = 0; i < 200; ++i) EXPECT_EQ(order[key][i], i);
  }
}

TEST(WorkerPoolTest, AFullQueueRefusesAndCounts) {
  WorkerPool pool("test", 1, 2);
  std::latch started(1), release(1);
  ASSERT_TRUE(pool.SubmitAny([&] {
    started.count_down();
    release.wait();
  }));
  started.wait();  // the only thread is busy: further tasks queue
  EXPECT_TRUE(pool.SubmitAny([] {}));
  EXPECT_TRUE(pool.SubmitTo(7, [] {}));
  EXPECT_FALSE(pool.SubmitAny([] {}));
  EXPECT_EQ(pool.rejected(), 1u);
  EXPECT_EQ(pool.queued(), 2u);
  release.count_down();
  pool.Stop();
  EXPECT_EQ(pool.queued(), 0u);
}

TEST(WorkerPoolTest, AThrowingTaskDoesNotKillTheThread) {
  WorkerPool pool("test", 1, 10);
  std::atomic<int> ran{0};
  ASSERT_TRUE(pool.SubmitAny([] { throw std::runtime_error("boom"); }));
  ASSERT_TRUE(pool.SubmitAny([&] { ++ran; }));
  pool.Stop();
  EXPECT_EQ(ran.load(), 1);
}

}  // namespace
}  // namespace kvtier::server
