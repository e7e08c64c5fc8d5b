#include "kvtier/storage/l2_eviction_controller.h"

#include <gtest/gtest.h>
#include <poll.h>

#include "kvtier/l2/mock_adapter.h"
#include "kvtier/storage/storage_test_util.h"

namespace kvtier::storage {
namespace {

using keys::ObjectKey;
using testing::AccessCounter;
using testing::kObj;
using testing::MakeKeys;
using testing::MakeMock;
using testing::PutL2;

// Loads `keys` from `adapter` and waits for the result.
keys::Bitmap LoadL2(l2::L2Adapter* adapter, std::span<const ObjectKey> keys) {
  std::vector<std::vector<uint8_t>> buffers(keys.size(), std::vector<uint8_t>(kObj));
  std::vector<std::span<uint8_t>> spans(buffers.begin(), buffers.end());
  l2::TaskId task = adapter->SubmitLoad(keys, spans);
  for (;;) {
    if (auto r = adapter->QueryLoadResult(task)) return *r;
    pollfd p{adapter->load_event_fd(), POLLIN, 0};
    if (::poll(&p, 1, 30'000) <= 0) {
      ADD_FAILURE() << "load did not complete";
      return keys::Bitmap();
    }
    uint64_t v;
    [[maybe_unused]] ssize_t n = ::read(p.fd, &v, sizeof(v));
  }
}

// LRU over L2 means recency of use, not store order: a key loaded since it was stored outlives
// keys stored after it that nobody read.
TEST(L2EvictionControllerTest, ARecentlyLoadedKeySurvivesWhileOlderUnreadKeysGo) {
  auto adapter = MakeMock(/*objects=*/10);
  L2EvictionOptions options;
  options.policy = "lru";
  options.trigger_watermark = 0.8;
  options.target_watermark = 0.5;
  options.victims_per_round = 1;  // one victim per Delete: exactly down to the target
  auto controller = L2EvictionController::Create(adapter.get(), options).value();
  AccessCounter accesses;  // after the controller: it hears of an access once the controller has
  adapter->AddListener(&accesses);

  auto keys = MakeKeys(8);
  for (size_t i = 0; i < 7; ++i) PutL2(adapter.get(), std::span(keys).subspan(i, 1));
  ASSERT_EQ(controller->RunOnce(), 0u);  // 70%: below the trigger

  // keys[0], the oldest store, is read; keys[1..6] are not.
  ASSERT_EQ(LoadL2(adapter.get(), std::span(keys).first(1)).ToString(), "1");
  ASSERT_TRUE(accesses.WaitFor(1));

  PutL2(adapter.get(), std::span(keys).subspan(7, 1));  // 80%: the trigger
  EXPECT_EQ(controller->RunOnce(), 3u);                 // down to 50%: 5 objects
  EXPECT_EQ(adapter->Usage().used_bytes, 5 * kObj);
  auto* mock = static_cast<l2::MockAdapter*>(adapter.get());
  EXPECT_TRUE(mock->debug_has_key(keys[0])) << "the recently loaded key was evicted";
  for (size_t i = 1; i <= 3; ++i) EXPECT_FALSE(mock->debug_has_key(keys[i])) << i;
  for (size_t i = 4; i <= 7; ++i) EXPECT_TRUE(mock->debug_has_key(keys[i])) << i;
  adapter->Close();
}

// A round deletes what the excess over the target needs, not victims_per_round keys: with the
// default 256 a small L2 (or one of large objects) would be emptied far below its target.
TEST(L2EvictionControllerTest, EvictsDownToTheTargetNotFarBelow) {
  auto adapter = MakeMock(/*objects=*/100);
  L2EvictionOptions options;  // victims_per_round: the default, 256
  options.trigger_watermark = 0.8;
  options.target_watermark = 0.5;
  auto controller = L2EvictionController::Create(adapter.get(), options).value();
  auto keys = MakeKeys(90);
  PutL2(adapter.get(), keys);
  EXPECT_EQ(controller->RunOnce(), 40u);
  EXPECT_EQ(adapter->Usage().used_bytes, 50 * kObj);
  EXPECT_EQ(static_cast<l2::MockAdapter*>(adapter.get())->debug_stored_count(), 50u);
  EXPECT_EQ(controller->stats().tracked_keys, 50u);
  adapter->Close();
}

}  // namespace
}  // namespace kvtier::storage
