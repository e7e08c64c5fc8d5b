// Concurrency of the namespace intern table (label "stress"; run it under TSan).
#include <latch>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "kvtier/common/check.h"
#include "kvtier/keys/object_key.h"

namespace kvtier::keys {
namespace {

// Id publication and lock-free name reads race with concurrent interning.
TEST(InternStressTest, ConcurrentInterningIsConsistent) {
  constexpr int kThreads = 8;
  // More than one 1024-entry block of the table, so block allocation races too.
  constexpr int kNames = 3000;
  std::vector<std::vector<NamespaceId>> ids(kThreads, std::vector<NamespaceId>(kNames));
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t, &ids, &start] {
      start.arrive_and_wait();
      // Each thread walks the names in a different order, so first interns race.
      for (int j = 0; j < kNames; ++j) {
        int i = (j * 7 + t * 373) % kNames;
        std::string model = fmt::format("stress/model-{}", i % 50);
        std::string salt = fmt::format("s{}", i / 50);
        auto id = InternNamespace(model, salt);
        KVT_CHECK(id.has_value());
        // Names read back right after another thread may have published the id.
        KVT_CHECK(NamespaceModelName(*id) == model);
        KVT_CHECK(NamespaceCacheSalt(*id) == salt);
        ids[t][i] = *id;
      }
    });
  }
  for (auto& th : threads) th.join();
  std::unordered_set<NamespaceId> distinct;
  for (int i = 0; i < kNames; ++i) {
    for (int t = 1; t < kThreads; ++t) EXPECT_EQ(ids[t][i], ids[0][i]) << "name " << i;
    distinct.insert(ids[0][i]);
  }
  EXPECT_EQ(distinct.size(), static_cast<size_t>(kNames));
}

}  // namespace
}  // namespace kvtier::keys
