// KeyTable and NodeList: index stability, node reuse, list links.
#include "kvtier/eviction/key_table.h"

#include <vector>

#include <gtest/gtest.h>

#include "kvtier/eviction/policy_test_util.h"

namespace kvtier::eviction::internal {
namespace {

using test_util::TestKey;

std::vector<uint32_t> Walk(const KeyTable<keys::ObjectKey>& table, const NodeList& list) {
  std::vector<uint32_t> out;
  for (uint32_t i = list.front(); i != kNilIndex; i = table.node(i).next) out.push_back(i);
  return out;
}

TEST(KeyTableTest, FindsKeysAcrossBlocksAndReusesFreedNodes) {
  KeyTable<keys::ObjectKey> table;
  constexpr uint32_t kKeys = 10000;  // more than two blocks
  for (uint32_t i = 0; i < kKeys; ++i) {
    auto [index, inserted] = table.FindOrInsert(TestKey(i));
    ASSERT_TRUE(inserted);
    ASSERT_EQ(index, i);
  }
  EXPECT_EQ(table.size(), kKeys);
  auto [again, inserted] = table.FindOrInsert(TestKey(1234));
  EXPECT_FALSE(inserted);
  EXPECT_EQ(again, 1234u);
  for (uint32_t i = 0; i < kKeys; ++i)
    ASSERT_EQ(table.node(table.Find(TestKey(i))).key, TestKey(i));
  EXPECT_EQ(table.Find(TestKey(kKeys)), kNilIndex);

  const uint32_t removed = table.Remove(TestKey(77));
  ASSERT_EQ(removed, 77u);
  EXPECT_EQ(table.node(removed).key, TestKey(77));  // contents kept until Free
  EXPECT_EQ(table.Find(TestKey(77)), kNilIndex);
  EXPECT_EQ(table.Remove(TestKey(77)), kNilIndex);
  table.Free(removed);
  table.Erase(table.Find(TestKey(5)));
  EXPECT_EQ(table.size(), kKeys - 2);
  // Freed nodes come back last-freed first.
  EXPECT_EQ(table.FindOrInsert(TestKey(kKeys)).first, 5u);
  EXPECT_EQ(table.FindOrInsert(TestKey(kKeys + 1)).first, 77u);
  EXPECT_EQ(table.FindOrInsert(TestKey(kKeys + 2)).first, kKeys);
}

TEST(KeyTableTest, FingerprintTableHoldsNumbers) {
  KeyTable<Fingerprint> table;
  for (Fingerprint f : {0u, 1u, 0xffffffffu, 42u}) EXPECT_TRUE(table.FindOrInsert(f).second);
  EXPECT_EQ(table.size(), 4u);
  EXPECT_NE(table.Find(0xffffffffu), kNilIndex);
  EXPECT_EQ(table.Find(7u), kNilIndex);
  EXPECT_NE(FingerprintOf(TestKey(1)), FingerprintOf(TestKey(2)));
}

TEST(NodeListTest, KeepsOrderThroughPushUnlinkMoveAndPop) {
  KeyTable<keys::ObjectKey> table;
  NodeList list;
  for (uint32_t i = 0; i < 5; ++i) list.PushBack(table, table.FindOrInsert(TestKey(i)).first);
  EXPECT_EQ(Walk(table, list), (std::vector<uint32_t>{0, 1, 2, 3, 4}));
  list.Unlink(table, 2);
  list.MoveToBack(table, 0);
  list.MoveToBack(table, 0);  // already at the back
  EXPECT_EQ(Walk(table, list), (std::vector<uint32_t>{1, 3, 4, 0}));
  EXPECT_EQ(list.PopFront(table), 1u);
  list.Unlink(table, 0);
  EXPECT_EQ(Walk(table, list), (std::vector<uint32_t>{3, 4}));
  EXPECT_EQ(list.back(), 4u);
  EXPECT_EQ(list.size(), 2u);
  EXPECT_EQ(list.PopFront(table), 3u);
  EXPECT_EQ(list.PopFront(table), 4u);
  EXPECT_TRUE(list.empty());
  EXPECT_EQ(list.PopFront(table), kNilIndex);
  EXPECT_EQ(list.back(), kNilIndex);
}

}  // namespace
}  // namespace kvtier::eviction::internal
