#include "kvtier/keys/object_key.h"

#include <cctype>
#include <string>
#include <unordered_set>
#include <vector>

#include <gtest/gtest.h>

#include "kvtier/common/check.h"
#include "kvtier/common/status.h"

namespace kvtier::keys {
namespace {

ChunkHash HashOf(uint8_t seed) {
  ChunkHash h;
  for (size_t i = 0; i < kChunkHashBytes; ++i) h.bytes[i] = static_cast<uint8_t>(seed * 31 + i);
  return h;
}

template <typename T>
void ExpectInvalidKey(const Result<T>& r) {
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::kInvalidKey) << r.error().ToString();
}

ObjectKey MakeKey(std::string_view model, KvRank rank, uint32_t group, std::string_view salt,
                  const ChunkHash& hash = HashOf(1)) {
  auto key = ObjectKey::Create(hash, model, rank, group, salt);
  KVT_CHECK_MSG(key.has_value(), "{}", key.error().ToString());
  return *key;
}

// ---- ChunkHash ----

TEST(ChunkHashTest, HexRoundTrip) {
  ChunkHash h = HashOf(7);
  std::string hex = h.ToHex();
  ASSERT_EQ(hex.size(), 64u);
  for (char c : hex) EXPECT_TRUE((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) << c;
  auto back = ChunkHash::FromHex(hex);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(*back, h);
}

TEST(ChunkHashTest, HexIsBytesInOrder) {
  ChunkHash h;
  h.bytes[0] = 0x01;
  h.bytes[1] = 0xab;
  h.bytes[31] = 0xf0;
  EXPECT_EQ(h.ToHex(), "01ab" + std::string(58, '0') + "f0");
}

TEST(ChunkHashTest, FromHexAcceptsUpperCase) {
  ChunkHash h = HashOf(3);
  std::string hex = h.ToHex();
  for (char& c : hex) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  auto back = ChunkHash::FromHex(hex);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(*back, h);
}

TEST(ChunkHashTest, FromHexRejectsBadInput) {
  std::string good = HashOf(2).ToHex();
  ExpectInvalidKey(ChunkHash::FromHex(""));
  ExpectInvalidKey(ChunkHash::FromHex(good.substr(1)));
  ExpectInvalidKey(ChunkHash::FromHex(good + "0"));
  for (char bad : {'g', 'G', ' ', '-', 'x', '\0'}) {
    std::string s = good;
    s[17] = bad;
    ExpectInvalidKey(ChunkHash::FromHex(s));
  }
}

TEST(ChunkHashTest, Prefix64IsLittleEndianOfFirstEightBytes) {
  ChunkHash h;
  for (size_t i = 0; i < 8; ++i) h.bytes[i] = static_cast<uint8_t>(i + 1);
  h.bytes[8] = 0xff;
  EXPECT_EQ(h.Prefix64(), 0x0807060504030201ULL);
}

// ---- KvRank ----

TEST(KvRankTest, Validate) {
  EXPECT_TRUE((KvRank{1, 0}).Validate().ok());
  EXPECT_TRUE((KvRank{8, 7}).Validate().ok());
  EXPECT_TRUE((KvRank{65535, 65534}).Validate().ok());
  EXPECT_EQ((KvRank{0, 0}).Validate().code(), StatusCode::kInvalidKey);
  EXPECT_EQ((KvRank{4, 4}).Validate().code(), StatusCode::kInvalidKey);
  EXPECT_EQ((KvRank{4, 9}).Validate().code(), StatusCode::kInvalidKey);
}

TEST(KvRankTest, PackRoundTrip) {
  KvRank r{513, 77};
  EXPECT_EQ(r.Packed(), (513u << 16) | 77u);
  EXPECT_EQ(KvRank::FromPacked(r.Packed()), r);
}

// ---- Validation ----

TEST(ObjectKeyTest, CreateValidatesModelName) {
  ChunkHash h = HashOf(1);
  ExpectInvalidKey(ObjectKey::Create(h, "", KvRank{}, 0));
  ExpectInvalidKey(ObjectKey::Create(h, "model@x", KvRank{}, 0));
  ExpectInvalidKey(ObjectKey::Create(h, std::string("mo\0del", 6), KvRank{}, 0));
  ExpectInvalidKey(ObjectKey::Create(h, std::string(kMaxModelNameLength + 1, 'm'), KvRank{}, 0));
  EXPECT_TRUE(ObjectKey::Create(h, std::string(kMaxModelNameLength, 'm'), KvRank{}, 0));
  EXPECT_TRUE(ObjectKey::Create(h, "meta-llama/Llama-3.1-8B", KvRank{}, 0));
  EXPECT_TRUE(ObjectKey::Create(h, "a\\b c:d", KvRank{}, 0));
}

TEST(ObjectKeyTest, CreateValidatesCacheSalt) {
  ChunkHash h = HashOf(1);
  for (std::string_view bad : {std::string_view("a@b"), std::string_view("a/b"),
                               std::string_view("a\\b"), std::string_view("a\0b", 3)}) {
    ExpectInvalidKey(ObjectKey::Create(h, "m", KvRank{}, 0, bad));
  }
  ExpectInvalidKey(
      ObjectKey::Create(h, "m", KvRank{}, 0, std::string(kMaxCacheSaltLength + 1, 's')));
  EXPECT_TRUE(ObjectKey::Create(h, "m", KvRank{}, 0, std::string(kMaxCacheSaltLength, 's')));
  EXPECT_TRUE(ObjectKey::Create(h, "m", KvRank{}, 0, "tenant-1_x.y"));
}

TEST(ObjectKeyTest, CreateValidatesRank) {
  ChunkHash h = HashOf(1);
  ExpectInvalidKey(ObjectKey::Create(h, "m", KvRank{0, 0}, 0));
  ExpectInvalidKey(ObjectKey::Create(h, "m", KvRank{2, 2}, 0));
  auto ns = InternNamespace("m", "");
  ASSERT_TRUE(ns.has_value());
  ExpectInvalidKey(ObjectKey::Create(h, *ns, KvRank{2, 5}, 0));
  EXPECT_TRUE(ObjectKey::Create(h, *ns, KvRank{2, 1}, 0));
}

TEST(ObjectKeyTest, AccessorsReturnFields) {
  ChunkHash h = HashOf(9);
  ObjectKey k = MakeKey("org/model", KvRank{4, 3}, 17, "salt", h);
  EXPECT_EQ(k.chunk_hash(), h);
  EXPECT_EQ(k.model_name(), "org/model");
  EXPECT_EQ(k.cache_salt(), "salt");
  EXPECT_EQ(k.kv_rank(), (KvRank{4, 3}));
  EXPECT_EQ(k.object_group(), 17u);
  EXPECT_NE(k.namespace_id(), 0u);
}

// ---- Text form ----

TEST(ObjectKeyTest, ToStringFormat) {
  ChunkHash h = HashOf(5);
  EXPECT_EQ(MakeKey("meta-llama/Llama-3.1-8B", KvRank{2, 1}, 0, "", h).ToString(),
            "meta-llama/Llama-3.1-8B@w2r1@g0@" + h.ToHex());
  EXPECT_EQ(MakeKey("m", KvRank{1, 0}, 42, "tenant", h).ToString(),
            "m@w1r0@g42@" + h.ToHex() + "@tenant");
}

TEST(ObjectKeyTest, ParseRoundTrip) {
  const std::vector<ObjectKey> keys = {
      MakeKey("meta-llama/Llama-3.1-8B", KvRank{2, 1}, 0, ""),
      MakeKey("meta-llama/Llama-3.1-8B", KvRank{2, 1}, 0, "tenant-a"),
      MakeKey("/leading/and/trailing/", KvRank{65535, 65534}, 4294967295u, "s", HashOf(200)),
      MakeKey("m", KvRank{1, 0}, 3, std::string(kMaxCacheSaltLength, 'z')),
      MakeKey(std::string(kMaxModelNameLength, 'q'), KvRank{8, 0}, 1, ""),
  };
  for (const ObjectKey& k : keys) {
    std::string text = k.ToString();
    auto parsed = ObjectKey::Parse(text);
    ASSERT_TRUE(parsed.has_value()) << text << ": " << parsed.error().ToString();
    EXPECT_EQ(*parsed, k) << text;
    EXPECT_EQ(parsed->ToString(), text);
  }
}

TEST(ObjectKeyTest, ParseRejectsMalformed) {
  const std::string hex = HashOf(1).ToHex();
  std::string upper = hex;
  upper[0] = 'A';
  upper[1] = 'B';
  const std::vector<std::string> bad = {
      "",
      "m",
      "m@w1r0",
      "m@w1r0@g0",                          // too few fields
      "m@w1r0@g0@" + hex + "@s@t",          // too many fields
      "m@w1r0@g0@" + hex + "@",             // empty salt field
      "@w1r0@g0@" + hex,                    // empty model
      "m@1r0@g0@" + hex,                    // rank field without 'w'
      "m@w1@g0@" + hex,                     // rank field without 'r'
      "m@wr0@g0@" + hex,                    // missing world size
      "m@w1r@g0@" + hex,                    // missing rank
      "m@w1r1@g0@" + hex,                   // rank outside world
      "m@w0r0@g0@" + hex,                   // empty world
      "m@w65536r0@g0@" + hex,               // world size overflows uint16
      "m@w-1r0@g0@" + hex,                  // sign
      "m@w+1r0@g0@" + hex,                  // sign
      "m@w01r0@g0@" + hex,                  // leading zero
      "m@w2r01@g0@" + hex,                  // leading zero
      "m@w1r0x@g0@" + hex,                  // trailing junk
      "m@w 1r0@g0@" + hex,                  // space
      "m@w1r0@0@" + hex,                    // group without 'g'
      "m@w1r0@g@" + hex,                    // empty group
      "m@w1r0@gx@" + hex,                   // non-numeric group
      "m@w1r0@g4294967296@" + hex,          // group overflows uint32
      "m@w1r0@g00@" + hex,                  // leading zero
      "m@w1r0@g0@" + hex.substr(2),         // short hash
      "m@w1r0@g0@" + hex + "00",            // long hash
      "m@w1r0@g0@" + std::string(64, 'g'),  // non-hex
      "m@w1r0@g0@" + upper,                 // not canonical (upper case)
      "m@w1r0@g0@" + hex + "@a/b",          // salt with '/'
      "m@w1r0@g0@" + hex + "@" + std::string(kMaxCacheSaltLength + 1, 's'),
      std::string(kMaxModelNameLength + 1, 'm') + "@w1r0@g0@" + hex,
      std::string("m\0@w1r0@g0@", 11) + hex,  // NUL in model
  };
  for (const std::string& text : bad) {
    auto r = ObjectKey::Parse(text);
    EXPECT_FALSE(r.has_value()) << "accepted: " << text;
    if (!r.has_value()) {
      EXPECT_EQ(r.error().code(), StatusCode::kInvalidKey) << text;
    }
  }
}

// ---- Equality and hashing ----

TEST(ObjectKeyTest, EveryFieldTakesPartInEqualityAndHash) {
  ObjectKey base = MakeKey("model", KvRank{4, 1}, 2, "salt", HashOf(1));
  ChunkHash last_byte = HashOf(1);
  last_byte.bytes[31] ^= 1;
  const std::vector<ObjectKey> variants = {
      MakeKey("model", KvRank{4, 1}, 2, "salt", HashOf(2)),   // hash (prefix bytes)
      MakeKey("model", KvRank{4, 1}, 2, "salt", last_byte),   // hash (last byte only)
      MakeKey("model2", KvRank{4, 1}, 2, "salt", HashOf(1)),  // model
      MakeKey("model", KvRank{4, 2}, 2, "salt", HashOf(1)),   // rank
      MakeKey("model", KvRank{8, 1}, 2, "salt", HashOf(1)),   // world size
      MakeKey("model", KvRank{4, 1}, 3, "salt", HashOf(1)),   // group
      MakeKey("model", KvRank{4, 1}, 2, "salt2", HashOf(1)),  // salt
      MakeKey("model", KvRank{4, 1}, 2, "", HashOf(1)),       // no salt
  };
  EXPECT_EQ(base, MakeKey("model", KvRank{4, 1}, 2, "salt", HashOf(1)));
  EXPECT_EQ(base.Hash(), MakeKey("model", KvRank{4, 1}, 2, "salt", HashOf(1)).Hash());
  for (size_t i = 0; i < variants.size(); ++i) {
    EXPECT_NE(base, variants[i]) << "variant " << i;
    // Hash() reads the first 8 hash bytes only; the rest are covered by equality.
    if (i != 1) {
      EXPECT_NE(base.Hash(), variants[i].Hash()) << "variant " << i;
    }
  }
  std::unordered_set<ObjectKey> set(variants.begin(), variants.end());
  set.insert(base);
  EXPECT_EQ(set.size(), variants.size() + 1);
  EXPECT_EQ(std::hash<ObjectKey>()(base), ObjectKeyHash()(base));
}

TEST(ObjectKeyTest, WithRankChangesOnlyTheRank) {
  ObjectKey k = MakeKey("model", KvRank{4, 0}, 6, "s");
  ObjectKey k3 = k.WithRank(KvRank{4, 3});
  EXPECT_EQ(k3, MakeKey("model", KvRank{4, 3}, 6, "s"));
  EXPECT_NE(k3, k);
  EXPECT_EQ(k3.WithRank(KvRank{4, 0}), k);
  EXPECT_EQ(k3.kv_rank(), (KvRank{4, 3}));
  EXPECT_EQ(k3.chunk_hash(), k.chunk_hash());
  EXPECT_EQ(k3.namespace_id(), k.namespace_id());
  EXPECT_EQ(k3.object_group(), k.object_group());
}

// ---- Interning ----

TEST(InternTest, SamePairSameIdAndNamesBack) {
  auto a = InternNamespace("intern/model", "salt");
  auto b = InternNamespace("intern/model", "salt");
  ASSERT_TRUE(a.has_value());
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(*a, *b);
  EXPECT_NE(*a, 0u);
  EXPECT_EQ(NamespaceModelName(*a), "intern/model");
  EXPECT_EQ(NamespaceCacheSalt(*a), "salt");
  auto no_salt = InternNamespace("intern/model", "");
  ASSERT_TRUE(no_salt.has_value());
  EXPECT_NE(*no_salt, *a);
  EXPECT_EQ(NamespaceCacheSalt(*no_salt), "");
}

TEST(InternTest, BoundaryShiftBetweenModelAndSaltGivesDistinctIds) {
  auto a = InternNamespace("a", "bc");
  auto b = InternNamespace("ab", "c");
  auto c = InternNamespace("abc", "");
  ASSERT_TRUE(a && b && c);
  EXPECT_NE(*a, *b);
  EXPECT_NE(*a, *c);
  EXPECT_NE(*b, *c);
  EXPECT_EQ(NamespaceModelName(*a), "a");
  EXPECT_EQ(NamespaceCacheSalt(*a), "bc");
  EXPECT_EQ(NamespaceModelName(*b), "ab");
  EXPECT_EQ(NamespaceCacheSalt(*b), "c");
}

TEST(InternTest, RejectsInvalidNames) {
  ExpectInvalidKey(InternNamespace("", ""));
  ExpectInvalidKey(InternNamespace("a@b", ""));
  ExpectInvalidKey(InternNamespace("m", "x/y"));
}

TEST(InternDeathTest, UnknownIdAborts) {
  EXPECT_DEATH(NamespaceModelName(0), "invalid namespace id");
  EXPECT_DEATH(NamespaceModelName(4000000), "never interned");
}

}  // namespace
}  // namespace kvtier::keys
