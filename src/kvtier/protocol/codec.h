// Encoding and decoding of protocol messages: pure functions over bytes (no sockets), so every
// path a hostile client can reach is testable and fuzzable.
//
// Decoding validates everything it can without server state: frame count and sizes, the header
// (magic, version, flags, opcode), the payload being one msgpack map, every required field
// present with the right type, integer ranges, and field limits (below). Errors are
// kProtocolError / kUnsupportedVersion / kUnknownOpcode Statuses whose messages name the field.
// Unknown fields are ignored.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvtier/common/result.h"
#include "kvtier/protocol/messages.h"

namespace kvtier::protocol {

// Limits a decoder enforces (a message over them is an error, not an allocation).
inline constexpr size_t kMaxTokens = 4u << 20;         // tokens in one key
inline constexpr size_t kMaxBlockIds = 1u << 20;       // block ids in one request
inline constexpr size_t kMaxStringLength = 4096;       // any string field
inline constexpr size_t kMaxLayers = 4096;             // layer_offsets
inline constexpr size_t kMaxPayloadBytes = 64u << 20;  // frame 2
inline constexpr size_t kMaxReadObjectsKeys = 4096;    // keys in one READ_OBJECTS

// The 16-byte header frame.
std::vector<uint8_t> EncodeHeader(const Header& h);
Result<Header> DecodeHeader(std::span<const uint8_t> frame);

// One message: {header frame, payload frame}, and for a READ_OBJECTS reply one more frame per
// object found (`extra`, pointing at bytes `hold` keeps valid: senders send them without
// copying and drop `hold` once the frames are gone).
struct Frames {
  std::vector<uint8_t> header;
  std::vector<uint8_t> payload;
  std::vector<std::span<const uint8_t>> extra;
  std::shared_ptr<const void> hold;
};

Frames EncodeRequest(uint64_t request_id, const Request& request);
// `header` must be a request (no reply flag); the payload must match its opcode.
Result<Request> DecodeRequest(const Header& header, std::span<const uint8_t> payload);

// A reply to `request` (an ErrorReply sets the error flag; the opcode is the request's).
Frames EncodeReply(Opcode opcode, uint64_t request_id, const Reply& reply);
// Decodes a reply to a request of `header.opcode`: the typed reply, or the ErrorReply when
// the error flag is set.
Result<Reply> DecodeReply(const Header& header, std::span<const uint8_t> payload);

// The error reply for a Status (code, message, retryable). The message is cut to
// kMaxStringLength bytes (at a UTF-8 boundary) so that the reply always decodes.
ErrorReply ToErrorReply(const Status& status);
// The Status an error reply stands for; never OK (code 0 becomes kProtocolError).
Status FromErrorReply(const ErrorReply& error);

// The index in Reply of the typed reply answering `opcode` (e.g. StoreReply for kStore);
// std::variant_npos for kInvalid or an unknown opcode.
size_t ReplyIndexFor(Opcode opcode);

}  // namespace kvtier::protocol
