#include "kvtier/protocol/codec.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <msgpack.hpp>

#include "kvtier/protocol/codec_test_util.h"
#include "kvtier/protocol/messages.h"
#include "kvtier/protocol/msgpack_value_test_util.h"

namespace kvtier::protocol {
namespace {

using ::kvtier::protocol::testing::MessageGenerator;
using ::kvtier::protocol::testing::Value;
using ::testing::HasSubstr;

constexpr Opcode kAllOpcodes[] = {
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

Value Str(std::string s) { return Value::Str(std::move(s)); }
Value Uint(uint64_t v) { return Value::Uint(v); }

// ---- Hand-made payloads: the smallest valid one of each request ----

Value ValidKey(bool with_rank) {
  Value k = Value::Object();
  k.Set("model", Str("m")).Set("request_id", Str("r"));
  k.Set("tokens", Value::Tokens({1, 2, 3, 4, 5, 6, 7, 8}));
  if (with_rank) k.Set("world_size", Uint(2)).Set("worker_rank", Uint(1));
  return k;
}

// 2 layers of 2 * 4 blocks * 16 tokens * 2 heads * 8 dims * 2 bytes = 4096 bytes.
Value ValidLayout() {
  Value l = Value::Object();
  l.Set("num_layers", Uint(2)).Set("num_blocks", Uint(4)).Set("block_size", Uint(16));
  l.Set("num_kv_heads", Uint(2)).Set("head_dim", Uint(8));
  l.Set("dtype", Str("bf16")).Set("format", Str("kv_nhd"));
  l.Set("layer_offsets", Value::List({Uint(0), Uint(4096)}));
  return l;
}

std::string ValidObjectKeyText() { return "m@w1r0@g0@" + std::string(64, 'a'); }

Value ValidPayload(Opcode op) {
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

Key RankedKey() {
  Key k;
  k.model = "m";
  k.world_size = 2;
  k.worker_rank = 1;
  k.request_id = "r";
  k.tokens = {1, 2, 3, 4};
  return k;
}

Result<Request> DecodeBytes(Opcode op, const std::vector<uint8_t>& payload) {
  return DecodeRequest(Header{.opcode = op, .request_id = 1}, payload);
}
Result<Request> Decode(Opcode op, const Value& payload) { return DecodeBytes(op, payload.Pack()); }

template <typename T>
void ExpectError(const Result<T>& r, StatusCode code, std::string_view needle) {
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), code) << r.error().ToString();
  EXPECT_THAT(std::string(r.error().message()), HasSubstr(std::string(needle)));
}
template <typename T>
void ExpectProtocolError(const Result<T>& r, std::string_view needle) {
  ExpectError(r, StatusCode::kProtocolError, needle);
}

// ---- messages.h ----

TEST(MessagesTest, OpcodeNamesAndPools) {
  EXPECT_STREQ(OpcodeName(Opcode::kHello), "HELLO");
  EXPECT_STREQ(OpcodeName(Opcode::kQueryPrefetchLookupHits), "QUERY_PREFETCH_LOOKUP_HITS");
  EXPECT_STREQ(OpcodeName(Opcode::kNoop), "NOOP");
  EXPECT_STREQ(OpcodeName(Opcode::kInvalid), "INVALID");
  EXPECT_STREQ(OpcodeName(static_cast<Opcode>(99)), "INVALID");
  for (Opcode op : kAllOpcodes) {
    EXPECT_STRNE(OpcodeName(op), "INVALID");
    EXPECT_EQ(IsTransfer(op),
              op == Opcode::kStore || op == Opcode::kRetrieve || op == Opcode::kReadObjects)
        << OpcodeName(op);
  }
}

TEST(MessagesTest, OpcodeOfEveryRequest) {
  for (Opcode op : kAllOpcodes) {
    EXPECT_EQ(OpcodeOf(testing::SampleRequest(op)), op) << OpcodeName(op);
  }
  EXPECT_EQ(OpcodeOf(StoreRequest{}), Opcode::kStore);
  EXPECT_EQ(OpcodeOf(PingRequest{}), Opcode::kPing);
}

TEST(MessagesTest, DTypesAndFormats) {
  EXPECT_STREQ(DTypeName(DType::kBf16), "bf16");
  EXPECT_STREQ(DTypeName(DType::kFp8E5m2), "fp8_e5m2");
  EXPECT_STREQ(KvFormatName(KvFormat::kNbKvHnd), "nb_kv_hnd");
  EXPECT_STREQ(KvFormatName(KvFormat::kMla), "mla");
  EXPECT_EQ(DTypeSize(DType::kBf16), 2u);
  EXPECT_EQ(DTypeSize(DType::kFp16), 2u);
  EXPECT_EQ(DTypeSize(DType::kFp32), 4u);
  EXPECT_EQ(DTypeSize(DType::kFp8E4m3), 1u);
  EXPECT_EQ(DTypeSize(DType::kFp8E5m2), 1u);
  for (int i = 0; i < 5; ++i) {
    const auto t = static_cast<DType>(i);
    EXPECT_EQ(DTypeFromName(DTypeName(t)), t);
    EXPECT_THAT(DTypeChoices(), HasSubstr(DTypeName(t)));
    const auto f = static_cast<KvFormat>(i);
    EXPECT_EQ(KvFormatFromName(KvFormatName(f)), f);
    EXPECT_THAT(KvFormatChoices(), HasSubstr(KvFormatName(f)));
  }
  EXPECT_EQ(DTypeFromName("BF16"), std::nullopt);
  EXPECT_EQ(DTypeFromName("int8"), std::nullopt);
  EXPECT_EQ(KvFormatFromName(""), std::nullopt);
}

TEST(MessagesTest, LayerBytes) {
  Layout l{.num_layers = 1,
           .num_blocks = 10,
           .block_size = 16,
           .num_kv_heads = 8,
           .head_dim = 128,
           .dtype = DType::kFp16,
           .format = KvFormat::kNbKvHnd};
  EXPECT_EQ(LayerBytes(l), uint64_t{2} * 10 * 16 * 8 * 128 * 2);
  l.format = KvFormat::kMla;
  l.num_kv_heads = 1;
  l.head_dim = 576;
  l.dtype = DType::kFp8E4m3;
  EXPECT_EQ(LayerBytes(l), uint64_t{10} * 16 * 576);
  l.format = KvFormat::kKvNhd;
  l.num_blocks = l.block_size = l.num_kv_heads = l.head_dim = UINT32_MAX;
  EXPECT_EQ(LayerBytes(l), std::nullopt);
}

// ---- Header ----

TEST(HeaderTest, ExactBytesLittleEndian) {
  const Header h{.flags = kFlagReply | kFlagError,
                 .opcode = Opcode::kRetrieve,
                 .request_id = 0x0102030405060708ull};
  const std::vector<uint8_t> expected = {'K',  'V',  1,    3,    10,   0,    0,    0,
                                         0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01};
  EXPECT_EQ(EncodeHeader(h), expected);
}

TEST(HeaderTest, RoundTrip) {
  MessageGenerator gen(1);
  for (int i = 0; i < 1000; ++i) {
    Header h;
    h.opcode = static_cast<Opcode>(gen.Uint(1, kMaxOpcode));
    h.request_id = gen.AnyUint(UINT64_MAX);
    const uint8_t kinds[] = {0, kFlagReply, kFlagReply | kFlagError};
    h.flags = kinds[gen.Uint(0, 2)];
    auto back = DecodeHeader(EncodeHeader(h));
    ASSERT_TRUE(back.has_value()) << back.error().ToString();
    EXPECT_EQ(back->version, kProtocolVersion);
    EXPECT_EQ(back->flags, h.flags);
    EXPECT_EQ(back->opcode, h.opcode);
    EXPECT_EQ(back->request_id, h.request_id);
  }
  // An error reply to an unreadable message: opcode 0, request id 0.
  auto unreadable = DecodeHeader(
      EncodeHeader(Header{.flags = kFlagReply | kFlagError, .opcode = Opcode::kInvalid}));
  ASSERT_TRUE(unreadable.has_value()) << unreadable.error().ToString();
  EXPECT_EQ(unreadable->opcode, Opcode::kInvalid);
}

TEST(HeaderTest, Errors) {
  const std::vector<uint8_t> good = EncodeHeader(Header{.opcode = Opcode::kPing, .request_id = 7});
  ASSERT_TRUE(DecodeHeader(good).has_value());
  auto with = [&](size_t index, uint8_t byte) {
    std::vector<uint8_t> h = good;
    h[index] = byte;
    return h;
  };

  ExpectProtocolError(DecodeHeader({}), "0 bytes, expected 16");
  ExpectProtocolError(DecodeHeader(std::span(good).first(15)), "15 bytes, expected 16");
  std::vector<uint8_t> long_frame = good;
  long_frame.push_back(0);
  ExpectProtocolError(DecodeHeader(long_frame), "17 bytes, expected 16");
  ExpectProtocolError(DecodeHeader(with(0, 'k')), "magic");
  ExpectProtocolError(DecodeHeader(with(1, 'W')), "magic");

  for (uint8_t version : {0, 2, 255}) {
    auto r = DecodeHeader(with(2, version));
    ExpectError(r, StatusCode::kUnsupportedVersion, fmt::format("version {}", version));
    EXPECT_THAT(std::string(r.error().message()), HasSubstr("speaks version 1"));
  }

  ExpectProtocolError(DecodeHeader(with(3, 0x04)), "flags");
  ExpectProtocolError(DecodeHeader(with(3, 0x80)), "flags");
  ExpectProtocolError(DecodeHeader(with(3, kFlagError)), "error flag without the reply flag");
  ExpectProtocolError(DecodeHeader(with(6, 1)), "reserved");
  ExpectProtocolError(DecodeHeader(with(7, 0x80)), "reserved");

  ExpectError(DecodeHeader(with(4, 0)), StatusCode::kUnknownOpcode, "unknown opcode 0");
  ExpectError(DecodeHeader(with(4, 17)), StatusCode::kUnknownOpcode, "unknown opcode 17");
  ExpectError(DecodeHeader(with(5, 1)), StatusCode::kUnknownOpcode, "unknown opcode 269");
  // Opcode 0 in a reply is only for error replies.
  std::vector<uint8_t> reply0 = with(4, 0);
  reply0[3] = kFlagReply;
  ExpectProtocolError(DecodeHeader(reply0), "opcode 0");
  reply0[3] = kFlagReply | kFlagError;
  EXPECT_TRUE(DecodeHeader(reply0).has_value());
  std::vector<uint8_t> reply17 = with(4, 17);
  reply17[3] = kFlagReply;
  ExpectError(DecodeHeader(reply17), StatusCode::kUnknownOpcode, "unknown opcode 17");
}

TEST(DecodeRequestTest, HeaderMustBeARequest) {
  const std::vector<uint8_t> payload = Value::Object().Pack();
  ExpectProtocolError(DecodeRequest(Header{.flags = kFlagReply, .opcode = Opcode::kNoop}, payload),
                      "reply");
  ExpectProtocolError(
      DecodeRequest(Header{.flags = kFlagReply | kFlagError, .opcode = Opcode::kNoop}, payload),
      "reply");
  ExpectProtocolError(DecodeRequest(Header{.flags = 0x10, .opcode = Opcode::kNoop}, payload),
                      "flags");
  ExpectError(DecodeRequest(Header{.version = 2, .opcode = Opcode::kNoop}, payload),
              StatusCode::kUnsupportedVersion, "version 2");
  ExpectError(DecodeRequest(Header{.opcode = Opcode::kInvalid}, payload),
              StatusCode::kUnknownOpcode, "opcode 0");
  ExpectError(DecodeRequest(Header{.opcode = static_cast<Opcode>(17)}, payload),
              StatusCode::kUnknownOpcode, "opcode 17");
  EXPECT_TRUE(DecodeRequest(Header{.opcode = Opcode::kNoop}, payload).has_value());
}

// ---- READ_OBJECTS ----

TEST(ReadObjectsTest, RequestDecodesKeysAndBudget) {
  auto r = Decode(Opcode::kReadObjects, ValidPayload(Opcode::kReadObjects));
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  const auto& read = std::get<ReadObjectsRequest>(*r);
  EXPECT_EQ(read.keys, std::vector<std::string>{ValidObjectKeyText()});
  EXPECT_EQ(read.max_bytes, 1u);
}

TEST(ReadObjectsTest, HostileRequestsAreClearErrors) {
  auto with = [](const char* field, Value value) {
    return Decode(Opcode::kReadObjects, ValidPayload(Opcode::kReadObjects).Set(field, value));
  };
  ExpectProtocolError(Decode(Opcode::kReadObjects, Value::Object().Set("max_bytes", Uint(1))),
                      "missing required field 'keys'");
  ExpectProtocolError(with("keys", Str("k")), "field 'keys' must be an array of object keys");
  ExpectProtocolError(with("keys", Value::List({})), "field 'keys' must not be empty");
  ExpectProtocolError(with("keys", Value::List({Uint(3)})), "field 'keys[0]' must be str");
  ExpectProtocolError(with("keys", Value::List({Str(ValidObjectKeyText()), Str("nope")})),
                      "field 'keys[1]' is not an object key");
  ExpectProtocolError(with("keys", Value::List({Str(std::string(kMaxStringLength + 1, 'm'))})),
                      "field 'keys[0]' is 4097 bytes");
  std::vector<Value> many(kMaxReadObjectsKeys + 1, Str(ValidObjectKeyText()));
  ExpectProtocolError(with("keys", Value::List(many)), "has 4097 elements, the limit is 4096");
  ExpectProtocolError(with("max_bytes", Uint(0)), "field 'max_bytes' must be in [1,");
  ExpectProtocolError(Decode(Opcode::kReadObjects,
                             Value::Object().Set("keys", Value::List({Str(ValidObjectKeyText())}))),
                      "missing required field 'max_bytes'");
}

TEST(ReadObjectsTest, HostileReplies) {
  const Header h{.flags = kFlagReply, .opcode = Opcode::kReadObjects, .request_id = 1};
  ExpectProtocolError(DecodeReply(h, Value::Object().Pack()), "missing required field 'found'");
  ExpectProtocolError(DecodeReply(h, Value::Object().Set("found", Uint(1)).Pack()),
                      "must be an array of bools");
  ExpectProtocolError(
      DecodeReply(h,
                  Value::Object().Set("found", Value::List({Value::Bool(true), Uint(1)})).Pack()),
      "field 'found[1]' must be a bool");
}

TEST(ReadObjectsTest, ObjectsTravelAsExtraFrames) {
  const std::vector<uint8_t> a{1, 2, 3}, b{4, 5};
  auto hold = std::make_shared<int>(7);
  ReadObjectsReply reply{{true, false, true}, {a, b}, hold};
  const Frames frames = EncodeReply(Opcode::kReadObjects, 9, reply);
  ASSERT_EQ(frames.extra.size(), 2u);
  EXPECT_EQ(frames.extra[0].data(), a.data());  // not copied
  EXPECT_EQ(frames.extra[1].data(), b.data());
  EXPECT_EQ(frames.hold, hold);
  auto header = DecodeHeader(frames.header);
  ASSERT_TRUE(header.has_value());
  auto back = DecodeReply(*header, frames.payload);
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  const auto& decoded = std::get<ReadObjectsReply>(*back);
  EXPECT_EQ(decoded.found, (std::vector<bool>{true, false, true}));
  EXPECT_TRUE(decoded.objects.empty());  // the frames are attached by the receiver
  // Other replies carry no extra frames.
  EXPECT_TRUE(EncodeReply(Opcode::kNoop, 1, EmptyReply{}).extra.empty());
}

// ---- Round trips ----

TEST(RoundTripTest, EveryRequestWithRandomValues) {
  MessageGenerator gen(42);
  for (Opcode op : kAllOpcodes) {
    for (int i = 0; i < 60; ++i) {
      const Request request = gen.MakeRequest(op);
      const uint64_t request_id = gen.AnyUint(UINT64_MAX);
      const Frames frames = EncodeRequest(request_id, request);
      auto header = DecodeHeader(frames.header);
      ASSERT_TRUE(header.has_value()) << header.error().ToString();
      EXPECT_EQ(header->opcode, op);
      EXPECT_EQ(header->flags, 0);
      EXPECT_EQ(header->request_id, request_id);
      auto back = DecodeRequest(*header, frames.payload);
      ASSERT_TRUE(back.has_value()) << OpcodeName(op) << ": " << back.error().ToString();
      EXPECT_EQ(*back, request) << OpcodeName(op) << " #" << i;
      // Encoding is deterministic: the decoded value encodes to the same bytes.
      EXPECT_EQ(EncodeRequest(request_id, *back).payload, frames.payload);
    }
  }
}

TEST(RoundTripTest, EveryReplyWithRandomValues) {
  MessageGenerator gen(43);
  for (Opcode op : kAllOpcodes) {
    for (int i = 0; i < 60; ++i) {
      const Reply reply = gen.MakeReply(op);
      ASSERT_EQ(reply.index(), ReplyIndexFor(op));
      const uint64_t request_id = gen.AnyUint(UINT64_MAX);
      const Frames frames = EncodeReply(op, request_id, reply);
      auto header = DecodeHeader(frames.header);
      ASSERT_TRUE(header.has_value()) << header.error().ToString();
      EXPECT_EQ(header->flags, kFlagReply);
      EXPECT_EQ(header->opcode, op);
      EXPECT_EQ(header->request_id, request_id);
      auto back = DecodeReply(*header, frames.payload);
      ASSERT_TRUE(back.has_value()) << OpcodeName(op) << ": " << back.error().ToString();
      EXPECT_EQ(*back, reply) << OpcodeName(op) << " #" << i;
    }
  }
}

TEST(RoundTripTest, ErrorReplies) {
  MessageGenerator gen(44);
  for (int i = 0; i < 200; ++i) {
    const Opcode op = i % 16 == 0 ? Opcode::kInvalid : static_cast<Opcode>(i % 16);
    const ErrorReply error = gen.MakeError();
    const Frames frames = EncodeReply(op, static_cast<uint64_t>(i), error);
    auto header = DecodeHeader(frames.header);
    ASSERT_TRUE(header.has_value()) << header.error().ToString();
    EXPECT_EQ(header->flags, kFlagReply | kFlagError);
    EXPECT_EQ(header->opcode, op);
    auto back = DecodeReply(*header, frames.payload);
    ASSERT_TRUE(back.has_value()) << back.error().ToString();
    ASSERT_TRUE(std::holds_alternative<ErrorReply>(*back));
    EXPECT_EQ(std::get<ErrorReply>(*back), error);
  }
}

TEST(RoundTripTest, LargestKeyAndBlockList) {
  LookupRequest lookup;
  lookup.key.model = std::string(256, 'm');
  lookup.key.request_id = std::string(kMaxStringLength, 'r');
  lookup.key.cache_salt = std::string(128, 's');
  lookup.key.tokens.resize(kMaxTokens);
  for (size_t i = 0; i < kMaxTokens; ++i)
    lookup.key.tokens[i] = static_cast<uint32_t>(i * 2654435761u);
  lookup.key.end = static_cast<uint32_t>(kMaxTokens);
  Frames frames = EncodeRequest(1, lookup);
  auto back = DecodeBytes(Opcode::kLookup, frames.payload);
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  EXPECT_EQ(std::get<LookupRequest>(*back), lookup);

  StoreRequest store;
  store.instance_id = "i";
  store.key = RankedKey();
  store.block_ids.resize(kMaxBlockIds);
  for (size_t i = 0; i < kMaxBlockIds; ++i) store.block_ids[i] = static_cast<uint32_t>(i);
  frames = EncodeRequest(2, store);
  back = DecodeBytes(Opcode::kStore, frames.payload);
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  EXPECT_EQ(std::get<StoreRequest>(*back), store);
}

TEST(RoundTripTest, WireFormatIsTheSpecs) {
  LookupRequest lookup;
  lookup.key = RankedKey();
  lookup.key.worker_rank.reset();
  lookup.key.tokens = {0x04030201u, 0xA0B0C0D0u};
  const Frames frames = EncodeRequest(9, lookup);
  msgpack::object_handle handle =
      msgpack::unpack(reinterpret_cast<const char*>(frames.payload.data()), frames.payload.size());
  const msgpack::object& root = handle.get();
  ASSERT_EQ(root.type, msgpack::type::MAP);
  std::map<std::string, msgpack::object> fields;
  for (uint32_t i = 0; i < root.via.map.size; ++i) {
    fields[root.via.map.ptr[i].key.as<std::string>()] = root.via.map.ptr[i].val;
  }
  ASSERT_EQ(fields.size(), 3u);
  EXPECT_EQ(fields.at("read_locks").as<uint32_t>(), 1u);
  EXPECT_EQ(fields.at("timeout_ms").as<uint32_t>(), 0u);
  const msgpack::object& key = fields.at("key");
  ASSERT_EQ(key.type, msgpack::type::MAP);
  std::map<std::string, msgpack::object> key_fields;
  for (uint32_t i = 0; i < key.via.map.size; ++i) {
    key_fields[key.via.map.ptr[i].key.as<std::string>()] = key.via.map.ptr[i].val;
  }
  EXPECT_EQ(key_fields.at("model").as<std::string>(), "m");
  EXPECT_EQ(key_fields.at("worker_rank").type, msgpack::type::NIL);
  EXPECT_EQ(key_fields.count("end"), 0u);  // absent: the last full-chunk boundary
  const msgpack::object& tokens = key_fields.at("tokens");
  ASSERT_EQ(tokens.type, msgpack::type::BIN);
  const std::string bytes(tokens.via.bin.ptr, tokens.via.bin.size);
  EXPECT_EQ(bytes, std::string("\x01\x02\x03\x04\xD0\xC0\xB0\xA0", 8));
}

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

// ---- Limits ----

std::vector<uint8_t> Bytes(std::initializer_list<int> bytes) {
  std::vector<uint8_t> out;
  for (int b : bytes) out.push_back(static_cast<uint8_t>(b));
  return out;
}

// A LOOKUP payload whose key.tokens ends in `tail` (raw msgpack bytes; the map says 3 fields).
std::vector<uint8_t> LookupWithRawTokens(const std::vector<uint8_t>& tail) {
  std::vector<uint8_t> out = Bytes({0x81, 0xa3, 'k', 'e', 'y', 0x83});
  Value head = Value::Object();
  head.Set("model", Str("m")).Set("request_id", Str("r"));
  std::vector<uint8_t> fields = head.Pack();
  out.insert(out.end(), fields.begin() + 1, fields.end());  // the entries without the map byte
  for (char c : std::string_view("\xa6tokens")) out.push_back(static_cast<uint8_t>(c));
  out.insert(out.end(), tail.begin(), tail.end());
  return out;
}

TEST(LimitsTest, DeclaredSizesBeyondThePayloadFailBeforeAllocating) {
  // Sanity: the helper builds a valid payload around a real bin.
  ASSERT_TRUE(
      DecodeBytes(Opcode::kLookup, LookupWithRawTokens(Bytes({0xc4, 4, 1, 0, 0, 0}))).has_value());
  // A bin32 claiming 2^30 tokens (2^32 - 4 bytes) with 4 bytes behind it.
  ExpectProtocolError(
      DecodeBytes(Opcode::kLookup,
                  LookupWithRawTokens(Bytes({0xc6, 0xff, 0xff, 0xff, 0xfc, 1, 2, 3, 4}))),
      "truncated msgpack");
  // An array32 claiming 2^32 - 1 block ids, a map32 claiming 2^31 entries: never allocated.
  Value store = ValidPayload(Opcode::kStore).Erase("block_ids");
  std::vector<uint8_t> bytes = store.Pack();
  bytes[0] = static_cast<uint8_t>(bytes[0] + 1);  // one more entry in the fixmap
  for (uint8_t b : Bytes(
           {0xa9, 'b', 'l', 'o', 'c', 'k', '_', 'i', 'd', 's', 0xdd, 0xff, 0xff, 0xff, 0xff, 1})) {
    bytes.push_back(b);
  }
  ExpectProtocolError(DecodeBytes(Opcode::kStore, bytes), "containers declare");
  ExpectProtocolError(DecodeBytes(Opcode::kNoop, Bytes({0xdf, 0x80, 0, 0, 0, 0xa1, 'a', 1})),
                      "containers declare");
  ExpectProtocolError(DecodeBytes(Opcode::kNoop, Bytes({0xdf, 0, 0, 0, 2, 0xa1, 'a', 1})),
                      "truncated");
  // A str32 claiming 4 GiB.
  ExpectProtocolError(
      DecodeBytes(Opcode::kEndSession, Bytes({0x81, 0xaa, 'r', 'e', 'q', 'u', 'e', 's', 't', '_',
                                              'i', 'd', 0xdb, 0xff, 0xff, 0xff, 0xff, 'r'})),
      "truncated");
}

TEST(LimitsTest, FieldLimits) {
  // Tokens: kMaxTokens decode (RoundTripTest.LargestKeyAndBlockList), one more does not.
  std::vector<uint32_t> tokens(kMaxTokens + 1, 7);
  ExpectProtocolError(
      Decode(Opcode::kLookup,
             ValidPayload(Opcode::kLookup).Set("key.tokens", Value::Tokens(tokens))),
      fmt::format("field 'key.tokens' holds {} tokens, the limit is {}", kMaxTokens + 1,
                  kMaxTokens));
  // Block ids.
  Value::Array ids(kMaxBlockIds + 1, Uint(1));
  ExpectProtocolError(
      Decode(Opcode::kStore, ValidPayload(Opcode::kStore).Set("block_ids", Value::List(ids))),
      fmt::format("field 'block_ids' has {} elements, the limit is {}", kMaxBlockIds + 1,
                  kMaxBlockIds));
  // Layers.
  Value::Array offsets(kMaxLayers + 1, Uint(0));
  ExpectProtocolError(
      Decode(
          Opcode::kRegisterKvCache,
          ValidPayload(Opcode::kRegisterKvCache).Set("layout.layer_offsets", Value::List(offsets))),
      fmt::format("field 'layout.layer_offsets' has {} elements, the limit is {}", kMaxLayers + 1,
                  kMaxLayers));
  ExpectProtocolError(
      Decode(Opcode::kRegisterKvCache,
             ValidPayload(Opcode::kRegisterKvCache).Set("layout.num_layers", Uint(kMaxLayers + 1))),
      "field 'layout.num_layers' must be in [1, 4096], got 4097");
  // Strings.
  for (Opcode op : {Opcode::kEndSession, Opcode::kQueryPrefetchStatus}) {
    ExpectProtocolError(
        Decode(op, ValidPayload(op).Set("request_id", Str(std::string(kMaxStringLength + 1, 'r')))),
        fmt::format("field 'request_id' is {} bytes, the limit is {}", kMaxStringLength + 1,
                    kMaxStringLength));
    EXPECT_TRUE(
        Decode(op, ValidPayload(op).Set("request_id", Str(std::string(kMaxStringLength, 'r'))))
            .has_value());
  }
  // The payload.
  std::vector<uint8_t> huge(kMaxPayloadBytes + 1, 0);
  ExpectProtocolError(
      DecodeBytes(Opcode::kNoop, huge),
      fmt::format("payload is {} bytes, the limit is {}", kMaxPayloadBytes + 1, kMaxPayloadBytes));
}

TEST(LimitsTest, NestingAndElementCount) {
  // 16 levels (the payload map and 15 nested arrays) decode; 17 do not.
  auto nested = [](int depth) {
    Value v = Value::List({});
    for (int i = 2; i < depth; ++i) v = Value::List({v});
    return Value::Object().Set("unknown", v);
  };
  EXPECT_TRUE(Decode(Opcode::kNoop, nested(16)).has_value());
  ExpectProtocolError(Decode(Opcode::kNoop, nested(17)), "nested deeper than 16 levels");
  // Unknown fields cannot make the decoder build an unbounded object tree.
  Value many = Value::Object();
  many.Set("a", Value::List(Value::Array(kMaxBlockIds, Uint(0))));
  many.Set("b", Value::List(Value::Array(kMaxBlockIds, Uint(0))));
  ExpectProtocolError(Decode(Opcode::kNoop, many), "containers hold more than");
}

// ---- Replies ----

TEST(DecodeReplyTest, Errors) {
  const std::vector<uint8_t> ping = Value::Object().Set("ok", Value::Bool(true)).Pack();
  EXPECT_TRUE(DecodeReply(Header{.flags = kFlagReply, .opcode = Opcode::kPing}, ping).has_value());
  ExpectProtocolError(DecodeReply(Header{.flags = 0, .opcode = Opcode::kPing}, ping),
                      "lacks the reply flag");
  ExpectError(DecodeReply(Header{.version = 3, .flags = kFlagReply, .opcode = Opcode::kPing}, ping),
              StatusCode::kUnsupportedVersion, "version 3");
  ExpectProtocolError(DecodeReply(Header{.flags = kFlagReply, .opcode = Opcode::kInvalid}, ping),
                      "opcode 0");
  ExpectError(DecodeReply(Header{.flags = kFlagReply, .opcode = static_cast<Opcode>(17)}, ping),
              StatusCode::kUnknownOpcode, "17");
  ExpectProtocolError(
      DecodeReply(Header{.flags = kFlagReply, .opcode = Opcode::kPing}, Value::Object().Pack()),
      "PING reply: missing required field 'ok'");
  ExpectProtocolError(DecodeReply(Header{.flags = kFlagReply, .opcode = Opcode::kStore},
                                  Value::Object()
                                      .Set("stored_chunks", Uint(1))
                                      .Set("present_chunks", Value::Int(-1))
                                      .Set("failed_chunks", Uint(0))
                                      .Pack()),
                      "STORE reply: field 'present_chunks' must be in");
  ExpectProtocolError(DecodeReply(Header{.flags = kFlagReply, .opcode = Opcode::kGetChunkSize},
                                  Value::Object().Set("chunk_size", Uint(0)).Pack()),
                      "field 'chunk_size' must be in [1, 4294967295]");

  const Header error_header{.flags = kFlagReply | kFlagError, .opcode = Opcode::kStore};
  auto error_payload = [](Value code) {
    return Value::Object()
        .Set("code", std::move(code))
        .Set("message", Str("m"))
        .Set("retryable", Value::Bool(false))
        .Pack();
  };
  ExpectProtocolError(DecodeReply(error_header, error_payload(Uint(0))),
                      "STORE error reply: field 'code' must be in [1, 2147483647], got 0");
  ExpectProtocolError(DecodeReply(error_header, error_payload(Value::Int(-2))), "got -2");
  ExpectProtocolError(DecodeReply(error_header, error_payload(Uint(1ull << 31))), "field 'code'");
  ExpectProtocolError(DecodeReply(error_header, Value::Object().Set("code", Uint(1)).Pack()),
                      "missing required field 'message'");
  // A code this side does not know (a newer peer) still decodes.
  auto future = DecodeReply(error_header, error_payload(Uint(950)));
  ASSERT_TRUE(future.has_value()) << future.error().ToString();
  EXPECT_EQ(static_cast<int32_t>(std::get<ErrorReply>(*future).code), 950);
}

TEST(ErrorReplyTest, StatusRoundTrip) {
  const Status statuses[] = {
      Status::NotFound("no lookup for request 'r'"),
      Status::Timeout("waited 100 ms"),
      Status(StatusCode::kUnsupportedVersion, "version 2", false),
      Status(StatusCode::kProtocolError, "bad", false),
      Status::IOError("disk", /*retryable=*/true),
  };
  for (const Status& s : statuses) {
    const ErrorReply e = ToErrorReply(s);
    EXPECT_EQ(e.code, s.code());
    EXPECT_EQ(e.message, s.message());
    EXPECT_EQ(e.retryable, s.retryable());
    const Frames frames = EncodeReply(Opcode::kRetrieve, 5, e);
    auto header = DecodeHeader(frames.header);
    ASSERT_TRUE(header.has_value());
    auto back = DecodeReply(*header, frames.payload);
    ASSERT_TRUE(back.has_value()) << back.error().ToString();
    const Status restored = FromErrorReply(std::get<ErrorReply>(*back));
    EXPECT_EQ(restored, s);
    EXPECT_EQ(restored.retryable(), s.retryable());
  }
  // An error reply always stands for an error.
  const Status from_zero = FromErrorReply(ErrorReply{StatusCode::kOk, "odd", false});
  EXPECT_EQ(from_zero.code(), StatusCode::kProtocolError);
  EXPECT_THAT(std::string(from_zero.message()), HasSubstr("odd"));
}

TEST(ErrorReplyTest, LongMessagesAreCutToTheLimitAtACharacterBoundary) {
  // "é" is two bytes: a cut at kMaxStringLength would split one.
  std::string message = "x";
  while (message.size() < 2 * kMaxStringLength) message += "é";
  const ErrorReply e = ToErrorReply(Status::Internal(message));
  EXPECT_EQ(e.message.size(), kMaxStringLength - 1);
  EXPECT_EQ(e.message, message.substr(0, kMaxStringLength - 1));
  const Frames frames = EncodeReply(Opcode::kNoop, 1, e);
  auto back = DecodeReply(Header{.flags = kFlagReply | kFlagError, .opcode = Opcode::kNoop},
                          frames.payload);
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  EXPECT_EQ(std::get<ErrorReply>(*back), e);
  // An ErrorReply built by hand with a long message is cut when encoded.
  back = DecodeReply(
      Header{.flags = kFlagReply | kFlagError, .opcode = Opcode::kNoop},
      EncodeReply(Opcode::kNoop, 1, ErrorReply{StatusCode::kInternal, message}).payload);
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  EXPECT_EQ(std::get<ErrorReply>(*back).message, e.message);
}

// ---- The fuzzer's seed corpus ----

// Corpus files: the first byte picks the opcode (bit 7: error reply), the rest is the payload.
std::map<std::string, std::vector<uint8_t>> SeedCorpus() {
  std::map<std::string, std::vector<uint8_t>> files;
  for (Opcode op : kAllOpcodes) {
    const auto code = static_cast<uint8_t>(op);
    std::vector<uint8_t> request{code};
    const std::vector<uint8_t> payload = EncodeRequest(1, testing::SampleRequest(op)).payload;
    request.insert(request.end(), payload.begin(), payload.end());
    files[fmt::format("request_{}", OpcodeName(op))] = request;
    std::vector<uint8_t> reply{code};
    const std::vector<uint8_t> reply_payload = EncodeReply(op, 1, testing::SampleReply(op)).payload;
    reply.insert(reply.end(), reply_payload.begin(), reply_payload.end());
    files[fmt::format("reply_{}", OpcodeName(op))] = reply;
  }
  std::vector<uint8_t> error{0x80};
  const std::vector<uint8_t> error_payload =
      EncodeReply(Opcode::kInvalid, 0, ToErrorReply(Status::NotFound("no such lookup"))).payload;
  error.insert(error.end(), error_payload.begin(), error_payload.end());
  files["reply_error"] = error;
  std::vector<uint8_t> header{0};
  const std::vector<uint8_t> header_bytes =
      EncodeHeader(Header{.opcode = Opcode::kStore, .request_id = 77});
  header.insert(header.end(), header_bytes.begin(), header_bytes.end());
  files["header_STORE"] = header;
  return files;
}

// Set KVT_WRITE_CORPUS=1 to (re)write the files after an encoding change.
TEST(SeedCorpusTest, FilesMatchTheEncoder) {
  const std::filesystem::path dir = KVT_PROTOCOL_CORPUS_DIR;
  const bool write = std::getenv("KVT_WRITE_CORPUS") != nullptr;
  const auto files = SeedCorpus();
  for (const auto& [name, bytes] : files) {
    if (write) {
      std::filesystem::create_directories(dir);
      std::ofstream(dir / name, std::ios::binary)
          .write(reinterpret_cast<const char*>(bytes.data()),
                 static_cast<std::streamsize>(bytes.size()));
    }
    std::ifstream in(dir / name, std::ios::binary);
    ASSERT_TRUE(in.good()) << (dir / name) << " is missing: run with KVT_WRITE_CORPUS=1";
    const std::vector<uint8_t> on_disk((std::istreambuf_iterator<char>(in)),
                                       std::istreambuf_iterator<char>());
    EXPECT_EQ(on_disk, bytes) << name << " is stale: run with KVT_WRITE_CORPUS=1";
  }
  // Every request seed decodes to its sample.
  for (Opcode op : kAllOpcodes) {
    const auto& file = files.at(fmt::format("request_{}", OpcodeName(op)));
    auto r = DecodeBytes(op, std::vector<uint8_t>(file.begin() + 1, file.end()));
    ASSERT_TRUE(r.has_value()) << r.error().ToString();
    EXPECT_EQ(*r, testing::SampleRequest(op));
  }
}

}  // namespace
}  // namespace kvtier::protocol
