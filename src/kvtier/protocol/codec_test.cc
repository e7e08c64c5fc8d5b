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

#include "kvtier/protocol/codec_payload_test_util.h"
#include "kvtier/protocol/codec_test_util.h"
#include "kvtier/protocol/messages.h"
#include "kvtier/protocol/msgpack_value_test_util.h"

namespace kvtier::protocol::testing {
namespace {

using ::testing::HasSubstr;

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
}  // namespace kvtier::protocol::testing
