// Encode + decode of the two messages that dominate traffic: a LOOKUP carrying a long prompt
// (32k tokens: 128 KiB of token ids) and a STORE with 512 block ids (and a 32k-token key).
// Reported per message: time / iteration.
#include <random>
#include <vector>

#include <benchmark/benchmark.h>

#include "kvtier/common/check.h"
#include "kvtier/protocol/codec.h"

namespace kvtier::protocol {
namespace {

Key MakeKey(size_t tokens, std::optional<uint16_t> rank) {
  std::mt19937 rng(1);
  Key key;
  key.model = "meta-llama/Llama-3.1-8B-Instruct";
  key.world_size = 4;
  key.worker_rank = rank;
  key.request_id = "cmpl-5f0c2b7e9a1d4c3b8e6f7a2d1c0b9e8f-0";
  key.tokens.resize(tokens);
  for (uint32_t& t : key.tokens) t = rng() % 128256;
  key.end = static_cast<uint32_t>(tokens / 256 * 256);
  return key;
}

Request MakeLookup(size_t tokens) { return LookupRequest{MakeKey(tokens, std::nullopt), 4, 0}; }

Request MakeStore(size_t tokens, size_t blocks) {
  StoreRequest store{"vllm-worker-0-rank-1", MakeKey(tokens, 1), {}, std::nullopt};
  for (size_t i = 0; i < blocks; ++i) store.block_ids.push_back(static_cast<uint32_t>(i * 7 + 3));
  return store;
}

void BM_Encode(benchmark::State& state, const Request& request) {
  size_t bytes = 0;
  for (auto _ : state) {
    Frames frames = EncodeRequest(1, request);
    bytes = frames.payload.size();
    benchmark::DoNotOptimize(frames);
  }
  state.counters["payload_bytes"] = static_cast<double>(bytes);
}

void BM_Decode(benchmark::State& state, const Request& request) {
  const Frames frames = EncodeRequest(1, request);
  for (auto _ : state) {
    Result<Header> header = DecodeHeader(frames.header);
    Result<Request> decoded = DecodeRequest(*header, frames.payload);
    KVT_CHECK(decoded.has_value());
    benchmark::DoNotOptimize(decoded);
  }
  state.counters["payload_bytes"] = static_cast<double>(frames.payload.size());
}

void BM_RoundTrip(benchmark::State& state, const Request& request) {
  for (auto _ : state) {
    Frames frames = EncodeRequest(1, request);
    Result<Header> header = DecodeHeader(frames.header);
    Result<Request> decoded = DecodeRequest(*header, frames.payload);
    KVT_CHECK(decoded.has_value());
    benchmark::DoNotOptimize(decoded);
  }
}

const Request kLookup32k = MakeLookup(32768);
const Request kStore512 = MakeStore(32768, 512);
const Request kStore512Short = MakeStore(8192, 512);

BENCHMARK_CAPTURE(BM_Encode, lookup_32k_tokens, kLookup32k)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_Decode, lookup_32k_tokens, kLookup32k)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_RoundTrip, lookup_32k_tokens, kLookup32k)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_Encode, store_512_blocks_32k_tokens, kStore512)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_Decode, store_512_blocks_32k_tokens, kStore512)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_RoundTrip, store_512_blocks_32k_tokens, kStore512)
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_RoundTrip, store_512_blocks_8k_tokens, kStore512Short)
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace kvtier::protocol
