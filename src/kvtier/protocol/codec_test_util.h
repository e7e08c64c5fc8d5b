// Test-only: random valid protocol messages from a seeded generator, and one fixed sample of
// every request and reply (the fuzzer's seed corpus is made of the samples).
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kvtier/common/check.h"
#include "kvtier/keys/object_key.h"
#include "kvtier/protocol/codec.h"
#include "kvtier/protocol/messages.h"

namespace kvtier::protocol::testing {

// Every value it returns is valid: it decodes, and re-encodes to the same bytes.
class MessageGenerator {
 public:
  explicit MessageGenerator(uint64_t seed) : rng_(seed) {}

  uint64_t Uint(uint64_t lo, uint64_t hi) {
    return std::uniform_int_distribution<uint64_t>(lo, hi)(rng_);
  }
  // Mostly small values, sometimes near the top of the range: every msgpack int width.
  uint64_t AnyUint(uint64_t hi) {
    switch (Uint(0, 3)) {
      case 0:
        return Uint(0, std::min<uint64_t>(hi, 127));
      case 1:
        return Uint(0, std::min<uint64_t>(hi, 70000));
      case 2:
        return hi - Uint(0, std::min<uint64_t>(hi, 3));
      default:
        return Uint(0, hi);
    }
  }
  bool Bool() { return Uint(0, 1) == 1; }

  // Printable ASCII and some UTF-8, none of the characters in `forbidden`.
  std::string String(size_t min_len, size_t max_len, std::string_view forbidden = "") {
    static constexpr std::string_view kPieces[] = {"a", "Z",  "0", "-", "_",    ".", "/",
                                                   "@", "\\", " ", "é", "模型", "~", ":"};
    const size_t len = Uint(min_len, max_len);
    std::string s;
    while (s.size() < len) {
      std::string_view piece = kPieces[Uint(0, std::size(kPieces) - 1)];
      if (s.size() + piece.size() > len) piece = "x";
      if (piece.find_first_of(forbidden) != std::string_view::npos) continue;
      s.append(piece);
    }
    return s;
  }
  std::string Model() { return String(1, 40, std::string_view("@\0", 2)); }

  Key MakeKey(bool with_rank) {
    Key k;
    k.model = Model();
    k.world_size = static_cast<uint16_t>(Bool() ? Uint(1, 8) : Uint(1, 65535));
    if (with_rank) k.worker_rank = static_cast<uint16_t>(Uint(0, k.world_size - 1u));
    if (Bool()) k.cache_salt = String(0, 128, std::string_view("@/\\\0", 4));
    k.request_id = String(1, 64);
    const size_t n = Bool() ? Uint(0, 300) : Uint(0, 40000);
    k.tokens.resize(n);
    for (uint32_t& t : k.tokens) t = static_cast<uint32_t>(AnyUint(UINT32_MAX));
    k.start = static_cast<uint32_t>(Uint(0, n));
    if (Bool()) k.end = static_cast<uint32_t>(Uint(k.start, n));
    k.object_group = static_cast<uint32_t>(AnyUint(UINT32_MAX));
    return k;
  }

  std::vector<uint32_t> BlockIds() {
    std::vector<uint32_t> ids(Uint(0, 600));
    for (uint32_t& id : ids) id = static_cast<uint32_t>(AnyUint(UINT32_MAX));
    return ids;
  }

  Layout MakeLayout() {
    Layout l;
    l.num_layers = static_cast<uint32_t>(Uint(1, 128));
    l.num_blocks = static_cast<uint32_t>(Uint(1, 100000));
    l.block_size = static_cast<uint32_t>(Uint(1, 256));
    l.dtype = static_cast<DType>(Uint(0, 4));
    l.format = static_cast<KvFormat>(Uint(0, 4));
    l.num_kv_heads = l.format == KvFormat::kMla ? 1 : static_cast<uint32_t>(Uint(1, 64));
    l.head_dim = static_cast<uint32_t>(Uint(1, 1024));
    const uint64_t layer_bytes = *LayerBytes(l);
    uint64_t offset = Uint(0, 4096);
    for (uint32_t i = 0; i < l.num_layers; ++i) {
      l.layer_offsets.push_back(offset);
      offset += layer_bytes + Uint(0, 4096);
    }
    return l;
  }

  template <size_t N>
  std::array<uint8_t, N> Bytes() {
    std::array<uint8_t, N> out;
    for (uint8_t& b : out) b = static_cast<uint8_t>(AnyUint(255));
    return out;
  }
  std::optional<CudaIpcHandle> MaybeHandle() {
    if (Bool()) return std::nullopt;
    return Bytes<kCudaIpcHandleBytes>();
  }

  // An ObjectKey's text form (ReadObjectsRequest::keys).
  std::string ObjectKeyText() {
    keys::ChunkHash hash;
    for (uint8_t& b : hash.bytes) b = static_cast<uint8_t>(Uint(0, 255));
    const auto world = static_cast<uint16_t>(Uint(1, 8));
    const auto rank = static_cast<uint16_t>(Uint(0, world - 1u));
    const std::string salt = Bool() ? String(0, 32, std::string_view("@/\\\0", 4)) : "";
    auto key = keys::ObjectKey::Create(hash, Model(), keys::KvRank{world, rank},
                                       static_cast<uint32_t>(AnyUint(UINT32_MAX)), salt);
    KVT_CHECK(key.has_value());
    return key->ToString();
  }

  Request MakeRequest(Opcode op) {
    switch (op) {
      case Opcode::kHello:
        return HelloRequest{static_cast<uint16_t>(AnyUint(65535)), String(0, 30)};
      case Opcode::kRegisterKvCache: {
        RegisterKvCacheRequest r;
        r.instance_id = String(1, 50);
        r.model = Model();
        r.world_size = static_cast<uint16_t>(Uint(1, 65535));
        r.worker_rank = static_cast<uint16_t>(Uint(0, r.world_size - 1u));
        r.backend = Bool() ? "host" : "cuda";
        r.layout = MakeLayout();
        r.shm_name = String(1, 60);
        const uint64_t end = r.layout.layer_offsets.back() + *LayerBytes(r.layout);
        r.shm_size = end + Uint(0, 1 << 20);
        if (r.backend == "cuda") {
          r.device_uuid = Bytes<kDeviceUuidBytes>();
          for (uint32_t i = 0; i < r.layout.num_layers; ++i)
            r.cuda_ipc_handles.push_back(Bytes<kCudaIpcHandleBytes>());
        }
        return r;
      }
      case Opcode::kUnregisterKvCache:
        return UnregisterKvCacheRequest{String(1, 50)};
      case Opcode::kGetChunkSize:
        return GetChunkSizeRequest{};
      case Opcode::kLookup:
        return LookupRequest{MakeKey(false), static_cast<uint32_t>(Uint(1, 128)),
                             static_cast<uint32_t>(AnyUint(UINT32_MAX))};
      case Opcode::kQueryPrefetchStatus:
        return QueryPrefetchStatusRequest{String(1, 64)};
      case Opcode::kWaitPrefetchStatus:
        return WaitPrefetchStatusRequest{String(1, 64), static_cast<uint32_t>(AnyUint(UINT32_MAX))};
      case Opcode::kQueryPrefetchLookupHits:
        return QueryPrefetchLookupHitsRequest{String(1, 64)};
      case Opcode::kStore:
        return StoreRequest{String(1, 50), MakeKey(true), BlockIds(), MaybeHandle()};
      case Opcode::kRetrieve: {
        RetrieveRequest r{String(1, 50), MakeKey(true), BlockIds(), 0, MaybeHandle()};
        const uint32_t end = r.key.end.value_or(static_cast<uint32_t>(r.key.tokens.size()));
        r.skip_first_n_tokens = static_cast<uint32_t>(Uint(0, end - r.key.start));
        return r;
      }
      case Opcode::kFreeLookupLocks:
        return FreeLookupLocksRequest{MakeKey(false)};
      case Opcode::kEndSession:
        return EndSessionRequest{String(1, 64)};
      case Opcode::kPing:
        return PingRequest{Bool() ? std::optional<std::string>(String(1, 50)) : std::nullopt};
      case Opcode::kClear:
        return ClearRequest{Bool()};
      case Opcode::kNoop:
        return NoopRequest{};
      case Opcode::kReadObjects: {
        ReadObjectsRequest r;
        r.keys.resize(Uint(1, 40));
        for (std::string& k : r.keys) k = ObjectKeyText();
        r.max_bytes = std::max<uint64_t>(1, AnyUint(UINT64_MAX));
        return r;
      }
      case Opcode::kInvalid:
        break;
    }
    KVT_CHECK_MSG(false, "no request for opcode {}", static_cast<int>(op));
    return NoopRequest{};
  }

  Reply MakeReply(Opcode op) {
    auto u32 = [&] { return static_cast<uint32_t>(AnyUint(UINT32_MAX)); };
    switch (op) {
      case Opcode::kHello:
        return HelloReply{static_cast<uint16_t>(AnyUint(65535)), String(0, 40), String(0, 20),
                          static_cast<uint32_t>(Uint(1, UINT32_MAX)), String(0, 10)};
      case Opcode::kRegisterKvCache:
        return RegisterKvCacheReply{AnyUint(UINT64_MAX)};
      case Opcode::kUnregisterKvCache:
      case Opcode::kLookup:
      case Opcode::kNoop:
        return EmptyReply{};
      case Opcode::kGetChunkSize:
        return ChunkSizeReply{static_cast<uint32_t>(Uint(1, UINT32_MAX))};
      case Opcode::kQueryPrefetchStatus:
      case Opcode::kWaitPrefetchStatus:
        return PrefetchStatusReply{Bool(), u32()};
      case Opcode::kQueryPrefetchLookupHits:
        return LookupHitsReply{Bool(), u32()};
      case Opcode::kStore:
        return StoreReply{u32(), u32(), u32(), MaybeHandle()};
      case Opcode::kRetrieve:
        return RetrieveReply{u32(), MaybeHandle()};
      case Opcode::kFreeLookupLocks:
        return FreeLookupLocksReply{u32()};
      case Opcode::kEndSession:
        return EndSessionReply{u32()};
      case Opcode::kPing:
        return PingReply{Bool()};
      case Opcode::kClear:
        return ClearReply{AnyUint(UINT64_MAX)};
      case Opcode::kReadObjects: {
        // The payload only: the objects travel as extra frames, not through the codec.
        ReadObjectsReply r;
        r.found.resize(Uint(0, 300));
        for (size_t i = 0; i < r.found.size(); ++i) r.found[i] = Bool();
        return r;
      }
      case Opcode::kInvalid:
        break;
    }
    KVT_CHECK_MSG(false, "no reply for opcode {}", static_cast<int>(op));
    return EmptyReply{};
  }

  ErrorReply MakeError() {
    return ErrorReply{static_cast<StatusCode>(Uint(1, 1000)), String(0, 200), Bool()};
  }

 private:
  std::mt19937_64 rng_;
};

// A fixed, readable example of every request (the seed corpus).
inline Request SampleRequest(Opcode op) {
  Key key;
  key.model = "meta-llama/Llama-3.1-8B";
  key.world_size = 2;
  key.cache_salt = "tenant-a";
  key.request_id = "req-1";
  for (uint32_t i = 0; i < 512; ++i) key.tokens.push_back(1000 + i);
  key.start = 256;
  key.end = 512;
  Key ranked = key;
  ranked.worker_rank = 1;
  Layout layout{.num_layers = 2,
                .num_blocks = 64,
                .block_size = 16,
                .num_kv_heads = 8,
                .head_dim = 128,
                .dtype = DType::kBf16,
                .format = KvFormat::kKvNhd,
                .layer_offsets = {0, 4u << 20}};
  std::vector<uint32_t> blocks;
  for (uint32_t i = 0; i < 16; ++i) blocks.push_back(i * 3);
  switch (op) {
    case Opcode::kHello:
      return HelloRequest{kProtocolVersion, "vllm-0.9"};
    case Opcode::kRegisterKvCache:
      return RegisterKvCacheRequest{"engine-0-rank-1",         key.model, 2,  1, "host", layout,
                                    "/kvtier-engine-0-rank-1", 8u << 20,  {}, {}};
    case Opcode::kUnregisterKvCache:
      return UnregisterKvCacheRequest{"engine-0-rank-1"};
    case Opcode::kGetChunkSize:
      return GetChunkSizeRequest{};
    case Opcode::kLookup:
      return LookupRequest{key, 2, 5000};
    case Opcode::kQueryPrefetchStatus:
      return QueryPrefetchStatusRequest{"req-1"};
    case Opcode::kWaitPrefetchStatus:
      return WaitPrefetchStatusRequest{"req-1", 100};
    case Opcode::kQueryPrefetchLookupHits:
      return QueryPrefetchLookupHitsRequest{"req-1"};
    case Opcode::kStore:
      return StoreRequest{"engine-0-rank-1", ranked, blocks, std::nullopt};
    case Opcode::kRetrieve:
      return RetrieveRequest{"engine-0-rank-1", ranked, blocks, 16, std::nullopt};
    case Opcode::kFreeLookupLocks:
      return FreeLookupLocksRequest{key};
    case Opcode::kEndSession:
      return EndSessionRequest{"req-1"};
    case Opcode::kPing:
      return PingRequest{"engine-0-rank-1"};
    case Opcode::kClear:
      return ClearRequest{true};
    case Opcode::kNoop:
      return NoopRequest{};
    case Opcode::kReadObjects: {
      keys::ChunkHash hash;
      for (size_t i = 0; i < hash.bytes.size(); ++i) hash.bytes[i] = static_cast<uint8_t>(i * 7);
      ReadObjectsRequest r{{}, 64u << 20};
      for (uint16_t rank = 0; rank < 2; ++rank) {
        r.keys.push_back(
            keys::ObjectKey::Create(hash, key.model, keys::KvRank{2, rank}, 0, key.cache_salt)
                ->ToString());
      }
      return r;
    }
    case Opcode::kInvalid:
      break;
  }
  KVT_CHECK_MSG(false, "no request for opcode {}", static_cast<int>(op));
  return NoopRequest{};
}

// A fixed example of the typed reply to every opcode.
inline Reply SampleReply(Opcode op) {
  switch (op) {
    case Opcode::kHello:
      return HelloReply{kProtocolVersion, "kvtier-1", "0.1.0", 256, "sha256"};
    case Opcode::kRegisterKvCache:
      return RegisterKvCacheReply{1u << 20};
    case Opcode::kGetChunkSize:
      return ChunkSizeReply{256};
    case Opcode::kQueryPrefetchStatus:
    case Opcode::kWaitPrefetchStatus:
      return PrefetchStatusReply{true, 3};
    case Opcode::kQueryPrefetchLookupHits:
      return LookupHitsReply{true, 2};
    case Opcode::kStore:
      return StoreReply{2, 1, 1, std::nullopt};
    case Opcode::kRetrieve:
      return RetrieveReply{4, std::nullopt};
    case Opcode::kFreeLookupLocks:
      return FreeLookupLocksReply{4};
    case Opcode::kEndSession:
      return EndSessionReply{8};
    case Opcode::kPing:
      return PingReply{true};
    case Opcode::kClear:
      return ClearReply{12};
    case Opcode::kReadObjects:
      return ReadObjectsReply{{true, false}, {}, nullptr};
    default:
      return EmptyReply{};
  }
}

}  // namespace kvtier::protocol::testing
