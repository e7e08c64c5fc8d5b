// Decoding hand-made payloads: spec defaults, and errors that name the field.
#include <cstdint>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kvtier/protocol/codec.h"
#include "kvtier/protocol/codec_payload_test_util.h"
#include "kvtier/protocol/messages.h"
#include "kvtier/protocol/msgpack_value_test_util.h"

namespace kvtier::protocol::testing {
namespace {

// ---- Decoding hand-made payloads ----

TEST(DecodeRequestTest, MinimalPayloadsGetTheSpecDefaults) {
  for (Opcode op : kAllOpcodes) {
    auto r = Decode(op, ValidPayload(op));
    ASSERT_TRUE(r.has_value()) << OpcodeName(op) << ": " << r.error().ToString();
    EXPECT_EQ(OpcodeOf(*r), op);
  }

  auto lookup = Decode(Opcode::kLookup, ValidPayload(Opcode::kLookup));
  ASSERT_TRUE(lookup.has_value());
  const LookupRequest& l = std::get<LookupRequest>(*lookup);
  EXPECT_EQ(l.key.model, "m");
  EXPECT_EQ(l.key.world_size, 1);
  EXPECT_EQ(l.key.worker_rank, std::nullopt);
  EXPECT_EQ(l.key.cache_salt, "");
  EXPECT_EQ(l.key.request_id, "r");
  EXPECT_EQ(l.key.tokens, (std::vector<uint32_t>{1, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(l.key.start, 0u);
  EXPECT_EQ(l.key.end, std::nullopt);
  EXPECT_EQ(l.key.object_group, 0u);
  EXPECT_EQ(l.read_locks, 1u);
  EXPECT_EQ(l.timeout_ms, 0u);

  auto retrieve = Decode(Opcode::kRetrieve, ValidPayload(Opcode::kRetrieve));
  ASSERT_TRUE(retrieve.has_value());
  EXPECT_EQ(std::get<RetrieveRequest>(*retrieve).skip_first_n_tokens, 0u);
  EXPECT_EQ(std::get<RetrieveRequest>(*retrieve).key.worker_rank, 1);
  EXPECT_EQ(std::get<RetrieveRequest>(*retrieve).block_ids, (std::vector<uint32_t>{1, 2}));

  auto reg = Decode(Opcode::kRegisterKvCache, ValidPayload(Opcode::kRegisterKvCache));
  ASSERT_TRUE(reg.has_value());
  const auto& rr = std::get<RegisterKvCacheRequest>(*reg);
  EXPECT_EQ(rr.backend, "host");
  EXPECT_EQ(rr.layout.dtype, DType::kBf16);
  EXPECT_EQ(rr.layout.format, KvFormat::kKvNhd);
  EXPECT_EQ(rr.layout.layer_offsets, (std::vector<uint64_t>{0, 4096}));

  auto clear = Decode(Opcode::kClear, ValidPayload(Opcode::kClear));
  ASSERT_TRUE(clear.has_value());
  EXPECT_FALSE(std::get<ClearRequest>(*clear).force);
  auto ping = Decode(Opcode::kPing, ValidPayload(Opcode::kPing));
  ASSERT_TRUE(ping.has_value());
  EXPECT_EQ(std::get<PingRequest>(*ping).instance_id, std::nullopt);
}

TEST(DecodeRequestTest, NilWhereTheSpecAllowsIt) {
  Value lookup = ValidPayload(Opcode::kLookup);
  lookup.Set("key.worker_rank", Value::Nil()).Set("key.end", Value::Nil());
  auto r = Decode(Opcode::kLookup, lookup);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(std::get<LookupRequest>(*r).key.worker_rank, std::nullopt);
  EXPECT_EQ(std::get<LookupRequest>(*r).key.end, std::nullopt);

  auto ping = Decode(Opcode::kPing, Value::Object().Set("instance_id", Value::Nil()));
  ASSERT_TRUE(ping.has_value()) << ping.error().ToString();
  EXPECT_EQ(std::get<PingRequest>(*ping).instance_id, std::nullopt);
  ping = Decode(Opcode::kPing, Value::Object().Set("instance_id", Str("w")));
  ASSERT_TRUE(ping.has_value()) << ping.error().ToString();
  EXPECT_EQ(std::get<PingRequest>(*ping).instance_id, "w");

  // Nil is not a default elsewhere.
  ExpectProtocolError(
      Decode(Opcode::kLookup, ValidPayload(Opcode::kLookup).Set("read_locks", Value::Nil())),
      "field 'read_locks' must be an unsigned integer, got nil");
}

TEST(DecodeRequestTest, UnknownFieldsAreIgnored) {
  for (Opcode op : kAllOpcodes) {
    Value v = ValidPayload(op);
    const auto plain = Decode(op, v);
    ASSERT_TRUE(plain.has_value()) << plain.error().ToString();
    v.Set("future_field", Value::Object({{"nested", Value::List({Uint(1), Str("x")})}}));
    v.Set("zz", Value::Float(1.5));
    if (op == Opcode::kLookup || op == Opcode::kStore) v.Set("key.future_key_field", Uint(7));
    if (op == Opcode::kRegisterKvCache) v.Set("layout.future_layout_field", Str("x"));
    const auto extended = Decode(op, v);
    ASSERT_TRUE(extended.has_value()) << OpcodeName(op) << ": " << extended.error().ToString();
    EXPECT_EQ(*extended, *plain) << OpcodeName(op);
  }
}

TEST(DecodeRequestTest, IntegersInAnyMsgpackWidth) {
  // A signed or fixed-width encoding of a value in range is accepted.
  for (Value v : {Value::Uint(3), Value::Int(3), Value::FixedInt64(3)}) {
    auto r = Decode(Opcode::kLookup, ValidPayload(Opcode::kLookup).Set("read_locks", v));
    ASSERT_TRUE(r.has_value()) << r.error().ToString();
    EXPECT_EQ(std::get<LookupRequest>(*r).read_locks, 3u);
  }
  auto r = Decode(
      Opcode::kWaitPrefetchStatus,
      ValidPayload(Opcode::kWaitPrefetchStatus).Set("timeout_ms", Value::FixedInt64(UINT32_MAX)));
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(std::get<WaitPrefetchStatusRequest>(*r).timeout_ms, UINT32_MAX);
}

TEST(DecodeRequestTest, PayloadMustBeExactlyOneMap) {
  ExpectProtocolError(DecodeBytes(Opcode::kNoop, {}), "empty payload");
  for (const Value& v : {Value::List({}), Value::Uint(1), Value::Str("{}"), Value::Nil(),
                         Value::Binary("x"), Value::Bool(true)}) {
    ExpectProtocolError(Decode(Opcode::kNoop, v), "must be a msgpack map");
  }
  std::vector<uint8_t> trailing = Value::Object().Pack();
  trailing.push_back(0xc0);
  ExpectProtocolError(DecodeBytes(Opcode::kNoop, trailing), "1 trailing bytes");
  std::vector<uint8_t> two_maps = ValidPayload(Opcode::kEndSession).Pack();
  two_maps.push_back(0x80);
  ExpectProtocolError(DecodeBytes(Opcode::kEndSession, two_maps), "trailing");
  // 0xc1 is never used in msgpack.
  ExpectProtocolError(DecodeBytes(Opcode::kNoop, {0x81, 0xa1, 'a', 0xc1}), "malformed");
  // A map whose value is cut off.
  std::vector<uint8_t> cut = ValidPayload(Opcode::kEndSession).Pack();
  cut.pop_back();
  ExpectProtocolError(DecodeBytes(Opcode::kEndSession, cut), "truncated");
  // Non-string keys.
  ExpectProtocolError(DecodeBytes(Opcode::kNoop, {0x81, 0x01, 0x02}), "map keys must be str");
  // The error names the opcode.
  ExpectProtocolError(DecodeBytes(Opcode::kStore, {0x90}), "STORE request:");
}

TEST(DecodeRequestTest, MissingRequiredFieldIsNamed) {
  const std::pair<Opcode, const char*> cases[] = {
      {Opcode::kHello, "protocol_version"},
      {Opcode::kHello, "client"},
      {Opcode::kRegisterKvCache, "instance_id"},
      {Opcode::kRegisterKvCache, "model"},
      {Opcode::kRegisterKvCache, "world_size"},
      {Opcode::kRegisterKvCache, "worker_rank"},
      {Opcode::kRegisterKvCache, "layout"},
      {Opcode::kRegisterKvCache, "layout.num_layers"},
      {Opcode::kRegisterKvCache, "layout.head_dim"},
      {Opcode::kRegisterKvCache, "layout.dtype"},
      {Opcode::kRegisterKvCache, "layout.format"},
      {Opcode::kRegisterKvCache, "layout.layer_offsets"},
      {Opcode::kRegisterKvCache, "shm_name"},
      {Opcode::kRegisterKvCache, "shm_size"},
      {Opcode::kUnregisterKvCache, "instance_id"},
      {Opcode::kLookup, "key"},
      {Opcode::kLookup, "key.model"},
      {Opcode::kLookup, "key.request_id"},
      {Opcode::kLookup, "key.tokens"},
      {Opcode::kQueryPrefetchStatus, "request_id"},
      {Opcode::kWaitPrefetchStatus, "request_id"},
      {Opcode::kWaitPrefetchStatus, "timeout_ms"},
      {Opcode::kQueryPrefetchLookupHits, "request_id"},
      {Opcode::kStore, "instance_id"},
      {Opcode::kStore, "key"},
      {Opcode::kStore, "key.tokens"},
      {Opcode::kStore, "block_ids"},
      {Opcode::kRetrieve, "block_ids"},
      {Opcode::kFreeLookupLocks, "key"},
      {Opcode::kEndSession, "request_id"},
  };
  for (const auto& [op, path] : cases) {
    SCOPED_TRACE(fmt::format("{} without {}", OpcodeName(op), path));
    ExpectProtocolError(Decode(op, ValidPayload(op).Erase(path)),
                        fmt::format("missing required field '{}'", path));
  }
  // A transfer needs the worker's rank.
  ExpectProtocolError(Decode(Opcode::kStore, ValidPayload(Opcode::kStore).Erase("key.worker_rank")),
                      "field 'key.worker_rank' is required");
  ExpectProtocolError(Decode(Opcode::kRetrieve,
                             ValidPayload(Opcode::kRetrieve).Set("key.worker_rank", Value::Nil())),
                      "field 'key.worker_rank' is required");
}

TEST(DecodeRequestTest, WrongTypeIsNamed) {
  struct Case {
    Opcode op;
    const char* path;
    Value value;
    const char* expected;
  };
  const Case cases[] = {
      {Opcode::kLookup, "key", Value::List({}), "field 'key' must be a map, got an array"},
      {Opcode::kLookup, "key.world_size", Str("2"), "field 'key.world_size' must be an unsigned"},
      {Opcode::kLookup, "key.model", Uint(1), "field 'key.model' must be str, got a non-negative"},
      {Opcode::kLookup, "key.tokens", Value::List({Uint(1)}), "field 'key.tokens' must be bin"},
      {Opcode::kLookup, "key.tokens", Str("abcd"), "field 'key.tokens' must be bin"},
      {Opcode::kLookup, "key.start", Value::Float(1.5), "field 'key.start' must be an unsigned"},
      {Opcode::kLookup, "key.end", Value::Bool(true), "field 'key.end' must be an unsigned"},
      {Opcode::kStore, "block_ids", Value::Object(), "field 'block_ids' must be an array"},
      {Opcode::kStore, "block_ids", Value::List({Uint(1), Str("2")}),
       "field 'block_ids[1]' must be an unsigned integer, got str"},
      {Opcode::kStore, "instance_id", Value::Nil(), "field 'instance_id' must be str, got nil"},
      {Opcode::kClear, "force", Uint(1), "field 'force' must be a bool"},
      {Opcode::kPing, "instance_id", Uint(3), "field 'instance_id' must be str"},
      {Opcode::kRegisterKvCache, "layout", Str("x"), "field 'layout' must be a map, got str"},
      {Opcode::kRegisterKvCache, "layout.layer_offsets", Value::Binary("x"),
       "field 'layout.layer_offsets' must be an array"},
      {Opcode::kRegisterKvCache, "layout.dtype", Uint(2), "field 'layout.dtype' must be str"},
      {Opcode::kRegisterKvCache, "shm_size", Value::Float(8192.5),
       "field 'shm_size' must be an unsigned integer, got a float"},
      {Opcode::kHello, "client", Value::Binary("c"), "field 'client' must be str, got bin"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(fmt::format("{} {}", OpcodeName(c.op), c.path));
    ExpectProtocolError(Decode(c.op, ValidPayload(c.op).Set(c.path, c.value)), c.expected);
  }
}

TEST(DecodeRequestTest, OutOfRangeIntegersAreNamedWithTheirRange) {
  struct Case {
    Opcode op;
    const char* path;
    Value value;
    const char* expected;
  };
  const Case cases[] = {
      {Opcode::kLookup, "read_locks", Uint(0), "field 'read_locks' must be in [1, 128], got 0"},
      {Opcode::kLookup, "read_locks", Uint(129), "must be in [1, 128], got 129"},
      {Opcode::kLookup, "read_locks", Value::Int(-1), "must be in [1, 128], got -1"},
      {Opcode::kLookup, "timeout_ms", Uint(1ull << 32),
       "field 'timeout_ms' must be in [0, 4294967295], got 4294967296"},
      {Opcode::kLookup, "key.world_size", Uint(0), "field 'key.world_size' must be in [1, 65535]"},
      {Opcode::kLookup, "key.world_size", Uint(65536), "must be in [1, 65535], got 65536"},
      {Opcode::kLookup, "key.start", Value::Int(-5), "field 'key.start' must be in [0, "},
      {Opcode::kLookup, "key.object_group", Value::FixedInt64(-1), "got -1"},
      {Opcode::kLookup, "key.object_group", Uint(UINT64_MAX), "got 18446744073709551615"},
      {Opcode::kStore, "key.worker_rank", Uint(65535),
       "field 'key.worker_rank' must be in [0, 65534]"},
      {Opcode::kStore, "block_ids", Value::List({Uint(1), Uint(1ull << 32)}),
       "field 'block_ids[1]' must be in [0, 4294967295], got 4294967296"},
      {Opcode::kStore, "block_ids", Value::List({Value::Int(-3)}), "'block_ids[0]' must be in"},
      {Opcode::kRegisterKvCache, "world_size", Uint(0), "field 'world_size' must be in [1, 65535]"},
      {Opcode::kRegisterKvCache, "layout.num_layers", Uint(0),
       "field 'layout.num_layers' must be in [1, 4096]"},
      {Opcode::kRegisterKvCache, "layout.block_size", Uint(0), "field 'layout.block_size'"},
      {Opcode::kRegisterKvCache, "layout.layer_offsets", Value::List({Uint(0), Value::Int(-1)}),
       "field 'layout.layer_offsets[1]'"},
      {Opcode::kHello, "protocol_version", Uint(65536), "field 'protocol_version' must be in"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(fmt::format("{} {}", OpcodeName(c.op), c.path));
    ExpectProtocolError(Decode(c.op, ValidPayload(c.op).Set(c.path, c.value)), c.expected);
  }
}

TEST(DecodeRequestTest, KeyRules) {
  auto lookup_with = [](const char* path, Value v) {
    return Decode(Opcode::kLookup, ValidPayload(Opcode::kLookup).Set(path, std::move(v)));
  };
  ExpectProtocolError(lookup_with("key.model", Str("")), "field 'key.model' must not be empty");
  ExpectProtocolError(lookup_with("key.model", Str("a@b")),
                      "field 'key.model' must not contain '@'");
  ExpectProtocolError(lookup_with("key.model", Str(std::string("a\0b", 3))), "'key.model'");
  ExpectProtocolError(lookup_with("key.model", Str(std::string(257, 'm'))),
                      "field 'key.model' is 257 bytes, the limit is 256");
  EXPECT_TRUE(lookup_with("key.model", Str("org/model-7B")).has_value());
  ExpectProtocolError(lookup_with("key.request_id", Str("")), "'key.request_id' must not be empty");

  for (std::string bad :
       {std::string("a@b"), std::string("a/b"), std::string("a\\b"), std::string("a\0b", 3)}) {
    ExpectProtocolError(lookup_with("key.cache_salt", Str(bad)), "field 'key.cache_salt' must not");
  }
  ExpectProtocolError(lookup_with("key.cache_salt", Str(std::string(129, 's'))),
                      "field 'key.cache_salt' is 129 bytes, the limit is 128");
  EXPECT_TRUE(lookup_with("key.cache_salt", Str(std::string(128, 's'))).has_value());

  // Whole-request operations cover every rank; transfers name one.
  ExpectProtocolError(lookup_with("key.worker_rank", Uint(0)), "'key.worker_rank' must be nil");
  ExpectProtocolError(
      Decode(Opcode::kFreeLookupLocks,
             ValidPayload(Opcode::kFreeLookupLocks).Set("key.worker_rank", Uint(0))),
      "'key.worker_rank' must be nil");
  ExpectProtocolError(
      Decode(Opcode::kStore, ValidPayload(Opcode::kStore).Set("key.worker_rank", Uint(2))),
      "field 'key.worker_rank' is 2, must be < world_size (2)");
  ExpectProtocolError(Decode(Opcode::kStore, ValidPayload(Opcode::kStore).Erase("key.world_size")),
                      "field 'key.worker_rank' is 1, must be < world_size (1)");

  // The range lies inside the tokens (8 here), start <= end.
  ExpectProtocolError(lookup_with("key.start", Uint(9)), "field 'key.start' is 9, beyond the 8");
  ExpectProtocolError(lookup_with("key.end", Uint(9)), "field 'key.end' is 9, beyond the 8");
  Value reversed = ValidPayload(Opcode::kLookup);
  reversed.Set("key.start", Uint(6)).Set("key.end", Uint(4));
  ExpectProtocolError(Decode(Opcode::kLookup, reversed), "field 'key.end' is 4, before start (6)");
  Value empty_range = ValidPayload(Opcode::kLookup);
  empty_range.Set("key.start", Uint(8)).Set("key.end", Uint(8));
  EXPECT_TRUE(Decode(Opcode::kLookup, empty_range).has_value());

  // Tokens: 4-byte little-endian values.
  ExpectProtocolError(lookup_with("key.tokens", Value::Binary("abcdef")),
                      "field 'key.tokens' is 6 bytes, not a multiple of 4");
  auto empty_tokens = lookup_with("key.tokens", Value::Binary(""));
  ASSERT_TRUE(empty_tokens.has_value()) << empty_tokens.error().ToString();
  EXPECT_TRUE(std::get<LookupRequest>(*empty_tokens).key.tokens.empty());

  // A field twice is ambiguous.
  Value twice = ValidPayload(Opcode::kLookup);
  twice.At("key").Append("model", Str("other"));
  ExpectProtocolError(Decode(Opcode::kLookup, twice), "field 'key.model' appears more than once");
}

TEST(DecodeRequestTest, RetrieveSkipStaysInsideTheRange) {
  Value v = ValidPayload(Opcode::kRetrieve);
  v.Set("key.start", Uint(4)).Set("skip_first_n_tokens", Uint(4));
  EXPECT_TRUE(Decode(Opcode::kRetrieve, v).has_value());
  v.Set("skip_first_n_tokens", Uint(5));
  ExpectProtocolError(Decode(Opcode::kRetrieve, v),
                      "field 'skip_first_n_tokens' is 5, more than the range's 4 tokens");
  v.Set("key.end", Uint(6)).Set("skip_first_n_tokens", Uint(3));
  ExpectProtocolError(Decode(Opcode::kRetrieve, v), "more than the range's 2 tokens");
}

TEST(DecodeRequestTest, EventHandlesAreExactly64Bytes) {
  for (Opcode op : {Opcode::kStore, Opcode::kRetrieve}) {
    Value v = ValidPayload(op);
    v.Set("event_ipc_handle", Value::Binary(std::string(65, 'x')));
    ExpectProtocolError(Decode(op, v), "field 'event_ipc_handle' is 65 bytes, must be exactly 64");
    v.Set("event_ipc_handle", Value::Nil());
    auto nil = Decode(op, v);
    ASSERT_TRUE(nil.has_value()) << nil.error().ToString();
    v.Set("event_ipc_handle", Value::Binary(std::string(64, 'x')));
    auto r = Decode(op, v);
    ASSERT_TRUE(r.has_value()) << r.error().ToString();
    const auto& handle = op == Opcode::kStore ? std::get<StoreRequest>(*r).event_ipc_handle
                                              : std::get<RetrieveRequest>(*r).event_ipc_handle;
    ASSERT_TRUE(handle.has_value());
    EXPECT_EQ((*handle)[0], 'x');
  }
}

TEST(DecodeRequestTest, RegisterRules) {
  auto register_with = [](const char* path, Value v) {
    return Decode(Opcode::kRegisterKvCache,
                  ValidPayload(Opcode::kRegisterKvCache).Set(path, std::move(v)));
  };
  ExpectProtocolError(register_with("layout.dtype", Str("int4")),
                      "field 'layout.dtype' is 'int4', expected one of: bf16, fp16, fp32, "
                      "fp8_e4m3, fp8_e5m2");
  ExpectProtocolError(register_with("layout.format", Str("nhd")),
                      "field 'layout.format' is 'nhd', expected one of: kv_nhd, nb_kv_nhd, "
                      "kv_hnd, nb_kv_hnd, mla, cross_layer");
  ExpectProtocolError(register_with("backend", Str("tpu")),
                      "field 'backend' is 'tpu', expected one of: host, cuda");
  ExpectProtocolError(register_with("worker_rank", Uint(2)),
                      "field 'worker_rank' is 2, must be < world_size (2)");
  ExpectProtocolError(register_with("layout.layer_offsets", Value::List({Uint(0)})),
                      "field 'layout.layer_offsets' has 1 entries, num_layers is 2");
  ExpectProtocolError(register_with("layout.format", Str("mla")),
                      "field 'layout.num_kv_heads' is 2, must be 1 for format mla");
  ExpectProtocolError(register_with("model", Str("a@b")), "field 'model' must not contain '@'");
  ExpectProtocolError(register_with("instance_id", Str("")), "'instance_id' must not be empty");
  ExpectProtocolError(register_with("shm_name", Str("")), "'shm_name' must not be empty");
  // Every layer must fit in the segment: layer 1 spans [4096, 8192).
  ExpectProtocolError(register_with("shm_size", Uint(8191)),
                      "field 'layout.layer_offsets[1]' is 4096: the layer's 4096 bytes end "
                      "beyond shm_size (8191)");
  ExpectProtocolError(
      register_with("layout.layer_offsets", Value::List({Uint(0), Uint(UINT64_MAX - 10)})),
      "field 'layout.layer_offsets[1]'");
  Value huge = ValidPayload(Opcode::kRegisterKvCache);
  for (const char* f :
       {"layout.num_blocks", "layout.block_size", "layout.num_kv_heads", "layout.head_dim"}) {
    huge.Set(f, Uint(UINT32_MAX));
  }
  ExpectProtocolError(Decode(Opcode::kRegisterKvCache, huge), "larger than 2^64 bytes");

  // A CUDA worker has no shared-memory segment to fit into; it names its device and one
  // memory handle per layer instead.
  Value cuda = ValidPayload(Opcode::kRegisterKvCache);
  cuda.Set("backend", Str("cuda")).Set("shm_name", Str("")).Set("shm_size", Uint(0));
  ExpectProtocolError(Decode(Opcode::kRegisterKvCache, cuda),
                      "missing required field 'device_uuid'");
  cuda.Set("device_uuid", Value::Binary(std::string(16, '\x07')));
  ExpectProtocolError(Decode(Opcode::kRegisterKvCache, cuda),
                      "missing required field 'cuda_ipc_handles'");
  cuda.Set("cuda_ipc_handles", Value::List({Value::Binary(std::string(64, 'a'))}));
  ExpectProtocolError(Decode(Opcode::kRegisterKvCache, cuda),
                      "field 'cuda_ipc_handles' has 1 entries, num_layers is 2");
  cuda.Set("cuda_ipc_handles",
           Value::List({Value::Binary(std::string(64, 'a')), Value::Binary(std::string(63, 'b'))}));
  ExpectProtocolError(Decode(Opcode::kRegisterKvCache, cuda),
                      "field 'cuda_ipc_handles[1]' is 63 bytes, must be exactly 64");
  cuda.Set("device_uuid", Str("GPU-0"));
  ExpectProtocolError(Decode(Opcode::kRegisterKvCache, cuda),
                      "field 'device_uuid' must be bin (16 bytes), got str");
  cuda.Set("device_uuid", Value::Binary(std::string(16, '\x07')));
  cuda.Set("cuda_ipc_handles",
           Value::List({Value::Binary(std::string(64, 'a')), Value::Binary(std::string(64, 'b'))}));
  auto r = Decode(Opcode::kRegisterKvCache, cuda);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  const auto& cr = std::get<RegisterKvCacheRequest>(*r);
  EXPECT_EQ(cr.backend, "cuda");
  EXPECT_EQ(cr.device_uuid[15], 7);
  ASSERT_EQ(cr.cuda_ipc_handles.size(), 2u);
  EXPECT_EQ(cr.cuda_ipc_handles[1][63], 'b');

  auto mla = ValidPayload(Opcode::kRegisterKvCache);
  mla.Set("layout.format", Str("mla")).Set("layout.num_kv_heads", Uint(1));
  mla.Set("layout.head_dim", Uint(576)).Set("layout.dtype", Str("fp8_e4m3"));
  mla.Set("layout.layer_offsets", Value::List({Uint(0), Uint(36864)}));
  mla.Set("shm_size", Uint(2 * 36864));
  r = Decode(Opcode::kRegisterKvCache, mla);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(std::get<RegisterKvCacheRequest>(*r).layout.format, KvFormat::kMla);
}

}  // namespace
}  // namespace kvtier::protocol::testing
