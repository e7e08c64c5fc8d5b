// The controller protocol's codec: messages <-> frames. Pure functions, no sockets, no state;
// safe to call from any thread.
//
// A frame is one ZeroMQ message part: the 16-byte header, then the body, one msgpack map with
// string keys (docs/controller.md, "Wire protocol").
//
// Decoding never throws, never crashes and never allocates more than a small multiple of the
// frame's size, whatever the bytes; limits are in messages.h. Failures are Status values with
// code kProtocolError (malformed, naming the field), kUnsupportedVersion or kUnknownOpcode (an
// unknown message type). Unknown body fields are ignored.
//
// Controller side:
//   PULL:   Result<Framed<Event>> e = DecodeEvent(frame);        // failure: count it, drop it
//   ROUTER: Result<Framed<Request>> r = DecodeRequest(frame);
//           on failure: send EncodeErrorReply(ReplyTargetOf(frame), r.error())
//           on success: send EncodeReply(r->header.type, r->header.request_id, reply)
// Worker / client side:
//   EncodeEvent(event); EncodeRequest(id, request);
//   Result<Framed<Reply>> reply = DecodeReply(frame); match reply->header.request_id, then
//   ReplyStatus(*reply, sent_type) tells success, an error reply, or a reply of another type.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kvtier/common/result.h"
#include "kvtier/controller/messages.h"

namespace kvtier::controller {

template <typename T>
struct Framed {
  Header header;
  T body;
};

// ---- Encoding (the caller keeps within the limits of messages.h; DCHECKed) ----

std::vector<uint8_t> EncodeEvent(const Event& event);
std::vector<uint8_t> EncodeRequest(uint64_t request_id, const Request& request);
// A reply to a request of `type` with `request_id`. `reply` must be the alternative that answers
// `type` (ReplyIndexFor), or an ErrorReply (which may also answer kInvalid).
std::vector<uint8_t> EncodeReply(MessageType type, uint64_t request_id, const Reply& reply);

// Where an error reply to a frame goes: its request id and type when the header's first bytes
// are readable (any version; kInvalid for an unknown type), else 0 and kInvalid.
struct ReplyTarget {
  MessageType type = MessageType::kInvalid;
  uint64_t request_id = 0;
};
ReplyTarget ReplyTargetOf(std::span<const uint8_t> frame);
// EncodeReply(to.type, to.request_id, ToErrorReply(status)). `status` must not be OK.
std::vector<uint8_t> EncodeErrorReply(const ReplyTarget& to, const Status& status);

// ---- Decoding ----

// The 16 bytes of a header (exactly kHeaderSize).
std::vector<uint8_t> EncodeHeader(const Header& header);
// Checks the frame's size (kHeaderSize..kMaxFrameBytes) and its header: magic, version, flags,
// reserved bits, a known type (kInvalid only in error replies), no reply flag on events.
Result<Header> DecodeHeader(std::span<const uint8_t> frame);

Result<Framed<Event>> DecodeEvent(std::span<const uint8_t> frame);
Result<Framed<Request>> DecodeRequest(std::span<const uint8_t> frame);
// An error reply decodes to ErrorReply; any other reply to the alternative its type expects.
Result<Framed<Reply>> DecodeReply(std::span<const uint8_t> frame);

// OK when `reply` is the success reply to a request of `type`; the error reply's Status
// (FromErrorReply) when it is one; kProtocolError when it answers another type.
Status ReplyStatus(const Framed<Reply>& reply, MessageType type);

}  // namespace kvtier::controller
