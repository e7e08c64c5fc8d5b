// Hashing throughput of 256-token chunks: sha256 vs xxh3_128, against a memcpy of the same
// bytes (prev hash + tokens per chunk). The Sha256Backend benchmarks justify the EVP usage in
// token_hasher.cc.
#include <cstring>
#include <random>
#include <vector>

#include <benchmark/benchmark.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "kvtier/common/check.h"
#include "kvtier/keys/token_hasher.h"

namespace kvtier::keys {
namespace {

constexpr uint32_t kChunk = kDefaultChunkSize;
constexpr size_t kLinkBytes = kChunkHashBytes + kChunk * sizeof(uint32_t);

std::vector<uint32_t> Tokens(size_t n) {
  std::mt19937 rng(1);
  std::vector<uint32_t> tokens(n);
  for (uint32_t& t : tokens) t = rng() % 150000;
  return tokens;
}

void SetCounters(benchmark::State& state, size_t tokens_per_iter) {
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * tokens_per_iter));
  state.SetBytesProcessed(
      static_cast<int64_t>(state.iterations() * tokens_per_iter * sizeof(uint32_t)));
  state.counters["chunks/s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * tokens_per_iter / kChunk),
                         benchmark::Counter::kIsRate);
}

// range(0): chunks per HashAll call.
void BM_HashAll(benchmark::State& state, HashAlgorithm algorithm) {
  auto hasher = TokenHasher::Create(algorithm, kChunk);
  KVT_CHECK(hasher.has_value());
  std::vector<uint32_t> tokens = Tokens(static_cast<size_t>(state.range(0)) * kChunk);
  for (auto _ : state) {
    std::vector<ChunkHash> hashes = hasher->HashAll(tokens);
    benchmark::DoNotOptimize(hashes.data());
  }
  SetCounters(state, tokens.size());
}
BENCHMARK_CAPTURE(BM_HashAll, sha256, HashAlgorithm::kSha256)->Arg(1)->Arg(64);
BENCHMARK_CAPTURE(BM_HashAll, xxh3_128, HashAlgorithm::kXxh3_128)->Arg(1)->Arg(64);

// The single-link API (stack buffer per call).
void BM_HashChunk(benchmark::State& state, HashAlgorithm algorithm) {
  auto hasher = TokenHasher::Create(algorithm, kChunk);
  KVT_CHECK(hasher.has_value());
  std::vector<uint32_t> tokens = Tokens(kChunk);
  ChunkHash prev = hasher->root();
  for (auto _ : state) {
    prev = hasher->HashChunk(prev, tokens);
    benchmark::DoNotOptimize(prev);
  }
  SetCounters(state, kChunk);
}
BENCHMARK_CAPTURE(BM_HashChunk, sha256, HashAlgorithm::kSha256);
BENCHMARK_CAPTURE(BM_HashChunk, xxh3_128, HashAlgorithm::kXxh3_128);

// Baseline: the same data movement as HashAll with no hashing.
void BM_MemcpyBaseline(benchmark::State& state) {
  std::vector<uint32_t> tokens = Tokens(static_cast<size_t>(state.range(0)) * kChunk);
  std::vector<uint8_t> link(kLinkBytes);
  std::vector<ChunkHash> out(tokens.size() / kChunk);
  for (auto _ : state) {
    for (size_t i = 0; i < out.size(); ++i) {
      std::memcpy(link.data() + kChunkHashBytes, tokens.data() + i * kChunk,
                  kChunk * sizeof(uint32_t));
      benchmark::ClobberMemory();
      std::memcpy(out[i].bytes.data(), link.data() + 8 * (i % 8), kChunkHashBytes);
      std::memcpy(link.data(), out[i].bytes.data(), kChunkHashBytes);
    }
    benchmark::DoNotOptimize(out.data());
  }
  SetCounters(state, tokens.size());
}
BENCHMARK(BM_MemcpyBaseline)->Arg(1)->Arg(64);

// SHA-256 of one link (1056 bytes) through each OpenSSL 3 entry point.
void BM_Sha256Backend_OneShot(benchmark::State& state) {
  std::vector<uint8_t> link(kLinkBytes, 7);
  uint8_t out[32];
  for (auto _ : state) {
    SHA256(link.data(), link.size(), out);
    benchmark::DoNotOptimize(out);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * link.size()));
}
BENCHMARK(BM_Sha256Backend_OneShot);

void BM_Sha256Backend_EvpDigest(benchmark::State& state) {
  std::vector<uint8_t> link(kLinkBytes, 7);
  uint8_t out[32];
  for (auto _ : state) {
    EVP_Digest(link.data(), link.size(), out, nullptr, EVP_sha256(), nullptr);
    benchmark::DoNotOptimize(out);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * link.size()));
}
BENCHMARK(BM_Sha256Backend_EvpDigest);

void BM_Sha256Backend_FetchedMdReusedCtx(benchmark::State& state) {
  std::vector<uint8_t> link(kLinkBytes, 7);
  uint8_t out[32];
  EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  for (auto _ : state) {
    EVP_DigestInit_ex2(ctx, md, nullptr);
    EVP_DigestUpdate(ctx, link.data(), link.size());
    EVP_DigestFinal_ex(ctx, out, nullptr);
    benchmark::DoNotOptimize(out);
  }
  EVP_MD_CTX_free(ctx);
  EVP_MD_free(md);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * link.size()));
}
BENCHMARK(BM_Sha256Backend_FetchedMdReusedCtx);

}  // namespace
}  // namespace kvtier::keys
