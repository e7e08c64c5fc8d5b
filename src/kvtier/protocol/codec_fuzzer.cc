// Fuzzes every decoder of outside bytes: DecodeRequest, DecodeReply and DecodeHeader.
// Input: the first byte picks the opcode (bits 0-4, so unknown opcodes 16-31 too) and, for
// DecodeReply, the error flag (bit 7); the rest is the payload, also fed to DecodeHeader.
// Decoding must never crash, fail only with a protocol status, and whatever decodes must
// re-encode to a message that decodes to an equal value.
// Seed corpus: fuzz_corpus/codec/ (written by SeedCorpusTest in codec_test.cc).
#include <cstddef>
#include <cstdint>
#include <span>

#include "kvtier/common/check.h"
#include "kvtier/protocol/codec.h"

namespace kvtier::protocol {
namespace {

bool IsProtocolStatus(const Status& s) {
  return s.code() == StatusCode::kProtocolError || s.code() == StatusCode::kUnknownOpcode ||
         s.code() == StatusCode::kUnsupportedVersion;
}

void CheckRequest(Opcode op, std::span<const uint8_t> payload) {
  Result<Request> request = DecodeRequest(Header{.opcode = op, .request_id = 3}, payload);
  if (!request) {
    KVT_CHECK_MSG(IsProtocolStatus(request.error()), "{}", request.error().ToString());
    return;
  }
  KVT_CHECK(OpcodeOf(*request) == op);
  const Frames frames = EncodeRequest(3, *request);
  Result<Header> header = DecodeHeader(frames.header);
  KVT_CHECK_MSG(header.has_value(), "{}", header.error().ToString());
  KVT_CHECK(header->opcode == op && header->request_id == 3 && header->flags == 0);
  Result<Request> again = DecodeRequest(*header, frames.payload);
  KVT_CHECK_MSG(again.has_value(), "{}", again.error().ToString());
  KVT_CHECK(*again == *request);
  KVT_CHECK(EncodeRequest(3, *again).payload == frames.payload);
}

void CheckReply(Opcode op, bool error, std::span<const uint8_t> payload) {
  const auto flags = static_cast<uint8_t>(kFlagReply | (error ? kFlagError : 0));
  Result<Reply> reply = DecodeReply(Header{.flags = flags, .opcode = op, .request_id = 4}, payload);
  if (!reply) {
    KVT_CHECK_MSG(IsProtocolStatus(reply.error()), "{}", reply.error().ToString());
    return;
  }
  KVT_CHECK(std::holds_alternative<ErrorReply>(*reply) == error);
  if (!error) KVT_CHECK(reply->index() == ReplyIndexFor(op));
  const Frames frames = EncodeReply(op, 4, *reply);
  Result<Header> header = DecodeHeader(frames.header);
  KVT_CHECK_MSG(header.has_value(), "{}", header.error().ToString());
  KVT_CHECK(header->opcode == op && header->request_id == 4 && header->flags == flags);
  Result<Reply> again = DecodeReply(*header, frames.payload);
  KVT_CHECK_MSG(again.has_value(), "{}", again.error().ToString());
  KVT_CHECK(*again == *reply);
  if (error) {
    // The Status survives the trip through an error reply.
    const ErrorReply& e = std::get<ErrorReply>(*reply);
    const Status s = FromErrorReply(e);
    KVT_CHECK(!s.ok());
    KVT_CHECK(ToErrorReply(s) == e);
  }
}

void CheckHeader(std::span<const uint8_t> frame) {
  Result<Header> header = DecodeHeader(frame);
  if (!header) {
    KVT_CHECK_MSG(IsProtocolStatus(header.error()), "{}", header.error().ToString());
    return;
  }
  // Every bit of a valid header is meaningful: it re-encodes to the same 16 bytes.
  const std::vector<uint8_t> again = EncodeHeader(*header);
  KVT_CHECK(std::equal(again.begin(), again.end(), frame.begin(), frame.end()));
}

}  // namespace
}  // namespace kvtier::protocol

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvtier::protocol;  // NOLINT(google-build-using-namespace)
  if (size == 0) return 0;
  const auto op = static_cast<Opcode>(data[0] & 0x1f);
  const bool error = (data[0] & 0x80) != 0;
  const std::span<const uint8_t> rest(data + 1, size - 1);
  CheckRequest(op, rest);
  CheckReply(op, error, rest);
  CheckHeader(rest);
  if (rest.size() > kHeaderSize) CheckHeader(rest.first(kHeaderSize));
  return 0;
}
