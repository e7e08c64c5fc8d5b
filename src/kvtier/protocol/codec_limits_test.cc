// Limits and hostile sizes, and decoding of replies.
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kvtier/protocol/codec.h"
#include "kvtier/protocol/codec_payload_test_util.h"
#include "kvtier/protocol/messages.h"
#include "kvtier/protocol/msgpack_value_test_util.h"

namespace kvtier::protocol::testing {
namespace {

using ::testing::HasSubstr;

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

}  // namespace
}  // namespace kvtier::protocol::testing
