#include "kvtier/server/session.h"

#include <numeric>
#include <thread>

#include <gtest/gtest.h>

namespace kvtier::server {
namespace {

using namespace std::chrono_literals;

std::vector<uint32_t> Tokens(size_t n, uint32_t first = 1) {
  std::vector<uint32_t> t(n);
  std::iota(t.begin(), t.end(), first);
  return t;
}

class SessionTest : public ::testing::Test {
 protected:
  keys::TokenHasher hasher_ = keys::TokenHasher::Create(keys::HashAlgorithm::kSha256, 4).value();
  FakeClock clock_;
};

TEST_F(SessionTest, HashesMatchTheHasherAndOnlyFullChunksCount) {
  Session s("r", &hasher_, clock_.Now());
  auto tokens = Tokens(10);
  s.SetTokens(tokens);
  EXPECT_EQ(s.num_full_chunks(), 2u);
  EXPECT_EQ(s.Hashes(0, 2).value(), hasher_.HashAll(tokens));
  EXPECT_EQ(s.Hashes(1, 2).value(), std::vector<ChunkHash>{hasher_.HashAll(tokens)[1]});
  EXPECT_TRUE(s.Hashes(0, 0).value().empty());
  auto beyond = s.Hashes(0, 3);
  ASSERT_FALSE(beyond);
  EXPECT_EQ(beyond.error().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(s.Hashes(2, 1));
}

TEST_F(SessionTest, LongerTokenListsExtendIncrementally) {
  Session s("r", &hasher_, clock_.Now());
  auto tokens = Tokens(16);
  s.SetTokens(std::span(tokens).subspan(0, 8));
  auto first = s.Hashes(0, 2).value();
  s.SetTokens(tokens);  // prompt + generated tokens
  auto all = s.Hashes(0, 4).value();
  EXPECT_EQ(all, hasher_.HashAll(tokens));
  EXPECT_EQ(std::vector<ChunkHash>(all.begin(), all.begin() + 2), first);
  s.SetTokens(tokens);  // idempotent
  EXPECT_EQ(s.Hashes(0, 4).value(), all);
}

TEST_F(SessionTest, ChangedTokensRecomputeFromTheChange) {
  Session s("r", &hasher_, clock_.Now());
  auto tokens = Tokens(12);
  s.SetTokens(tokens);
  ASSERT_TRUE(s.Hashes(0, 3));
  tokens[5] = 999;  // inside chunk 1
  s.SetTokens(tokens);
  EXPECT_EQ(s.Hashes(0, 3).value(), hasher_.HashAll(tokens));
  s.SetTokens(std::span(tokens).subspan(0, 4));  // shorter: only one chunk now
  EXPECT_EQ(s.num_full_chunks(), 1u);
  EXPECT_FALSE(s.Hashes(0, 2));
}

TEST_F(SessionTest, KeySpacesAreRecordedOnce) {
  Session s("r", &hasher_, clock_.Now());
  KeySpace a{1, 2, 0}, b{1, 2, 1};
  s.AddKeySpace(a);
  s.AddKeySpace(a);
  s.AddKeySpace(b);
  EXPECT_EQ(s.key_spaces(), (std::vector<KeySpace>{a, b}));
}

TEST_F(SessionTest, ReplacingALookupReturnsTheOldOne) {
  Session s("r", &hasher_, clock_.Now());
  Lookup l;
  l.num_chunks = 3;
  EXPECT_FALSE(s.ReplaceLookup(l));
  Lookup l2;
  l2.num_chunks = 5;
  auto old = s.ReplaceLookup(l2);
  ASSERT_TRUE(old);
  EXPECT_EQ(old->num_chunks, 3u);
  uint32_t seen = 0;
  EXPECT_TRUE(s.WithLookup([&](Lookup& x) { seen = x.num_chunks; }));
  EXPECT_EQ(seen, 5u);
  s.ReplaceLookup(std::nullopt);
  EXPECT_FALSE(s.WithLookup([](Lookup&) {}));
}

TEST(ChunkKeysTest, ChunkMajorOverRanksOrOneRank) {
  auto ns = keys::InternNamespace("m", "").value();
  KeySpace space{ns, 3, 0};
  std::vector<ChunkHash> hashes(2);
  hashes[1].bytes[0] = 1;
  auto all = ChunkKeys(space, hashes, std::nullopt);
  ASSERT_EQ(all.size(), 6u);
  EXPECT_EQ(all[0].chunk_hash(), hashes[0]);
  EXPECT_EQ(all[2].kv_rank().rank, 2);
  EXPECT_EQ(all[3].chunk_hash(), hashes[1]);
  EXPECT_EQ(all[3].kv_rank().rank, 0);
  auto one = ChunkKeys(space, hashes, uint16_t{1});
  ASSERT_EQ(one.size(), 2u);
  EXPECT_EQ(one[1], all[4]);
}

TEST_F(SessionTest, ManagerGetCreateRemove) {
  SessionManager m(&hasher_, &clock_, 600s);
  auto a = m.GetOrCreate("a");
  EXPECT_EQ(m.GetOrCreate("a"), a);
  EXPECT_EQ(m.Get("a"), a);
  EXPECT_EQ(m.Get("b"), nullptr);
  EXPECT_EQ(m.size(), 1u);
  EXPECT_EQ(m.Remove("a"), a);
  EXPECT_EQ(m.Remove("a"), nullptr);
  EXPECT_NE(m.GetOrCreate("a"), a);  // a fresh session
}

TEST_F(SessionTest, TtlRunsFromTheLastUse) {
  SessionManager m(&hasher_, &clock_, 600s);
  m.GetOrCreate("old");
  m.GetOrCreate("busy");
  clock_.Advance(500s);
  m.Get("busy");  // used: its TTL starts over
  clock_.Advance(200s);
  auto expired = m.RemoveExpired();
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0]->request_id(), "old");
  EXPECT_NE(m.Get("busy"), nullptr);
  EXPECT_EQ(m.RemoveAll().size(), 1u);
  EXPECT_EQ(m.size(), 0u);
}

TEST_F(SessionTest, ConcurrentHashingIsConsistent) {
  auto tokens = Tokens(4 * 64);
  auto expected = hasher_.HashAll(tokens);
  Session s("r", &hasher_, clock_.Now());
  s.SetTokens(tokens);
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (size_t end = 1; end <= 64; ++end) {
        size_t first = (end * (t + 1)) % end;
        auto h = s.Hashes(first, end);
        if (!h || *h != std::vector<ChunkHash>(expected.begin() + first, expected.begin() + end))
          ++mismatches;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

}  // namespace
}  // namespace kvtier::server
