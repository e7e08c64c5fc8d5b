// Round trips of every message, the frame header, and the seed corpus of the fuzzer.
#include "kvtier/controller/codec.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>

#include <gtest/gtest.h>

#include "kvtier/controller/codec_test_util.h"
#include "kvtier/controller/msgpack_io.h"

namespace kvtier::controller {
namespace {

using testing::SampleEvents;
using testing::SampleReplies;
using testing::SampleRequests;

std::vector<uint8_t> Frame(MessageType type, uint8_t flags, uint64_t id,
                           const std::vector<uint8_t>& body) {
  std::vector<uint8_t> out = EncodeHeader(Header{.flags = flags, .type = type, .request_id = id});
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

TEST(ControllerCodecTest, EveryEventRoundTrips) {
  for (const auto& [name, event] : SampleEvents()) {
    SCOPED_TRACE(name);
    const std::vector<uint8_t> frame = EncodeEvent(event);
    Result<Header> header = DecodeHeader(frame);
    ASSERT_TRUE(header.has_value()) << header.error().ToString();
    EXPECT_EQ(MessageTypeName(header->type), name);
    EXPECT_EQ(header->flags, 0);
    EXPECT_EQ(header->request_id, 0u);
    Result<Framed<Event>> decoded = DecodeEvent(frame);
    ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
    EXPECT_EQ(decoded->header, *header);
    EXPECT_EQ(decoded->body, event);
    EXPECT_EQ(EncodeEvent(decoded->body), frame);
  }
}

TEST(ControllerCodecTest, EveryRequestRoundTrips) {
  uint64_t id = 1;
  for (const auto& [name, request] : SampleRequests()) {
    SCOPED_TRACE(name);
    id *= 1000003;
    const std::vector<uint8_t> frame = EncodeRequest(id, request);
    Result<Framed<Request>> decoded = DecodeRequest(frame);
    ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
    EXPECT_EQ(MessageTypeName(decoded->header.type), name);
    EXPECT_EQ(decoded->header.request_id, id);
    EXPECT_EQ(decoded->header.flags, 0);
    EXPECT_EQ(decoded->body, request);
    EXPECT_EQ(EncodeRequest(id, decoded->body), frame);
  }
}

TEST(ControllerCodecTest, EveryReplyRoundTrips) {
  const auto requests = SampleRequests();
  const auto replies = SampleReplies();
  ASSERT_EQ(replies.size(), requests.size() + 1);
  for (size_t i = 0; i < replies.size(); ++i) {
    const auto& [name, reply] = replies[i];
    SCOPED_TRACE(name);
    const bool error = std::holds_alternative<ErrorReply>(reply);
    // The error sample answers a LOOKUP; the others answer their own request.
    const MessageType type = error ? MessageType::kLookup : TypeOf(requests[i].second);
    EXPECT_EQ(reply.index(), error ? std::variant_size_v<Reply> - 1 : ReplyIndexFor(type));
    const std::vector<uint8_t> frame = EncodeReply(type, 99 + i, reply);
    Result<Framed<Reply>> decoded = DecodeReply(frame);
    ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
    EXPECT_EQ(decoded->header.type, type);
    EXPECT_EQ(decoded->header.request_id, 99 + i);
    EXPECT_EQ(decoded->header.flags, error ? (kFlagReply | kFlagError) : kFlagReply);
    EXPECT_EQ(decoded->body, reply);
    EXPECT_EQ(EncodeReply(type, 99 + i, decoded->body), frame);
    const Status status = ReplyStatus(*decoded, type);
    if (error) {
      EXPECT_EQ(status.code(), StatusCode::kNotFound);
      EXPECT_EQ(status.message(), "worker node-a/3 is not registered");
    } else {
      EXPECT_TRUE(status.ok()) << status.ToString();
    }
  }
}

TEST(ControllerCodecTest, ReplyStatusRejectsAReplyToAnotherRequest) {
  Result<Framed<Reply>> ping = DecodeReply(EncodeReply(MessageType::kPing, 1, PingReply{1}));
  ASSERT_TRUE(ping.has_value());
  const Status s = ReplyStatus(*ping, MessageType::kLookup);
  EXPECT_EQ(s.code(), StatusCode::kProtocolError);
  EXPECT_NE(s.message().find("a PING reply answers a LOOKUP request"), std::string::npos);
  // An error reply to an unreadable frame (type 0) answers whatever was sent.
  Result<Framed<Reply>> error =
      DecodeReply(EncodeErrorReply(ReplyTarget{}, Status(StatusCode::kProtocolError, "bad magic")));
  ASSERT_TRUE(error.has_value()) << error.error().ToString();
  EXPECT_EQ(error->header.type, MessageType::kInvalid);
  EXPECT_EQ(ReplyStatus(*error, MessageType::kLookup).code(), StatusCode::kProtocolError);
}

TEST(ControllerCodecTest, ErrorReplyKeepsCodeMessageAndRetryable) {
  const Status status(StatusCode::kUnavailable, "controller is shutting down", true);
  const std::vector<uint8_t> frame =
      EncodeErrorReply(ReplyTarget{MessageType::kRegister, 7}, status);
  Result<Framed<Reply>> reply = DecodeReply(frame);
  ASSERT_TRUE(reply.has_value()) << reply.error().ToString();
  const Status back = ReplyStatus(*reply, MessageType::kRegister);
  EXPECT_EQ(back, status);
  EXPECT_TRUE(back.retryable());
}

TEST(ControllerCodecTest, ErrorReplyTextIsMadeDecodable) {
  // Invalid UTF-8 is replaced and an overlong message is cut at a character boundary.
  std::string message = "bad \xff\xfe bytes ";
  while (message.size() < kMaxTextLength + 10) message += "\xc3\xa9";  // 'é'
  const ErrorReply error = ToErrorReply(Status(StatusCode::kInternal, message));
  EXPECT_LE(error.message.size(), kMaxTextLength);
  EXPECT_EQ(error.message.substr(0, 12), "bad ?? bytes");
  Result<Framed<Reply>> reply = DecodeReply(EncodeReply(MessageType::kPing, 1, error));
  ASSERT_TRUE(reply.has_value()) << reply.error().ToString();
  EXPECT_EQ(std::get<ErrorReply>(reply->body).message, error.message);
  // A code that is not a positive number never reaches the wire.
  Result<Framed<Reply>> zero =
      DecodeReply(EncodeReply(MessageType::kPing, 1, ErrorReply{StatusCode::kOk, "", false}));
  ASSERT_TRUE(zero.has_value()) << zero.error().ToString();
  EXPECT_EQ(std::get<ErrorReply>(zero->body).code, StatusCode::kInternal);
  EXPECT_FALSE(FromErrorReply(ErrorReply{StatusCode::kOk, "x", false}).ok());
}

// ---- Header ----

TEST(ControllerCodecTest, HeaderLayoutIsFixed) {
  const std::vector<uint8_t> h = EncodeHeader(Header{
      .flags = kFlagReply, .type = MessageType::kHeartbeat, .request_id = 0x0102030405060708});
  const std::vector<uint8_t> expected = {'K', 'C', 1, 1, 34, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1};
  EXPECT_EQ(h, expected);
}

Status HeaderError(std::vector<uint8_t> frame) {
  Result<Header> h = DecodeHeader(frame);
  return h.has_value() ? Status::OK() : h.error();
}

TEST(ControllerCodecTest, BadHeadersAreRejected) {
  std::vector<uint8_t> good = EncodeRequest(5, PingRequest{});
  ASSERT_TRUE(HeaderError(good).ok());

  EXPECT_EQ(HeaderError({'K', 'C', 1}).code(), StatusCode::kProtocolError);
  auto bad = good;
  bad[1] = 'V';
  Status s = HeaderError(bad);
  EXPECT_NE(s.message().find("server protocol frame"), std::string::npos) << s.ToString();
  bad = good;
  bad[2] = 2;
  EXPECT_EQ(HeaderError(bad).code(), StatusCode::kUnsupportedVersion);
  bad = good;
  bad[3] = 0x04;
  EXPECT_NE(HeaderError(bad).message().find("unknown header flags"), std::string::npos);
  bad = good;
  bad[3] = kFlagError;
  EXPECT_NE(HeaderError(bad).message().find("without the reply flag"), std::string::npos);
  bad = good;
  bad[7] = 1;
  EXPECT_NE(HeaderError(bad).message().find("reserved"), std::string::npos);
  bad = good;
  bad[4] = 99;
  EXPECT_EQ(HeaderError(bad).code(), StatusCode::kUnknownOpcode);
  bad = good;
  bad[4] = 0;
  EXPECT_EQ(HeaderError(bad).code(), StatusCode::kUnknownOpcode);
  bad = good;
  bad[4] = static_cast<uint8_t>(MessageType::kAdmit);
  bad[3] = kFlagReply;
  EXPECT_NE(HeaderError(bad).message().find("events have no replies"), std::string::npos);
  std::vector<uint8_t> huge(kMaxFrameBytes + 1, 0);
  std::copy(good.begin(), good.end(), huge.begin());
  EXPECT_NE(HeaderError(huge).message().find("the limit is"), std::string::npos);
}

TEST(ControllerCodecTest, ReplyTargetIsReadEvenFromFramesThatFailToDecode) {
  std::vector<uint8_t> frame = EncodeRequest(0xabcdef, LookupRequest{});
  frame[2] = 9;  // a future version
  ASSERT_FALSE(DecodeRequest(frame).has_value());
  ReplyTarget to = ReplyTargetOf(frame);
  EXPECT_EQ(to.type, MessageType::kLookup);
  EXPECT_EQ(to.request_id, 0xabcdefu);
  // Unknown types and events are answered as type 0; unreadable frames with id 0 too.
  frame[4] = 200;
  EXPECT_EQ(ReplyTargetOf(frame).type, MessageType::kInvalid);
  EXPECT_EQ(ReplyTargetOf(frame).request_id, 0xabcdefu);
  EXPECT_EQ(ReplyTargetOf(EncodeEvent(FullSyncEnd{})).type, MessageType::kInvalid);
  EXPECT_EQ(ReplyTargetOf(std::vector<uint8_t>{1, 2, 3}).request_id, 0u);
  // The error reply a v1 controller sends back decodes.
  Result<Framed<Reply>> reply = DecodeReply(EncodeErrorReply(
      to, Status(StatusCode::kUnsupportedVersion, "controller protocol version 9")));
  ASSERT_TRUE(reply.has_value()) << reply.error().ToString();
  EXPECT_EQ(reply->header.request_id, 0xabcdefu);
}

TEST(ControllerCodecTest, MessagesOnTheWrongSocketAreNamed) {
  const auto admit = EncodeEvent(SampleEvents()[0].second);
  Result<Framed<Request>> r = DecodeRequest(admit);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message().find("ADMIT is an event: send it on the event socket (PUSH)"),
            std::string::npos)
      << r.error().ToString();
  Result<Framed<Event>> e = DecodeEvent(EncodeRequest(1, PingRequest{}));
  ASSERT_FALSE(e.has_value());
  EXPECT_NE(e.error().message().find("PING is a request"), std::string::npos);
  EXPECT_FALSE(DecodeEvent(EncodeReply(MessageType::kPing, 1, PingReply{1})).has_value());
  EXPECT_FALSE(DecodeRequest(EncodeReply(MessageType::kPing, 1, PingReply{1})).has_value());
  Result<Framed<Reply>> rep = DecodeReply(EncodeRequest(1, PingRequest{}));
  ASSERT_FALSE(rep.has_value());
  EXPECT_NE(rep.error().message().find("lacks the reply flag"), std::string::npos);
}

// ---- Defaults and forward compatibility ----

TEST(ControllerCodecTest, OptionalFieldsTakeTheirDefaults) {
  // LOOKUP with no cache_salt, object_group, rank or exclude_instance.
  std::vector<uint8_t> body;
  internal::Writer w(&body);
  w.Map(3);
  w.Field("model", "m");
  w.Field("world_size", uint32_t{2});
  w.Str("hashes");
  const auto hashes = testing::MakeHashes(3, 2);
  w.Hashes(hashes);
  Result<Framed<Request>> r = DecodeRequest(Frame(MessageType::kLookup, 0, 1, body));
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  const LookupRequest expected{"m", "", 2, std::nullopt, 0, hashes, ""};
  EXPECT_EQ(std::get<LookupRequest>(r->body), expected);
}

TEST(ControllerCodecTest, UnknownFieldsAreIgnored) {
  std::vector<uint8_t> body;
  internal::Writer w(&body);
  w.Map(3);
  w.Field("controller_epoch", uint32_t{9});
  w.Field("added_in_v1_1", "whatever");
  w.Str("nested_future_field");
  w.Array(1);
  w.Map(0);
  Result<Framed<Reply>> r = DecodeReply(Frame(MessageType::kPing, kFlagReply, 1, body));
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(std::get<PingReply>(r->body).controller_epoch, 9u);
}

TEST(ControllerCodecTest, EmptyBatchesAndGroupsDecode) {
  KvEvent empty{KvOp::kEvict, testing::SampleOrigin(), "L1", 1, {}};
  Result<Framed<Event>> e = DecodeEvent(EncodeEvent(empty));
  ASSERT_TRUE(e.has_value()) << e.error().ToString();
  EXPECT_EQ(std::get<KvEvent>(e->body), empty);
  FullSyncStart nothing{testing::SampleOrigin(), "fs", 1, 0, 0, 0};
  e = DecodeEvent(EncodeEvent(nothing));
  ASSERT_TRUE(e.has_value()) << e.error().ToString();
  EXPECT_EQ(std::get<FullSyncStart>(e->body), nothing);
}

TEST(ControllerCodecTest, MaximalAdmitBatchRoundTrips) {
  KvEvent admit{KvOp::kAdmit, testing::SampleOrigin(), "L1", 1, {}};
  for (size_t g = 0; g < 4; ++g) {
    admit.groups.push_back(
        KeyGroup{KeySpace{"m", "", 4, static_cast<uint16_t>(g), 0},
                 testing::MakeHashes(static_cast<uint32_t>(g), kMaxKeysPerMessage / 4)});
  }
  const std::vector<uint8_t> frame = EncodeEvent(admit);
  EXPECT_LT(frame.size(), kMaxFrameBytes);
  Result<Framed<Event>> e = DecodeEvent(frame);
  ASSERT_TRUE(e.has_value()) << e.error().ToString();
  EXPECT_EQ(std::get<KvEvent>(e->body), admit);
}

// ---- Seed corpus of controller_codec_fuzzer ----

std::map<std::string, std::vector<uint8_t>> SeedCorpus() {
  std::map<std::string, std::vector<uint8_t>> files;
  for (const auto& [name, event] : SampleEvents()) files["event_" + name] = EncodeEvent(event);
  uint64_t id = 1;
  for (const auto& [name, request] : SampleRequests()) {
    files["request_" + name] = EncodeRequest(id++, request);
  }
  const auto requests = SampleRequests();
  const auto replies = SampleReplies();
  for (size_t i = 0; i < requests.size(); ++i) {
    const auto& [name, reply] = replies[i];
    files["reply_" + name] = EncodeReply(TypeOf(requests[i].second), i, reply);
  }
  files["reply_ERROR"] = EncodeReply(MessageType::kRegister, 3, replies.back().second);
  files["reply_ERROR_INVALID"] =
      EncodeErrorReply(ReplyTarget{}, Status(StatusCode::kProtocolError, "bad magic"));
  return files;
}

TEST(ControllerCodecTest, SeedCorpusIsCurrent) {
  const std::filesystem::path dir = KVT_CONTROLLER_CORPUS_DIR;
  const bool write = std::getenv("KVT_WRITE_CORPUS") != nullptr;
  for (const auto& [name, bytes] : SeedCorpus()) {
    EXPECT_LE(bytes.size(), 4096u) << name << ": the fuzz test reads at most 4096 bytes";
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
}

}  // namespace
}  // namespace kvtier::controller
