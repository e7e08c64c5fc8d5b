#include "kvtier/keys/token_hasher.h"

#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <xxhash.h>

#include "kvtier/common/check.h"
#include "kvtier/common/status.h"

namespace kvtier::keys {
namespace {

constexpr HashAlgorithm kAlgorithms[] = {HashAlgorithm::kSha256, HashAlgorithm::kXxh3_128};

TokenHasher MakeHasher(HashAlgorithm algorithm, uint32_t chunk_size = kDefaultChunkSize) {
  auto hasher = TokenHasher::Create(algorithm, chunk_size);
  KVT_CHECK_MSG(hasher.has_value(), "{}", hasher.error().ToString());
  return *hasher;
}

ChunkHash FromHex(std::string_view hex) {
  auto h = ChunkHash::FromHex(hex);
  KVT_CHECK(h.has_value());
  return *h;
}

std::vector<uint32_t> RandomTokens(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint32_t> tokens(n);
  for (uint32_t& t : tokens) t = rng();  // full 32-bit range, so every byte position matters
  return tokens;
}

// ---- Independent reference: the documented byte layout, built byte by byte ----

std::vector<uint8_t> LinkBytes(const ChunkHash& prev, std::span<const uint32_t> tokens) {
  std::vector<uint8_t> bytes(prev.bytes.begin(), prev.bytes.end());
  for (uint32_t t : tokens) {
    for (int shift = 0; shift < 32; shift += 8) bytes.push_back(static_cast<uint8_t>(t >> shift));
  }
  return bytes;
}

ChunkHash RefSha256(std::span<const uint8_t> data) {
  ChunkHash out;
  unsigned int len = 0;
  KVT_CHECK(EVP_Digest(data.data(), data.size(), out.bytes.data(), &len, EVP_sha256(), nullptr) ==
            1);
  KVT_CHECK(len == 32);
  return out;
}

// XXH3_128bits, written big-endian (high 64 bits first) by hand, zero-filled to 32 bytes.
ChunkHash RefXxh3(std::span<const uint8_t> data) {
  XXH128_hash_t h = XXH3_128bits(data.data(), data.size());
  ChunkHash out;
  for (int i = 0; i < 8; ++i) {
    out.bytes[i] = static_cast<uint8_t>(h.high64 >> (56 - 8 * i));
    out.bytes[8 + i] = static_cast<uint8_t>(h.low64 >> (56 - 8 * i));
  }
  return out;
}

ChunkHash RefDigest(HashAlgorithm algorithm, std::span<const uint8_t> data) {
  return algorithm == HashAlgorithm::kSha256 ? RefSha256(data) : RefXxh3(data);
}

ChunkHash RefRoot(HashAlgorithm algorithm) {
  std::string seed = "kvtier/token-hasher/v1/" + std::string(HashAlgorithmName(algorithm));
  return RefDigest(algorithm,
                   std::span(reinterpret_cast<const uint8_t*>(seed.data()), seed.size()));
}

std::vector<ChunkHash> RefChain(HashAlgorithm algorithm, uint32_t chunk_size,
                                std::span<const uint32_t> tokens) {
  std::vector<ChunkHash> chain;
  ChunkHash prev = RefRoot(algorithm);
  for (size_t i = 0; i + chunk_size <= tokens.size(); i += chunk_size) {
    prev = RefDigest(algorithm, LinkBytes(prev, tokens.subspan(i, chunk_size)));
    chain.push_back(prev);
  }
  return chain;
}

// ---- Names ----

TEST(HashAlgorithmTest, NamesAndParsing) {
  EXPECT_EQ(HashAlgorithmName(HashAlgorithm::kSha256), "sha256");
  EXPECT_EQ(HashAlgorithmName(HashAlgorithm::kXxh3_128), "xxh3_128");
  for (std::string_view name : {"sha256", "SHA256", "Sha256"}) {
    auto a = ParseHashAlgorithm(name);
    ASSERT_TRUE(a.has_value()) << name;
    EXPECT_EQ(*a, HashAlgorithm::kSha256);
  }
  for (std::string_view name : {"xxh3_128", "XXH3_128", "Xxh3_128"}) {
    auto a = ParseHashAlgorithm(name);
    ASSERT_TRUE(a.has_value()) << name;
    EXPECT_EQ(*a, HashAlgorithm::kXxh3_128);
  }
}

TEST(HashAlgorithmTest, UnknownNameListsTheChoices) {
  for (std::string_view name : {"", "sha-256", "sha256 ", "xxh3", "xxh3-128", "md5", "sha2560"}) {
    auto a = ParseHashAlgorithm(name);
    ASSERT_FALSE(a.has_value()) << name;
    EXPECT_EQ(a.error().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(a.error().message().find("sha256, xxh3_128"), std::string_view::npos)
        << a.error().ToString();
  }
}

// ---- Create ----

TEST(TokenHasherTest, DefaultsAreSha256With256TokenChunks) {
  auto hasher = TokenHasher::Create();
  ASSERT_TRUE(hasher.has_value());
  EXPECT_EQ(hasher->algorithm(), HashAlgorithm::kSha256);
  EXPECT_EQ(hasher->chunk_size(), 256u);
  EXPECT_EQ(hasher->NumFullChunks(511), 1u);
  EXPECT_EQ(hasher->NumFullChunks(512), 2u);
}

TEST(TokenHasherTest, ChunkSizeRange) {
  for (HashAlgorithm a : kAlgorithms) {
    auto zero = TokenHasher::Create(a, 0);
    ASSERT_FALSE(zero.has_value());
    EXPECT_EQ(zero.error().code(), StatusCode::kInvalidArgument);
    auto too_big = TokenHasher::Create(a, (1u << 20) + 1);
    ASSERT_FALSE(too_big.has_value());
    EXPECT_EQ(too_big.error().code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(TokenHasher::Create(a, 1).has_value());
    EXPECT_TRUE(TokenHasher::Create(a, 1u << 20).has_value());
  }
}

TEST(TokenHasherTest, RejectsUnknownAlgorithmValue) {
  auto hasher = TokenHasher::Create(static_cast<HashAlgorithm>(7));
  ASSERT_FALSE(hasher.has_value());
  EXPECT_EQ(hasher.error().code(), StatusCode::kInvalidArgument);
}

// ---- Known answers ----

// Literal vectors. sha256 values from Python 3.11:
//   python3 -c "import hashlib,struct; r=hashlib.sha256(b'kvtier/token-hasher/v1/sha256').digest();
//     h0=hashlib.sha256(r+struct.pack('<4I',1,2,3,0xdeadbeef)).digest();
//     h1=hashlib.sha256(h0+struct.pack('<4I',5,6,7,8)).digest(); print(r.hex(),h0.hex(),h1.hex())"
// xxh3_128 values from the xxhash 0.8.1 CLI (prints the canonical big-endian digest):
//   printf 'kvtier/token-hasher/v1/xxh3_128' | xxh128sum                  -> root
//   python3 -c "import sys,struct; sys.stdout.buffer.write(bytes.fromhex('<root>')+bytes(16)
//     +struct.pack('<4I',1,2,3,0xdeadbeef))" | xxh128sum                   -> h0
TEST(TokenHasherTest, Sha256LiteralVectors) {
  TokenHasher hasher = MakeHasher(HashAlgorithm::kSha256, 4);
  EXPECT_EQ(hasher.root(),
            FromHex("10d60256147a737cb5f920ed8a6c2daf3c31b0af0cb106d45902a62796eba1b9"));
  std::vector<uint32_t> tokens = {1, 2, 3, 0xdeadbeef, 5, 6, 7, 8};
  std::vector<ChunkHash> chain = hasher.HashAll(tokens);
  ASSERT_EQ(chain.size(), 2u);
  EXPECT_EQ(chain[0].ToHex(), "e64620c19ffc058ac0f87234ad2afee2c04984cdb56abe6c0bd3cd24de277eee");
  EXPECT_EQ(chain[1].ToHex(), "3aca35066a7ab02074ef7166b45796c79b1f627cb8ba2d7b1ffcf730733ec4ab");
}

TEST(TokenHasherTest, Xxh3LiteralVectors) {
  TokenHasher hasher = MakeHasher(HashAlgorithm::kXxh3_128, 4);
  const std::string zeros(32, '0');
  EXPECT_EQ(hasher.root().ToHex(), "df97f21d6b3d4d105f90b97e483b4f64" + zeros);
  std::vector<uint32_t> tokens = {1, 2, 3, 0xdeadbeef};
  std::vector<ChunkHash> chain = hasher.HashAll(tokens);
  ASSERT_EQ(chain.size(), 1u);
  EXPECT_EQ(chain[0].ToHex(), "0d74bc047054ef45f9c59fc955004bd1" + zeros);
}

// Both algorithms against the reference chain, for inline (<= 1024 tokens) and heap-sized
// chunk buffers.
TEST(TokenHasherTest, MatchesReferenceChain) {
  for (HashAlgorithm a : kAlgorithms) {
    for (uint32_t chunk_size : {1u, 3u, 256u, 1024u, 1025u, 3000u}) {
      TokenHasher hasher = MakeHasher(a, chunk_size);
      EXPECT_EQ(hasher.root(), RefRoot(a));
      std::vector<uint32_t> tokens = RandomTokens(5 * chunk_size + chunk_size / 2, chunk_size);
      std::vector<ChunkHash> chain = hasher.HashAll(tokens);
      ASSERT_EQ(chain.size(), 5u);
      EXPECT_EQ(chain, RefChain(a, chunk_size, tokens))
          << HashAlgorithmName(a) << " chunk " << chunk_size;
    }
  }
}

TEST(TokenHasherTest, Xxh3ZeroFillsTheTail) {
  TokenHasher hasher = MakeHasher(HashAlgorithm::kXxh3_128, 8);
  for (const ChunkHash& h : hasher.HashAll(RandomTokens(80, 3))) {
    for (size_t i = 16; i < kChunkHashBytes; ++i) EXPECT_EQ(h.bytes[i], 0) << i;
  }
}

// ---- Chain structure ----

TEST(TokenHasherTest, HashChunkIsOneLink) {
  for (HashAlgorithm a : kAlgorithms) {
    TokenHasher hasher = MakeHasher(a, 16);
    std::vector<uint32_t> tokens = RandomTokens(48, 11);
    std::vector<ChunkHash> chain = hasher.HashAll(tokens);
    ASSERT_EQ(chain.size(), 3u);
    std::span<const uint32_t> all(tokens);
    EXPECT_EQ(hasher.HashChunk(hasher.root(), all.subspan(0, 16)), chain[0]);
    EXPECT_EQ(hasher.HashChunk(chain[0], all.subspan(16, 16)), chain[1]);
    EXPECT_EQ(hasher.HashChunk(chain[1], all.subspan(32, 16)), chain[2]);
  }
}

TEST(TokenHasherTest, ChunkDependsOnPreviousChunk) {
  for (HashAlgorithm a : kAlgorithms) {
    TokenHasher hasher = MakeHasher(a, 4);
    std::vector<uint32_t> x = {1, 2, 3, 4, 9, 9, 9, 9};
    std::vector<uint32_t> y = {1, 2, 3, 5, 9, 9, 9, 9};  // same second chunk
    std::vector<ChunkHash> hx = hasher.HashAll(x);
    std::vector<ChunkHash> hy = hasher.HashAll(y);
    ASSERT_EQ(hx.size(), 2u);
    ASSERT_EQ(hy.size(), 2u);
    EXPECT_NE(hx[1], hy[1]);
    // The same chunk alone (first position) hashes differently again.
    EXPECT_NE(hasher.HashAll(std::vector<uint32_t>{9, 9, 9, 9})[0], hx[1]);
  }
}

TEST(TokenHasherTest, PartialChunksAreIgnored) {
  for (HashAlgorithm a : kAlgorithms) {
    TokenHasher hasher = MakeHasher(a, 4);
    std::vector<uint32_t> ten = RandomTokens(10, 21);
    std::vector<ChunkHash> chain = hasher.HashAll(ten);
    EXPECT_EQ(chain.size(), 2u);
    EXPECT_EQ(hasher.HashAll(std::span(ten).first(8)), chain);
    EXPECT_TRUE(hasher.HashAll(std::span(ten).first(3)).empty());
    EXPECT_TRUE(hasher.HashAll({}).empty());
    ten[9] ^= 1;  // inside the partial tail
    EXPECT_EQ(hasher.HashAll(ten), chain);
  }
}

TEST(TokenHasherTest, ChangingATokenChangesItsChunkAndAllLater) {
  constexpr uint32_t kChunk = 4;
  constexpr size_t kChunks = 5;
  for (HashAlgorithm a : kAlgorithms) {
    TokenHasher hasher = MakeHasher(a, kChunk);
    std::vector<uint32_t> tokens = RandomTokens(kChunk * kChunks, 5);
    std::vector<ChunkHash> base = hasher.HashAll(tokens);
    for (size_t pos = 0; pos < tokens.size(); ++pos) {
      for (uint32_t flip : {1u, 0x100u, 0x10000u, 0x80000000u}) {
        std::vector<uint32_t> changed = tokens;
        changed[pos] ^= flip;
        std::vector<ChunkHash> chain = hasher.HashAll(changed);
        size_t chunk = pos / kChunk;
        for (size_t i = 0; i < kChunks; ++i) {
          if (i < chunk) {
            EXPECT_EQ(chain[i], base[i]) << "pos " << pos << " chunk " << i;
          } else {
            EXPECT_NE(chain[i], base[i]) << "pos " << pos << " chunk " << i;
          }
        }
      }
    }
  }
}

TEST(TokenHasherTest, RootsDifferPerAlgorithm) {
  TokenHasher sha = MakeHasher(HashAlgorithm::kSha256, 4);
  TokenHasher xxh = MakeHasher(HashAlgorithm::kXxh3_128, 4);
  EXPECT_NE(sha.root(), xxh.root());
  std::vector<uint32_t> tokens = {1, 2, 3, 4};
  EXPECT_NE(sha.HashAll(tokens), xxh.HashAll(tokens));
  // The root does not depend on the chunk size.
  EXPECT_EQ(sha.root(), MakeHasher(HashAlgorithm::kSha256, 256).root());
}

TEST(TokenHasherTest, DifferentChunkSizesGiveDifferentChains) {
  for (HashAlgorithm a : kAlgorithms) {
    std::vector<uint32_t> tokens = RandomTokens(64, 17);
    std::vector<ChunkHash> c2 = MakeHasher(a, 2).HashAll(tokens);
    std::vector<ChunkHash> c4 = MakeHasher(a, 4).HashAll(tokens);
    std::vector<ChunkHash> c64 = MakeHasher(a, 64).HashAll(tokens);
    EXPECT_EQ(c2.size(), 32u);
    EXPECT_EQ(c4.size(), 16u);
    EXPECT_EQ(c64.size(), 1u);
    EXPECT_NE(c2[1], c4[0]);  // both cover tokens [0, 4)
    EXPECT_NE(c2.back(), c64[0]);
    EXPECT_NE(c4.back(), c64[0]);
  }
}

TEST(TokenHasherTest, ExtendEqualsHashAllForRandomSplits) {
  std::mt19937 rng(42);
  for (HashAlgorithm a : kAlgorithms) {
    for (uint32_t chunk_size : {1u, 7u, 64u}) {
      TokenHasher hasher = MakeHasher(a, chunk_size);
      for (int trial = 0; trial < 20; ++trial) {
        std::vector<uint32_t> tokens = RandomTokens(rng() % (20 * chunk_size), rng());
        std::vector<ChunkHash> expected = hasher.HashAll(tokens);
        std::vector<ChunkHash> hashes;
        size_t len = 0;
        while (len < tokens.size()) {
          len = std::min(tokens.size(), len + rng() % (3 * chunk_size + 1));
          hasher.Extend(std::span(tokens).first(len), &hashes);
          ASSERT_EQ(hashes.size(), len / chunk_size);
        }
        EXPECT_EQ(hashes, expected);
        hasher.Extend(tokens, &hashes);  // nothing left to add
        EXPECT_EQ(hashes, expected);
      }
    }
  }
}

TEST(TokenHasherTest, ConcurrentHashingAgrees) {
  for (HashAlgorithm a : kAlgorithms) {
    TokenHasher hasher = MakeHasher(a, 64);
    std::vector<uint32_t> tokens = RandomTokens(64 * 20, 8);
    std::vector<ChunkHash> expected = hasher.HashAll(tokens);
    std::vector<std::vector<ChunkHash>> results(4);
    std::vector<std::thread> threads;
    for (auto& r : results) {
      threads.emplace_back([&hasher, &tokens, &r] {
        for (int i = 0; i < 10; ++i) r = hasher.HashAll(tokens);
      });
    }
    for (auto& t : threads) t.join();
    for (const auto& r : results) EXPECT_EQ(r, expected);
  }
}

TEST(TokenHasherDeathTest, ContractViolationsAbort) {
  TokenHasher hasher = MakeHasher(HashAlgorithm::kSha256, 4);
  std::vector<uint32_t> three = {1, 2, 3};
  EXPECT_DEATH(hasher.HashChunk(hasher.root(), three), "chunk size is 4");
  std::vector<ChunkHash> too_many(3);
  std::vector<uint32_t> eight(8);
  EXPECT_DEATH(hasher.Extend(eight, &too_many), "only 2 full chunks");
}

}  // namespace
}  // namespace kvtier::keys
