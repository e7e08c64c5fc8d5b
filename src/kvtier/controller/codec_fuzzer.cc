// Fuzzes every decoder of outside bytes: the input is one frame, decoded as what its header says
// (event, request or reply) and also as each of the other two. Decoding must never crash and
// fail only with a protocol status; whatever decodes must re-encode to a frame that decodes to an
// equal message and re-encodes to the same bytes.
// Seed corpus: fuzz_corpus/codec/ (written by SeedCorpusIsCurrent in codec_test.cc).
#include <cstddef>
#include <cstdint>
#include <span>

#include "kvtier/common/check.h"
#include "kvtier/controller/codec.h"

namespace kvtier::controller {
namespace {

bool IsProtocolStatus(const Status& s) {
  return s.code() == StatusCode::kProtocolError || s.code() == StatusCode::kUnknownOpcode ||
         s.code() == StatusCode::kUnsupportedVersion;
}

template <typename T>
bool Failed(const Result<T>& r) {
  if (r.has_value()) return false;
  KVT_CHECK_MSG(IsProtocolStatus(r.error()), "{}", r.error().ToString());
  return true;
}

void CheckEvent(std::span<const uint8_t> frame) {
  Result<Framed<Event>> event = DecodeEvent(frame);
  if (Failed(event)) return;
  KVT_CHECK(TypeOf(event->body) == event->header.type);
  const std::vector<uint8_t> encoded = EncodeEvent(event->body);
  Result<Framed<Event>> again = DecodeEvent(encoded);
  KVT_CHECK_MSG(again.has_value(), "{}", again.error().ToString());
  KVT_CHECK(again->body == event->body);
  KVT_CHECK(EncodeEvent(again->body) == encoded);
}

void CheckRequest(std::span<const uint8_t> frame) {
  Result<Framed<Request>> request = DecodeRequest(frame);
  if (Failed(request)) {
    // The error reply to it always decodes, addressed to its id when readable.
    const ReplyTarget to = ReplyTargetOf(frame);
    Result<Framed<Reply>> reply = DecodeReply(EncodeErrorReply(to, request.error()));
    KVT_CHECK_MSG(reply.has_value(), "{}", reply.error().ToString());
    KVT_CHECK(reply->header.request_id == to.request_id);
    return;
  }
  const Header& h = request->header;
  KVT_CHECK(TypeOf(request->body) == h.type);
  const std::vector<uint8_t> encoded = EncodeRequest(h.request_id, request->body);
  Result<Framed<Request>> again = DecodeRequest(encoded);
  KVT_CHECK_MSG(again.has_value(), "{}", again.error().ToString());
  KVT_CHECK(again->body == request->body && again->header == h);
  KVT_CHECK(EncodeRequest(h.request_id, again->body) == encoded);
}

void CheckReply(std::span<const uint8_t> frame) {
  Result<Framed<Reply>> reply = DecodeReply(frame);
  if (Failed(reply)) return;
  const Header& h = reply->header;
  const std::vector<uint8_t> encoded = EncodeReply(h.type, h.request_id, reply->body);
  Result<Framed<Reply>> again = DecodeReply(encoded);
  KVT_CHECK_MSG(again.has_value(), "{}", again.error().ToString());
  KVT_CHECK(again->body == reply->body && again->header == h);
  KVT_CHECK(EncodeReply(h.type, h.request_id, again->body) == encoded);
  if (IsRequest(h.type)) {
    const Status s = ReplyStatus(*reply, h.type);
    KVT_CHECK(s.ok() != std::holds_alternative<ErrorReply>(reply->body));
  }
}

}  // namespace
}  // namespace kvtier::controller

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvtier::controller;  // NOLINT(google-build-using-namespace)
  const std::span<const uint8_t> frame(data, size);
  CheckEvent(frame);
  CheckRequest(frame);
  CheckReply(frame);
  return 0;
}
