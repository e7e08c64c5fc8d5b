// Internal to the protocol library: the payload decoders of codec_decode.cc, which codec.cc's
// DecodeRequest / DecodeReply call once the header is checked.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "kvtier/common/result.h"
#include "kvtier/protocol/messages.h"

namespace kvtier::protocol::internal {

// `opcode` is a request opcode, 1..kMaxOpcode.
Result<Request> DecodeRequestPayload(Opcode opcode, std::span<const uint8_t> payload);
// `index` is ReplyIndexFor(opcode), not std::variant_npos.
Result<Reply> DecodeReplyPayload(Opcode opcode, size_t index, std::span<const uint8_t> payload);
Result<Reply> DecodeErrorReplyPayload(Opcode opcode, std::span<const uint8_t> payload);

}  // namespace kvtier::protocol::internal
