#include "kvtier/reporter/key_mirror.h"

#include <algorithm>
#include <set>

#include <gtest/gtest.h>

namespace kvtier::reporter {
namespace {

using keys::ObjectKey;

ObjectKey Key(int i, uint16_t rank = 0, uint16_t world = 1) {
  keys::ChunkHash h;
  h.bytes[0] = static_cast<uint8_t>(i);
  h.bytes[1] = static_cast<uint8_t>(i >> 8);
  h.bytes[31] = 0x5a;
  return *ObjectKey::Create(h, "mirror-model", keys::KvRank{world, rank}, 0);
}

// What the "tier" holds; the mirror asks it.
struct FakeTier {
  std::set<std::string> present;
  bool Has(const ObjectKey& k) const { return present.contains(k.ToString()); }
  void Add(const ObjectKey& k) { present.insert(k.ToString()); }
  void Remove(const ObjectKey& k) { present.erase(k.ToString()); }
};

std::set<std::string> Strings(const std::vector<ObjectKey>& keys) {
  std::set<std::string> out;
  for (const ObjectKey& k : keys) out.insert(k.ToString());
  return out;
}

class KeyMirrorTest : public ::testing::Test {
 protected:
  KeyMirror MakeMirror(size_t max_pending) {
    return KeyMirror(
        "L1", [this](const ObjectKey& k) { return tier_.Has(k); }, max_pending);
  }
  FakeTier tier_;
};

TEST_F(KeyMirrorTest, RecordsTransitionsOnlyWhenPresenceChanges) {
  KeyMirror m = MakeMirror(100);
  const ObjectKey a = Key(1), b = Key(2);
  tier_.Add(a);
  m.Reconcile(std::vector{a, b});  // b is absent and unknown: no transition
  m.Reconcile(std::vector{a});     // already mirrored: no transition
  EXPECT_EQ(m.pending(), 1u);
  EXPECT_EQ(m.size(), 1u);
  KeyMirror::Changes c = m.Drain();
  EXPECT_EQ(Strings(c.admitted), Strings({a}));
  EXPECT_TRUE(c.evicted.empty());
  EXPECT_EQ(c.key_count, 1u);
  EXPECT_EQ(c.dropped, 0u);
  EXPECT_EQ(m.pending(), 0u);

  tier_.Remove(a);
  m.Reconcile(std::vector{a});
  c = m.Drain();
  EXPECT_TRUE(c.admitted.empty());
  EXPECT_EQ(Strings(c.evicted), Strings({a}));
  EXPECT_EQ(c.key_count, 0u);
}

TEST_F(KeyMirrorTest, OutOfOrderEventsConvergeOnThePresentState) {
  // A delete's callback arrives before the admit's: the admit callback finds the key gone.
  KeyMirror m = MakeMirror(100);
  const ObjectKey a = Key(3);
  m.Reconcile(std::vector{a});  // "deleted" (it was never mirrored): nothing
  m.Reconcile(std::vector{a});  // "written", but L1 no longer holds it: nothing
  EXPECT_EQ(m.size(), 0u);
  EXPECT_EQ(m.pending(), 0u);
}

TEST_F(KeyMirrorTest, DrainCoalescesEachKeysTransitions) {
  KeyMirror m = MakeMirror(100);
  const ObjectKey a = Key(4), b = Key(5), c = Key(6);
  tier_.Add(b);
  m.Reconcile(std::vector{b});
  (void)m.Drain();
  // a: admitted then evicted (cancels); b: evicted then admitted (cancels); c: admitted,
  // evicted, admitted (one admit).
  tier_.Add(a);
  m.Reconcile(std::vector{a});
  tier_.Remove(a);
  m.Reconcile(std::vector{a});
  tier_.Remove(b);
  m.Reconcile(std::vector{b});
  tier_.Add(b);
  m.Reconcile(std::vector{b});
  for (int i = 0; i < 3; ++i) {
    if (i % 2 == 0)
      tier_.Add(c);
    else
      tier_.Remove(c);
    m.Reconcile(std::vector{c});
  }
  EXPECT_EQ(m.pending(), 7u);
  KeyMirror::Changes changes = m.Drain();
  EXPECT_EQ(Strings(changes.admitted), Strings({c}));
  EXPECT_TRUE(changes.evicted.empty());
  EXPECT_EQ(changes.key_count, 2u);
}

TEST_F(KeyMirrorTest, AFullPendingListDropsAndCountsButKeepsTheMirrorExact) {
  KeyMirror m = MakeMirror(4);
  std::vector<ObjectKey> keys;
  for (int i = 0; i < 10; ++i) {
    keys.push_back(Key(100 + i));
    tier_.Add(keys.back());
  }
  m.Reconcile(keys);
  EXPECT_EQ(m.pending(), 4u);
  EXPECT_EQ(m.dropped_total(), 6u);
  EXPECT_EQ(m.size(), 10u);
  KeyMirror::Changes c = m.Drain();
  EXPECT_EQ(c.admitted.size(), 4u);
  EXPECT_EQ(c.dropped, 6u);
  EXPECT_EQ(c.key_count, 10u);
  // The drop count is reported once.
  EXPECT_EQ(m.Drain().dropped, 0u);
  EXPECT_EQ(Strings(m.Snapshot()), Strings(keys));
}

TEST_F(KeyMirrorTest, SnapshotTakesThePendingTransitions) {
  KeyMirror m = MakeMirror(2);
  std::vector<ObjectKey> keys = {Key(7), Key(8), Key(9)};
  for (const ObjectKey& k : keys) tier_.Add(k);
  m.Reconcile(keys);  // two pending, one dropped
  std::vector<ObjectKey> snap = m.Snapshot();
  EXPECT_EQ(Strings(snap), Strings(keys));
  EXPECT_EQ(m.pending(), 0u);
  KeyMirror::Changes c = m.Drain();
  EXPECT_TRUE(c.admitted.empty());
  EXPECT_EQ(c.dropped, 0u);  // the snapshot covers them
  EXPECT_EQ(c.key_count, 3u);
}

TEST_F(KeyMirrorTest, WakesOnceWhenThePendingCountReachesTheThreshold) {
  KeyMirror m = MakeMirror(100);
  int wakes = 0;
  m.SetWake(3, [&] { ++wakes; });
  std::vector<ObjectKey> keys;
  for (int i = 0; i < 5; ++i) {
    keys.push_back(Key(200 + i));
    tier_.Add(keys.back());
    m.Reconcile(std::vector{keys.back()});
  }
  EXPECT_EQ(wakes, 1);
  (void)m.Drain();
  for (const ObjectKey& k : keys) tier_.Remove(k);
  m.Reconcile(keys);
  EXPECT_EQ(wakes, 2);
}

TEST_F(KeyMirrorTest, DiscardPendingForgetsTransitionsAndDrops) {
  KeyMirror m = MakeMirror(1);
  const ObjectKey a = Key(10), b = Key(11);
  tier_.Add(a);
  tier_.Add(b);
  m.Reconcile(std::vector{a, b});
  m.DiscardPending();
  KeyMirror::Changes c = m.Drain();
  EXPECT_TRUE(c.admitted.empty());
  EXPECT_EQ(c.dropped, 0u);
  EXPECT_EQ(c.key_count, 2u);
  EXPECT_EQ(m.dropped_total(), 1u);  // the total stays, for metrics
}

}  // namespace
}  // namespace kvtier::reporter
