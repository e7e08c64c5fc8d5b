// Test-only: the codec tests' hand-made payloads (the smallest valid one of each request) and
// their error expectations, shared by codec_test.cc, codec_decode_test.cc and
// codec_limits_test.cc.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kvtier/protocol/codec.h"
#include "kvtier/protocol/messages.h"
#include "kvtier/protocol/msgpack_value_test_util.h"

namespace kvtier::protocol::testing {

inline constexpr Opcode kAllOpcodes[] = {
    Opcode::kHello,
    Opcode::kRegisterKvCache,
    Opcode::kUnregisterKvCache,
    Opcode::kGetChunkSize,
    Opcode::kLookup,
    Opcode::kQueryPrefetchStatus,
    Opcode::kWaitPrefetchStatus,
    Opcode::kQueryPrefetchLookupHits,
    Opcode::kStore,
    Opcode::kRetrieve,
    Opcode::kFreeLookupLocks,
    Opcode::kEndSession,
    Opcode::kPing,
    Opcode::kClear,
    Opcode::kNoop,
    Opcode::kReadObjects,
};

inline Value Str(std::string s) { return Value::Str(std::move(s)); }
inline Value Uint(uint64_t v) { return Value::Uint(v); }

// ---- Hand-made payloads: the smallest valid one of each request ----

inline Value ValidKey(bool with_rank) {
  Value k = Value::Object();
  k.Set("model", Str("m")).Set("request_id", Str("r"));
  k.Set("tokens", Value::Tokens({1, 2, 3, 4, 5, 6, 7, 8}));
  if (with_rank) k.Set("world_size", Uint(2)).Set("worker_rank", Uint(1));
  return k;
}

// 2 layers of 2 * 4 blocks * 16 tokens * 2 heads * 8 dims * 2 bytes = 4096 bytes.
inline Value ValidLayout() {
  Value l = Value::Object();
  l.Set("num_layers", Uint(2)).Set("num_blocks", Uint(4)).Set("block_size", Uint(16));
  l.Set("num_kv_heads", Uint(2)).Set("head_dim", Uint(8));
  l.Set("dtype", Str("bf16")).Set("format", Str("kv_nhd"));
  l.Set("layer_offsets", Value::List({Uint(0), Uint(4096)}));
  return l;
}

inline std::string ValidObjectKeyText() { return "m@w1r0@g0@" + std::string(64, 'a'); }

inline Value ValidPayload(Opcode op) {
  Value v = Value::Object();
  switch (op) {
    case Opcode::kHello:
      v.Set("protocol_version", Uint(1)).Set("client", Str("c"));
      break;
    case Opcode::kRegisterKvCache:
      v.Set("instance_id", Str("i")).Set("model", Str("m"));
      v.Set("world_size", Uint(2)).Set("worker_rank", Uint(1)).Set("layout", ValidLayout());
      v.Set("shm_name", Str("/s")).Set("shm_size", Uint(8192));
      break;
    case Opcode::kUnregisterKvCache:
      v.Set("instance_id", Str("i"));
      break;
    case Opcode::kLookup:
    case Opcode::kFreeLookupLocks:
      v.Set("key", ValidKey(false));
      break;
    case Opcode::kQueryPrefetchStatus:
    case Opcode::kQueryPrefetchLookupHits:
    case Opcode::kEndSession:
      v.Set("request_id", Str("r"));
      break;
    case Opcode::kWaitPrefetchStatus:
      v.Set("request_id", Str("r")).Set("timeout_ms", Uint(10));
      break;
    case Opcode::kStore:
    case Opcode::kRetrieve:
      v.Set("instance_id", Str("i")).Set("key", ValidKey(true));
      v.Set("block_ids", Value::List({Uint(1), Uint(2)}));
      break;
    case Opcode::kReadObjects:
      v.Set("keys", Value::List({Str(ValidObjectKeyText())})).Set("max_bytes", Uint(1));
      break;
    default:
      break;
  }
  return v;
}

inline Key RankedKey() {
  Key k;
  k.model = "m";
  k.world_size = 2;
  k.worker_rank = 1;
  k.request_id = "r";
  k.tokens = {1, 2, 3, 4};
  return k;
}

inline Result<Request> DecodeBytes(Opcode op, const std::vector<uint8_t>& payload) {
  return DecodeRequest(Header{.opcode = op, .request_id = 1}, payload);
}
inline Result<Request> Decode(Opcode op, const Value& payload) {
  return DecodeBytes(op, payload.Pack());
}

template <typename T>
void ExpectError(const Result<T>& r, StatusCode code, std::string_view needle) {
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), code) << r.error().ToString();
  EXPECT_THAT(std::string(r.error().message()), ::testing::HasSubstr(std::string(needle)));
}
template <typename T>
void ExpectProtocolError(const Result<T>& r, std::string_view needle) {
  ExpectError(r, StatusCode::kProtocolError, needle);
}

}  // namespace kvtier::protocol::testing
