#include "kvtier/transfer/copy_pool.h"

#include <atomic>
#include <set>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "kvtier/common/mutex.h"

namespace kvtier::transfer {
namespace {

TEST(CopyPoolTest, RunsEveryIndexExactlyOnce) {
  for (size_t threads : {1, 2, 5}) {
    CopyPool pool(threads);
    EXPECT_EQ(pool.num_threads(), threads);
    for (size_t n : {0, 1, 2, 3, 31, 1000}) {
      std::vector<std::atomic<int>> hits(n);
      pool.Run(n, [&](size_t i) { hits[i].fetch_add(1); });
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n " << n << " index " << i;
    }
  }
}

TEST(CopyPoolTest, WorkIsDoneWhenRunReturns) {
  CopyPool pool(3);
  std::vector<uint64_t> out(64, 0);  // plain writes: Run must order them before its return
  for (int round = 1; round <= 50; ++round) {
    pool.Run(out.size(), [&](size_t i) { out[i] = i * round; });
    for (size_t i = 0; i < out.size(); ++i) ASSERT_EQ(out[i], i * round);
  }
}

TEST(CopyPoolTest, UsesPoolThreads) {
  // Index 0 waits until another index has run on a different thread: it can only finish if a
  // pool thread takes part (the caller is busy in index 0).
  CopyPool pool(2);
  Mutex mu;
  CondVar cv;
  std::set<std::thread::id> ids;
  bool other_ran = false;
  pool.Run(2, [&](size_t i) {
    MutexLock lock(&mu);
    ids.insert(std::this_thread::get_id());
    if (i == 0) {
      while (!other_ran) cv.Wait(&mu);
    } else {
      other_ran = true;
      cv.NotifyAll();
    }
  });
  EXPECT_EQ(ids.size(), 2u);
}

TEST(CopyPoolTest, ConcurrentCallersEachGetTheirOwnWork) {
  CopyPool pool(2);
  constexpr int kCallers = 4;
  constexpr int kRounds = 200;
  std::vector<std::thread> callers;
  std::vector<int> failures(kCallers, 0);
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      for (int r = 0; r < kRounds; ++r) {
        const size_t n = 1 + static_cast<size_t>((c * 7 + r) % 40);
        std::vector<std::atomic<int>> hits(n);
        pool.Run(n, [&](size_t i) { hits[i].fetch_add(1); });
        for (size_t i = 0; i < n; ++i) failures[c] += hits[i].load() != 1;
      }
    });
  }
  for (auto& t : callers) t.join();
  for (int c = 0; c < kCallers; ++c) EXPECT_EQ(failures[c], 0) << "caller " << c;
}

}  // namespace
}  // namespace kvtier::transfer
