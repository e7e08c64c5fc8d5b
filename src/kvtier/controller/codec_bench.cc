// Encode and decode of an ADMIT batch of 1024 keys (the reporter's steady-state message), in one
// key group and spread over 8 ranks; plus the steps around the codec: grouping ObjectKeys on the
// worker, and turning the decoded groups back into ObjectKeys (one interning per group) on the
// controller. Reported as keys per second.
#include <vector>

#include <benchmark/benchmark.h>

#include "kvtier/common/check.h"
#include "kvtier/controller/codec.h"

namespace kvtier::controller {
namespace {

keys::ChunkHash Hash(uint32_t seed) {
  keys::ChunkHash h;
  for (size_t i = 0; i < h.bytes.size(); ++i)
    h.bytes[i] = static_cast<uint8_t>(size_t{seed} * 131 + i * 7);
  return h;
}

// `keys` keys of one model, spread evenly over `ranks` ranks.
std::vector<keys::ObjectKey> MakeKeys(size_t keys, uint16_t ranks) {
  std::vector<keys::ObjectKey> out;
  for (size_t i = 0; i < keys; ++i) {
    auto key = keys::ObjectKey::Create(Hash(static_cast<uint32_t>(i / ranks)),
                                       "meta-llama/Llama-3.1-70B-Instruct",
                                       keys::KvRank{ranks, static_cast<uint16_t>(i % ranks)}, 0);
    KVT_CHECK(key.has_value());
    out.push_back(*key);
  }
  return out;
}

Event MakeAdmit(const std::vector<keys::ObjectKey>& keys) {
  return KvEvent{KvOp::kAdmit, Origin{"node-17.cluster.local", 0, 0x5eed}, "L1", 1000,
                 GroupKeys(keys)};
}

void SetKeys(benchmark::State& state, size_t keys_per_iteration) {
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * keys_per_iteration));
}

void BM_EncodeAdmit(benchmark::State& state) {
  const Event admit = MakeAdmit(MakeKeys(1024, static_cast<uint16_t>(state.range(0))));
  size_t bytes = 0;
  for (auto _ : state) {
    std::vector<uint8_t> frame = EncodeEvent(admit);
    bytes = frame.size();
    benchmark::DoNotOptimize(frame);
  }
  SetKeys(state, 1024);
  state.counters["frame_bytes"] = static_cast<double>(bytes);
}

void BM_DecodeAdmit(benchmark::State& state) {
  const std::vector<uint8_t> frame =
      EncodeEvent(MakeAdmit(MakeKeys(1024, static_cast<uint16_t>(state.range(0)))));
  for (auto _ : state) {
    Result<Framed<Event>> event = DecodeEvent(frame);
    KVT_CHECK(event.has_value());
    benchmark::DoNotOptimize(event);
  }
  SetKeys(state, 1024);
}

// Worker side: ObjectKeys -> groups -> frame.
void BM_GroupAndEncodeAdmit(benchmark::State& state) {
  const std::vector<keys::ObjectKey> keys = MakeKeys(1024, static_cast<uint16_t>(state.range(0)));
  for (auto _ : state) {
    std::vector<uint8_t> frame = EncodeEvent(MakeAdmit(keys));
    benchmark::DoNotOptimize(frame);
  }
  SetKeys(state, 1024);
}

// Controller side: frame -> groups -> ObjectKeys.
void BM_DecodeAdmitToObjectKeys(benchmark::State& state) {
  const std::vector<uint8_t> frame =
      EncodeEvent(MakeAdmit(MakeKeys(1024, static_cast<uint16_t>(state.range(0)))));
  for (auto _ : state) {
    Result<Framed<Event>> event = DecodeEvent(frame);
    KVT_CHECK(event.has_value());
    Result<std::vector<keys::ObjectKey>> keys = ToObjectKeys(std::get<KvEvent>(event->body).groups);
    KVT_CHECK(keys.has_value() && keys->size() == 1024);
    benchmark::DoNotOptimize(keys);
  }
  SetKeys(state, 1024);
}

BENCHMARK(BM_EncodeAdmit)->ArgName("ranks")->Arg(1)->Arg(8);
BENCHMARK(BM_DecodeAdmit)->ArgName("ranks")->Arg(1)->Arg(8);
BENCHMARK(BM_GroupAndEncodeAdmit)->ArgName("ranks")->Arg(1)->Arg(8);
BENCHMARK(BM_DecodeAdmitToObjectKeys)->ArgName("ranks")->Arg(1)->Arg(8);

}  // namespace
}  // namespace kvtier::controller
